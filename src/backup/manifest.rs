//! `backup_manifest`, PostgreSQL 15's format (backup_manifest.c), sent when
//! the client asks for it (pg_basebackup does by default): every file with
//! its size, modification time and checksum, the WAL range, and a SHA-256
//! of the manifest itself, so `pg_verifybackup -n` can check a copy.
//!
//! ```text
//! { "PostgreSQL-Backup-Manifest-Version": 1,
//! "Files": [
//! { "Path": "backup_label", "Size": 225, "Last-Modified": "2024-05-01 12:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "4f5d0a1b" },
//! ...
//! ],
//! "WAL-Ranges": [
//! { "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
//! ],
//! "Manifest-Checksum": "..."}
//! ```

use std::fmt::Write as _;
use std::io::{self, Read};

use sha2::Digest;

use super::label::format_utc;
use crate::{Lsn, TimelineId};

/// MANIFEST_CHECKSUMS: the algorithms PostgreSQL 15 offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumKind {
    None,
    Crc32c,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl ChecksumKind {
    /// pg_checksum_parse_type (case-insensitive).
    pub fn parse(s: &str) -> Option<ChecksumKind> {
        Some(match s.to_ascii_uppercase().as_str() {
            "NONE" => ChecksumKind::None,
            "CRC32C" => ChecksumKind::Crc32c,
            "SHA224" => ChecksumKind::Sha224,
            "SHA256" => ChecksumKind::Sha256,
            "SHA384" => ChecksumKind::Sha384,
            "SHA512" => ChecksumKind::Sha512,
            _ => return None,
        })
    }

    /// pg_checksum_type_name.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumKind::None => "NONE",
            ChecksumKind::Crc32c => "CRC32C",
            ChecksumKind::Sha224 => "SHA224",
            ChecksumKind::Sha256 => "SHA256",
            ChecksumKind::Sha384 => "SHA384",
            ChecksumKind::Sha512 => "SHA512",
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            ChecksumKind::None => Hasher::None,
            ChecksumKind::Crc32c => Hasher::Crc32c(!0),
            ChecksumKind::Sha224 => Hasher::Sha224(sha2::Sha224::new()),
            ChecksumKind::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            ChecksumKind::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            ChecksumKind::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

/// A running file checksum.
pub enum Hasher {
    None,
    /// The CRC register (pre-inverted, as PostgreSQL's INIT_CRC32C).
    Crc32c(u32),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

/// CRC-32C (Castagnoli, reflected 0x82F63B78) lookup table.
const CRC32C_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

impl Hasher {
    pub fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::None => {}
            Hasher::Crc32c(crc) => {
                let mut c = *crc;
                for &byte in b {
                    c = CRC32C_TABLE[((c ^ byte as u32) & 0xFF) as usize] ^ (c >> 8);
                }
                *crc = c;
            }
            Hasher::Sha224(h) => h.update(b),
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha384(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }

    /// The checksum bytes as pg_checksum_final lays them out (a CRC in
    /// native byte order, as PostgreSQL memcpy's it).
    pub fn finish(self) -> Vec<u8> {
        match self {
            Hasher::None => Vec::new(),
            Hasher::Crc32c(c) => (!c).to_ne_bytes().to_vec(),
            Hasher::Sha224(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// A reader that checksums what passes through it.
pub struct HashingReader<R> {
    inner: R,
    /// The checksum of what was read so far.
    pub hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, kind: ChecksumKind) -> HashingReader<R> {
        HashingReader {
            inner,
            hasher: kind.hasher(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// PostgreSQL's escape_json.
fn escape_json(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A manifest being built while the archive is written.
pub struct Manifest {
    /// The file checksum algorithm (MANIFEST_CHECKSUMS).
    kind: ChecksumKind,
    /// `force-encode`: every path as hex (`Encoded-Path`).
    force_encode: bool,
    /// The manifest so far.
    text: String,
    /// No file added yet (the separator differs).
    first_file: bool,
}

impl Manifest {
    pub fn new(kind: ChecksumKind, force_encode: bool) -> Manifest {
        Manifest {
            kind,
            force_encode,
            text: "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [".into(),
            first_file: true,
        }
    }

    pub fn kind(&self) -> ChecksumKind {
        self.kind
    }

    /// One file (AddFileToBackupManifest).
    pub fn add_file(&mut self, path: &str, size: u64, mtime_unix: u64, checksum: Vec<u8>) {
        self.text
            .push_str(if self.first_file { "\n" } else { ",\n" });
        self.first_file = false;
        if self.force_encode {
            let _ = write!(
                self.text,
                "{{ \"Encoded-Path\": \"{}\", ",
                hex(path.as_bytes())
            );
        } else {
            let _ = write!(self.text, "{{ \"Path\": {}, ", escape_json(path));
        }
        let modified = format_utc(mtime_unix).replace(" UTC", " GMT");
        let _ = write!(
            self.text,
            "\"Size\": {size}, \"Last-Modified\": \"{modified}\""
        );
        if self.kind != ChecksumKind::None {
            let _ = write!(
                self.text,
                ", \"Checksum-Algorithm\": \"{}\", \"Checksum\": \"{}\"",
                self.kind.name(),
                hex(&checksum)
            );
        }
        self.text.push_str(" }");
    }

    /// The WAL range and the manifest's own SHA-256 (over everything up to
    /// and including the newline before its line); the finished bytes.
    pub fn finish(mut self, tli: TimelineId, start: Lsn, end: Lsn) -> Vec<u8> {
        self.text.push_str("\n],\n\"WAL-Ranges\": [\n");
        let _ = write!(
            self.text,
            "{{ \"Timeline\": {}, \"Start-LSN\": \"{start}\", \"End-LSN\": \"{end}\" }}",
            tli.0
        );
        self.text.push_str("\n],\n");
        let digest = sha2::Sha256::digest(self.text.as_bytes());
        let _ = writeln!(self.text, "\"Manifest-Checksum\": \"{}\"}}", hex(&digest));
        self.text.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        let mut h = ChecksumKind::Crc32c.hasher();
        h.update(b"123456789");
        assert_eq!(h.finish(), 0xE306_9283u32.to_ne_bytes().to_vec());
    }

    #[test]
    fn manifest_is_json_with_a_valid_self_checksum() {
        let mut m = Manifest::new(ChecksumKind::Sha256, false);
        let mut h = ChecksumKind::Sha256.hasher();
        h.update(b"abc");
        m.add_file("backup_label", 3, 0, h.finish());
        m.add_file(
            "wal/a\"b",
            0,
            86_400,
            ChecksumKind::Sha256.hasher().finish(),
        );
        let bytes = m.finish(TimelineId(1), Lsn(0x2000028), Lsn(0x2000100));
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["PostgreSQL-Backup-Manifest-Version"], 1);
        assert_eq!(v["Files"][0]["Path"], "backup_label");
        assert_eq!(
            v["Files"][0]["Checksum"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(v["Files"][1]["Path"], "wal/a\"b");
        assert_eq!(v["Files"][1]["Last-Modified"], "1970-01-02 00:00:00 GMT");
        assert_eq!(v["WAL-Ranges"][0]["End-LSN"], "0/2000100");
        // pg_verifybackup's rule: SHA-256 of everything through the
        // penultimate newline.
        let text = String::from_utf8(bytes).unwrap();
        let body_end = text[..text.len() - 1].rfind('\n').unwrap() + 1;
        let want = hex(&sha2::Sha256::digest(&text.as_bytes()[..body_end]));
        assert_eq!(v["Manifest-Checksum"], want.as_str());
    }
}
