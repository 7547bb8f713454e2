//! The checkpointer: writes the store's snapshot, logs a checkpoint record,
//! points the control file at both, then removes WAL nobody needs any more.
//!
//! Triggers, as PostgreSQL's: `checkpoint_timeout` since the last one, WAL
//! written since the last redo point beyond half of `max_wal_size` (a
//! checkpoint takes time; starting at half keeps the total near the
//! target), and explicit requests (shutdown, end of recovery, base backup).
//!
//! Writing one never stalls commits: the store is scanned a step at a time
//! under its read lock (`store/checkpoint.rs`), the chunk files' writeback
//! starts as they grow, and a checkpoint of the timer or of the WAL volume
//! is spread, as PostgreSQL's, over `checkpoint_completion_target` of the
//! time and WAL until the next one is due (`Pacer`). Shutdown,
//! end-of-recovery and requested checkpoints run at full speed, and a
//! spread one still running when one of those is asked for finishes at
//! full speed too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};

use super::Node;
use crate::backup::pin::BackupPin;
use crate::standby::progress::StandbyProgress;
use crate::store::checkpoint::{remove_snapshots_except, write_snapshot};
use crate::store::control::{now_ms, CheckpointLocation};
use crate::store::{ClusterState, ControlFile};
use crate::wal::{Checkpoint, XlogRecord};
use crate::{Lsn, SegNo};

/// How often the checkpointer looks at the WAL volume when nothing wakes it.
const VOLUME_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Longest pause of a spread checkpoint between two steps of its scan (it
/// looks again whether it is behind schedule, or asked to hurry, after it).
const PACE_SLEEP: Duration = Duration::from_millis(10);
/// Shortest pause: below this a pause is not worth a wake-up.
const PACE_SLEEP_MIN: Duration = Duration::from_micros(100);
/// How long the checkpoint that ends a recovery (a promotion's, or crash
/// recovery's) waits before it starts: the first writes of the new primary
/// (clients retrying after a failover) find the disk and the CPU free of
/// its snapshot and fsyncs. Nothing waits for this checkpoint: the WAL it
/// covers is durable, and the last checkpoint stays valid until it is done
/// (PostgreSQL's post-promotion checkpoint is not immediate either). A
/// request of another cause meanwhile runs at once and covers it.
const END_OF_RECOVERY_CHECKPOINT_DELAY: Duration = Duration::from_millis(100);

/// Why a checkpoint runs (logged, as PostgreSQL's "checkpoint starting: time").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointCause {
    /// `checkpoint_timeout` passed since the last one.
    Time,
    /// The WAL since the last redo point reached half of `max_wal_size`, so the
    /// WAL kept stays under it.
    Wal,
    /// The node is stopping: the shutdown checkpoint, after which no WAL needs replay.
    Shutdown,
    /// A promotion ended recovery: the first checkpoint on the new timeline.
    EndOfRecovery,
    /// Asked for explicitly (a base backup's start, [`Node::checkpoint`]);
    /// PostgreSQL's "immediate".
    Requested,
}

impl CheckpointCause {
    /// Whether this checkpoint runs at full speed (PostgreSQL's
    /// `CHECKPOINT_IMMEDIATE`): someone waits for it. Only the timer's and
    /// the WAL volume's are spread.
    pub fn is_immediate(self) -> bool {
        !matches!(self, CheckpointCause::Time | CheckpointCause::Wal)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CheckpointCause::Time => "time",
            CheckpointCause::Wal => "wal",
            CheckpointCause::Shutdown => "shutdown",
            CheckpointCause::EndOfRecovery => "end-of-recovery",
            CheckpointCause::Requested => "immediate",
        }
    }
}

/// What a finished checkpoint wrote.
#[derive(Debug, Clone)]
pub struct CheckpointDone {
    pub(crate) checkpoint_lsn: Lsn,
    pub(crate) redo: Lsn,
    /// The snapshot's number: its directory under `base/` and the control file's `checkpoint_id`.
    pub id: u64,
    pub(crate) keys: u64,
    pub(crate) bytes: u64,
    pub(crate) segments_removed: u64,
    pub(crate) segments_recycled: u64,
    pub(crate) elapsed_ms: u64,
    /// Of `elapsed_ms`: scanning and writing the snapshot (pauses included).
    pub(crate) write_ms: u64,
    /// Of `elapsed_ms`: the snapshot's fsyncs and rename.
    pub(crate) sync_ms: u64,
    /// The 99th percentile and the longest of the scan's holds of the
    /// store's read lock, in microseconds (what writers waited behind it).
    pub(crate) lock_hold_p99_us: u64,
    pub(crate) lock_hold_max_us: u64,
}

