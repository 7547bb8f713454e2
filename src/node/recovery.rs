//! Crash recovery: load the last checkpoint's snapshot, then replay WAL from
//! its redo point to the first invalid record (the end of WAL), as
//! PostgreSQL's startup process does after a crash — with one difference.
//!
//! PostgreSQL cannot tell a torn tail (the normal end of WAL after a crash)
//! from damage in the middle, and starts writing over the good WAL that
//! follows the damage. Here an invalid record followed by valid WAL in a
//! later segment is corruption ([`wal::valid_wal_after`]): the damaged
//! segment is fetched again from the archive or from a node that has it
//! (`walrepair.rs`; the damaged copy goes to `quarantine/`), and otherwise
//! the node refuses to start with [`CorruptWal`], which names the ways out.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::walrepair::{repair_segment, Damage};
pub use super::walrepair::{RepairError, RepairedSegment, WalRepair};
use crate::store::checkpoint::{load_snapshot, SnapshotError};
use crate::store::replay::{redo_read_ahead, BatchSize, RedoStop};
use crate::store::{ApplyError, ControlFile, Store};
use crate::wal::{self, ReadError, ReaderConfig, WalAfter, WalReader};
use crate::{Lsn, TimelineHistory};

/// What recovery found.
#[derive(Debug, Clone)]
pub struct RecoveryResult {
    /// Where the next record goes.
    pub end: Lsn,
    /// The last valid record (the next record's prev-link).
    pub prev_record: Lsn,
    pub(crate) records_replayed: u64,
    pub(crate) snapshot_keys: u64,
    /// Why replay stopped (the invalid record at `end`), for the log.
    pub stop: Option<String>,
    pub(crate) elapsed_ms: u64,
    /// Damaged segments replaced by a good copy on the way.
    pub repaired: Vec<RepairedSegment>,
}

/// Damage in the middle of the WAL with no good copy to heal it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptWal {
    /// Where replay stopped.
    pub at: Lsn,
    /// The segment file holding `at`.
    pub file: String,
    /// Why the record at `at` is invalid.
    pub reason: String,
    /// The valid WAL found after it.
    pub after: WalAfter,
    /// What was tried to heal it, for the message.
    pub tried: String,
}

impl std::fmt::Display for CorruptWal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WAL is damaged at {} in file {} ({}), and this is not the end of WAL: \
             {} valid records ({} bytes) follow from {} to {}. Refusing to start, \
             which would write over them ({}). Ways out: put a good copy of {} into wal/ \
             (or set restore_command to an archive, or wal_repair_sources to a standby, that has it) and start again; promote \
             a standby that has this WAL; or accept the loss with `walrep resetwal DATADIR`, \
             which moves the WAL after {} into quarantine/",
            self.at,
            self.file,
            self.reason,
            self.after.records,
            self.after.to.0 - self.after.from.0,
            self.after.from,
            self.after.to,
            self.tried,
            self.file,
            self.at,
        )
    }
}

/// Errors that stop start-up (as opposed to the end of WAL).
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The last checkpoint's snapshot could not be loaded.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Reading WAL failed with an IO error (not an invalid record, which ends the WAL).
    #[error("could not read WAL during recovery: {0}")]
    Read(ReadError),
    /// A valid record could not be applied to the store.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A damaged record before the end of WAL that no copy could repair.
    #[error("{0}")]
    Corrupt(Box<CorruptWal>),
    /// A damaged segment could not be replaced by a good copy.
    #[error(transparent)]
    Repair(#[from] RepairError),
}

/// Crash recovery runs to the end of WAL: nothing stops it half-way.
static NEVER: AtomicBool = AtomicBool::new(false);

/// Load the snapshot named by `control` into `store` and replay the WAL of
/// `history` from the redo point to its end.
pub fn crash_recover(
    datadir: &std::path::Path,
    control: &ControlFile,
    history: TimelineHistory,
    store: &Store,
    repair: &WalRepair<'_>,
) -> Result<RecoveryResult, RecoveryError> {
    let snapshot = load_snapshot(
        datadir,
        control.checkpoint_id,
        control.checkpoint_chunks,
        store,
    )?;
    let mut result = replay_to_end(datadir, control, history, store, repair)?;
    result.snapshot_keys = snapshot.keys;
    Ok(result)
}

