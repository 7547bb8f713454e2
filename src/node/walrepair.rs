//! Healing a damaged WAL segment at start-up: a good copy is fetched from
//! the archive (`restore_command`), then from the nodes that may hold it
//! (a standby's `primary_conninfo`, then `wal_repair_sources`, asked with
//! WAL_RANGE), verified, and installed in place of the damaged copy, which
//! is kept in `quarantine/`.
//!
//! A copy is used only if it reads back across the damage: its segment
//! header names this system, timeline and position, and replay from the
//! damaged position — prev-link to the last good record included — goes
//! on, record CRCs checked, to the end of the segment. A copy that does not
//! is dropped and the next source is asked.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::archive::{mark_done, ArchiveError, RestoreCommand, RestoreOutcome};
use crate::config::conninfo::{redact_conninfo, ConnInfo};
use crate::config::Config;
use crate::datadir::WAL_DIR;
use crate::replication::client::ReplicationClient;
use crate::storage::{durable_create_dir, durable_remove_dir, durable_rename, OpenFor, SeqWriter};
use crate::storage::{Storage, StorageError};
use crate::wal::{ReaderConfig, WalReader};
use crate::{Lsn, SegNo, WalSegSize};

use crate::datadir::quarantine_dir;

/// Bound on connecting to a repair source and on each of its answers
/// (a conninfo's connect_timeout wins for the connection).
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a damaged segment may be fetched again from.
pub struct WalRepair<'a> {
    /// Every durable write and rename of the repair goes through it.
    pub storage: &'a dyn Storage,
    /// The archive (`restore_command`), when one is configured.
    pub restore: Option<RestoreCommand>,
    /// Nodes asked with WAL_RANGE after the archive, in order (conninfo
    /// strings: a standby's `primary_conninfo`, then `wal_repair_sources`).
    pub peers: Vec<String>,
}

impl<'a> WalRepair<'a> {
    /// The sources `settings` name; a standby (`standby`) asks its
    /// upstream too, before the others.
    pub fn from_settings(
        storage: &'a dyn Storage,
        datadir: &Path,
        settings: &Config,
        seg_size: WalSegSize,
        standby: bool,
    ) -> WalRepair<'a> {
        let restore = (!settings.restore_command.is_empty())
            .then(|| RestoreCommand::from_config(datadir, settings, seg_size));
        let upstream = settings.primary_conninfo.trim();
        let peers = (standby && !upstream.is_empty())
            .then(|| upstream.to_string())
            .into_iter()
            .chain(settings.wal_repair_sources.iter().cloned())
            .collect();
        WalRepair {
            storage,
            restore,
            peers,
        }
    }
}

/// A damaged WAL segment that recovery replaced with a good copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairedSegment {
    /// The segment's file name.
    pub file: String,
    /// Where replay had stopped in it.
    pub at: Lsn,
    /// Where the good copy came from: `archive`, or the node's
    /// `host:port`.
    pub source: String,
    /// Where the damaged copy was kept.
    pub quarantined: PathBuf,
}

/// The damage being healed.
pub(super) struct Damage<'c> {
    /// How the WAL of this system is read.
    pub cfg: &'c ReaderConfig,
    /// The damaged segment's file name.
    pub file: String,
    /// Where replay stopped.
    pub at: Lsn,
    /// The last good record before it (`INVALID` when none was read).
    pub prev_record: Lsn,
}

impl Damage<'_> {
    fn segno(&self) -> SegNo {
        self.at.segno(self.cfg.seg_size)
    }
}

/// A copy fetched into `dir/<file>`, not yet checked.
struct Candidate {
    source: String,
    /// Mark the installed segment archived (it came from the archive).
    archived: bool,
}

