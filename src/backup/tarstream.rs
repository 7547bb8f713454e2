//! The server side of the archive stream: tar members written through a
//! [`CopyWriter`] that cuts the bytes into `d` CopyData messages, sends `p`
//! progress messages as PostgreSQL 15 does (at most once a second, and at
//! the end) and throttles to MAX_RATE. Headers are ustar with PostgreSQL's
//! conventions (directory names end in `/`, mode 0600 files / 0700
//! directories), so pg_basebackup's tar parser accepts them.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use crate::replication::source::BackupOutput;

/// Bytes per buffered `d` message (PostgreSQL's copystream buffer is of
/// this order): headers, small files, the manifest.
pub const COPY_CHUNK: usize = 64 * 1024;
/// Most bytes of one `d` message sent straight from the caller's buffer
/// (a file's data read a quarter MB at a time): fewer, larger messages
/// mean fewer syscalls on both sides. Well under the 1 MiB any walrep
/// reader accepts; libpq accepts CopyData of any size.
pub const MAX_DIRECT_CHUNK: usize = 256 * 1024;
/// Progress messages at most this often (PROGRESS_REPORT_MILLISECOND_THRESHOLD).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Longest single throttling sleep (keeps the sender responsive).
const MAX_THROTTLE_SLEEP: Duration = Duration::from_millis(500);
/// Longest member name a plain ustar header holds (with the `/` of a directory).
pub const MAX_NAME_LEN: usize = 99;

/// `io::Write` over a [`BackupOutput`]: buffered `d` messages, progress
/// and rate limiting.
pub struct CopyWriter<'a> {
    out: &'a mut dyn BackupOutput,
    /// Bytes not yet sent (at most one `d` message's worth).
    buf: Vec<u8>,
    /// Archive bytes handed to the client so far (what `p` reports).
    done: u64,
    /// When the last `p` message went.
    last_progress: Instant,
    /// Bytes per second, 0 = unlimited.
    max_rate_bps: u64,
    /// Start of the stream (the rate is an average since then).
    started: Instant,
    /// A write to the client failed: the connection is gone.
    pub client_failed: bool,
}

impl<'a> CopyWriter<'a> {
    /// `max_rate_kbps` is MAX_RATE in kB/s (0 = unlimited).
    pub fn new(out: &'a mut dyn BackupOutput, max_rate_kbps: u64) -> CopyWriter<'a> {
        let now = Instant::now();
        CopyWriter {
            out,
            buf: Vec::with_capacity(COPY_CHUNK),
            done: 0,
            last_progress: now,
            max_rate_bps: max_rate_kbps.saturating_mul(1024),
            started: now,
            client_failed: false,
        }
    }

    /// Bytes sent so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    fn client<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if r.is_err() {
            self.client_failed = true;
        }
        r
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.out.data(&self.buf);
        self.client(r)?;
        let n = self.buf.len();
        self.buf.clear();
        self.sent(n)
    }

    /// `n` more bytes went to the client: progress and throttling.
    fn sent(&mut self, n: usize) -> io::Result<()> {
        self.done += n as u64;
        if self.last_progress.elapsed() >= PROGRESS_INTERVAL {
            self.last_progress = Instant::now();
            let r = self.out.progress(self.done);
            self.client(r)?;
        }
        self.throttle();
        Ok(())
    }

    /// Sleep while the average rate is above MAX_RATE.
    fn throttle(&self) {
        if self.max_rate_bps == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.done as f64 / self.max_rate_bps as f64);
        let ahead = due.saturating_sub(self.started.elapsed());
        if !ahead.is_zero() {
            std::thread::sleep(ahead.min(MAX_THROTTLE_SLEEP));
        }
    }

    /// Send what is buffered and a final progress message.
    pub fn finish(mut self) -> io::Result<u64> {
        self.send_buffered()?;
        let r = self.out.progress(self.done);
        self.client(r)?;
        Ok(self.done)
    }
}

impl Write for CopyWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.is_empty() && data.len() >= COPY_CHUNK {
            // A whole message's worth or more: sent as it is, not copied first.
            let n = data.len().min(MAX_DIRECT_CHUNK);
            let r = self.out.data(&data[..n]);
            self.client(r)?;
            self.sent(n)?;
            return Ok(n);
        }
        let room = COPY_CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == COPY_CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a tar member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    /// A regular file.
    File {
        /// The bytes the header announces.
        size: u64,
    },
    /// A directory (no content).
    Directory,
}