/// Errors of a checkpoint. Any of them leaves the previous checkpoint valid.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Only a node that writes WAL checkpoints; a standby's restartpoints are the runtime's.
    #[error("node has no WAL writer (still in recovery)")]
    NoWal,
    /// Writing or flushing the checkpoint record failed.
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    /// Writing the snapshot of the store failed.
    #[error(transparent)]
    Snapshot(#[from] crate::store::checkpoint::SnapshotError),
    /// Updating the control file failed.
    #[error(transparent)]
    Control(#[from] crate::store::control::ControlError),
    /// A standby's restartpoint found WAL it replayed still not durable
    /// here after a bounded wait: the control file keeps the previous
    /// restartpoint.
    #[error(
        "restartpoint: WAL replayed up to {upto} is durable only up to {durable} on this standby"
    )]
    WalNotDurable {
        /// The replay position the snapshot holds.
        upto: Lsn,
        /// How far this standby's WAL is durable.
        durable: Lsn,
    },
    /// The new checkpoint is durable, but older snapshots could not be removed.
    #[error("could not remove old snapshots: {0}")]
    Cleanup(crate::storage::StorageError),
}

impl Node {
    /// Run one checkpoint now (serialised with any other).
    pub fn checkpoint(&self, cause: CheckpointCause) -> Result<CheckpointDone, CheckpointError> {
        let _guard = self.lock_for_checkpoint(cause);
        let started = Instant::now();
        let wal = self.wal().ok_or(CheckpointError::NoWal)?;
        tracing::info!(cause = cause.as_str(), "checkpoint starting");
        // Every key-value record is inserted under the store's write lock,
        // so holding it while reading the insert position gives a redo
        // point before which every record is already in the map.
        let redo = {
            let _txn = self.store.write();
            wal.inserted()
        };
        let (id, chunks) = {
            let c = self.control();
            (c.checkpoint_id + 1, self.settings().checkpoint_chunks)
        };
        let snap = self.write_paced_snapshot(cause, redo, id, chunks)?;
        let shutdown = cause == CheckpointCause::Shutdown;
        let tli = wal.timeline();
        let rec = wal.log_xlog(&XlogRecord::Checkpoint(Checkpoint {
            redo,
            tli,
            prev_tli: tli,
            shutdown,
            time_unix_us: now_ms() * 1000,
            checkpoint_id: id,
        }))?;
        // Also makes every version in the snapshot durable (all are older).
        wal.wait_flushed(rec.end)?;
        self.control_file.update(|c| {
            c.advance_checkpoint(CheckpointLocation {
                lsn: rec.start,
                redo_lsn: redo,
                id,
                timeline: tli,
                chunks,
            });
            c.timeline = tli;
            c.state = if shutdown {
                ClusterState::ShutDown
            } else {
                ClusterState::InProduction
            };
        })?;
        remove_snapshots_except(&*self.storage, &self.dir.root, &self.snapshots_kept())
            .map_err(CheckpointError::Cleanup)?;
        let report = self.remove_old_wal(&wal, self.control().oldest_redo_lsn())?;
        let done = self.record_done(
            cause,
            "checkpoint",
            rec.start,
            redo,
            id,
            &snap,
            &report,
            started,
        );
        Ok(done)
    }

    /// The snapshots a checkpoint leaves in `base/`: the last checkpoint's,
    /// the previous one's (start-up falls back to it when the last one is
    /// damaged; its WAL is kept too, [`ControlFile::oldest_redo_lsn`]), and
    /// those a running base backup copies, until it ends.
    fn snapshots_kept(&self) -> Vec<u64> {
        let c = self.control();
        let mut keep = self.backup_pins.pinned_snapshots();
        keep.push(c.checkpoint_id);
        keep.extend(c.prev_checkpoint.map(|p| p.id));
        keep
    }