/// Fetch a good copy of the damaged segment from each source in turn and
/// install the first that verifies. `Ok(Err(what was tried))` when none
/// does (nothing is left behind then); a failed write, rename or fsync is
/// an error.
pub(super) fn repair_segment(
    datadir: &Path,
    damage: &Damage<'_>,
    repair: &WalRepair<'_>,
) -> Result<Result<RepairedSegment, String>, RepairError> {
    if repair.restore.is_none() && repair.peers.is_empty() {
        return Ok(Err(
            "no restore_command and no wal_repair_sources are set".into()
        ));
    }
    let st = repair.storage;
    let failed = |e: StorageError| RepairError::Storage {
        file: damage.file.clone(),
        source: e,
    };
    let kept_dir = quarantine_dir(datadir, "damaged-wal");
    durable_create_dir(st, &kept_dir).map_err(failed)?;
    let check_dir = kept_dir.join("candidate");
    let mut tried = Vec::new();
    for n in 0..=repair.peers.len() {
        durable_create_dir(st, &check_dir).map_err(failed)?;
        let fetched = match n {
            0 => fetch_from_archive(datadir, damage, repair, &check_dir)?,
            _ => fetch_from_peer(damage, &repair.peers[n - 1], st, &check_dir),
        };
        let verdict = fetched.and_then(|c| match verify(damage, &check_dir) {
            Ok(()) => Ok(c),
            Err(why) => Err(format!("the copy from {} {why}", c.source)),
        });
        match verdict {
            Ok(c) => {
                let installed = install(datadir, damage, st, &kept_dir, &check_dir, c)?;
                durable_remove_dir(st, &check_dir).map_err(failed)?;
                return Ok(Ok(installed));
            }
            Err(why) if why.is_empty() => {}
            Err(why) => {
                tracing::warn!(file = %damage.file, "no good copy: {why}");
                tried.push(why);
            }
        }
        durable_remove_dir(st, &check_dir).map_err(failed)?;
    }
    durable_remove_dir(st, &kept_dir).map_err(failed)?;
    Ok(Err(if tried.is_empty() {
        "no source was asked".into()
    } else {
        tried.join("; ")
    }))
}

/// Errors that stop a repair half-way (the damaged copy stays in place
/// until the good one is verified, so nothing is lost).
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// Moving the verified copy into `wal/` (or the damaged one out) failed.
    #[error("could not repair WAL segment {file}: {source}")]
    Storage {
        /// The segment being repaired.
        file: String,
        /// The failed durable write or rename.
        source: StorageError,
    },
    /// The repaired segment could not be marked as already archived.
    #[error("could not mark the repaired WAL segment {file} archived: {source}")]
    Archive {
        /// The segment being repaired.
        file: String,
        /// The failed `.done` status write.
        source: ArchiveError,
    },
}

/// The archive's copy into `dir`. `Err("")`: no archive is configured.
fn fetch_from_archive(
    datadir: &Path,
    damage: &Damage<'_>,
    repair: &WalRepair<'_>,
    dir: &Path,
) -> Result<Result<Candidate, String>, RepairError> {
    let Some(restore) = &repair.restore else {
        return Ok(Err(String::new()));
    };
    let file = &damage.file;
    let restored = match restore.restore(file, None, None) {
        RestoreOutcome::Restored(r) => r,
        RestoreOutcome::NotInArchive { .. } => {
            return Ok(Err(format!("restore_command does not have {file}")))
        }
        RestoreOutcome::Failed { reason, .. } => {
            return Ok(Err(format!("restore_command failed for {file}: {reason}")))
        }
    };
    durable_rename(
        repair.storage,
        &datadir.join(&restored.temp_path),
        &dir.join(file),
    )
    .map_err(|source| RepairError::Storage {
        file: file.clone(),
        source,
    })?;
    Ok(Ok(Candidate {
        source: "archive".into(),
        archived: true,
    }))
}

