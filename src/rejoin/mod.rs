//! `walrep rejoin`: an old primary's way back as a standby of the node
//! that replaced it (PostgreSQL's pg_rewind, for this store). Never done
//! implicitly.
//!
//! 1. Read the new primary's timeline history and find where this node's
//!    timeline ends on it: the fork.
//! 2. The WAL this node wrote past the fork was never on the new primary:
//!    copy the segments that hold it into `quarantine/<time>/` with a report
//!    (records, keys, bytes) instead of deleting it, then cut the local WAL
//!    at the fork.
//! 3. The store is rebuilt at the fork by the next start: the last
//!    checkpoint (which must be at or before the fork) plus the local WAL up
//!    to it. When the last checkpoint is past the fork nothing is changed
//!    and the error says to take a new base backup.
//! 4. Write the standby configuration: the next `walrep start` follows the
//!    new primary's timeline from the fork.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use walrep_states::{HistoryError, TimelineHistory};

use crate::datadir::{DataDir, DataDirError, DataDirLock};
use crate::replication::client::{ClientError, ConnInfo, ReplicationClient};
use crate::storage::{
    durable_create, durable_create_dir, durable_remove, sync_dir, OpenFor, SeqWriter, Storage,
    StorageError,
};
use crate::store::control::ControlError;
use crate::store::ControlFile;
use crate::wal::timeline::{compare_history_ids, format_history_id, read_history, TimelineError};
use crate::wal::{ReaderConfig, WalReader, RM_KV};
use crate::{Lsn, TimelineId};

/// The directory under the data directory that keeps what rejoin cut off.
pub use crate::datadir::QUARANTINE_DIR;
/// The report inside each quarantine directory.
pub const REPORT_FILE: &str = "report.txt";

/// Why a rejoin did not happen (nothing was changed unless the message
/// says so).
#[derive(Debug, thiserror::Error)]
pub enum RejoinError {
    /// This data directory is missing, or a node is running on it.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The local control file could not be read or updated.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The new primary could not be reached or refused a command.
    #[error("could not talk to the new primary: {0}")]
    Client(#[from] ClientError),
    #[error(
        "the new primary belongs to another system (identifier {upstream}, this node's is {local})"
    )]
    /// IDENTIFY_SYSTEM gave another system identifier: not this cluster.
    OtherSystem {
        /// The new primary's system identifier.
        upstream: u64,
        /// This node's.
        local: u64,
    },
    /// The new primary is not on a later timeline: it was never promoted past this node.
    #[error("the new primary is on timeline {upstream}, not past this node's timeline {local}: there is no fork to rejoin at")]
    NotAhead {
        /// The new primary's timeline.
        upstream: u32,
        /// This node's timeline.
        local: u32,
    },
    /// The new primary sent a history file that does not parse.
    #[error("the new primary's history file of timeline {tli} is invalid: {source}")]
    History {
        /// The timeline of the history file.
        tli: u32,
        /// The parse error.
        #[source]
        source: HistoryError,
    },
    /// This node's timeline is not an ancestor of the new primary's: the WAL is unrelated.
    #[error("this node's timeline {local} is not on the new primary's history (timeline {upstream}): its WAL is unrelated; take a new base backup with walrep basebackup")]
    NotOnHistory {
        /// This node's timeline.
        local: u32,
        /// The new primary's timeline.
        upstream: u32,
    },
    /// The same timeline number comes from two promotions (history ids differ).
    #[error("timeline {tli} has history id {local} here and {upstream} on the new primary: they come from different promotions (fork at {fork}); take a new base backup with walrep basebackup")]
    OtherPromotion {
        /// The timeline with two histories.
        tli: u32,
        /// Its history id here.
        local: String,
        /// Its history id on the new primary.
        upstream: String,
        /// Where this node's timeline forks on the new primary's history.
        fork: Lsn,
    },
    /// The last checkpoint is past the fork, so the store cannot be rebuilt at it (pg_rewind copies
    /// blocks instead; this store needs a new base backup).
    #[error("no local checkpoint is old enough: the last checkpoint is at {checkpoint}, past the fork at {fork}; take a new base backup with walrep basebackup")]
    CheckpointPastFork {
        /// The last local checkpoint.
        checkpoint: Lsn,
        /// Where the timelines fork.
        fork: Lsn,
    },
    /// A local history file could not be read or written.
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    /// Writing, fsyncing or moving a file failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A file or directory could not be read, listed or written.
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// `standby.signal` or the upstream settings could not be written.
    #[error("could not write the standby configuration: {0}")]
    StandbyConfig(String),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RejoinError {
    let path = path.to_path_buf();
    move |source| RejoinError::Io { op, path, source }
}

