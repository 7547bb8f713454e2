//! Pins held by running base backups: the checkpoint snapshot they copy and
//! the WAL from its redo point. The checkpointer keeps every pinned
//! snapshot directory and every segment at or after the oldest pinned redo
//! point, so a concurrent checkpoint or WAL removal never deletes what a
//! backup is still reading (PostgreSQL holds WAL for a running backup the
//! same way, through its backup start point).
//!
//! A parallel backup (`PARALLEL n`) also opens a session here
//! ([`SessionGuard`]): parts 1 to n-1 that other connections claim with
//! `JOIN`, and one [`ChunkQueue`] of the snapshot's chunks (largest
//! first) shared by the leader and every claimed part. Each sender takes
//! the next chunk until the queue is empty, so a faster stream simply
//! sends more chunks and every stream ends within about one chunk of the
//! others (a split fixed before the copy left the last stream up to half
//! a second behind the first). Each claim takes its own pin under the
//! same lock, so a part is never copied from a snapshot a checkpoint
//! could remove.
//!
//! The checkpoint of a resumable backup stays pinned for [`RESUME_WINDOW`]
//! once its stream ends, failed or sent, until its client confirms that
//! its copy passed its end check ([`BackupPins::confirm`]) or `RESUME`
//! takes it over; a node opened with [`BackupPins::open`] also keeps
//! those pins in [`RESUMABLE_FILE`] in its data directory (written
//! durably, read at start-up, expiring by wall-clock time), so `RESUME`
//! works after the server restarts too. PostgreSQL has no resumable base
//! backup: this file is walrep's extension.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::storage::Storage;
use crate::store::control::now_ms;
use crate::store::ControlFile;
use crate::Lsn;

/// The file in the data directory holding the kept checkpoints of
/// interrupted resumable backups (one line each), so a restarted server
/// still resumes them.
pub const RESUMABLE_FILE: &str = "backup_resumable";
/// Its first line (the format's version).
const RESUMABLE_HEADER: &str = "walrep resumable base backups 1";

/// How long the checkpoint of a failed resumable backup stays pinned,
/// waiting for `RESUME`: long enough to restart a killed client, short
/// enough that an abandoned copy does not hold a snapshot (and the WAL
/// from its redo point) for ever.
pub const RESUME_WINDOW: Duration = Duration::from_secs(30 * 60);

/// What one pin holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pinned {
    /// The snapshot directory `base/<id>/` being copied.
    snapshot_id: u64,
    /// WAL from here on is being copied.
    redo: Lsn,
}

/// The pins of one node (shared with the checkpointer).
#[derive(Debug, Default)]
pub struct BackupPins {
    inner: Mutex<PinsInner>,
    /// Where kept backups are persisted (none in tests of the pins alone).
    file: Option<(Arc<dyn Storage>, PathBuf)>,
}

#[derive(Debug, Default)]
struct PinsInner {
    /// Next pin number (pins are removed by number when dropped).
    next: u64,
    /// Held pins by number.
    pins: BTreeMap<u64, Pinned>,
    /// Open parallel backups by their token.
    sessions: BTreeMap<String, Session>,
    /// Failed resumable backups by their id, pinned until their window ends.
    kept: BTreeMap<String, Kept>,
    /// Ids of resumable backups still running.
    active: BTreeSet<String>,
}

/// A failed resumable backup waiting for `RESUME`.
#[derive(Debug, Clone)]
struct Kept {
    pinned: Pinned,
    backup: KeptBackup,
    /// The pin is released after this.
    until: Instant,
    /// The same, milliseconds since the epoch (what survives a restart).
    until_unix_ms: u64,
}

/// What a resumed backup needs of the one it finishes: the checkpoint it
/// copied and when it started (so `backup_label` is the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptBackup {
    /// The control file naming the pinned checkpoint.
    pub control: ControlFile,
    /// When the first attempt started (backup_label's START TIME).
    pub started_unix: u64,
}

/// Why an interrupted backup cannot be resumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("no interrupted base backup \"{0}\" can be resumed: it completed, or its checkpoint was released (a failed backup keeps it {window} minutes); take a new base backup", window = RESUME_WINDOW.as_secs() / 60)]
    Gone(String),
    #[error(
        "base backup \"{0}\" is still running on the server (its connection has not ended yet)"
    )]
    StillRunning(String),
}

