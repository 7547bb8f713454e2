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

pub(crate) use super::crc32c::crc32c;
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

impl Hasher {
    pub fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::None => {}
            Hasher::Crc32c(crc) => *crc = super::crc32c::update(*crc, b),
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

/// The name pg_verifybackup looks for in a backup's top directory.
pub(crate) const MANIFEST_FILE: &str = "backup_manifest";

/// Why a manifest could not be read, or the copy does not match it.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest is not one PostgreSQL 15 writes (or is damaged).
    #[error("{MANIFEST_FILE} is invalid: {0}")]
    Invalid(String),
    /// A file the manifest lists is not in the copy.
    #[error("\"{path}\" is in {MANIFEST_FILE} but not in the copy")]
    Missing {
        /// The file, relative to the copy.
        path: String,
    },
    /// A file's size differs from the manifest's.
    #[error("\"{path}\" has size {found} in the copy but {expected} in {MANIFEST_FILE}")]
    Size {
        /// The file, relative to the copy.
        path: String,
        /// Its size in the copy.
        found: u64,
        /// The manifest's.
        expected: u64,
    },
    /// A file's contents differ from what was written.
    #[error("checksum mismatch for \"{path}\": its {algorithm} is {found}, {MANIFEST_FILE} says {expected}")]
    Checksum {
        /// The file, relative to the copy.
        path: String,
        /// The algorithm the manifest names.
        algorithm: &'static str,
        /// The checksum of the file in the copy (hex).
        found: String,
        /// The manifest's (hex).
        expected: String,
    },
    /// A file could not be read.
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The IO error.
        source: io::Error,
    },
}

/// One file of a manifest read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    /// Relative to the backup's top directory, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// The algorithm of `checksum` (`None` when the manifest has none).
    pub kind: ChecksumKind,
    /// The checksum bytes (pg_checksum_final's layout).
    pub checksum: Vec<u8>,
}

/// A manifest read back: its files and WAL ranges (timeline, start, end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    /// Every file listed, in the manifest's order.
    pub files: Vec<ListedFile>,
    /// `WAL-Ranges`.
    pub wal_ranges: Vec<(TimelineId, Lsn, Lsn)>,
}

fn invalid(what: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(what.into())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Read a manifest as pg_verifybackup does: its `Manifest-Checksum` (the
/// SHA-256 of everything up to the newline before its last line) must
/// match, its version be 1 or 2, and every file entry be complete.
pub fn parse(bytes: &[u8]) -> Result<ParsedManifest, ManifestError> {
    let body_end = bytes
        .strip_suffix(b"\n")
        .and_then(|b| b.iter().rposition(|&c| c == b'\n'))
        .map(|i| i + 1)
        .ok_or_else(|| invalid("expected at least 2 lines"))?;
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let want = v["Manifest-Checksum"]
        .as_str()
        .ok_or_else(|| invalid("no Manifest-Checksum"))?;
    let found = hex(&sha2::Sha256::digest(&bytes[..body_end]));
    if !found.eq_ignore_ascii_case(want) {
        return Err(invalid(format!(
            "manifest checksum mismatch: the manifest's SHA-256 is {found}, it says {want}"
        )));
    }
    match v["PostgreSQL-Backup-Manifest-Version"].as_u64() {
        Some(1 | 2) => {}
        other => return Err(invalid(format!("unsupported manifest version {other:?}"))),
    }
    let files = v["Files"]
        .as_array()
        .ok_or_else(|| invalid("no Files array"))?
        .iter()
        .map(parse_file)
        .collect::<Result<_, _>>()?;
    let wal_ranges = v["WAL-Ranges"]
        .as_array()
        .ok_or_else(|| invalid("no WAL-Ranges array"))?
        .iter()
        .map(parse_wal_range)
        .collect::<Result<_, _>>()?;
    Ok(ParsedManifest { files, wal_ranges })
}

fn parse_file(f: &serde_json::Value) -> Result<ListedFile, ManifestError> {
    let path = match (f["Path"].as_str(), f["Encoded-Path"].as_str()) {
        (Some(p), None) => p.to_string(),
        (None, Some(e)) => unhex(e)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| invalid(format!("bad Encoded-Path {e:?}")))?,
        _ => {
            return Err(invalid(format!(
                "a file needs one of Path and Encoded-Path: {f}"
            )))
        }
    };
    let size = f["Size"]
        .as_u64()
        .ok_or_else(|| invalid(format!("\"{path}\" has no Size")))?;
    let (kind, checksum) = match f["Checksum-Algorithm"].as_str() {
        None => (ChecksumKind::None, Vec::new()),
        Some(name) => {
            let kind = ChecksumKind::parse(name)
                .ok_or_else(|| invalid(format!("\"{path}\": unknown algorithm {name:?}")))?;
            let sum = f["Checksum"]
                .as_str()
                .and_then(unhex)
                .ok_or_else(|| invalid(format!("\"{path}\": bad or missing Checksum")))?;
            (kind, sum)
        }
    };
    Ok(ListedFile {
        path,
        size,
        kind,
        checksum,
    })
}

fn parse_wal_range(r: &serde_json::Value) -> Result<(TimelineId, Lsn, Lsn), ManifestError> {
    let lsn = |k: &str| -> Result<Lsn, ManifestError> {
        r[k].as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("WAL range without a valid {k}: {r}")))
    };
    let tli = r["Timeline"]
        .as_u64()
        .and_then(|t| u32::try_from(t).ok())
        .ok_or_else(|| invalid(format!("WAL range without a Timeline: {r}")))?;
    Ok((TimelineId(tli), lsn("Start-LSN")?, lsn("End-LSN")?))
}