/// The segment from the node at `conninfo`, with WAL_RANGE, into `dir`
/// (written and fsynced). `Err(why)` when it cannot be had.
fn fetch_from_peer(
    damage: &Damage<'_>,
    conninfo: &str,
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Candidate, String> {
    let shown = redact_conninfo(conninfo);
    let info = ConnInfo::parse(conninfo).map_err(|e| format!("\"{shown}\": {e}"))?;
    let source = format!("{}:{}", info.host, info.port);
    let no = |e: &dyn std::fmt::Display| format!("{source} could not give it: {e}");
    let mut client = ReplicationClient::connect(&info, PEER_TIMEOUT).map_err(|e| no(&e))?;
    let id = client.identify_system().map_err(|e| no(&e))?;
    if id.system_id != damage.cfg.system_id {
        client.close();
        return Err(format!(
            "{source} belongs to another system ({}, this one is {})",
            id.system_id, damage.cfg.system_id
        ));
    }
    let seg_size = damage.cfg.seg_size;
    let begin = damage.segno().start_lsn(seg_size);
    let end = Lsn(begin.0 + seg_size.bytes());
    let tli = damage.cfg.history.timeline_of(begin);
    let path = dir.join(&damage.file);
    let mut out = SeqWriter::open(storage, &path, OpenFor::CreateNew).map_err(|e| no(&e))?;
    client
        .wal_range(begin, end, Some(tli), &mut |b| {
            out.put(b).map_err(StorageError::into_io)
        })
        .map_err(|e| no(&e))?;
    client.close();
    out.finish().map_err(|e| no(&e))?;
    Ok(Candidate {
        source,
        archived: false,
    })
}

/// Whether the copy in `dir` reads back across the damage: from the
/// damaged position (its prev-link the last good record) to the end of
/// the segment, with the local next segment beside it for a record that
/// crosses into it. `Err(why not)`.
fn verify(damage: &Damage<'_>, dir: &Path) -> Result<(), String> {
    let cfg = damage.cfg;
    let seg_end = Lsn(damage.segno().start_lsn(cfg.seg_size).0 + cfg.seg_size.bytes());
    let next_file =
        SegNo(damage.segno().0 + 1).file_name(cfg.history.timeline_of(seg_end), cfg.seg_size);
    let local_next = cfg.dir.join(&next_file);
    if local_next.exists() {
        std::fs::hard_link(&local_next, dir.join(&next_file))
            .map_err(|e| format!("could not be checked: linking {next_file}: {e}"))?;
    }
    let check = ReaderConfig {
        dir: dir.to_path_buf(),
        ..cfg.clone()
    };
    let mut reader = WalReader::new(check, damage.at);
    reader.seek(
        damage.at,
        damage.prev_record.is_valid().then_some(damage.prev_record),
    );
    let stop = loop {
        match reader.read_record() {
            Ok(_) if reader.next_lsn() >= seg_end => return Ok(()),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    Err(format!(
        "does not read back across the damage: it stops at {} ({stop})",
        reader.next_lsn()
    ))
}

/// The damaged copy into `kept_dir`, the verified one from `check_dir`
/// into `wal/`: each step a durable rename, so a crash in between leaves
/// the segment missing from `wal/` but whole in one of the two places.
fn install(
    datadir: &Path,
    damage: &Damage<'_>,
    st: &dyn Storage,
    kept_dir: &Path,
    check_dir: &Path,
    good: Candidate,
) -> Result<RepairedSegment, RepairError> {
    let file = &damage.file;
    let failed = |source: StorageError| RepairError::Storage {
        file: file.clone(),
        source,
    };
    let wal_path = datadir.join(WAL_DIR).join(file);
    let kept = kept_dir.join(file);
    durable_rename(st, &wal_path, &kept).map_err(failed)?;
    durable_rename(st, &check_dir.join(file), &wal_path).map_err(failed)?;
    if good.archived {
        mark_done(st, datadir, file).map_err(|source| RepairError::Archive {
            file: file.clone(),
            source,
        })?;
    }
    Ok(RepairedSegment {
        file: file.clone(),
        at: damage.at,
        source: good.source,
        quarantined: kept,
    })
}