/// The chunks of a parallel backup not handed out yet, shared by every
/// sender of the backup. [`take`](Self::take) hands each chunk out exactly
/// once, whichever sender asks and however many ask at the same time; it
/// never waits (one compare-and-swap on an index).
#[derive(Debug)]
pub struct ChunkQueue {
    /// Chunk numbers and sizes in bytes, in the order they are handed out.
    chunks: Box<[(u32, u64)]>,
    /// Index of the next chunk to hand out (`chunks.len()` once empty).
    next: AtomicUsize,
}

impl ChunkQueue {
    /// A queue handing out `chunks` (number, size) in this order.
    pub fn new(chunks: Vec<(u32, u64)>) -> ChunkQueue {
        ChunkQueue {
            chunks: chunks.into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }

    /// A queue handing out the largest chunks first (ties by number): the
    /// small ones last, so the senders' ends are at most a small chunk
    /// apart when the sizes differ.
    pub fn largest_first(mut chunks: Vec<(u32, u64)>) -> ChunkQueue {
        chunks.sort_by_key(|&(n, size)| (std::cmp::Reverse(size), n));
        ChunkQueue::new(chunks)
    }

    /// The next chunk (number, size), or `None` once every chunk was
    /// handed out (or the queue closed).
    pub fn take(&self) -> Option<(u32, u64)> {
        let len = self.chunks.len();
        let i = self
            .next
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |i| {
                (i < len).then_some(i + 1)
            })
            .ok()?;
        self.chunks.get(i).copied()
    }

    /// Bytes of the chunks not handed out yet.
    pub fn remaining_bytes(&self) -> u64 {
        let i = self.next.load(Ordering::Acquire).min(self.chunks.len());
        self.chunks[i..].iter().map(|&(_, size)| size).sum()
    }

    /// Hand out nothing more (the backup ended or failed: a part still
    /// sending stops after its current chunk).
    pub fn close(&self) {
        self.next.store(self.chunks.len(), Ordering::Release);
    }
}

/// A parallel backup other connections may join.
#[derive(Debug, Clone)]
struct Session {
    pinned: Pinned,
    /// Timeline of the redo point.
    tli: u32,
    /// Whether each part was claimed. Part 0 is the leader's own and is
    /// never offered.
    claimed: Vec<bool>,
    /// The chunks every sender takes from.
    queue: Arc<ChunkQueue>,
}

/// What a joining connection copies.
#[derive(Debug, Clone)]
pub struct ClaimedPart {
    /// The snapshot `base/<id>/` the chunks are in.
    pub snapshot_id: u64,
    /// The backup's redo point (its start).
    pub redo: Lsn,
    /// Its timeline.
    pub tli: u32,
    /// Where the part takes its chunks from, one at a time, with the
    /// leader and the other parts.
    pub queue: Arc<ChunkQueue>,
    /// Parts of the backup, the leader's included (for the part's share
    /// of the remaining bytes, its size estimate).
    pub parts: usize,
}

/// Why a part could not be claimed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("no parallel base backup \"{0}\" is in progress")]
    NoSuchBackup(String),
    #[error("the parallel base backup has no part {part} (parts 1 to {last})")]
    NoSuchPart { part: usize, last: usize },
    #[error("part {0} of the parallel base backup was already claimed")]
    AlreadyClaimed(usize),
}

impl BackupPins {
    pub fn new() -> Arc<BackupPins> {
        Arc::new(BackupPins::default())
    }

