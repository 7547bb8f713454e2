//! The steps of promotion the machine asks for: remove `standby.signal`,
//! write the new timeline's history file, then start the WAL on the new
//! timeline with an end-of-recovery record (PostgreSQL's
//! `XLogInitNewTimeline`, `writeTimeLineHistory` and
//! `XLOG_END_OF_RECOVERY`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ArchiveMode;
use crate::node::checkpoint::CheckpointCause;
use crate::node::Node;
use crate::store::control::now_ms;
use crate::store::ClusterState;
use crate::wal::{
    init_new_timeline_segment, rename_old_timeline_segment_partial, EndOfRecovery, Wal, WalConfig,
    XlogRecord,
};
use crate::{Lsn, TimelineId};

/// Remove `standby.signal`, so a crash once the end-of-recovery record is
/// written restarts as a primary on the new timeline rather than a standby
/// of the old one. Returns whether it was there: then the data directory
/// still needs an fsync, which [`write_history_file`] does (before the
/// end-of-recovery record), after the history file's own fsyncs have
/// committed the unlink with them on a journaling file system, instead of
/// one more journal commit of its own.
pub fn remove_standby_signal(node: &Node) -> std::io::Result<bool> {
    match std::fs::remove_file(node.dir.standby_signal()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Write `TTTTTTTT.history` for `tli` (the parent's lines plus the new one),
/// and mark it for archiving; with `sync_datadir`, then fsync the data
/// directory (making the removal of `standby.signal` durable).
pub fn write_history_file(
    node: &Node,
    tli: TimelineId,
    parent: TimelineId,
    switch_point: Lsn,
    reason: &str,
    sync_datadir: bool,
) -> Result<(), String> {
    let t0 = Instant::now();
    crate::wal::write_new_timeline_history(&node.dir.wal(), parent, tli, switch_point, reason)
        .map_err(|e| e.to_string())?;
    if sync_datadir {
        crate::util::fsync_dir(&node.dir.root).map_err(|e| {
            format!(
                "could not fsync \"{}\" after removing standby.signal: {e}",
                node.dir.root.display()
            )
        })?;
    }
    if node.config.archive_mode != ArchiveMode::Off {
        crate::archive::mark_ready(&node.dir.root, &tli.history_file_name())
            .map_err(|e| e.to_string())?;
    }
    tracing::info!(tli = tli.0, %switch_point, elapsed_us = t0.elapsed().as_micros() as u64, "wrote timeline history file {}", tli.history_file_name());
    Ok(())
}

/// Start the WAL on `tli` at `at` and log the end-of-recovery record.
/// Returns the end of WAL after it.
pub fn write_end_of_recovery(
    node: &Arc<Node>,
    tli: TimelineId,
    prev_tli: TimelineId,
    at: Lsn,
) -> Result<Lsn, String> {
    let t0 = Instant::now();
    let (system_id, seg_size) = {
        let c = node.control();
        (c.system_identifier, c.wal_segment_size)
    };
    init_new_timeline_segment(&node.segdir, system_id, prev_tli, tli, at)
        .map_err(|e| e.to_string())?;
    let t_segment = t0.elapsed();
    let archive_mode = node.config.archive_mode != ArchiveMode::Off;
    let mut cfg = WalConfig::new(
        node.dir.wal(),
        system_id,
        tli,
        seg_size,
        at,
        Lsn(node.standby.last_record_lsn.load(Ordering::Acquire)),
    );
    cfg.segdir = Some(node.segdir.clone());
    cfg.archive_mode = archive_mode;
    cfg.wal_writer_delay = node
        .config
        .wal_writer_delay
        .get()
        .unwrap_or(Duration::from_millis(200));
    let wal = Arc::new(
        Wal::start(cfg)
            .map_err(|e| format!("could not start the WAL writer on timeline {tli}: {e}"))?,
    );
    let t_wal = t0.elapsed();
    let rec = wal
        .log_xlog(&XlogRecord::EndOfRecovery(EndOfRecovery {
            new_tli: tli,
            prev_tli,
            time_unix_us: now_ms() * 1000,
        }))
        .map_err(|e| e.to_string())?;
    wal.wait_flushed(rec.end).map_err(|e| e.to_string())?;
    let t_record = t0.elapsed();
    node.control_file
        .update(|c| {
            c.timeline = tli;
            c.state = ClusterState::InProduction;
            c.min_recovery_point = Lsn::INVALID;
        })
        .map_err(|e| e.to_string())?;
    let t_control = t0.elapsed();
    node.attach_wal(wal).map_err(|e| e.to_string())?;
    let us = |d: Duration| d.as_micros() as u64;
    tracing::info!(
        tli = tli.0,
        end = %rec.end,
        segment_us = us(t_segment),
        wal_start_us = us(t_wal - t_segment),
        record_us = us(t_record - t_wal),
        control_us = us(t_control - t_record),
        total_us = us(t0.elapsed()),
        "archive recovery complete; end-of-recovery record written"
    );
    Ok(rec.end)
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

/// Open for writes, then in the background rename the old timeline's last
/// segment to `.partial` and checkpoint, as PostgreSQL requests a
/// checkpoint right after promotion.
///
/// The rename (PostgreSQL does it just before opening for writes) is off
/// the path to the first write: nothing reads that file by its old name
/// once the new timeline's copy of its prefix and the end-of-recovery
/// record are durable, and a crash before the rename only leaves it under
/// its old name (not archived as `.partial`), as a crash in PostgreSQL
/// between its end-of-recovery record and the rename does.
pub fn accept_writes(node: &Arc<Node>, partial: Option<PartialSegment>) {
    node.accept_writes();
    tracing::info!("database system is ready to accept connections (promoted)");
    let n = node.clone();
    let _ = std::thread::Builder::new()
        .name("promotion-checkpoint".into())
        .spawn(move || {
            if let Some(p) = partial {
                let archive_mode = n.config.archive_mode != ArchiveMode::Off;
                if let Err(e) =
                    rename_old_timeline_segment_partial(&n.segdir, p.prev_tli, p.at, archive_mode)
                {
                    tracing::warn!(error = %e, "could not rename the old timeline's last segment to .partial");
                }
            }
            if let Err(e) = n.checkpoint(CheckpointCause::EndOfRecovery) {
                tracing::warn!(error = %e, "checkpoint after promotion failed");
            }
        });
}
