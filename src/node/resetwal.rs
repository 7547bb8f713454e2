//! `walrep resetwal`: accept the loss of the WAL after a damaged record.
//!
//! Crash recovery refuses to start when an invalid record is followed by
//! valid WAL (see [`super::recovery`]): starting would write over it. When
//! no good copy of the damaged segment exists anywhere, the operator may
//! accept the loss explicitly. Nothing is deleted: the damaged segment is
//! copied, every later segment (and its archive status) is moved into
//! `quarantine/<time>-resetwal/`, and `report.txt` there lists the
//! position, the reason, and every key the lost records wrote. The next
//! start then ends recovery at the damage, as PostgreSQL would have.
//!
//! Unlike PostgreSQL's pg_resetwal this rewrites no control file and
//! invents no WAL position: the store is rebuilt from the last checkpoint
//! and the WAL before the damage, so it is consistent, only older.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::datadir::quarantine_dir;
use crate::datadir::{DataDir, DataDirLock};
use crate::storage::{durable_create, durable_create_dir, durable_rename, Storage};
use crate::store::record::{self, RM_KV};
use crate::store::ControlFile;
use crate::wal::{self, find_end_of_wal, ReaderConfig, WalAfter, WalReader};
use crate::Lsn;

/// Keys listed by name in the report at most (the count is always whole).
const MAX_KEYS_LISTED: usize = 10_000;

/// Why `walrep resetwal` refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ResetWalError {
    /// The data directory is missing, or locked by a running node.
    #[error("{0}")]
    DataDir(String),
    /// The control file is unreadable: resetwal needs its checkpoint.
    #[error("could not read the control file: {0}")]
    Control(String),
    /// The WAL could not be read to find its end.
    #[error("could not read WAL: {0}")]
    Read(String),
    /// Moving WAL into `quarantine/` failed.
    #[error("could not quarantine WAL: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// A directory could not be listed.
    #[error("could not list {}: {source}", dir.display())]
    List {
        /// The directory.
        dir: PathBuf,
        /// The listing error.
        #[source]
        source: std::io::Error,
    },
}

/// What `walrep resetwal` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetWalOutcome {
    /// The WAL ends cleanly at `end`: nothing to accept, nothing moved.
    NothingToReset {
        /// Where the last valid record ends.
        end: Lsn,
    },
    /// The WAL after `at` was moved into `quarantine`.
    Reset(ResetReport),
}

/// The loss `walrep resetwal` accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetReport {
    /// Where recovery stops now: the damaged record.
    pub at: Lsn,
    /// Why the record at `at` is invalid.
    pub reason: String,
    /// The valid WAL that followed the damage and is now set aside.
    pub after: WalAfter,
    /// Where everything went; `report.txt` inside it.
    pub quarantine: PathBuf,
    /// Files moved (or, for the damaged segment, copied) there.
    pub files: Vec<String>,
    /// Their bytes.
    pub bytes: u64,
    /// Distinct keys the set-aside records wrote.
    pub keys: u64,
}

/// Accept the loss of the WAL after the damaged record of `datadir` (the
/// node must be stopped: its lock is taken).
pub fn reset_wal(datadir: &Path, storage: &dyn Storage) -> Result<ResetWalOutcome, ResetWalError> {
    let dir = DataDir::new(datadir);
    let _lock =
        DataDirLock::acquire(&dir, &[]).map_err(|e| ResetWalError::DataDir(e.to_string()))?;
    let control = ControlFile::read(datadir).map_err(|e| ResetWalError::Control(e.to_string()))?;
    let history = wal::read_history(&dir.wal(), control.timeline)
        .map_err(|e| ResetWalError::Read(e.to_string()))?;
    let cfg = ReaderConfig {
        dir: dir.wal(),
        system_id: control.system_identifier,
        seg_size: control.wal_segment_size,
        history,
    };
    let end = find_end_of_wal(cfg.clone(), control.redo_lsn, None)
        .map_err(|e| ResetWalError::Read(e.to_string()))?;
    let after = wal::valid_wal_after(cfg.clone(), end.end)
        .map_err(|e| ResetWalError::Read(e.to_string()))?;
    let Some(after) = after else {
        return Ok(ResetWalOutcome::NothingToReset { end: end.end });
    };
    let report = keep_wal_after_damage(
        storage,
        datadir,
        &cfg,
        &Damaged {
            at: end.end,
            reason: end.stop.to_string(),
            after,
        },
        KeepHow::MoveLater,
    )?;
    Ok(ResetWalOutcome::Reset(report))
}

/// The damage whose following WAL is set aside.
pub struct Damaged {
    /// The invalid record.
    pub at: Lsn,
    /// Why it is invalid.
    pub reason: String,
    /// The valid WAL after it.
    pub after: WalAfter,
}

/// What happens to the segments after the damaged one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepHow {
    /// Moved out of `wal/` (`walrep resetwal`: recovery must stop there).
    MoveLater,
    /// Copied (a promotion: the running node's WAL is left alone).
    CopyAll,
}