    /// The pins of the node in `datadir`: the kept backups of
    /// [`RESUMABLE_FILE`] whose window has not ended are pinned again
    /// (those whose snapshot is gone are dropped). A file that cannot be
    /// read or parsed costs only the resumes it held: it is logged and
    /// ignored, never a reason not to start.
    pub fn open(storage: Arc<dyn Storage>, datadir: &Path) -> Arc<BackupPins> {
        let path = datadir.join(RESUMABLE_FILE);
        let mut inner = PinsInner::default();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (id, kept) in parse_kept(&text, now_ms()) {
                    let snapshot =
                        crate::store::checkpoint::snapshot_dir(datadir, kept.pinned.snapshot_id);
                    if snapshot.is_dir() {
                        tracing::info!(backup_id = %id, redo = %kept.pinned.redo, "the checkpoint of an interrupted base backup stays pinned for RESUME");
                        inner.kept.insert(id, kept);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "could not read the interrupted base backups: none can be resumed")
            }
        }
        let pins = BackupPins {
            inner: Mutex::new(inner),
            file: Some((storage, path)),
        };
        let g = pins.lock();
        pins.persist(&g);
        drop(g);
        Arc::new(pins)
    }

    /// Write the kept backups to [`RESUMABLE_FILE`] (durably; removed when
    /// there are none). A failure is logged: the pins still hold in
    /// memory, only a restart would lose them.
    fn persist(&self, g: &PinsInner) {
        let Some((storage, path)) = &self.file else {
            return;
        };
        let result = if g.kept.is_empty() {
            crate::storage::durable_remove(&**storage, path)
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            crate::storage::durable_replace(&**storage, path, format_kept(&g.kept).as_bytes())
                .map_err(|e| e.to_string())
        };
        if let Err(e) = result {
            tracing::warn!(file = %path.display(), error = %e, "could not record the interrupted base backups: a restart will not resume them");
        }
    }

    fn lock(&self) -> MutexGuard<'_, PinsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock, with kept backups whose window ended released (and the
    /// file rewritten if any was).
    fn expired_locked(&self) -> MutexGuard<'_, PinsInner> {
        let mut g = self.lock();
        if g.expire(Instant::now()) {
            self.persist(&g);
        }
        g
    }

    /// Pin snapshot `snapshot_id` and the WAL from `redo` until the
    /// returned guard is dropped. The caller must hold the node's
    /// checkpoint lock, so no checkpoint is between reading the control
    /// file and pinning what it names.
    pub fn pin(self: &Arc<Self>, snapshot_id: u64, redo: Lsn) -> BackupPin {
        let mut g = self.lock();
        let id = g.next;
        g.next += 1;
        g.pins.insert(id, Pinned { snapshot_id, redo });
        BackupPin {
            pins: Arc::clone(self),
            id,
        }
    }

    /// Snapshot ids no checkpoint may remove.
    pub fn pinned_snapshots(&self) -> Vec<u64> {
        let g = self.expired_locked();
        let kept = g.kept.values().map(|k| k.pinned.snapshot_id);
        g.pins.values().map(|p| p.snapshot_id).chain(kept).collect()
    }

    /// The oldest WAL position a backup still copies (or may resume).
    pub fn oldest_redo(&self) -> Option<Lsn> {
        let g = self.expired_locked();
        let kept = g.kept.values().map(|k| k.pinned.redo);
        g.pins.values().map(|p| p.redo).chain(kept).min()
    }

    /// Backup `id` is running and resumable: [`keep`](Self::keep) it if it
    /// fails. Marked until the guard is dropped.
    pub fn running(self: &Arc<Self>, id: &str) -> RunningGuard {
        self.lock().active.insert(id.to_string());
        RunningGuard {
            pins: Arc::clone(self),
            id: id.to_string(),
        }
    }

    /// Backup `id` failed: its checkpoint stays pinned for
    /// [`RESUME_WINDOW`] (or `window`) so that `RESUME` finishes it.
    pub fn keep(&self, pin: BackupPin, id: &str, backup: KeptBackup, window: Duration) {
        let mut g = self.lock();
        let Some(pinned) = g.pins.get(&pin.id).copied() else {
            return;
        };
        let until = Instant::now() + window;
        let until_unix_ms = now_ms().saturating_add(window.as_millis() as u64);
        g.kept.insert(
            id.to_string(),
            Kept {
                pinned,
                backup,
                until,
                until_unix_ms,
            },
        );
        self.persist(&g);
        drop(g);
        drop(pin);
    }

    /// Take over the kept checkpoint of failed backup `id`: a pin of its
    /// own (the kept entry is gone; the resumed backup keeps it again if
    /// it fails too).
    pub fn resume(self: &Arc<Self>, id: &str) -> Result<(BackupPin, KeptBackup), ResumeError> {
        let mut g = self.expired_locked();
        let Some(kept) = g.kept.remove(id) else {
            return Err(match g.active.contains(id) {
                true => ResumeError::StillRunning(id.to_string()),
                false => ResumeError::Gone(id.to_string()),
            });
        };
        self.persist(&g);
        let n = g.next;
        g.next += 1;
        g.pins.insert(n, kept.pinned);
        let pin = BackupPin {
            pins: Arc::clone(self),
            id: n,
        };
        Ok((pin, kept.backup))
    }

    /// The client of backup `id` checked its copy: the checkpoint kept
    /// for it is released. Whether it was kept.
    pub fn confirm(&self, id: &str) -> bool {
        let mut g = self.expired_locked();
        if g.kept.remove(id).is_none() {
            return false;
        }
        self.persist(&g);
        true
    }

    /// Failed backups waiting for `RESUME` (for INFO and tests).
    pub fn kept_count(&self) -> usize {
        let g = self.expired_locked();
        g.kept.len()
    }

    /// Open a parallel backup `token` of `parts` parts (part 0 is the
    /// leader's own) over the snapshot and redo point of `leader` (which
    /// must outlive the returned guard), its senders taking chunks from
    /// `queue`. Closed when the guard is dropped; the queue with it.
    pub fn open_session(
        self: &Arc<Self>,
        leader: &BackupPin,
        token: &str,
        tli: u32,
        parts: usize,
        queue: Arc<ChunkQueue>,
    ) -> SessionGuard {
        let mut g = self.lock();
        let pinned = g.pins[&leader.id];
        let session = Session {
            pinned,
            tli,
            claimed: (0..parts.max(1)).map(|i| i == 0).collect(),
            queue: Arc::clone(&queue),
        };
        g.sessions.insert(token.to_string(), session);
        SessionGuard {
            pins: Arc::clone(self),
            token: token.to_string(),
            queue,
        }
    }

    /// Claim part `part` of backup `token`: the queue its chunks come
    /// from, with a pin of its own taken under the lock that proves the
    /// session (and so the leader's pin) still exists.
    pub fn claim(
        self: &Arc<Self>,
        token: &str,
        part: usize,
    ) -> Result<(BackupPin, ClaimedPart), ClaimError> {
        let mut g = self.lock();
        let session = g
            .sessions
            .get_mut(token)
            .ok_or_else(|| ClaimError::NoSuchBackup(token.to_string()))?;
        let last = session.claimed.len().saturating_sub(1);
        if part == 0 || part > last {
            return Err(ClaimError::NoSuchPart { part, last });
        }
        if std::mem::replace(&mut session.claimed[part], true) {
            return Err(ClaimError::AlreadyClaimed(part));
        }
        let pinned = session.pinned;
        let claimed = ClaimedPart {
            snapshot_id: pinned.snapshot_id,
            redo: pinned.redo,
            tli: session.tli,
            queue: Arc::clone(&session.queue),
            parts: session.claimed.len(),
        };
        let id = g.next;
        g.next += 1;
        g.pins.insert(id, pinned);
        let pin = BackupPin {
            pins: Arc::clone(self),
            id,
        };
        Ok((pin, claimed))
    }

    /// Parts of backup `token` not claimed yet (0 once it is closed).
    pub fn unclaimed(&self, token: &str) -> usize {
        self.lock()
            .sessions
            .get(token)
            .map_or(0, |s| s.claimed.iter().filter(|c| !**c).count())
    }

    /// Number of backups holding pins (for INFO and tests).
    pub fn count(&self) -> usize {
        self.lock().pins.len()
    }
}