/// What `walrep rejoin` is asked to do.
#[derive(Debug)]
pub struct RejoinOptions {
    /// The data directory of the old primary (not running).
    pub datadir: PathBuf,
    /// The new primary's replication address and user.
    pub conninfo: ConnInfo,
    /// Bound on connecting to the new primary and on each of its replies.
    pub timeout: Duration,
    /// The IO seam every file rejoin writes, moves or removes goes through.
    pub storage: std::sync::Arc<dyn Storage>,
}

/// What a rejoin did.
#[derive(Debug, Clone)]
pub struct RejoinReport {
    /// This node's timeline before the rejoin.
    pub local_tli: TimelineId,
    /// The new primary's timeline, which the next start follows.
    pub upstream_tli: TimelineId,
    /// Where this node's timeline ends on the new primary's history.
    pub fork: Lsn,
    /// The end of this node's valid WAL (the fork when nothing was past it).
    pub local_end: Lsn,
    /// Records written past the fork.
    pub records: u64,
    /// Keys those records wrote (set or deleted), in WAL order, once each.
    pub keys: Vec<Vec<u8>>,
    /// Where the cut-off WAL was kept (`None` when nothing was past the fork).
    pub quarantine: Option<PathBuf>,
    /// The primary_conninfo written.
    pub conninfo: String,
}

impl RejoinReport {
    /// WAL bytes past the fork.
    pub fn bytes(&self) -> u64 {
        self.local_end.0.saturating_sub(self.fork.0)
    }
}

/// Rejoin the node in `opts.datadir` (which must not be running) to the
/// primary at `opts.conninfo`.
pub fn rejoin(opts: &RejoinOptions) -> Result<RejoinReport, RejoinError> {
    let dir = DataDir::new(&opts.datadir);
    dir.check()?;
    let _lock = DataDirLock::acquire(&dir, &[])?;
    let control = ControlFile::read(&dir.root)?;
    let local_tli = control.timeline;
    let mut client = ReplicationClient::connect(&opts.conninfo, opts.timeout)?;
    let id = client.identify_system()?;
    if id.system_id != control.system_identifier {
        return Err(RejoinError::OtherSystem {
            upstream: id.system_id,
            local: control.system_identifier,
        });
    }
    if id.timeline <= local_tli {
        return Err(RejoinError::NotAhead {
            upstream: id.timeline.0,
            local: local_tli.0,
        });
    }
    let (_, content) = client.timeline_history(id.timeline)?;
    let text = String::from_utf8_lossy(&content).into_owned();
    let history =
        TimelineHistory::parse(id.timeline, &text).map_err(|source| RejoinError::History {
            tli: id.timeline.0,
            source,
        })?;
    let fork = match history.switch_point(local_tli) {
        Some(Some(fork)) => fork,
        _ => {
            return Err(RejoinError::NotOnHistory {
                local: local_tli.0,
                upstream: id.timeline.0,
            })
        }
    };
    check_same_promotions(&dir.wal(), local_tli, &text)?;
    if control.checkpoint_lsn >= fork {
        return Err(RejoinError::CheckpointPastFork {
            checkpoint: control.checkpoint_lsn,
            fork,
        });
    }
    let cfg = ReaderConfig {
        dir: dir.wal(),
        system_id: control.system_identifier,
        seg_size: control.wal_segment_size,
        history: read_history(&dir.wal(), local_tli)?,
    };
    let past = scan_past(cfg, fork);
    let st = &*opts.storage;
    // A slot the node already names stays named (pg_rewind leaves
    // primary_slot_name alone); read before anything is changed, so a
    // configuration that cannot be read changes nothing.
    let slot = crate::config::Config::load(&dir.config_file(), &[])
        .map_err(|e| RejoinError::StandbyConfig(e.to_string()))?
        .primary_slot_name;
    let slot = Some(slot.as_str()).filter(|s| !s.is_empty());
    let quarantine = if past.records > 0 {
        let q = quarantine(st, &dir, &control, local_tli, fork, &past)?;
        cut_wal(st, &dir, &control, local_tli, fork, past.end)?;
        Some(q)
    } else {
        None
    };
    // What is left of this timeline ends at or before the fork, so the
    // new primary holds all of it (the same timeline, from the same
    // primary): nothing needs holding back as unconfirmed. A standby's
    // record of its old stream's confirmed flush would hold it and have
    // it streamed again, switch segment included, on the old timeline.
    crate::standby::confirmed::forget(st, &dir.root);
    let conninfo = standby_conninfo(&opts.conninfo);
    crate::backup::standby_config::write(st, &dir.root, &conninfo, slot)
        .map_err(|e| RejoinError::StandbyConfig(e.to_string()))?;
    Ok(RejoinReport {
        local_tli,
        upstream_tli: id.timeline,
        fork,
        local_end: past.end.max(fork),
        records: past.records,
        keys: past.keys,
        quarantine,
        conninfo,
    })
}

