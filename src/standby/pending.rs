//! `backup_in_progress`: the marker of a base backup still being copied
//! into a data directory. `walrep basebackup` writes it durably before
//! anything else and removes it durably last, so its removal is the copy's
//! completion marker: a directory that still has it is never recovered as
//! if complete (a killed copy, or a two-phase copy whose bulk is still
//! arriving). A standby started on it streams WAL and waits
//! (`AwaitingBaseBackup`) until the file is gone.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::events::EventSender;

use super::replayed::Replayed;
use super::{StandbyError, StandbyHandles};
use crate::states::recovery::Event;
use crate::store::{ClusterState, ControlFile};

use crate::storage::{durable_remove, durable_replace, Storage, StorageError};
use crate::{Lsn, TimelineId, WalSegSize};

/// The marker's name inside the data directory.
pub const BACKUP_IN_PROGRESS_FILE: &str = "backup_in_progress";

/// Longest marker read (it is a few lines).
const MAX_MARKER_BYTES: u64 = 4096;

/// What a standby needs to stream before the copy is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBackup {
    /// The upstream's system identifier (the walreceiver checks it).
    pub system_id: u64,
    /// The copy's start (its redo point): streaming begins there.
    pub start: Lsn,
    /// The copy's timeline.
    pub tli: TimelineId,
    /// The upstream's WAL segment size.
    pub wal_segment_size: WalSegSize,
    /// Phase 1 of a two-phase copy is done: a standby may start now.
    pub two_phase: bool,
    /// The server's id of the backup, which `walrep basebackup --resume`
    /// names to finish it from the same checkpoint.
    pub backup_id: Option<String>,
    /// The replication slot made on the upstream for this copy.
    pub slot: Option<String>,
}

/// Why the marker could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    /// The marker exists but could not be read.
    #[error("could not read \"{path}\": {source}")]
    Read {
        /// The marker's path.
        path: String,
        /// The read error.
        source: std::io::Error,
    },
    /// The marker's text is not what a copy writes.
    #[error("invalid data in \"{path}\": {detail}")]
    Invalid {
        /// The marker's path.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Writing or removing the marker durably failed.
    #[error(transparent)]
    Write(#[from] StorageError),
}

impl PendingBackup {
    /// The marker's text (PostgreSQL backup_label style: `KEY: value`).
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "SYSTEM IDENTIFIER: {}\nSTART WAL LOCATION: {}\nSTART TIMELINE: {}\n\
             WAL SEGMENT SIZE: {}\nTWO PHASE: {}\n",
            self.system_id,
            self.start,
            self.tli.0,
            self.wal_segment_size.bytes(),
            if self.two_phase { "yes" } else { "no" },
        );
        if let Some(id) = &self.backup_id {
            text.push_str(&format!("BACKUP ID: {id}\n"));
        }
        if let Some(slot) = &self.slot {
            text.push_str(&format!("SLOT NAME: {slot}\n"));
        }
        text
    }

    /// Parse the marker's text.
    pub fn parse(text: &str) -> Result<PendingBackup, String> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                .ok_or_else(|| format!("no {name} line"))
        };
        let num = |name: &str| {
            field(name).and_then(|v| v.parse::<u64>().map_err(|_| format!("{name} {v:?}")))
        };
        let start = field("START WAL LOCATION")?;
        let tli = u32::try_from(num("START TIMELINE")?)
            .ok()
            .filter(|t| *t > 0)
            .ok_or("START TIMELINE out of range")?;
        Ok(PendingBackup {
            system_id: num("SYSTEM IDENTIFIER")?,
            start: start
                .parse()
                .map_err(|_| format!("START WAL LOCATION {start:?}"))?,
            tli: TimelineId(tli),
            wal_segment_size: WalSegSize::new(num("WAL SEGMENT SIZE")?)
                .map_err(|e| format!("WAL SEGMENT SIZE: {e}"))?,
            two_phase: field("TWO PHASE")? == "yes",
            backup_id: field("BACKUP ID").ok().map(str::to_string),
            slot: field("SLOT NAME").ok().map(str::to_string),
        })
    }

    /// The marker in `datadir`, if there is one.
    pub fn read(datadir: &Path) -> Result<Option<PendingBackup>, PendingError> {
        use std::io::Read;
        let path = datadir.join(BACKUP_IN_PROGRESS_FILE);
        let shown = path.display().to_string();
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PendingError::Read {
                    path: shown,
                    source,
                })
            }
        };
        let mut text = String::new();
        file.take(MAX_MARKER_BYTES)
            .read_to_string(&mut text)
            .map_err(|source| PendingError::Read {
                path: shown.clone(),
                source,
            })?;
        PendingBackup::parse(&text)
            .map(Some)
            .map_err(|detail| PendingError::Invalid {
                path: shown,
                detail,
            })
    }

    /// Write (or replace) the marker durably.
    pub fn write(&self, storage: &dyn Storage, datadir: &Path) -> Result<(), PendingError> {
        durable_replace(
            storage,
            &datadir.join(BACKUP_IN_PROGRESS_FILE),
            self.to_text().as_bytes(),
        )?;
        Ok(())
    }
}

