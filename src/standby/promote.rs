//! The steps of promotion the machine asks for: remove `standby.signal`,
//! write the new timeline's history file, then start the WAL on the new
//! timeline with an end-of-recovery record (PostgreSQL's
//! `XLogInitNewTimeline`, `writeTimeLineHistory` and
//! `XLOG_END_OF_RECOVERY`), and hand the WAL writer to the node.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::receiver::ReceiverHandle;
use super::StandbyHandles;
use crate::archive::ArchiveError;
use crate::config::ArchiveMode;
use crate::datadir::DataDir;
use crate::node::resetwal::{keep_wal_after_damage, Damaged, KeepHow, ResetReport};
use crate::storage::{Storage, StorageError};
use crate::store::control::{now_ms, ControlError};
use crate::store::ClusterState;
use crate::wal::{
    place_new_timeline_segment, prepare_new_timeline_segment, rename_old_timeline_segment_partial,
    EndOfRecovery, PreparedSegment, SegmentError, TimelineError, Wal, WalConfig, WalError,
    XlogRecord,
};
use crate::wal::{valid_wal_after, ReaderConfig, WalReader};
use crate::{Lsn, TimelineId};

/// Why a promotion step failed. The machine hears it as
/// `PromotionStepFailed { reason }` (text: it knows no runtime types).
#[derive(Debug, thiserror::Error)]
pub enum PromotionError {
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error("after removing standby.signal: {0}")]
    SyncDataDir(StorageError),
    #[error("the WAL received before the promotion could not be made durable: {0}")]
    ReceivedWal(Arc<SegmentError>),
    #[error("could not make the new timeline's file names durable: {0}")]
    SyncWalDir(StorageError),
    #[error("could not mark {file} for archiving: {source}")]
    MarkReady { file: String, source: ArchiveError },
    #[error("could not start the WAL writer on timeline {tli}: {source}")]
    StartWal { tli: TimelineId, source: WalError },
    #[error("could not write the end-of-recovery record on timeline {tli}: {source}")]
    EndOfRecovery { tli: TimelineId, source: WalError },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("the node could not take over the WAL writer of timeline {tli}: {source}")]
    AttachWal { tli: TimelineId, source: io::Error },
}