    /// Write snapshot `id` of the store, paced by `cause`
    /// (`checkpoint_completion_target` for a timed or WAL-triggered one).
    fn write_paced_snapshot(
        &self,
        cause: CheckpointCause,
        redo: Lsn,
        id: u64,
        chunks: u32,
    ) -> Result<crate::store::checkpoint::SnapshotStats, CheckpointError> {
        let mut pacer = Pacer::new(self, cause, redo);
        Ok(write_snapshot(
            &*self.storage,
            &self.dir.root,
            id,
            chunks,
            &self.store,
            &mut |p| pacer.pace(p),
        )?)
    }

    /// Take the checkpoint lock. A caller that must not wait (an
    /// immediate cause) is counted while it waits, so a spread checkpoint
    /// holding the lock hurries.
    fn lock_for_checkpoint(&self, cause: CheckpointCause) -> std::sync::MutexGuard<'_, ()> {
        use std::sync::atomic::Ordering;
        if !cause.is_immediate() {
            return self
                .checkpoint_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
        }
        self.checkpoint_waiters.fetch_add(1, Ordering::SeqCst);
        let guard = self
            .checkpoint_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.checkpoint_waiters.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    /// Whether a running spread checkpoint should finish at full speed:
    /// the node is stopping, or someone waits for a checkpoint of their own.
    fn checkpoint_should_hurry(&self) -> bool {
        self.is_shutting_down()
            || self
                .checkpoint_waiters
                .load(std::sync::atomic::Ordering::SeqCst)
                > 0
    }

    /// Shutdown has begun (no new base backup starts).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Pin the last checkpoint for a base backup: its snapshot directory
    /// and the WAL from its redo point stay until the pin is dropped.
    /// Taken under the checkpoint lock, so the control file read here names
    /// the snapshot that exists; returns it with the pin. `None` once the
    /// node is shutting down.
    pub fn pin_last_checkpoint(&self) -> Option<(BackupPin, ControlFile)> {
        let _guard = self.lock_for_checkpoint(CheckpointCause::Requested);
        if self.is_shutting_down() {
            return None;
        }
        let control = self.control().clone();
        let pin = self
            .backup_pins
            .pin(control.checkpoint_id, control.redo_lsn);
        Some((pin, control))
    }

    /// End a base backup (do_pg_backup_stop): log XLOG_BACKUP_END for the
    /// backup that started at `start`, flush it and switch segments.
    /// Serialised with checkpoints and refused (`None`) once shutdown has
    /// begun, so it never follows the shutdown checkpoint. Returns the end
    /// of the backup-end record.
    pub fn log_backup_end(&self, start: Lsn) -> Result<Option<Lsn>, crate::wal::WalError> {
        let _guard = self.lock_for_checkpoint(CheckpointCause::Requested);
        if self.is_shutting_down() {
            return Ok(None);
        }
        let Some(wal) = self.wal() else {
            return Ok(None);
        };
        let rec = wal.log_xlog(&XlogRecord::BackupEnd { start })?;
        wal.wait_flushed(rec.end)?;
        wal.switch_segment()?;
        Ok(Some(rec.end))
    }

    /// Build, log and remember what a checkpoint or restartpoint did.
    #[allow(clippy::too_many_arguments)]
    fn record_done(
        &self,
        cause: CheckpointCause,
        what: &str,
        checkpoint_lsn: Lsn,
        redo: Lsn,
        id: u64,
        snap: &crate::store::checkpoint::SnapshotStats,
        report: &crate::wal::RemovalReport,
        started: Instant,
    ) -> CheckpointDone {
        let done = CheckpointDone {
            checkpoint_lsn,
            redo,
            id,
            keys: snap.keys,
            bytes: snap.bytes,
            segments_removed: report.removed,
            segments_recycled: report.recycled,
            elapsed_ms: started.elapsed().as_millis() as u64,
            write_ms: snap.write_ms,
            sync_ms: snap.sync_ms,
            lock_hold_p99_us: snap.lock_hold_p99_us,
            lock_hold_max_us: snap.lock_hold_max_us,
        };
        tracing::info!(
            cause = cause.as_str(),
            lsn = %done.checkpoint_lsn,
            redo = %done.redo,
            keys = done.keys,
            bytes = done.bytes,
            removed = done.segments_removed,
            recycled = done.segments_recycled,
            elapsed_ms = done.elapsed_ms,
            write_ms = done.write_ms,
            sync_ms = done.sync_ms,
            lock_hold_p99_us = done.lock_hold_p99_us,
            lock_hold_max_us = done.lock_hold_max_us,
            "{what} complete"
        );
        *self
            .last_checkpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((done.clone(), now_ms()));
        done
    }