/// Keep the segments from the damaged one on in a new
/// `quarantine/<time>-<what>/` with `report.txt` (position, reason, the
/// valid WAL kept and every key it wrote).
pub fn keep_wal_after_damage(
    storage: &dyn Storage,
    datadir: &Path,
    cfg: &ReaderConfig,
    damaged: &Damaged,
    how: KeepHow,
) -> Result<ResetReport, ResetWalError> {
    let keys = lost_keys(cfg, &damaged.after);
    let what = match how {
        KeepHow::MoveLater => "resetwal",
        KeepHow::CopyAll => "promoted-past-damage",
    };
    let quarantine = quarantine_dir(datadir, what);
    durable_create_dir(storage, &quarantine)?;
    let (files, bytes) = set_aside(storage, cfg, damaged.at, &quarantine, how)?;
    let report = ResetReport {
        at: damaged.at,
        reason: damaged.reason.clone(),
        after: damaged.after.clone(),
        quarantine: quarantine.clone(),
        files,
        bytes,
        keys: keys.len() as u64,
    };
    let heading = match how {
        KeepHow::MoveLater => "walrep resetwal: the WAL after a damaged record was set aside",
        KeepHow::CopyAll => {
            "walrep promote: recovery ended at a damaged record; the WAL after it was not replayed"
        }
    };
    durable_create(
        storage,
        &quarantine.join("report.txt"),
        report_text(heading, &report, &keys).as_bytes(),
    )?;
    Ok(report)
}

/// Copy the damaged segment and move (or copy) every later one, with
/// their archive status files when moved, into `quarantine`.
fn set_aside(
    storage: &dyn Storage,
    cfg: &ReaderConfig,
    at: Lsn,
    quarantine: &Path,
    how: KeepHow,
) -> Result<(Vec<String>, u64), ResetWalError> {
    let damaged = at.segno(cfg.seg_size);
    let list = |dir: &Path| -> Result<Vec<String>, ResetWalError> {
        let rd = std::fs::read_dir(dir).map_err(|source| ResetWalError::List {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect())
    };
    let segno_of = |name: &str| {
        let base = name.strip_suffix(".partial").unwrap_or(name);
        crate::SegNo::parse_file_name(base, cfg.seg_size).map(|(_, s)| s)
    };
    let mut names = list(&cfg.dir)?;
    names.sort();
    let (mut files, mut bytes) = (Vec::new(), 0);
    for name in names {
        let Some(segno) = segno_of(&name) else {
            continue;
        };
        let from = cfg.dir.join(&name);
        let to = quarantine.join(&name);
        bytes += std::fs::metadata(&from).map_or(0, |m| m.len());
        let copied = segno.0 == damaged.0 || (how == KeepHow::CopyAll && segno.0 > damaged.0);
        if copied {
            let copy = std::fs::read(&from).map_err(|source| ResetWalError::List {
                dir: from.clone(),
                source,
            })?;
            durable_create(storage, &to, &copy)?;
        } else if segno.0 > damaged.0 {
            durable_rename(storage, &from, &to)?;
        } else {
            continue;
        }
        files.push(name);
    }
    let status = cfg.dir.join("archive_status");
    if how == KeepHow::MoveLater && status.is_dir() {
        for name in list(&status)? {
            let seg = name.split('.').next().unwrap_or_default();
            if segno_of(seg).is_some_and(|s| s.0 > damaged.0) {
                durable_rename(storage, &status.join(&name), &quarantine.join(&name))?;
            }
        }
    }
    Ok((files, bytes))
}

/// Every key the valid records after the damage wrote (they are lost).
fn lost_keys(cfg: &ReaderConfig, after: &WalAfter) -> BTreeSet<Vec<u8>> {
    let mut reader = WalReader::new(cfg.clone(), after.from);
    reader.seek(after.from, None);
    let mut keys = BTreeSet::new();
    while let Ok(rec) = reader.read_record() {
        if rec.lsn >= after.to {
            break;
        }
        if rec.rmid != RM_KV {
            continue;
        }
        if let Ok(kv) = record::decode(&rec.payload) {
            keys.extend(kv.ops.iter().filter_map(|op| op.key().map(<[u8]>::to_vec)));
        }
    }
    keys
}

fn report_text(heading: &str, r: &ResetReport, keys: &BTreeSet<Vec<u8>>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{heading}");
    let _ = writeln!(s, "damaged record at: {}", r.at);
    let _ = writeln!(s, "reason: {}", r.reason);
    let _ = writeln!(
        s,
        "valid WAL set aside: {} records from {} to {}",
        r.after.records, r.after.from, r.after.to
    );
    let _ = writeln!(s, "files: {} ({} bytes)", r.files.join(" "), r.bytes);
    let _ = writeln!(s, "keys written by the set-aside records: {}", keys.len());
    for k in keys.iter().take(MAX_KEYS_LISTED) {
        let _ = writeln!(s, "key: {}", String::from_utf8_lossy(k));
    }
    if keys.len() > MAX_KEYS_LISTED {
        let _ = writeln!(s, "... and {} more", keys.len() - MAX_KEYS_LISTED);
    }
    s
}