/// Remove `standby.signal`, so a crash once the end-of-recovery record is
/// written restarts as a primary on the new timeline rather than a standby
/// of the old one. Returns whether it was there: then the data directory
/// still needs an fsync, which [`write_history_file`] runs beside the
/// history file's fsync (on a journaling file system both are one journal
/// commit), before anything of the new timeline is written.
pub fn remove_standby_signal(storage: &dyn Storage, datadir: &Path) -> io::Result<bool> {
    match storage.remove_file(&DataDir::new(datadir).standby_signal()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// What the history-file step prepared for the end-of-recovery step: the
/// new timeline's first segment, written and durable beside the history
/// file but not yet named.
#[derive(Debug)]
pub struct PreparedTimeline {
    tli: TimelineId,
    at: Lsn,
    /// `None` at a segment boundary (nothing to copy).
    segment: Option<PreparedSegment>,
}

/// Write `TTTTTTTT.history` for `tli` (the parent's lines plus the new one):
/// its contents fsynced under a temporary name, then renamed into place.
/// Beside it, on other threads, so that the fsyncs are waited for together
/// rather than one after another: the copy of the switch point's segment
/// for the new timeline (durable, not yet named: see [`PreparedTimeline`])
/// and, when `sync_datadir`, the fsync of the data directory that makes
/// the removal of `standby.signal` durable (PostgreSQL removes the signal
/// files durably before it writes the history file).
///
/// The history file's name is made durable here too, by an fsync of
/// `wal/` on this thread right after its rename, while the copy (the
/// stage's longest part) and the data directory's fsync go on: so the
/// history file is durable, contents and name, before any WAL of the new
/// timeline is written and before the control file names it (CRASH.md
/// 4.6, 4.10), and the control file's update need not wait for the later
/// fsync of `wal/` that names the new timeline's segments
/// ([`ControlUpdate::run`] runs the two side by side). The segments are
/// named after this stage (in [`write_end_of_recovery`]), so no segment of
/// the new timeline ever exists without its history file.
///
/// The check for valid WAL past the switch point
/// ([`keep_wal_past_damage`], reads only) runs on this thread once the
/// history file is durable, beside the copy, which is the stage's longest
/// part. The log line gives each part's time.
///
/// A failure to prepare the segment does not fail this step: the
/// end-of-recovery step prepares it again and reports the error as its own.
pub fn write_history_file(
    h: &StandbyHandles,
    (tli, parent): (TimelineId, TimelineId),
    switch_point: Lsn,
    reason: &str,
    datadir_step: DataDirStep,
) -> Result<Option<PreparedTimeline>, PromotionError> {
    let t0 = Instant::now();
    let dir = DataDir::new(&h.datadir);
    let run_datadir = datadir_step.is_needed();
    let datadir_step = std::sync::Mutex::new(Some(datadir_step));
    let sync_standby_signal = || {
        let step = datadir_step
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        step.map_or(Ok(DataDirTimes::default()), |s| s.run(h))
    };
    let copy_segment = || {
        let t = Instant::now();
        prepare_segment(h, tli, parent, switch_point).map(|s| (s, t.elapsed()))
    };
    // The history file is created and written before the other syncs
    // start: a journaling file system then commits its creation in the
    // same journal commit as the data directory's fsync (`standby.signal`)
    // rather than in the next one, after it.
    let unsynced = crate::wal::begin_new_timeline_history(
        &*h.storage,
        &dir.wal(),
        (parent, tli),
        switch_point,
        reason,
    )?;
    let (history, prepared, datadir, times) = std::thread::scope(|s| {
        let datadir = run_datadir.then(|| beside(s, &sync_standby_signal));
        let segment = beside(s, &copy_segment);
        let t = Instant::now();
        let history = unsynced.finish(&*h.storage);
        let history_fsync = t.elapsed();
        // The history file's name, durable here, beside the copy (the
        // stage's longest part): the control file may then name the new
        // timeline without waiting for the fsync of `wal/` that makes the
        // segments' names durable ([`ControlUpdate::run`] runs the two
        // side by side).
        let t = Instant::now();
        let history = history.map_err(PromotionError::from).and_then(|hist| {
            crate::storage::sync_dir(&*h.storage, &dir.wal())
                .map(|()| hist)
                .map_err(PromotionError::SyncWalDir)
        });
        let history_name = t.elapsed();
        // Only reads (and, after damage, copies into `quarantine/`): here,
        // beside the copy (the stage's longest part), not before it on the
        // copy's thread. Nothing writes the old timeline's files meanwhile.
        let t = Instant::now();
        keep_wal_past_damage(h, parent, switch_point);
        let damage_check = t.elapsed();
        let prepared = joined(segment, &copy_segment);
        (
            history,
            prepared,
            datadir.map(|d| joined(d, &sync_standby_signal)),
            (history_fsync, history_name, damage_check),
        )
    });
    let (history_fsync, history_name, damage_check) = times;
    let (prepared, copy) = match prepared {
        Ok((segment, copy)) => (
            Some(PreparedTimeline {
                tli,
                at: switch_point,
                segment,
            }),
            Some(copy),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not copy the switch point's segment beside the history file; the end-of-recovery step tries again");
            (None, None)
        }
    };
    let done = history.and(datadir.transpose());
    let datadir_times = match done {
        Ok(d) => d.unwrap_or_default(),
        Err(e) => {
            discard(h, prepared);
            return Err(e);
        }
    };
    let us = |d: Option<Duration>| d.map_or(0, |d| d.as_micros() as u64);
    tracing::info!(
        tli = tli.0,
        %switch_point,
        elapsed_us = t0.elapsed().as_micros() as u64,
        history_fsync_us = us(Some(history_fsync)),
        history_name_us = us(Some(history_name)),
        damage_check_us = us(Some(damage_check)),
        segment_copy_us = us(copy),
        receiver_sync_wait_us = us(datadir_times.receiver_wait),
        datadir_sync_us = us(datadir_times.sync),
        "wrote timeline history file {}",
        tli.history_file_name()
    );
    Ok(prepared)
}

/// The history stage's data-directory branch, in this order: wait for the
/// walreceiver stopped early for this promotion to have made what it
/// received durable ([`ReceiverHandle::finish`]), remove `standby.signal`
/// (when its removal was left to this step), fsync the data directory.
///
/// Why the received WAL first: once `standby.signal`'s removal is durable,
/// a crash restarts the node as a primary of the old timeline at the end
/// of its durable WAL (the promotion not finished, see
/// [`write_end_of_recovery`]). Before this change the walreceiver's fsync
/// came before the promotion went on at all; now it runs beside the end
/// of replay and this stage, and a restart must still find on the old
/// timeline everything this standby replayed (and so may have shown to a
/// reader), up to the switch point. The removal itself can reach the disk
/// without an fsync, so it too waits. The history file and the new
/// timeline's segment copy do not need to wait: a history file is not WAL
/// of its timeline, and the copy is not named until the end-of-recovery
/// step, which comes after this stage; no WAL of the new timeline is
/// written before the received WAL is durable.
#[derive(Default)]
pub struct DataDirStep {
    /// The walreceiver session stopped by `Sessions::stop_writing`.
    pub receiver: Option<ReceiverHandle>,
    /// `standby.signal` is still to be removed.
    pub remove_standby_signal: bool,
    /// `standby.signal` was removed and the data directory not fsynced
    /// since.
    pub unsynced: bool,
}

/// What the data-directory branch waited for.
#[derive(Debug, Default, Clone, Copy)]
struct DataDirTimes {
    receiver_wait: Option<Duration>,
    sync: Option<Duration>,
}

impl DataDirStep {
    fn is_needed(&self) -> bool {
        self.receiver.is_some() || self.remove_standby_signal || self.unsynced
    }

    fn run(self, h: &StandbyHandles) -> Result<DataDirTimes, PromotionError> {
        let mut times = DataDirTimes::default();
        if let Some(r) = self.receiver {
            let t = Instant::now();
            r.finish().map_err(PromotionError::ReceivedWal)?;
            times.receiver_wait = Some(t.elapsed());
        }
        let mut unsynced = self.unsynced;
        if self.remove_standby_signal {
            // As when it is removed at once: a failure is reported and the
            // promotion goes on.
            match remove_standby_signal(&*h.storage, &h.datadir) {
                Ok(removed) => unsynced |= removed,
                Err(e) => tracing::error!(error = %e, "could not remove standby.signal"),
            }
        }
        if unsynced {
            let t = Instant::now();
            crate::storage::sync_dir(&*h.storage, &h.datadir)
                .map_err(PromotionError::SyncDataDir)?;
            times.sync = Some(t.elapsed());
        }
        Ok(times)
    }
}

/// Start `f` on a thread of `s`, to be waited for beside the caller's own
/// step; `None` when no thread can be started ([`joined`] then runs `f`
/// itself, after the caller's step).
fn beside<'scope, 'env, T, F>(
    s: &'scope std::thread::Scope<'scope, 'env>,
    f: &'env F,
) -> Option<std::thread::ScopedJoinHandle<'scope, T>>
where
    T: Send + 'scope,
    F: Fn() -> T + Sync + 'env,
{
    std::thread::Builder::new()
        .name("promote-step".into())
        .spawn_scoped(s, f)
        .inspect_err(|e| tracing::warn!(error = %e, "could not start a thread for a promotion step; running it after the others"))
        .ok()
}

/// The result of a step started by [`beside`] (run here if it got no
/// thread); a panic in it goes on in the caller.
fn joined<T>(t: Option<std::thread::ScopedJoinHandle<'_, T>>, f: &impl Fn() -> T) -> T {
    match t {
        Some(t) => t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        None => f(),
    }
}

/// The copy of the switch point's segment for `tli`, durable, not named.
fn prepare_segment(
    h: &StandbyHandles,
    tli: TimelineId,
    prev_tli: TimelineId,
    at: Lsn,
) -> Result<Option<PreparedSegment>, TimelineError> {
    let system_id = h.control.read(|c| c.system_identifier);
    let source_tli = switch_segment_timeline(h, prev_tli, at);
    prepare_new_timeline_segment(&h.segdir, system_id, source_tli, tli, at)
}

/// Remove a prepared copy that will not be used.
fn discard(h: &StandbyHandles, prepared: Option<PreparedTimeline>) {
    if let Some(segment) = prepared.and_then(|p| p.segment) {
        h.segdir.discard_prepared(segment);
    }
}

/// Before promotion leaves timeline `parent` at `switch_point`: if the
/// record there is invalid and valid WAL of the timeline follows in a later
/// segment, recovery ended at damage in the middle of the WAL, not at its
/// end. The promotion goes on (the operator asked for it, and the old
/// timeline's files are never written over), but it says so: an error in
/// the log, and copies of the WAL left behind, with the keys it wrote, in
/// `quarantine/<time>-promoted-past-damage/`.
fn keep_wal_past_damage(h: &StandbyHandles, parent: TimelineId, switch_point: Lsn) {
    match wal_past_damage(h, parent, switch_point) {
        Ok(None) => {}
        Ok(Some(r)) => tracing::error!(
            at = %r.at,
            reason = %r.reason,
            valid_from = %r.after.from,
            valid_to = %r.after.to,
            records = r.after.records,
            keys = r.keys,
            kept = %r.quarantine.display(),
            "promoting past damaged WAL: recovery ended at an invalid record in the middle of the WAL; the {} valid records after it (keys they wrote: {}) are not replayed on the new timeline; copies and report.txt are in {}",
            r.after.records,
            r.keys,
            r.quarantine.display()
        ),
        Err(e) => {
            tracing::error!(error = %e, %switch_point, "promoting without knowing whether valid WAL follows the end of recovery")
        }
    }
}

fn wal_past_damage(
    h: &StandbyHandles,
    parent: TimelineId,
    switch_point: Lsn,
) -> Result<Option<ResetReport>, String> {
    let dir = DataDir::new(&h.datadir);
    let (system_id, seg_size) = h
        .control
        .read(|c| (c.system_identifier, c.wal_segment_size));
    let history = crate::wal::read_history(&dir.wal(), parent).map_err(|e| e.to_string())?;
    let cfg = ReaderConfig {
        dir: dir.wal(),
        system_id,
        seg_size,
        history,
    };
    let mut reader = WalReader::new(cfg.clone(), switch_point);
    reader.seek(switch_point, None);
    let reason = match reader.read_record() {
        Ok(_) => return Ok(None),
        Err(e) if e.kind.is_io() => return Err(e.to_string()),
        Err(e) => e.to_string(),
    };
    let Some(after) = valid_wal_after(cfg.clone(), switch_point).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let damaged = Damaged {
        at: switch_point,
        reason,
        after,
    };
    keep_wal_after_damage(&*h.storage, &h.datadir, &cfg, &damaged, KeepHow::CopyAll)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The timeline whose segment file holds the WAL just before `at`
/// (PostgreSQL's EndOfLogTLI): `prev_tli` unless that timeline has no file
/// for the segment — a promotion interrupted by a crash leaves the next
/// timeline's history file, which recovery then follows, while the WAL it
/// replayed is still in the ancestor's files.
fn switch_segment_timeline(h: &StandbyHandles, prev_tli: TimelineId, at: Lsn) -> TimelineId {
    let seg_size = h.segdir.seg_size();
    if at.segment_offset(seg_size) == 0
        || h.segdir.segment_path(prev_tli, at.segno(seg_size)).exists()
    {
        return prev_tli;
    }
    let Ok(history) = crate::wal::read_history(h.segdir.path(), prev_tli) else {
        return prev_tli;
    };
    let before = Lsn(at.0 - 1);
    crate::wal::timeline::candidate_timelines(&history, before, seg_size)
        .into_iter()
        .find(|tli| h.segdir.segment_path(*tli, before.segno(seg_size)).exists())
        .unwrap_or(prev_tli)
}

/// Start the WAL on `tli` at `at`, log the end-of-recovery record and hand
/// the WAL writer to the node under a hold; the caller makes the new
/// timeline's names, the control file and the record durable once the
/// node accepts writes ([`ControlUpdate::run`]).
/// Returns the end of WAL after the record. `prepared`: what
/// [`write_history_file`] prepared (the copy is made here otherwise).
/// `sync_datadir`: the removal of `standby.signal` is not durable yet.
///
/// The syncs, in the order durability needs, those of one line waited
/// for together: the history file's contents, then its name (`wal/`), the
/// copied segment's contents and the data directory (all in
/// [`write_history_file`]); then, after the segments' renames (here), once
/// writes are accepted: `wal/` (the new timeline's segments' names) and
/// the `.ready` of the history file with archiving on, beside the control
/// file, overwritten in place (fdatasync), beside the first writes'
/// flush, which makes the end-of-recovery record durable with them (the
/// record precedes them in the same segment).
///
/// Where this differs from PostgreSQL: its `CreateEndOfRecoveryRecord`
/// flushes the record (`XLogFlush`) before `UpdateControlFile`, and it
/// accepts writes only after both; and its `XLogInitNewTimeline` makes
/// the new segment's name durable (`durable_rename`) before the control
/// file names the timeline. Here the record gets no fdatasync of its own
/// and the segment's name is made durable beside the control file: the
/// node accepts writes at once, and its hold
/// (`crate::node::promotion_hold`) keeps every acknowledgement, their
/// visibility and every byte of the new timeline from walsenders until
/// the names, the control file and the record are all durable. So every
/// crash before the release is a crash nobody was told anything of, and
/// each image recovers to a history some client could have seen (CRASH.md
/// §4.1, §4.5, §4.6). The images (the history file is durable in all of
/// them: the record is written only after its name's fsync):
/// 1. control file old (timeline N, in archive recovery), whatever else
///    survived (segment name or not, record and writes or not): the node
///    restarts as a primary of N (`standby.signal` is durably gone) and
///    writes on N from the switch point; the new timeline's history file,
///    segment, record and first writes are never read (a later promotion
///    takes timeline N+2: the history file N+1 is there). Nothing of N+1
///    was acknowledged.
/// 2. control file new (N+1, in production), segment name durable,
///    record durable, writes durable or not: replay goes to the switch
///    point on N and on into N+1's segment, to the end of what was
///    flushed; the writes replayed were not acknowledged (the hold) but
///    may be kept, as any flushed unacknowledged write may.
/// 3. control file new, segment name durable, record not durable (its
///    flush not done): the segment holds the copied prefix (durable
///    before its rename) and zeroes or a torn record at the switch point,
///    so the end of WAL is the switch point and the node writes on N+1
///    from there, as after a torn first record; a later record never
///    survives without it once any flush of the segment completed, and a
///    sector kept without a completed flush is past an invalid record in
///    the same segment, so it is not read. The record is only
///    informational for the new timeline's readers (the history file
///    carries the switch), so a timeline N+1 without it is as valid as
///    one whose first records were lost.
/// 4. control file new, segment name not durable (the fsync of `wal/`
///    beside the control file not done), record and writes durable or not
///    (their blocks belong to the unnamed file; a leftover temporary name
///    is removed at start): replay reads the switch segment up to the
///    switch point from N's file (still under its own name: it becomes
///    `.partial` only after the release) and ends there, N+1 having no
///    file for it; start-up makes the segment again as this step did (a
///    copy of N's prefix, durable before it is named:
///    `crate::node::recovery::restore_switch_segment`) and writes on N+1
///    from the switch point: the same state as image 3. Nothing of N+1 was
///    acknowledged (the release waits for this fsync).
///
/// After the release every acknowledged write is in a segment whose name,
/// and the control file naming its timeline, are durable: the images of
/// the ordinary WAL rules apply.
pub fn write_end_of_recovery(
    h: &StandbyHandles,
    (tli, prev_tli): (TimelineId, TimelineId),
    at: Lsn,
    prepared: Option<PreparedTimeline>,
    sync_datadir: bool,
) -> Result<(Lsn, ControlUpdate), PromotionError> {
    let t0 = Instant::now();
    let (system_id, seg_size) = h
        .control
        .read(|c| (c.system_identifier, c.wal_segment_size));
    let segment = match prepared {
        Some(p) if p.tli == tli && p.at == at => p.segment,
        other => {
            discard(h, other);
            prepare_segment(h, tli, prev_tli, at)?
        }
    };
    place_new_timeline_segment(&h.segdir, tli, at, segment)?;
    let t_segment = t0.elapsed();
    let wal = Arc::new(start_wal(h, tli, at, system_id, seg_size)?);
    if sync_datadir {
        crate::storage::sync_dir(&*h.storage, &h.datadir).map_err(PromotionError::SyncDataDir)?;
    }
    let t_wal = t0.elapsed();
    let eor = |source| PromotionError::EndOfRecovery { tli, source };
    // Inserted, not flushed: see above (the first writes' flush, or
    // `ControlUpdate::run`, makes it durable before the release).
    let rec = wal
        .log_xlog(&XlogRecord::EndOfRecovery(EndOfRecovery {
            new_tli: tli,
            prev_tli,
            time_unix_us: now_ms() * 1000,
        }))
        .map_err(eor)?;
    // Held from before the node's flush hook is set: nothing of the new
    // timeline is confirmed or sent before the control file names it.
    h.hooks.hold_promotion(at);
    let wal_for_control = wal.clone();
    if let Err(source) = h.hooks.attach_wal(wal) {
        // Nothing was confirmed; the node stops on this failure.
        h.hooks.release_promotion(false);
        return Err(PromotionError::AttachWal { tli, source });
    }
    let us = |d: Duration| d.as_micros() as u64;
    tracing::info!(
        tli = tli.0,
        end = %rec.end,
        segment_us = us(t_segment),
        wal_start_us = us(t_wal - t_segment),
        record_us = us(t0.elapsed() - t_wal),
        "end-of-recovery record written; writes are accepted and held until the new timeline's segment names, the control file and the record are durable"
    );
    let update = ControlUpdate {
        control: h.control.clone(),
        hooks: h.hooks.clone(),
        storage: h.storage.clone(),
        datadir: h.datadir.clone(),
        wal_dir: h.segdir.path().to_path_buf(),
        archive: h.config.get().archive_mode != ArchiveMode::Off,
        wal: wal_for_control,
        tli,
        record_end: rec.end,
        t0,
    };
    Ok((rec.end, update))
}

/// The promotion's last steps, run by the startup thread right after the
/// node accepts writes ([`ControlUpdate::run`]), while the first writes
/// are inserted and flushed (and held), two branches side by side: fsync
/// `wal/` (the new timeline's segments' names) and mark the history file
/// `.ready` with archiving on; point the control file at the new
/// timeline, in production (fdatasync), and make sure the end-of-recovery
/// record is durable (the first writes' flush has usually done it). Then
/// release the node's hold. A failure stops the node (an fsync failure is never
/// retried), and nothing of the new timeline is confirmed.
///
/// On the startup thread rather than a thread of its own: that thread is
/// running already, so the node accepts writes as soon as the record is
/// inserted (a new thread's start, 0.1 ms and a scheduling wait on a busy
/// machine, would come before them), and the syncs start right after.
#[must_use = "the promotion's hold stays on until the control file update runs"]
pub struct ControlUpdate {
    control: Arc<crate::store::ControlFileOwner>,
    hooks: Arc<dyn super::NodeHooks>,
    storage: Arc<dyn Storage>,
    datadir: std::path::PathBuf,
    wal_dir: std::path::PathBuf,
    /// `archive_mode` is on: the history file gets a `.ready`.
    archive: bool,
    wal: Arc<Wal>,
    tli: TimelineId,
    /// The end of the end-of-recovery record: durable before the release.
    record_end: Lsn,
    /// When the end-of-recovery step started (for `total_us`).
    t0: Instant,
}

impl std::fmt::Debug for ControlUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlUpdate")
            .field("tli", &self.tli)
            .finish_non_exhaustive()
    }
}

impl ControlUpdate {
    /// Make the new timeline's segments' names, the control file and the
    /// end-of-recovery record durable and release the hold (or, on
    /// failure, stop the node). Before anything that needs the control
    /// file to name the new timeline (renaming the old timeline's last
    /// segment to `.partial`, the first checkpoint).
    pub fn run(self) {
        let t_start = self.t0.elapsed();
        // The segments' names and the control file side by side: the
        // history file is durable by name already (the history stage), so
        // the control file may name the timeline before the names of its
        // first segments are durable; a crash that loses them recovers as
        // "no WAL of the new timeline past its switch point" (see
        // [`write_end_of_recovery`] for every image).
        let names = || {
            let r = crate::storage::sync_dir(&*self.storage, &self.wal_dir)
                .map_err(PromotionError::SyncWalDir)
                .and_then(|()| self.mark_history_ready());
            (r, self.t0.elapsed())
        };
        let control = || update_control(&self);
        // The fsync of `wal/` (a journal commit) is the longer: on this
        // thread, at once; the control file's fdatasync, shorter, absorbs
        // the other thread's start.
        std::thread::scope(|s| {
            let beside_names = beside(s, &control);
            let (names, t_names) = names();
            let control = joined(beside_names, &control);
            finish_update(&self, control, names, (t_start, t_names));
        });
    }

    /// With archiving on, mark the new timeline's history file `.ready`;
    /// only once the file is durable, so the archiver never finds a
    /// `.ready` whose file a crash took.
    fn mark_history_ready(&self) -> Result<(), PromotionError> {
        if !self.archive {
            return Ok(());
        }
        let file = self.tli.history_file_name();
        crate::archive::mark_ready(&*self.storage, &self.datadir, &file)
            .map_err(|source| PromotionError::MarkReady { file, source })
    }
}

/// Point the control file at the new timeline, in production, durably,
/// and wait for the end-of-recovery record to be durable (usually the
/// first writes' flush did it meanwhile; else it is flushed here).
/// Returns when the control file and the record were done.
fn update_control(u: &ControlUpdate) -> ControlDone {
    let tli = u.tli;
    let result = u.control.update_in_place(|c| {
        c.timeline = tli;
        c.state = ClusterState::InProduction;
        c.min_recovery_point = Lsn::INVALID;
    });
    let t_control = u.t0.elapsed();
    let record = match &result {
        Ok(()) => u.wal.wait_flushed(u.record_end),
        Err(_) => Ok(()),
    };
    ControlDone {
        result,
        record,
        t_control,
        t_record: u.t0.elapsed(),
    }
}

/// What [`update_control`] did, and when.
struct ControlDone {
    result: Result<(), ControlError>,
    record: Result<(), WalError>,
    t_control: Duration,
    t_record: Duration,
}

/// With the names, the control file and the record all durable, release
/// the node's hold; otherwise tell it to stop (nothing was confirmed).
fn finish_update(
    u: &ControlUpdate,
    done: ControlDone,
    names: Result<(), PromotionError>,
    (t_start, t_names): (Duration, Duration),
) {
    let tli = u.tli;
    let ok = done.result.is_ok() && done.record.is_ok() && names.is_ok();
    u.hooks.release_promotion(ok);
    // The next segment's pre-allocation (a rename and an fsync of `wal/`)
    // comes after the promotion's own syncs, not among them.
    if ok {
        u.wal.release_preallocation();
    }
    let t_done = u.t0.elapsed();
    let us = |d: Duration| d.as_micros() as u64;
    match (done.result, done.record, names) {
        (Ok(()), Ok(()), Ok(())) => {
            tracing::info!(
                tli = tli.0,
                names_us = us(t_names.saturating_sub(t_start)),
                control_us = us(done.t_control.saturating_sub(t_start)),
                record_wait_us = us(done.t_record - done.t_control),
                total_us = us(t_done),
                // How far the first writes got meanwhile (held, not lost).
                flushed = %u.wal.flushed(),
                "archive recovery complete; control file and the new timeline's names durable, writes confirmed"
            );
        }
        (Err(e), _, _) => {
            tracing::error!(error = %e, "could not point the control file at the new timeline; no write of it was confirmed; the node stops");
            u.hooks.fatal(super::StandbyError::Control(e));
        }
        (Ok(()), _, Err(e)) => {
            tracing::error!(error = %e, "could not make the new timeline's names durable; no write of it was confirmed; the node stops");
            u.hooks.fatal(super::StandbyError::Promotion(e));
        }
        (Ok(()), Err(source), Ok(())) => {
            let e = PromotionError::EndOfRecovery { tli, source };
            tracing::error!(error = %e, "no write of the new timeline was confirmed; the node stops");
            u.hooks.fatal(super::StandbyError::Promotion(e));
        }
    }
}

/// The WAL writer of the new timeline, starting at `at`; its start-up
/// leaves the fsync of `wal/` to [`ControlUpdate::run`].
fn start_wal(
    h: &StandbyHandles,
    tli: TimelineId,
    at: Lsn,
    system_id: u64,
    seg_size: crate::WalSegSize,
) -> Result<Wal, PromotionError> {
    let mut cfg = WalConfig::new(
        h.segdir.path(),
        system_id,
        tli,
        seg_size,
        at,
        // The prev-link of the first record on the new timeline.
        h.progress.replayed.read(|r| r.last_record),
    );
    cfg.segdir = Some(h.segdir.clone());
    // `wal/` is fsynced by `ControlUpdate::run`, before the control file.
    cfg.dir_sync_by_caller = true;
    cfg.archive_mode = h.config.get().archive_mode != ArchiveMode::Off;
    cfg.wal_writer_delay = h
        .config
        .get()
        .wal_writer_delay
        .get()
        .unwrap_or(Duration::from_millis(200));
    Wal::start(cfg).map_err(|source| PromotionError::StartWal { tli, source })
}

/// The old timeline's segment holding the switch point, to be renamed to
/// `.partial` once the node accepts writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialSegment {
    /// The timeline promotion left.
    pub prev_tli: TimelineId,
    /// The switch point (the new timeline's start).
    pub at: Lsn,
}