/// Replay the WAL of `history` from the control file's redo point to the
/// first invalid record, into a store that already holds the snapshot. An
/// invalid record with valid WAL after it is repaired from `repair` or
/// refused ([`RecoveryError::Corrupt`]).
pub fn replay_to_end(
    datadir: &Path,
    control: &ControlFile,
    history: TimelineHistory,
    store: &Store,
    repair: &WalRepair<'_>,
) -> Result<RecoveryResult, RecoveryError> {
    let started = Instant::now();
    let cfg = ReaderConfig {
        dir: datadir.join(crate::datadir::WAL_DIR),
        system_id: control.system_identifier,
        seg_size: control.wal_segment_size,
        history,
    };
    let mut next = control.redo_lsn;
    let mut prev_record = Lsn::INVALID;
    let mut records = 0u64;
    let mut changes = 0u64;
    let mut repaired = Vec::new();
    tracing::info!(redo = %control.redo_lsn, "redo starts");
    let (end, stop) = loop {
        let mut reader = WalReader::new(cfg.clone(), next);
        reader.seek(next, prev_record.is_valid().then_some(prev_record));
        // One thread reads, validates and plans batches of records ahead,
        // this one applies them (one hold of the store's lock per batch:
        // large ones, since nothing reads the store before redo is done).
        let stop = loop {
            let ran = redo_read_ahead(
                store,
                &mut reader,
                &NEVER,
                BatchSize::ALONE,
                |batch, ops| {
                    records += batch.len() as u64;
                    changes += ops;
                    if let Some(last) = batch.last() {
                        prev_record = last.lsn;
                    }
                },
            );
            match ran {
                RedoStop { apply: Some(e), .. } => return Err(e.into()),
                RedoStop { read: Some(e), .. } if e.kind.is_io() => {
                    return Err(RecoveryError::Read(e))
                }
                RedoStop { read: Some(e), .. } => break e,
                // Only a stop flag ends a run otherwise; go on.
                RedoStop { read: None, .. } => continue,
            }
        };
        next = reader.next_lsn();
        let after = wal::valid_wal_after(cfg.clone(), next).map_err(RecoveryError::Read)?;
        let Some(after) = after else {
            break (next, stop);
        };
        let file = next
            .segno(cfg.seg_size)
            .file_name(cfg.history.timeline_of(next), cfg.seg_size);
        tracing::error!(at = %next, file, reason = %stop, valid_from = %after.from, valid_to = %after.to, "invalid record in the middle of the WAL: valid WAL follows it");
        let damage = Damage {
            cfg: &cfg,
            file: file.clone(),
            at: next,
            prev_record,
        };
        let healed = match repaired.iter().any(|r: &RepairedSegment| r.at == next) {
            // A verified copy reads past `next`: stopping there again
            // means the copy did not stay in place.
            true => Err(format!("the copy installed for {file} stops at {next} too")),
            false => repair_segment(datadir, &damage, repair)?,
        };
        match healed {
            Ok(r) => {
                tracing::warn!(file = %r.file, at = %next, source = %r.source, quarantined = %r.quarantined.display(), "repaired a damaged WAL segment; replay goes on");
                repaired.push(r);
            }
            Err(tried) => {
                return Err(RecoveryError::Corrupt(Box::new(CorruptWal {
                    at: next,
                    file,
                    reason: stop.to_string(),
                    after,
                    tried,
                })))
            }
        }
    };
    if !stop.kind.is_zeroes() {
        tracing::info!(at = %end, reason = %stop, "invalid record marks the end of WAL");
    }
    let elapsed = started.elapsed();
    log_redo_done(control.redo_lsn, end, records, changes, elapsed);
    // The checkpoint record itself is the last record when nothing followed
    // it; its LSN is the prev-link of the next record.
    if prev_record == Lsn::INVALID {
        prev_record = control.checkpoint_lsn;
    }
    Ok(RecoveryResult {
        end,
        prev_record,
        records_replayed: records,
        snapshot_keys: 0,
        stop: Some(stop.to_string()),
        elapsed_ms: elapsed.as_millis() as u64,
        repaired,
    })
}

/// PostgreSQL's "redo done at X" line, with what bounds restart time: how
/// much WAL there was and how fast it went (records/s, MB/s), and how many
/// key changes the records held (a pipelined run of writes is one record).
fn log_redo_done(redo: Lsn, end: Lsn, records: u64, changes: u64, elapsed: std::time::Duration) {
    let bytes = end.0.saturating_sub(redo.0);
    let secs = elapsed.as_secs_f64();
    let per_s = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
    tracing::info!(
        end = %end,
        records,
        changes,
        bytes,
        elapsed_ms = elapsed.as_millis() as u64,
        "redo done at {end}; {records} records, {bytes} bytes in {secs:.3} s ({:.0} records/s, {:.1} MB/s); {changes} key changes ({:.0}/s)",
        per_s(records as f64),
        per_s(bytes as f64) / 1e6,
        per_s(changes as f64),
    );
}