    /// Remove or recycle segments below the oldest position anything needs:
    /// the previous checkpoint's redo point, `wal_keep_size` behind the flush position, every
    /// replication slot's restart point and every running base backup's
    /// start. Segments the archiver has not
    /// finished with are kept by the WAL directory itself.
    fn remove_old_wal(
        &self,
        wal: &crate::wal::Wal,
        redo: Lsn,
    ) -> Result<crate::wal::RemovalReport, CheckpointError> {
        let seg = wal.seg_size();
        if !self.save_slots(wal.inserted(), seg) {
            return Ok(crate::wal::RemovalReport::default());
        }
        let mut horizon = redo.segno(seg);
        let keep = self.settings().wal_keep_size.bytes().unwrap_or(0);
        let flushed = wal.flushed();
        horizon = horizon.min(Lsn(flushed.0.saturating_sub(keep)).segno(seg));
        if let Some(slot_min) = self.slots_min_restart_lsn() {
            horizon = horizon.min(slot_min.segno(seg));
        }
        if let Some(backup_redo) = self.backup_pins.oldest_redo() {
            horizon = horizon.min(backup_redo.segno(seg));
        }
        // Keep min_wal_size worth of files for reuse as future segments.
        let max_future = self.settings().min_wal_size.bytes().unwrap_or(0) / seg.bytes();
        Ok(wal.remove_old_segments(SegNo(horizon.0), max_future)?)
    }

    /// Before a checkpoint or restartpoint removes WAL: slots more than
    /// `max_slot_wal_keep_size` behind `current` stop holding WAL, the
    /// others' positions are made durable before the WAL they protect can
    /// go. `false` when they could not be saved: then keep all WAL.
    fn save_slots(&self, current: Lsn, seg: crate::WalSegSize) -> bool {
        match self.slots.invalidate_obsolete(current, seg) {
            Ok(lost) if !lost.is_empty() => {
                tracing::warn!(slots = ?lost, "replication slots invalidated: they needed more WAL than max_slot_wal_keep_size");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "could not invalidate obsolete replication slots")
            }
        }
        if let Err(e) = self.slots.checkpoint() {
            tracing::error!(error = %e, "could not save replication slots; keeping WAL");
            return false;
        }
        true
    }
}

/// How long a restartpoint waits for this standby's fsync of WAL redo
/// already applied (one walreceiver fsync, normally).
const WAL_DURABLE_WAIT: Duration = Duration::from_secs(30);

/// Wait, bounded, until everything replayed up to `upto` is durable in
/// this standby's own `wal/` ([`StandbyProgress::flush_point`] counts
/// replay past the walreceiver's fsync only when it is durable).
fn wait_wal_durable(progress: &StandbyProgress, upto: Lsn) -> Result<(), CheckpointError> {
    let sub = progress.subscribe();
    let deadline = Instant::now() + WAL_DURABLE_WAIT;
    loop {
        let durable = progress.flush_point().lsn;
        if durable >= upto {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CheckpointError::WalNotDurable { upto, durable });
        }
        sub.wait(left.min(Duration::from_millis(100)));
    }
}