/// A ustar header as PostgreSQL's tarCreateHeader makes it.
pub fn header(name: &str, member: Member, mtime_unix: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    let name = match member {
        Member::Directory => format!("{name}/"),
        Member::File { .. } => name.to_string(),
    };
    if name.len() > MAX_NAME_LEN || name.is_empty() || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tar member name {name:?} does not fit a ustar header"),
        ));
    }
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    match member {
        Member::File { size } => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
            h.set_mode(0o600);
        }
        Member::Directory => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o700);
        }
    }
    h.set_mtime(mtime_unix);
    // SAFETY: geteuid/getegid only read the process credentials.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    h.set_uid(uid as u64);
    h.set_gid(gid as u64);
    h.set_username("walrep")?;
    h.set_groupname("walrep")?;
    h.set_cksum();
    Ok(h)
}

/// A reader that yields exactly `len` bytes of `inner` or fails: a file
/// that shrinks while it is copied must not produce a tar member shorter
/// than its header says.
pub struct ExactReader<R> {
    inner: R,
    /// Bytes still owed.
    left: u64,
    /// The file, for error messages.
    what: String,
}

impl<R: Read> ExactReader<R> {
    /// Yield exactly `len` bytes of `inner`; `what` names the file in errors.
    pub fn new(inner: R, len: u64, what: impl Into<String>) -> ExactReader<R> {
        ExactReader {
            inner,
            left: len,
            what: what.into(),
        }
    }
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want]).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("could not read file \"{}\": {e}", self.what),
            )
        })?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "file \"{}\" ended {} bytes early (changed during the backup)",
                    self.what, self.left
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what a BackupOutput receives.
    #[derive(Default)]
    struct Recorder {
        data: Vec<u8>,
        messages: usize,
        progress: Vec<u64>,
    }

    impl BackupOutput for Recorder {
        fn result_set(&mut self, _: &[(&str, i32)], _: &[Vec<Option<String>>]) -> io::Result<()> {
            Ok(())
        }
        fn begin_copy(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn new_archive(&mut self, _: &str, _: &str) -> io::Result<()> {
            Ok(())
        }
        fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
            assert!(bytes.len() <= MAX_DIRECT_CHUNK);
            self.data.extend_from_slice(bytes);
            self.messages += 1;
            Ok(())
        }
        fn progress(&mut self, done: u64) -> io::Result<()> {
            self.progress.push(done);
            Ok(())
        }
        fn manifest(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn end_copy(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn archive_is_chunked_and_readable_by_a_tar_reader() {
        let mut rec = Recorder::default();
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        {
            let mut tar = tar::Builder::new(CopyWriter::new(&mut rec, 0));
            tar.append(&header("base", Member::Directory, 1).unwrap(), io::empty())
                .unwrap();
            let h = header(
                "base/f",
                Member::File {
                    size: body.len() as u64,
                },
                1,
            )
            .unwrap();
            tar.append(&h, &body[..]).unwrap();
            let w = tar.into_inner().unwrap();
            let done = w.finish().unwrap();
            assert_eq!(done % 512, 0);
        }
        assert!(rec.messages >= 3);
        assert_eq!(rec.progress.last().copied(), Some(rec.data.len() as u64));
        let mut a = tar::Archive::new(&rec.data[..]);
        let mut names = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            names.push(String::from_utf8(e.path_bytes().to_vec()).unwrap());
            if e.header().entry_type().is_file() {
                let mut got = Vec::new();
                e.read_to_end(&mut got).unwrap();
                assert_eq!(got, body);
            }
        }
        assert_eq!(names, ["base/", "base/f"]);
    }

    #[test]
    fn long_names_and_short_files_are_errors() {
        assert!(header(&"x".repeat(100), Member::File { size: 0 }, 0).is_err());
        let mut r = ExactReader::new(&b"abc"[..], 5, "f");
        let mut buf = Vec::new();
        let e = r.read_to_end(&mut buf).unwrap_err();
        assert!(e.to_string().contains("ended 2 bytes early"), "{e}");
    }
}