/// Whether `datadir` still has the marker.
pub fn in_progress(datadir: &Path) -> bool {
    datadir.join(BACKUP_IN_PROGRESS_FILE).exists()
}

/// Remove the marker durably: the copy is complete.
pub fn mark_complete(storage: &dyn Storage, datadir: &Path) -> Result<(), PendingError> {
    durable_remove(storage, &datadir.join(BACKUP_IN_PROGRESS_FILE))?;
    Ok(())
}

/// How often the waiter looks for the completion marker (the copy runs
/// in another process and leaves no other signal; a standby waits for
/// minutes or hours, so a tenth of a second is nothing).
const COMPLETION_POLL: Duration = Duration::from_millis(100);

/// Start the thread that waits for the copy to complete, loads it and
/// reports `RecoveryStarted`; it ends then, or when `stop` is set.
pub fn spawn_waiter(
    h: StandbyHandles,
    events: EventSender<Event>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, StandbyError> {
    std::thread::Builder::new()
        .name("backup-wait".into())
        .spawn(move || {
            let _span = tracing::info_span!("backup-wait").entered();
            while in_progress(&h.datadir) {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(COMPLETION_POLL);
            }
            match load_completed(&h) {
                Ok(ev) => {
                    let _ = events.send(ev);
                }
                Err(e) => h.hooks.fatal(e),
            }
        })
        .map_err(|source| StandbyError::Spawn {
            thread: "backup-wait",
            source,
        })
}

/// The copy is complete: check that it is the one streamed for, load its
/// snapshot, adopt its control file, and say where recovery starts.
fn load_completed(h: &StandbyHandles) -> Result<Event, StandbyError> {
    let bad = |m: String| StandbyError::CompletedBackup(m);
    let control = ControlFile::read(&h.datadir)?;
    let streamed = h.control.get();
    if control.system_identifier != streamed.system_identifier
        || control.redo_lsn != streamed.redo_lsn
    {
        return Err(bad(format!(
            "it starts at {} (system {}), but WAL was streamed for a copy starting at {} (system {})",
            control.redo_lsn,
            control.system_identifier,
            streamed.redo_lsn,
            streamed.system_identifier
        )));
    }
    let snapshot = crate::store::checkpoint::load_snapshot(
        &h.datadir,
        control.checkpoint_id,
        control.checkpoint_chunks,
        &h.store,
    )
    .map_err(|e| bad(e.to_string()))?;
    let history =
        crate::wal::read_history(&h.datadir.join(crate::datadir::WAL_DIR), control.timeline)
            .map_err(|source| StandbyError::History {
                tli: control.timeline,
                source,
            })?;
    h.control.update(|c| {
        *c = control.clone();
        c.state = ClusterState::InArchiveRecovery;
    })?;
    h.progress.replayed.publish(Replayed {
        end: control.redo_lsn,
        last_record: control.checkpoint_lsn,
        tli: history.timeline_of(control.redo_lsn),
        ..Replayed::default()
    });
    h.progress.base_pending.store(false, Ordering::SeqCst);
    tracing::info!(keys = snapshot.keys, redo = %control.redo_lsn, min_recovery_point = %control.min_recovery_point, "base backup complete: loaded its snapshot, redo starts");
    Ok(Event::RecoveryStarted {
        redo_lsn: control.redo_lsn,
        tli: control.timeline,
        history,
        min_recovery_point: control.min_recovery_point,
        crash_recovery_first: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_parses_back_and_garbage_is_refused() {
        let p = PendingBackup {
            system_id: 7_300_000_000_000_000_001,
            start: Lsn(0x2000028),
            tli: TimelineId(3),
            wal_segment_size: WalSegSize::new(1 << 20).unwrap(),
            two_phase: true,
            backup_id: Some("0af3".into()),
            slot: Some("walrep_s".into()),
        };
        assert_eq!(PendingBackup::parse(&p.to_text()).unwrap(), p);
        let old = PendingBackup {
            backup_id: None,
            slot: None,
            ..p.clone()
        };
        assert_eq!(PendingBackup::parse(&old.to_text()).unwrap(), old);
        for bad in [
            "",
            "SYSTEM IDENTIFIER: x\n",
            &p.to_text()
                .replace("START TIMELINE: 3", "START TIMELINE: 0"),
            &p.to_text().replace("1048576", "1000"),
        ] {
            assert!(PendingBackup::parse(bad).is_err(), "{bad:?}");
        }
    }
}