impl Node {
    /// A standby's restartpoint: snapshot the store as replayed so far and
    /// point the control file at it, so a crashed standby resumes from here
    /// instead of its base backup. `None` when nothing was replayed since
    /// the last one.
    pub fn restartpoint(
        &self,
        cause: CheckpointCause,
    ) -> Result<Option<CheckpointDone>, CheckpointError> {
        let _guard = self.lock_for_checkpoint(cause);
        if self.wal().is_some() {
            drop(_guard);
            return self.checkpoint(cause).map(Some);
        }
        let Some(progress) = &self.standby else {
            // Never in recovery: nothing was replayed.
            return Ok(None);
        };
        if progress
            .base_pending
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            // The copy's snapshot is not loaded: there is nothing to save.
            return Ok(None);
        }
        let started = Instant::now();
        // Every record ending at or before `redo` is in the map already.
        let replayed = progress.replayed.get();
        let (redo, redo_tli) = (replayed.end, replayed.tli);
        let (id, chunks, old_redo, old_min) = {
            let c = self.control();
            (
                c.checkpoint_id + 1,
                self.settings().checkpoint_chunks,
                c.redo_lsn,
                c.min_recovery_point,
            )
        };
        if redo <= old_redo && cause != CheckpointCause::Shutdown {
            return Ok(None);
        }
        tracing::info!(cause = cause.as_str(), %redo, "restartpoint starting");
        let snap = self.write_paced_snapshot(cause, redo, id, chunks)?;
        // The snapshot may hold changes replayed while it was written: a
        // restart must replay at least that far before it is consistent.
        let min_recovery_point = old_min.max(progress.replayed.read(|r| r.end));
        // WAL before data: redo may apply streamed WAL before this node's
        // own fsync of it (the upstream has it durably), so the snapshot may
        // hold changes whose WAL a power cut here would lose. The control
        // file points at the snapshot only once the walreceiver's fsync,
        // which follows every such batch at once, covers them.
        wait_wal_durable(progress, min_recovery_point)?;
        let target_tli = progress
            .status
            .read(|s| s.machine.as_ref().map(|m| m.target_tli));
        self.control_file.update(|c| {
            c.advance_checkpoint(CheckpointLocation {
                lsn: redo,
                redo_lsn: redo,
                id,
                timeline: redo_tli,
                chunks,
            });
            c.min_recovery_point = min_recovery_point;
            if let Some(target) = target_tli {
                c.timeline = target;
            }
            c.state = if cause == CheckpointCause::Shutdown {
                ClusterState::ShutDownInRecovery
            } else {
                ClusterState::InArchiveRecovery
            };
        })?;
        remove_snapshots_except(&*self.storage, &self.dir.root, &self.snapshots_kept())
            .map_err(CheckpointError::Cleanup)?;
        let seg = self.segdir.seg_size();
        // PostgreSQL's CreateRestartPoint: WAL is kept behind the larger of
        // what was received and what was replayed (a standby fed by the
        // archive alone receives nothing, and must still let restored
        // segments go).
        let end = progress
            .received
            .flushed_point()
            .lsn
            .max(progress.replayed.read(|r| r.end));
        let keep = self.settings().wal_keep_size.bytes().unwrap_or(0);
        let mut horizon = self
            .control()
            .oldest_redo_lsn()
            .segno(seg)
            .min(Lsn(end.0.saturating_sub(keep)).segno(seg));
        if !self.save_slots(end, seg) {
            horizon = SegNo(0);
        }
        if let Some(slot_min) = self.slots_min_restart_lsn() {
            horizon = horizon.min(slot_min.segno(seg));
        }
        if let Some(backup_redo) = self.backup_pins.oldest_redo() {
            horizon = horizon.min(backup_redo.segno(seg));
        }
        let report = self
            .segdir
            .remove_old(&crate::wal::RemovalRequest {
                horizon,
                archive_mode: self.settings().archive_mode == crate::config::ArchiveMode::Always,
                recycle: None,
            })
            .map_err(|e| CheckpointError::Wal(e.into()))?;
        tracing::debug!(%min_recovery_point, "restartpoint raised the minimum recovery point");
        let done = self.record_done(
            cause,
            "restartpoint",
            redo,
            redo,
            id,
            &snap,
            &report,
            started,
        );
        Ok(Some(done))
    }
}