/// Make the WAL just replayed durable before anything is served from it.
///
/// After a crash of the process (not of the machine) the WAL it had
/// written but not yet flushed is still in the page cache: redo reads and
/// applies it, and without this a reader could see a write that a power
/// loss right after would still take away. PostgreSQL fsyncs the data
/// directory before crash recovery (`recovery_init_sync_method`) for the
/// same reason. Here only the segments replay read need it: one fdatasync
/// each, cheap when the kernel already wrote them back. This is what lets
/// the end-of-recovery checkpoint run in the background (see
/// docs/architecture.md, "What bounds restart time").
pub fn sync_replayed_wal(
    segdir: &wal::SegmentDir,
    redo: Lsn,
    end: Lsn,
) -> Result<u64, wal::SegmentError> {
    let seg = segdir.seg_size();
    let (first, last) = (redo.segno(seg), end.segno(seg));
    let storage = segdir.storage();
    let mut synced = 0;
    for f in segdir.list()? {
        let Some(segno) = f.segno.filter(|s| *s >= first && *s <= last) else {
            continue;
        };
        if f.kind != wal::WalFileKind::Segment {
            continue;
        }
        let path = segdir.segment_path(f.tli, segno);
        let file = storage
            .open(&path, crate::storage::OpenFor::Existing)
            .map_err(wal::SegmentError::io("open", &path))?;
        storage
            .sync_data(&file, &path)
            .map_err(wal::SegmentError::io("fdatasync", &path))?;
        synced += 1;
    }
    Ok(synced)
}

/// After a crash in a promotion's last window, give the new timeline back
/// its first segment when only its name was lost: returns whether it did.
///
/// Promotion makes the history file durable (contents and name) before
/// anything of the new timeline is written, then, once writes are
/// accepted and held, fsyncs `wal/` (the new timeline's first segment's
/// name) beside the control file's update; nothing is acknowledged,
/// visible or sent before both are done (`crate::node::promotion_hold`).
/// So a crash can leave a control file that names the new timeline while
/// the segment the new timeline starts in has no durable name. Its
/// contents (the old timeline's prefix, then the end-of-recovery record
/// and the first writes) were never acknowledged to anyone: the timeline
/// simply has no WAL past its switch point, as when the record's flush
/// was lost. Replay then ends at the switch point (the old timeline's
/// file serves the segment up to it), and the WAL writer needs the
/// segment to exist: it is made again as the promotion made it, a copy of
/// the old timeline's segment up to the switch point (or an empty one at
/// a segment boundary), durable before it is named, its name made durable
/// by the WAL writer's start.
///
/// Only at `tli`'s own switch point: a segment missing anywhere else is
/// lost WAL, which [`crate::wal::Wal::start`] refuses as before.
pub fn restore_switch_segment(
    segdir: &wal::SegmentDir,
    history: &TimelineHistory,
    system_id: u64,
    end: Lsn,
) -> Result<bool, wal::TimelineError> {
    let tli = history.timeline();
    let seg = segdir.seg_size();
    let begins = history.spans().last().map(|s| s.begin);
    if history.spans().len() < 2
        || begins != Some(end)
        || segdir.segment_path(tli, end.segno(seg)).exists()
    {
        return Ok(false);
    }
    let prepared = if end.segment_offset(seg) == 0 {
        None
    } else {
        let before = Lsn(end.0 - 1);
        let Some(old) = wal::timeline::candidate_timelines(history, before, seg)
            .into_iter()
            .find(|t| *t != tli && segdir.segment_path(*t, before.segno(seg)).exists())
        else {
            return Ok(false);
        };
        wal::prepare_new_timeline_segment(segdir, system_id, old, tli, end)?
    };
    wal::place_new_timeline_segment(segdir, tli, end, prepared)?;
    tracing::warn!(
        timeline = tli.0,
        switch_point = %end,
        "the new timeline's first segment was not durable by name (a crash inside the promotion, before any write of the timeline was acknowledged): made again from the old timeline's"
    );
    Ok(true)
}