/// After the node accepts writes: remove `upstream_flush` (a standby's
/// bound on unconfirmed WAL; a primary never reads it, and a crash that
/// keeps it finds the node a primary all the same), rename the old
/// timeline's last segment to `.partial`, then request a checkpoint
/// (PostgreSQL requests one right after promotion; the checkpointer starts
/// it a little later, after the first writes).
///
/// The rename (PostgreSQL does it just before opening for writes) is off
/// the path to the first write: nothing reads that file by its old name
/// once the new timeline's copy of its prefix and the end-of-recovery
/// record are durable, and a crash before the rename only leaves it under
/// its old name (not archived as `.partial`), as a crash in PostgreSQL
/// between its end-of-recovery record and the rename does. It comes before
/// the checkpoint, whose WAL removal could otherwise take the file first.
pub fn finish(h: &StandbyHandles, partial: Option<PartialSegment>) {
    super::confirmed::forget(&*h.storage, &h.datadir);
    if let Some(p) = partial {
        let archive_mode = h.config.get().archive_mode != ArchiveMode::Off;
        if let Err(e) =
            rename_old_timeline_segment_partial(&h.segdir, p.prev_tli, p.at, archive_mode)
        {
            tracing::warn!(error = %e, "could not rename the old timeline's last segment to .partial");
        }
    }
    h.hooks.request_checkpoint();
}