/// Spreads a checkpoint's writes as PostgreSQL's `IsCheckpointOnSchedule`
/// does: after each step of the scan, the share of keys written, scaled
/// by `checkpoint_completion_target`, is compared with the share of
/// `checkpoint_timeout` elapsed and the share of the WAL trigger (half of
/// `max_wal_size`) written since the redo point; ahead of both, it pauses.
/// So a checkpoint ends near the target share of the interval whether
/// time or WAL volume drives the next one, and commits never meet its
/// whole write at once.
struct Pacer<'a> {
    node: &'a Node,
    /// `None`: full speed.
    target: Option<f64>,
    started: Instant,
    timeout: Duration,
    wal_trigger_bytes: u64,
    redo: Lsn,
    /// Keys in the store when the checkpoint began (the scan's total, near enough).
    keys_total: u64,
    paused: Duration,
}

impl<'a> Pacer<'a> {
    fn new(node: &'a Node, cause: CheckpointCause, redo: Lsn) -> Pacer<'a> {
        let settings = node.settings();
        let target = settings.checkpoint_completion_target;
        Pacer {
            node,
            target: (!cause.is_immediate() && target > 0.0).then_some(target),
            started: Instant::now(),
            timeout: settings
                .checkpoint_timeout
                .get()
                .unwrap_or(Duration::from_secs(300)),
            wal_trigger_bytes: wal_trigger_bytes(&settings),
            redo,
            keys_total: node.store.len().max(1),
            paused: Duration::ZERO,
        }
    }

    /// Called after each step: sleep while ahead of schedule, for as long
    /// as the step put it ahead. So the steps come evenly spaced, each
    /// a small slice of copying and writing, rather than bursts of steps
    /// at full speed between fixed pauses (a burst is what commits feel:
    /// the scan's CPU and its writes all at once).
    fn pace(&mut self, p: crate::store::checkpoint::SnapshotProgress) {
        let Some(target) = self.target else { return };
        if p.keys >= self.keys_total {
            // Nothing (or only keys added since the start) left to spread.
            return;
        }
        let done = (p.keys as f64 / self.keys_total as f64).min(1.0) * target;
        while !self.node.checkpoint_should_hurry() {
            let ahead = done - self.schedule();
            if ahead <= 0.0 {
                break;
            }
            // The time until the clock catches up with the step; when the
            // WAL volume drives the schedule it may catch up sooner, which
            // the cap bounds.
            let pause = Duration::try_from_secs_f64(ahead * self.timeout.as_secs_f64())
                .unwrap_or(PACE_SLEEP)
                .clamp(PACE_SLEEP_MIN, PACE_SLEEP);
            std::thread::sleep(pause);
            self.paused += pause;
        }
    }

    /// How far along the interval to the next checkpoint is (0..1, either
    /// measure, whichever is further).
    fn schedule(&self) -> f64 {
        let time = self.started.elapsed().as_secs_f64() / self.timeout.as_secs_f64();
        let wal = self.node.replay_end().saturating_sub(self.redo) as f64
            / self.wal_trigger_bytes.max(1) as f64;
        time.max(wal)
    }
}

impl Drop for Pacer<'_> {
    fn drop(&mut self) {
        if !self.paused.is_zero() {
            tracing::debug!(
                paused_ms = self.paused.as_millis() as u64,
                "checkpoint spread by checkpoint_completion_target"
            );
        }
    }
}

/// The WAL written since the last redo point that starts a checkpoint.
fn wal_trigger_bytes(settings: &crate::config::Config) -> u64 {
    settings.max_wal_size.bytes().unwrap_or(1 << 30) / 2
}

/// Handle of the checkpointer thread. Requests reach it through
/// [`Node::request_checkpoint`].
pub struct Checkpointer {
    /// Dropped to stop the thread.
    stop: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Told to hurry a spread checkpoint under way when stopping.
    node: Arc<Node>,
}