impl PinsInner {
    /// Release kept backups whose window has ended; whether any was.
    fn expire(&mut self, now: Instant) -> bool {
        let before = self.kept.len();
        self.kept.retain(|id, k| {
            let keep = k.until > now;
            if !keep {
                tracing::info!(backup_id = %id, "released the checkpoint of an interrupted base backup: its resume window ended");
            }
            keep
        });
        self.kept.len() != before
    }
}

/// [`RESUMABLE_FILE`]'s text: the header, then per kept backup its id,
/// snapshot, redo point, start time, end of window (ms since the epoch)
/// and the control file naming its checkpoint, in hex.
fn format_kept(kept: &BTreeMap<String, Kept>) -> String {
    let mut out = format!("{RESUMABLE_HEADER}\n");
    for (id, k) in kept {
        let control: String = k
            .backup
            .control
            .encode()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        out.push_str(&format!(
            "{id} {} {} {} {} {control}\n",
            k.pinned.snapshot_id, k.pinned.redo.0, k.backup.started_unix, k.until_unix_ms
        ));
    }
    out
}

/// The kept backups of [`RESUMABLE_FILE`]'s `text` whose window has not
/// ended at `now_unix_ms`; lines that do not parse are logged and skipped.
fn parse_kept(text: &str, now_unix_ms: u64) -> Vec<(String, Kept)> {
    let mut lines = text.lines();
    if lines.next() != Some(RESUMABLE_HEADER) {
        tracing::warn!(
            "{RESUMABLE_FILE} has an unknown format: no interrupted base backup can be resumed"
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    for line in lines {
        match parse_kept_line(line) {
            Some((id, k)) if k.until_unix_ms > now_unix_ms => {
                let left = Duration::from_millis(k.until_unix_ms - now_unix_ms);
                out.push((
                    id,
                    Kept {
                        until: Instant::now() + left.min(RESUME_WINDOW),
                        ..k
                    },
                ));
            }
            Some(_) => {}
            None => tracing::warn!(
                line,
                "{RESUMABLE_FILE}: a line that does not parse is skipped"
            ),
        }
    }
    out
}

fn parse_kept_line(line: &str) -> Option<(String, Kept)> {
    let f: Vec<&str> = line.split(' ').collect();
    let [id, snapshot, redo, started, until, control] = f[..] else {
        return None;
    };
    let valid_id = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid_id || control.len() % 2 != 0 {
        return None;
    }
    let bytes: Vec<u8> = (0..control.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(control.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let control = ControlFile::decode(&bytes, RESUMABLE_FILE).ok()?;
    let kept = Kept {
        pinned: Pinned {
            snapshot_id: snapshot.parse().ok()?,
            redo: Lsn(redo.parse().ok()?),
        },
        backup: KeptBackup {
            control,
            started_unix: started.parse().ok()?,
        },
        until: Instant::now(),
        until_unix_ms: until.parse().ok()?,
    };
    Some((id.to_string(), kept))
}

/// A running resumable backup; dropping it unmarks it.
#[derive(Debug)]
pub struct RunningGuard {
    pins: Arc<BackupPins>,
    id: String,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.pins.lock().active.remove(&self.id);
    }
}

/// A held pin; dropping it releases the snapshot and the WAL.
#[derive(Debug)]
pub struct BackupPin {
    pins: Arc<BackupPins>,
    /// This pin's number in `pins`.
    id: u64,
}

/// An open parallel backup; dropping it closes the session (parts not
/// claimed by then can no longer be) and its queue (a part still sending
/// takes no more chunks: the leader ended, with every chunk handed out,
/// or failed).
#[derive(Debug)]
pub struct SessionGuard {
    pins: Arc<BackupPins>,
    token: String,
    queue: Arc<ChunkQueue>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.queue.close();
        self.pins.lock().sessions.remove(&self.token);
    }
}

impl Drop for BackupPin {
    fn drop(&mut self) {
        self.pins.lock().pins.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_hold_until_dropped() {
        let pins = BackupPins::new();
        assert_eq!(pins.oldest_redo(), None);
        let a = pins.pin(3, Lsn(0x300));
        let b = pins.pin(5, Lsn(0x100));
        assert_eq!(pins.pinned_snapshots(), vec![3, 5]);
        assert_eq!(pins.oldest_redo(), Some(Lsn(0x100)));
        drop(b);
        assert_eq!(pins.oldest_redo(), Some(Lsn(0x300)));
        assert_eq!(pins.count(), 1);
        drop(a);
        assert!(pins.pinned_snapshots().is_empty());
    }

    fn kept(control_id: u64) -> KeptBackup {
        KeptBackup {
            control: ControlFile {
                checkpoint_id: control_id,
                ..ControlFile::new_system(1, crate::WalSegSize::new(1 << 20).unwrap(), 4)
            },
            started_unix: 1,
        }
    }

    #[test]
    fn a_failed_backup_is_kept_until_resumed_or_its_window_ends() {
        let pins = BackupPins::new();
        let running = pins.running("b");
        assert_eq!(
            pins.resume("b").unwrap_err(),
            ResumeError::StillRunning("b".into())
        );
        let pin = pins.pin(9, Lsn(0x900));
        pins.keep(pin, "b", kept(9), RESUME_WINDOW);
        drop(running);
        // Kept: still pinned with no pin held.
        assert_eq!(pins.count(), 0);
        assert_eq!(pins.pinned_snapshots(), vec![9]);
        assert_eq!(pins.oldest_redo(), Some(Lsn(0x900)));
        let (pin, backup) = pins.resume("b").unwrap();
        assert_eq!((backup.control.checkpoint_id, backup.started_unix), (9, 1));
        assert_eq!(pins.kept_count(), 0);
        assert_eq!(pins.pinned_snapshots(), vec![9]);
        assert_eq!(pins.resume("b").unwrap_err(), ResumeError::Gone("b".into()));
        // Failed again, with a window that has passed: released.
        pins.keep(pin, "b", kept(9), Duration::ZERO);
        assert!(pins.pinned_snapshots().is_empty());
        assert_eq!(pins.oldest_redo(), None);
        assert!(matches!(pins.resume("b"), Err(ResumeError::Gone(_))));
    }

    #[test]
    fn a_sent_backup_is_kept_until_its_client_confirms_it() {
        let d = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(crate::storage::StdStorage);
        let pins = BackupPins::open(storage, d.path());
        assert!(!pins.confirm("b"));
        let pin = pins.pin(9, Lsn(0x900));
        pins.keep(pin, "b", kept(9), RESUME_WINDOW);
        assert!(d.path().join(RESUMABLE_FILE).exists());
        assert!(pins.confirm("b"));
        assert!(pins.pinned_snapshots().is_empty());
        assert!(!d.path().join(RESUMABLE_FILE).exists());
        assert!(!pins.confirm("b"));
        assert!(matches!(pins.resume("b"), Err(ResumeError::Gone(_))));
    }

    #[test]
    fn kept_backups_survive_a_reopen_until_their_window_ends() {
        let d = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(crate::storage::StdStorage);
        std::fs::create_dir_all(crate::store::checkpoint::snapshot_dir(d.path(), 9)).unwrap();
        let pins = BackupPins::open(storage.clone(), d.path());
        let backup_ab = kept(9);
        let pin = pins.pin(9, Lsn(0x900));
        pins.keep(pin, "ab12", backup_ab.clone(), RESUME_WINDOW);
        let pin = pins.pin(9, Lsn(0x900));
        pins.keep(pin, "cd34", kept(9), RESUME_WINDOW);
        assert!(d.path().join(RESUMABLE_FILE).exists());
        drop(pins);
        // As after a restart: both pinned again, resumable once.
        let pins = BackupPins::open(storage.clone(), d.path());
        assert_eq!(pins.kept_count(), 2);
        assert_eq!(pins.pinned_snapshots(), vec![9, 9]);
        assert_eq!(pins.oldest_redo(), Some(Lsn(0x900)));
        let (pin, backup) = pins.resume("ab12").unwrap();
        assert_eq!(backup, backup_ab);
        drop(pin);
        drop(pins);
        let pins = BackupPins::open(storage.clone(), d.path());
        assert!(matches!(pins.resume("ab12"), Err(ResumeError::Gone(_))));
        let (pin, _) = pins.resume("cd34").unwrap();
        // None left: the file is gone.
        assert!(!d.path().join(RESUMABLE_FILE).exists());
        drop(pin);
        // A window that ended (by the wall clock) is not pinned again.
        let mut one = BTreeMap::new();
        one.insert(
            "ef56".to_string(),
            Kept {
                pinned: Pinned {
                    snapshot_id: 9,
                    redo: Lsn(0x900),
                },
                backup: kept(9),
                until: Instant::now(),
                until_unix_ms: 1_000,
            },
        );
        let text = format_kept(&one);
        assert_eq!(parse_kept(&text, 999).len(), 1);
        assert!(parse_kept(&text, 1_000).is_empty());
        // Garbage is ignored, not a reason not to start.
        std::fs::write(d.path().join(RESUMABLE_FILE), "x\ny z").unwrap();
        assert_eq!(BackupPins::open(storage.clone(), d.path()).kept_count(), 0);
        let mut text = format!("{RESUMABLE_HEADER}\nnot-hex 9 1 1 {} 00\n", u64::MAX);
        text.push_str("ef56 9 2304 1 bad 00\n");
        std::fs::write(d.path().join(RESUMABLE_FILE), text).unwrap();
        assert_eq!(BackupPins::open(storage, d.path()).kept_count(), 0);
    }

    #[test]
    fn parts_are_claimed_once_with_their_own_pin() {
        let pins = BackupPins::new();
        let leader = pins.pin(7, Lsn(0x700));
        let queue = Arc::new(ChunkQueue::largest_first(vec![(0, 5), (1, 9), (2, 9)]));
        let session = pins.open_session(&leader, "t", 1, 3, Arc::clone(&queue));
        assert_eq!(pins.unclaimed("t"), 2);
        assert_eq!(
            pins.claim("t", 0).unwrap_err(),
            ClaimError::NoSuchPart { part: 0, last: 2 }
        );
        assert!(matches!(
            pins.claim("t", 3),
            Err(ClaimError::NoSuchPart { .. })
        ));
        assert!(matches!(
            pins.claim("u", 1),
            Err(ClaimError::NoSuchBackup(_))
        ));
        let (pin, part) = pins.claim("t", 1).unwrap();
        assert_eq!(
            (part.snapshot_id, part.redo, part.parts),
            (7, Lsn(0x700), 3)
        );
        // The part and the leader take from the same queue: the largest
        // chunks first, each once.
        assert_eq!(queue.take(), Some((1, 9)));
        assert_eq!(part.queue.remaining_bytes(), 14);
        assert_eq!(part.queue.take(), Some((2, 9)));
        assert_eq!(
            pins.claim("t", 1).unwrap_err(),
            ClaimError::AlreadyClaimed(1)
        );
        assert_eq!(pins.unclaimed("t"), 1);
        // The claim's pin outlives the leader's and the session; the
        // session's end closes the queue.
        drop(session);
        assert_eq!(part.queue.take(), None);
        assert_eq!(part.queue.remaining_bytes(), 0);
        drop(leader);
        assert_eq!(pins.pinned_snapshots(), vec![7]);
        assert!(matches!(
            pins.claim("t", 2),
            Err(ClaimError::NoSuchBackup(_))
        ));
        drop(pin);
        assert_eq!(pins.count(), 0);
    }

    #[test]
    fn concurrent_takers_get_every_chunk_exactly_once() {
        const CHUNKS: u32 = 2_000;
        const TAKERS: usize = 8;
        let chunks: Vec<(u32, u64)> = (0..CHUNKS).map(|n| (n, u64::from(n % 7))).collect();
        let queue = Arc::new(ChunkQueue::largest_first(chunks));
        let taken: Vec<Vec<u32>> = std::thread::scope(|s| {
            let takers: Vec<_> = (0..TAKERS)
                .map(|_| {
                    let q = &queue;
                    s.spawn(move || {
                        let mut mine = Vec::new();
                        while let Some((n, _)) = q.take() {
                            mine.push(n);
                        }
                        mine
                    })
                })
                .collect();
            takers.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let mut all: Vec<u32> = taken.iter().flatten().copied().collect();
        assert_eq!(all.len(), CHUNKS as usize, "a chunk handed out twice");
        all.sort_unstable();
        all.dedup();
        assert_eq!(all, (0..CHUNKS).collect::<Vec<_>>());
        // Each taker saw its chunks largest first.
        for mine in &taken {
            let sizes: Vec<u32> = mine.iter().map(|n| n % 7).collect();
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
        }
        assert_eq!(queue.take(), None);
        assert_eq!(queue.remaining_bytes(), 0);
    }
}