/// Refuse when our timeline's history file and the upstream's name a
/// timeline with different history ids.
fn check_same_promotions(
    wal_dir: &Path,
    local_tli: TimelineId,
    upstream_text: &str,
) -> Result<(), RejoinError> {
    let Some(local) = crate::wal::timeline::read_history_text(wal_dir, local_tli)? else {
        return Ok(());
    };
    compare_history_ids(&local, upstream_text).map_err(|m| RejoinError::OtherPromotion {
        tli: m.tli.0,
        local: format_history_id(m.local_id),
        upstream: format_history_id(m.upstream_id),
        fork: m.fork,
    })
}

/// The WAL past the fork.
#[derive(Debug, Default)]
struct Past {
    records: u64,
    keys: Vec<Vec<u8>>,
    end: Lsn,
}

/// Read the records from `fork` to the end of valid WAL.
fn scan_past(cfg: ReaderConfig, fork: Lsn) -> Past {
    let mut reader = WalReader::new(cfg, fork);
    reader.seek(fork, None);
    let mut past = Past {
        end: fork,
        ..Past::default()
    };
    let mut seen = std::collections::HashSet::new();
    while let Ok(r) = reader.read_record() {
        past.records += 1;
        past.end = r.end;
        if r.rmid == RM_KV {
            if let Ok(kv) = crate::store::record::decode(&r.payload) {
                for key in kv.ops.iter().filter_map(|op| op.key()) {
                    if seen.insert(key.to_vec()) {
                        past.keys.push(key.to_vec());
                    }
                }
            }
        }
    }
    past
}

/// Copy the segments holding `fork..past.end` into a new quarantine
/// directory with a report; returns the directory.
fn quarantine(
    st: &dyn Storage,
    dir: &DataDir,
    control: &ControlFile,
    tli: TimelineId,
    fork: Lsn,
    past: &Past,
) -> Result<PathBuf, RejoinError> {
    let q = dir
        .root
        .join(QUARANTINE_DIR)
        .join(utc_stamp(SystemTime::now()));
    durable_create_dir(st, &q)?;
    let seg = control.wal_segment_size;
    let mut files = Vec::new();
    for segno in fork.segno(seg).0..=past.end.segno(seg).0 {
        let name = crate::SegNo(segno).file_name(tli, seg);
        let from = dir.wal().join(&name);
        let Ok(bytes) = fs::read(&from) else { continue };
        let mut w = SeqWriter::open(st, &q.join(&name), OpenFor::CreateNew)?;
        w.put(&bytes)?;
        w.finish()?;
        files.push(name);
    }
    let mut report = format!(
        "walrep rejoin quarantine\n\
         timeline: {}\nfork: {fork}\nend: {}\nbytes: {}\nrecords: {}\nsegments: {}\n\
         keys written past the fork ({}):\n",
        tli.0,
        past.end,
        past.end.0 - fork.0,
        past.records,
        files.join(" "),
        past.keys.len()
    );
    for k in &past.keys {
        report.push_str(&format!("  {}\n", String::from_utf8_lossy(k)));
    }
    durable_create(st, &q.join(REPORT_FILE), report.as_bytes())?;
    sync_dir(st, &q)?;
    Ok(q)
}

/// Zero the WAL from `fork` to the end of its segment and remove the later
/// segments of `tli` up to `end`: the next start's recovery ends at the
/// fork and the standby streams the new timeline from there.
fn cut_wal(
    st: &dyn Storage,
    dir: &DataDir,
    control: &ControlFile,
    tli: TimelineId,
    fork: Lsn,
    end: Lsn,
) -> Result<(), RejoinError> {
    let seg = control.wal_segment_size;
    let first = fork.segno(seg);
    let path = dir.wal().join(first.file_name(tli, seg));
    let offset = fork.segment_offset(seg);
    let zeros = vec![0u8; (seg.bytes() - offset) as usize];
    let f = st
        .open(&path, OpenFor::Existing)
        .map_err(io_err("open", &path))?;
    st.write_at(&f, &path, offset, &zeros)
        .map_err(io_err("write", &path))?;
    st.sync_data(&f, &path).map_err(io_err("fsync", &path))?;
    for segno in first.0 + 1..=end.segno(seg).0 {
        durable_remove(st, &dir.wal().join(crate::SegNo(segno).file_name(tli, seg)))?;
    }
    Ok(())
}

/// The primary_conninfo of the rejoined standby.
fn standby_conninfo(c: &ConnInfo) -> String {
    let port = c.port.to_string();
    let mut pairs = vec![
        ("host", c.host.as_str()),
        ("port", port.as_str()),
        ("user", c.user.as_str()),
    ];
    if let Some(app) = &c.application_name {
        pairs.push(("application_name", app.as_str()));
    }
    crate::backup::standby_config::conninfo_string(&pairs)
}

/// `YYYYMMDDTHHMMSSZ` of `t` (the quarantine directory's name).
fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_directories_are_named_by_utc_time() {
        let t = UNIX_EPOCH + Duration::from_secs(1_764_899_999);
        assert_eq!(utc_stamp(t), "20251205T015959Z");
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
    }
}