impl Checkpointer {
    /// Start the thread serving `requests` (the receiving end of the
    /// node's request channel) and its own triggers.
    pub fn start(
        node: Arc<Node>,
        requests: Receiver<CheckpointCause>,
    ) -> std::io::Result<Checkpointer> {
        let (stop, stopped) = bounded(0);
        let for_thread = node.clone();
        let thread = std::thread::Builder::new()
            .name("checkpointer".into())
            .spawn(move || run(for_thread, requests, stopped))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
            node,
        })
    }

    /// Stop the thread (the shutdown checkpoint is run by the caller). A
    /// spread checkpoint under way finishes at full speed first: the
    /// shutdown checkpoint is waiting for it.
    pub fn stop(mut self) {
        use std::sync::atomic::Ordering;
        drop(self.stop.take());
        self.node.checkpoint_waiters.fetch_add(1, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.node.checkpoint_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

fn run(node: Arc<Node>, requests: Receiver<CheckpointCause>, stopped: Receiver<()>) {
    let _span = tracing::info_span!("checkpointer").entered();
    let timeout = node
        .settings()
        .checkpoint_timeout
        .get()
        .unwrap_or(Duration::from_secs(300));
    let wal_trigger = wal_trigger_bytes(&node.settings());
    let mut last = Instant::now();
    let mut switch = ArchiveTimeout::new(&node);
    // When the end-of-recovery checkpoint asked for is due.
    let mut end_of_recovery_at: Option<Instant> = None;
    loop {
        switch.check(&node);
        let mut wait = timeout
            .saturating_sub(last.elapsed())
            .min(VOLUME_CHECK_INTERVAL);
        if let Some(at) = end_of_recovery_at {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        let cause = select! {
            recv(requests) -> cause => match cause {
                Ok(CheckpointCause::EndOfRecovery) => {
                    end_of_recovery_at.get_or_insert_with(|| Instant::now() + END_OF_RECOVERY_CHECKPOINT_DELAY);
                    None
                }
                Ok(cause) => Some(cause),
                Err(_) => return,
            },
            recv(stopped) -> _ => return,
            default(wait) => if end_of_recovery_at.is_some_and(|at| Instant::now() >= at) {
                Some(CheckpointCause::EndOfRecovery)
            } else if last.elapsed() >= timeout {
                Some(CheckpointCause::Time)
            } else {
                let since_redo = node.replay_end().saturating_sub(node.control().redo_lsn);
                (since_redo >= wal_trigger).then_some(CheckpointCause::Wal)
            },
        };
        let Some(cause) = cause else { continue };
        // Any checkpoint now covers the end of recovery.
        end_of_recovery_at = None;
        let result = match node.wal() {
            Some(_) => node.checkpoint(cause).map(|_| ()),
            None => node.restartpoint(cause).map(|_| ()),
        };
        match result {
            Ok(()) => last = Instant::now(),
            Err(e) => {
                tracing::error!(error = %e, "checkpoint failed; the previous checkpoint stays valid");
                if node.wal().is_some_and(|w| w.poisoned().is_some()) {
                    return;
                }
                last = Instant::now();
            }
        }
    }
}

/// `archive_timeout`: a segment that holds WAL older than this is ended
/// (PostgreSQL's checkpointer does the same), so the archive is never more
/// than that far behind on a quiet primary.
struct ArchiveTimeout {
    timeout: Option<Duration>,
    /// When WAL past `switched_at_lsn` was first seen.
    pending_since: Option<Instant>,
    switched_at_lsn: Lsn,
}

impl ArchiveTimeout {
    fn new(node: &Node) -> ArchiveTimeout {
        let on = node.settings().archive_mode != crate::config::ArchiveMode::Off;
        ArchiveTimeout {
            timeout: node
                .settings()
                .archive_timeout
                .get()
                .filter(|d| on && !d.is_zero()),
            pending_since: None,
            switched_at_lsn: Lsn::INVALID,
        }
    }

    fn check(&mut self, node: &Node) {
        let (Some(timeout), Some(wal)) = (self.timeout, node.wal()) else {
            return;
        };
        let seg = wal.seg_size();
        let inserted = wal.inserted();
        // Nothing but a segment header since the last switch: nothing to archive.
        let fresh = inserted.segment_offset(seg) <= crate::wal::SEG_HEADER_SIZE;
        if fresh || inserted <= self.switched_at_lsn {
            self.pending_since = None;
            return;
        }
        let since = *self.pending_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= timeout {
            match wal.switch_segment() {
                Ok(next) => {
                    tracing::debug!(%next, "archive_timeout: switched to a new WAL segment");
                    self.switched_at_lsn = next;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "archive_timeout: could not switch WAL segment")
                }
            }
            self.pending_since = None;
        }
    }
}