/// Checksum the file at `path` with `kind`; its length and checksum.
pub(crate) fn checksum_file(
    path: &std::path::Path,
    kind: ChecksumKind,
) -> Result<(u64, Vec<u8>), ManifestError> {
    checksum_file_with(path, kind, &mut vec![0u8; 256 * 1024])
}

/// [`checksum_file`] reading `buf.len()` bytes at a time into `buf`.
pub(crate) fn checksum_file_with(
    path: &std::path::Path,
    kind: ChecksumKind,
    buf: &mut [u8],
) -> Result<(u64, Vec<u8>), ManifestError> {
    let file = std::fs::File::open(path).map_err(|source| ManifestError::Io {
        op: "open",
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = HashingReader::new(file, kind);
    let mut len = 0u64;
    loop {
        match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => len += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(ManifestError::Io {
                    op: "read",
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok((len, reader.hasher.finish()))
}

/// What the end check of a copy read (`endcheck`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckedFiles {
    /// Files whose size and checksum matched.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The path of listed file `f` in the copy in `dir`, once it is there
/// with the size the manifest says.
pub(crate) fn stat_listed(
    dir: &std::path::Path,
    f: &ListedFile,
) -> Result<std::path::PathBuf, ManifestError> {
    let path = dir.join(&f.path);
    let missing = || ManifestError::Missing {
        path: f.path.clone(),
    };
    let found_size = match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => return Err(missing()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
        Err(source) => {
            return Err(ManifestError::Io {
                op: "stat",
                path,
                source,
            })
        }
    };
    compare_size(f, found_size)?;
    Ok(path)
}

fn compare_size(f: &ListedFile, found: u64) -> Result<(), ManifestError> {
    if found != f.size {
        return Err(ManifestError::Size {
            path: f.path.clone(),
            found,
            expected: f.size,
        });
    }
    Ok(())
}

/// Listed file `f` read back: `len` bytes whose checksum is `sum`.
pub(crate) fn compare_listed(f: &ListedFile, len: u64, sum: &[u8]) -> Result<(), ManifestError> {
    compare_size(f, len)?;
    if sum != f.checksum {
        return Err(ManifestError::Checksum {
            path: f.path.clone(),
            algorithm: f.kind.name(),
            found: hex(sum),
            expected: hex(&f.checksum),
        });
    }
    Ok(())
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

    fn written_manifest() -> Vec<u8> {
        let mut m = Manifest::new(ChecksumKind::Crc32c, false);
        m.add_file("a", 3, 0, crc32c(b"abc").to_ne_bytes().to_vec());
        m.add_file("d/b", 0, 0, crc32c(b"").to_ne_bytes().to_vec());
        m.finish(TimelineId(2), Lsn(0x2000028), Lsn(0x2000100))
    }

    #[test]
    fn a_manifest_reads_back_and_checks_the_files() {
        let bytes = written_manifest();
        let m = parse(&bytes).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files[0].path, "a");
        assert_eq!(m.files[0].kind, ChecksumKind::Crc32c);
        assert_eq!(
            m.wal_ranges,
            vec![(TimelineId(2), Lsn(0x2000028), Lsn(0x2000100))]
        );
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"abc").unwrap();
        std::fs::create_dir(d.path().join("d")).unwrap();
        std::fs::write(d.path().join("d/b"), b"").unwrap();
        let check_files = |d: &std::path::Path, m: &ParsedManifest| {
            super::super::endcheck::check(d, m, None, &Default::default()).map(|c| c.files)
        };
        assert_eq!(
            check_files(d.path(), &m).unwrap(),
            CheckedFiles { files: 2, bytes: 3 }
        );
        std::fs::write(d.path().join("a"), b"abd").unwrap();
        let e = check_files(d.path(), &m).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch for \"a\""), "{e}");
        std::fs::write(d.path().join("a"), b"abcd").unwrap();
        let e = check_files(d.path(), &m).unwrap_err();
        assert!(e.to_string().contains("has size 4"), "{e}");
        std::fs::remove_file(d.path().join("d/b")).unwrap();
        std::fs::write(d.path().join("a"), b"abc").unwrap();
        let e = check_files(d.path(), &m).unwrap_err();
        assert!(e.to_string().contains("not in the copy"), "{e}");
    }

    #[test]
    fn a_damaged_manifest_is_refused() {
        let bytes = written_manifest();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let edited = text.replacen("\"Size\": 3", "\"Size\": 4", 1);
        let e = parse(edited.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("manifest checksum mismatch"), "{e}");
        let e = parse(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(e.to_string().contains("is invalid"), "{e}");
    }
}
