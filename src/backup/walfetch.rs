//! The WAL of a parallel base backup, fetched with walrep's WAL_RANGE on a
//! connection of its own *while* the files are copied (not after them, as
//! `-X fetch` does): whole segments from the backup's redo point as soon
//! as the primary has flushed them, then, once the leader reports the
//! backup's end, up to the segment holding it. Each segment is written new
//! and fsynced, with its `.done` status (the primary archives it), as the
//! archive stream's WAL would have been, and recorded with its checksum in
//! the copy's manifest. A resumed copy fetches only the segments its
//! interrupted copy did not leave whole (those `--resume` kept are
//! recorded already): a one-phase copy's WAL is fetched this way when it
//! is resumed, whatever `--jobs` says.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::error::BasebackupError;
use super::manifest::ChecksumKind;
use super::server::last_segment;
use super::written::{entry_of, FileEntry, WrittenFiles};
use crate::datadir::{ARCHIVE_STATUS_DIR, WAL_DIR};
use crate::replication::client::ReplicationClient;
use crate::storage::{durable_create, OpenFor, SeqWriter, Storage};
use crate::{Lsn, SegNo, TimelineId, WalSegSize};

/// How often the flush position is asked for while no whole segment is
/// ready (each ask is one IDENTIFY_SYSTEM round trip).
const POLL: Duration = Duration::from_millis(20);

/// What the fetcher needs to know of the backup.
pub struct WalFetch<'a> {
    /// Where the copy is written.
    pub storage: &'a dyn Storage,
    pub datadir: &'a std::path::Path,
    /// The backup's redo point and timeline.
    pub start: Lsn,
    pub tli: TimelineId,
    pub seg: WalSegSize,
    /// Set by the leader to the backup's end once it has it (0 = not yet).
    pub end: &'a AtomicU64,
    /// Set when the leader failed: stop at once.
    pub failed: &'a std::sync::atomic::AtomicBool,
    /// Bound on waiting for a segment to be flushed.
    pub timeout: Duration,
    /// WAL bytes written so far (progress).
    pub received: &'a AtomicU64,
    /// The copy's record of its files (segments kept by a resume are in
    /// it and not fetched again).
    pub written: &'a WrittenFiles,
}

impl WalFetch<'_> {
    /// Fetch every segment the copy needs; returns how many.
    pub fn run(&self, client: &mut ReplicationClient) -> Result<u64, BasebackupError> {
        // The leader's archive makes these too, at its end; whichever
        // comes first makes them, the other finds them.
        for dir in [WAL_DIR, ARCHIVE_STATUS_DIR] {
            let path = self.datadir.join(dir);
            match self.storage.create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
                Err(e) => return Err(io(e)),
            }
        }
        if self.tli.0 > 1 {
            let (name, content) = client.timeline_history(self.tli)?;
            let rel = format!("{WAL_DIR}/{name}");
            if !self.written.contains(&rel) {
                durable_create(self.storage, &self.datadir.join(&rel), &content).map_err(io)?;
                self.written
                    .record(entry_of(&rel, &content, now()))
                    .map_err(io)?;
            }
        }
        let first = self.start.segno(self.seg);
        let mut segno = first;
        let mut last_progress = Instant::now();
        loop {
            let end = self.end.load(Ordering::Acquire);
            if end != 0 && segno > last_segment(Lsn(end), self.seg) {
                crate::storage::sync_dir(self.storage, &self.datadir.join(WAL_DIR)).map_err(io)?;
                return Ok(segno.0 - first.0);
            }
            if self.failed.load(Ordering::Relaxed) {
                return Err(BasebackupError::Protocol("the backup failed".into()));
            }
            if self.kept(segno)? {
                segno = SegNo(segno.0 + 1);
                continue;
            }
            let seg_end = Lsn(SegNo(segno.0 + 1).start_lsn(self.seg).0);
            let id = client.identify_system()?;
            if id.timeline != self.tli {
                return Err(BasebackupError::Protocol(format!(
                    "the primary moved to timeline {} during the backup (it started on {})",
                    id.timeline.0, self.tli.0
                )));
            }
            if id.xlogpos < seg_end {
                if last_progress.elapsed() > self.timeout && end != 0 {
                    return Err(BasebackupError::Protocol(format!(
                        "the primary did not flush WAL to {seg_end} within {}s",
                        self.timeout.as_secs()
                    )));
                }
                std::thread::sleep(POLL);
                continue;
            }
            self.fetch_segment(client, segno)?;
            last_progress = Instant::now();
            segno = SegNo(segno.0 + 1);
        }
    }

    /// Is segment `segno` already in the copy (kept by `--resume`)? Its
    /// `.done` status is made sure of.
    fn kept(&self, segno: SegNo) -> Result<bool, BasebackupError> {
        let name = segno.file_name(self.tli, self.seg);
        if !self.written.contains(&format!("{WAL_DIR}/{name}")) {
            return Ok(false);
        }
        self.mark_done(&name)?;
        Ok(true)
    }

    /// `wal/archive_status/<name>.done`, recorded.
    fn mark_done(&self, name: &str) -> Result<(), BasebackupError> {
        let rel = format!("{ARCHIVE_STATUS_DIR}/{name}.done");
        if self.written.contains(&rel) {
            return Ok(());
        }
        durable_create(self.storage, &self.datadir.join(&rel), &[]).map_err(io)?;
        self.written.record(entry_of(&rel, &[], now())).map_err(io)
    }

    /// One whole segment into `wal/`, fsynced, marked `.done`.
    fn fetch_segment(
        &self,
        client: &mut ReplicationClient,
        segno: SegNo,
    ) -> Result<(), BasebackupError> {
        let name = segno.file_name(self.tli, self.seg);
        let path = self.datadir.join(WAL_DIR).join(&name);
        let mut f = SeqWriter::open(self.storage, &path, OpenFor::CreateNew).map_err(io)?;
        let begin = segno.start_lsn(self.seg);
        let end = Lsn(begin.0 + self.seg.bytes());
        let received = self.received;
        let mut hasher = ChecksumKind::Crc32c.hasher();
        client.wal_range(begin, end, Some(self.tli), &mut |b| {
            received.fetch_add(b.len() as u64, Ordering::Relaxed);
            hasher.update(b);
            f.write_all(b)
        })?;
        let size = f.finish().map_err(io)?;
        let sum = hasher.finish();
        self.written
            .record(FileEntry {
                path: format!("{WAL_DIR}/{name}"),
                size,
                mtime: now(),
                crc32c: u32::from_ne_bytes(sum.try_into().unwrap_or_default()),
            })
            .map_err(io)?;
        self.mark_done(&name)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn io(e: impl std::fmt::Display) -> BasebackupError {
    BasebackupError::Protocol(format!("could not write the fetched WAL: {e}"))
}
