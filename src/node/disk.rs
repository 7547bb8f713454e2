//! The data directory's disk: how much of its filesystem is free, what
//! keeps WAL on it (each replication slot, the archive backlog,
//! `wal_keep_size`, the WAL the checkpoints need), the warning logged
//! when free space runs low, and the hint given when the disk is full.
//!
//! A full disk is the usual way a database stops, and its cause is almost
//! always known in advance: WAL kept for a slot whose standby is gone, an
//! `archive_command` that keeps failing, a `wal_keep_size` larger than the
//! disk. So the node measures both sides — free space and every reason WAL
//! is held — and says them together, in INFO, `/status`, `/metrics`, the log
//! warning and the error after ENOSPC.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::Node;
use crate::replication::slots::SlotInfo;
use crate::Lsn;

/// How often the monitor looks at free space: often enough that a disk
/// filling at a few tens of MB/s is noticed while some space is left.
const MONITOR_INTERVAL: Duration = Duration::from_millis(250);
/// While free space stays low, the warning is repeated this often.
const WARNING_REPEAT: Duration = Duration::from_secs(60);
/// Most directory entries counted per measurement (WAL files, `.ready`
/// files): a bound on the time one measurement takes.
const MAX_ENTRIES: usize = 1_000_000;

/// Free space of the data directory's filesystem and what holds WAL on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes an unprivileged writer may still use (statvfs `f_bavail`).
    pub free_bytes: u64,
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Bytes of the files in `wal/`.
    pub wal_bytes: u64,
    /// Every reason WAL is kept, largest first.
    pub holds: Vec<WalHold>,
}

/// One reason WAL is kept on disk, and how many bytes of WAL behind the
/// current position it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalHold {
    /// What keeps the WAL.
    pub reason: HoldReason,
    /// Bytes of WAL behind the current position it keeps.
    pub bytes: u64,
}

/// Why WAL is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldReason {
    /// A replication slot's `restart_lsn`.
    Slot {
        /// The slot's name.
        name: String,
        /// A walsender uses it (an inactive slot is the usual culprit).
        active: bool,
        /// The `application_name` of the standby streaming from it: a
        /// lagging standby holds WAL through its slot.
        standby: Option<String>,
    },
    /// Completed segments whose `archive_command` has not succeeded yet.
    ArchiveBacklog {
        /// Segments still marked `.ready`.
        segments: u64,
    },
    /// `wal_keep_size`.
    WalKeepSize,
    /// WAL since the previous checkpoint's redo point: crash recovery
    /// needs it from the last checkpoint's, and from the previous one's
    /// when the last checkpoint's snapshot is damaged, until the next
    /// checkpoint (`max_wal_size` bounds it).
    Checkpoint,
}

impl HoldReason {
    /// The name INFO, `/status` and `/metrics` use: `slot:<name>`,
    /// `archive_backlog`, `wal_keep_size`, `checkpoint`.
    pub fn key(&self) -> String {
        match self {
            HoldReason::Slot { name, .. } => format!("slot:{name}"),
            HoldReason::ArchiveBacklog { .. } => "archive_backlog".into(),
            HoldReason::WalKeepSize => "wal_keep_size".into(),
            HoldReason::Checkpoint => "checkpoint".into(),
        }
    }

    /// What an operator can do about it.
    fn remedy(&self) -> String {
        match self {
            HoldReason::Slot {
                name,
                active,
                standby,
            } => format!(
                "replication slot \"{name}\"{} (drop it with DROP_REPLICATION_SLOT if its standby is gone, or lower max_slot_wal_keep_size)",
                match (active, standby) {
                    (_, Some(app)) => format!(" of lagging standby \"{app}\""),
                    (true, None) => String::new(),
                    (false, None) => ", inactive".into(),
                }
            ),
            HoldReason::ArchiveBacklog { segments } => format!(
                "{segments} segment(s) waiting for archive_command (fix the command or its destination; see failed_count in INFO persistence)"
            ),
            HoldReason::WalKeepSize => "wal_keep_size (lower it and reload)".into(),
            HoldReason::Checkpoint => {
                "WAL since the previous checkpoint, which recovery falls back to (lower max_wal_size or checkpoint_timeout)".into()
            }
        }
    }
}

/// What [`holds`] computes from: everything in one place so the
/// arithmetic is a pure function.
#[derive(Debug, Clone, Default)]
pub struct HoldInputs {
    /// The end of WAL (insert, replay or receive position).
    pub end: Lsn,
    /// The oldest redo point a checkpoint the control file names starts
    /// from (the previous checkpoint's, when there is one).
    pub redo: Lsn,
    /// `wal_segment_size` in bytes.
    pub seg_size_bytes: u64,
    /// Every replication slot, as pg_replication_slots.
    pub slots: Vec<SlotInfo>,
    /// Segment files with a `.ready` status file.
    pub ready_segments: u64,
    /// `wal_keep_size` in bytes.
    pub wal_keep_bytes: u64,
    /// Connected standbys as (slot, application_name).
    pub standbys: Vec<(String, String)>,
}

/// Every reason WAL is kept, with the bytes behind `end` it keeps, largest
/// first; reasons that keep nothing are left out.
pub fn holds(i: &HoldInputs) -> Vec<WalHold> {
    let behind = |lsn: Lsn| {
        if lsn == Lsn::INVALID || lsn > i.end {
            0
        } else {
            i.end.saturating_sub(lsn)
        }
    };
    let mut out: Vec<WalHold> = i
        .slots
        .iter()
        .filter(|s| !s.invalidated)
        .map(|s| WalHold {
            reason: HoldReason::Slot {
                name: s.name.clone(),
                active: s.active_pid.is_some(),
                standby: i
                    .standbys
                    .iter()
                    .find(|(slot, _)| *slot == s.name)
                    .map(|(_, app)| app.clone()),
            },
            bytes: behind(s.restart_lsn),
        })
        .collect();
    out.push(WalHold {
        reason: HoldReason::ArchiveBacklog {
            segments: i.ready_segments,
        },
        bytes: i.ready_segments.saturating_mul(i.seg_size_bytes),
    });
    out.push(WalHold {
        reason: HoldReason::WalKeepSize,
        bytes: i.wal_keep_bytes.min(i.end.0),
    });
    out.push(WalHold {
        reason: HoldReason::Checkpoint,
        bytes: behind(i.redo),
    });
    out.retain(|h| h.bytes > 0);
    out.sort_by_key(|h| std::cmp::Reverse(h.bytes));
    out
}

/// Free and total bytes of the filesystem holding `path` (statvfs).
pub fn filesystem_space(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized,
    // writable statvfs the call fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((
        (st.f_bavail as u64).saturating_mul(frsize),
        (st.f_blocks as u64).saturating_mul(frsize),
    ))
}

/// Bytes of the regular files directly in `dir` (at most `MAX_ENTRIES`).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .take(MAX_ENTRIES)
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Segments (not history files) waiting for archiving.
pub fn ready_segments(datadir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(crate::archive::status::status_dir(datadir)) else {
        return 0;
    };
    entries
        .take(MAX_ENTRIES)
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".ready"))
                .is_some_and(|n| {
                    crate::archive::status::is_archivable_name(n)
                        && !crate::archive::status::is_history_file_name(n)
                })
        })
        .count() as u64
}

/// Measure the disk of `datadir` with the given holds inputs.
pub fn measure(datadir: &Path, inputs: &HoldInputs) -> DiskUsage {
    let (free_bytes, total_bytes) = filesystem_space(datadir).unwrap_or((0, 0));
    DiskUsage {
        free_bytes,
        total_bytes,
        wal_bytes: dir_bytes(&datadir.join("wal")),
        holds: holds(inputs),
    }
}

impl Node {
    /// The disk of this node's data directory, measured now.
    pub fn disk_usage(&self) -> DiskUsage {
        let c = self.control();
        let settings = self.settings();
        let inputs = HoldInputs {
            end: self.replay_end().max(c.checkpoint_lsn),
            redo: c.oldest_redo_lsn(),
            seg_size_bytes: c.wal_segment_size.bytes(),
            slots: self.slots.list(),
            ready_segments: ready_segments(&self.dir.root),
            wal_keep_bytes: settings.wal_keep_size.bytes().unwrap_or(0),
            standbys: self
                .registry()
                .map(|r| r.snapshot())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|w| Some((w.slot?, w.application_name)))
                .collect(),
        };
        measure(&self.dir.root, &inputs)
    }
}

impl DiskUsage {
    /// One sentence naming the filesystem's state and each holder, for
    /// the log and for errors.
    pub fn describe(&self, datadir: &Path) -> String {
        let mut s = format!(
            "the filesystem of {} has {} free of {}; WAL in wal/ takes {}",
            datadir.display(),
            human(self.free_bytes),
            human(self.total_bytes),
            human(self.wal_bytes)
        );
        if self.holds.is_empty() {
            s.push_str("; nothing holds WAL back");
        }
        for (n, h) in self.holds.iter().enumerate() {
            let _ = write!(
                s,
                "{} {} held by {}",
                if n == 0 { "; WAL kept:" } else { "," },
                human(h.bytes),
                h.reason.remedy()
            );
        }
        s
    }

    /// INFO fields (Redis's `field:value` lines) of this measurement.
    pub fn info_fields(&self, s: &mut String) {
        let _ = write!(
            s,
            "disk_free_bytes:{}\r\ndisk_total_bytes:{}\r\nwal_directory_bytes:{}\r\n",
            self.free_bytes, self.total_bytes, self.wal_bytes
        );
        let holders: Vec<String> = self.holds.iter().map(|h| h.reason.key()).collect();
        let _ = write!(s, "wal_held_by:{}\r\n", holders.join(","));
        // `slot:NAME` becomes `slot_NAME` in a field name: INFO parsers
        // split a line at its first colon.
        for h in &self.holds {
            let field = h.reason.key().replace(':', "_");
            let _ = write!(s, "wal_held_bytes_{field}:{}\r\n", h.bytes);
        }
    }

    /// The most WAL any hold whose key starts with `prefix` keeps (holds
    /// overlap: two slots at the same position keep the same WAL once).
    pub fn max_held_bytes(&self, prefix: &str) -> u64 {
        self.holds
            .iter()
            .filter(|h| h.reason.key().starts_with(prefix))
            .map(|h| h.bytes)
            .max()
            .unwrap_or(0)
    }
}

/// `12.3MB`-style sizes for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// The thread that warns when free space falls below
/// `disk_free_warning_size`; dropped or stopped with the node.
pub struct DiskMonitor {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl DiskMonitor {
    /// Start watching `node`'s data directory.
    pub fn start(node: Arc<Node>) -> io::Result<DiskMonitor> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("disk-monitor".into())
            .spawn(move || {
                let mut warned_at: Option<Instant> = None;
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(MONITOR_INTERVAL)
                {
                    warned_at = check_once(&node, warned_at);
                }
            })?;
        Ok(DiskMonitor { stop, thread })
    }

    /// Stop the thread and wait for it (it waits at most one interval).
    pub fn stop(self) {
        let _ = self.stop.try_send(());
        let _ = self.thread.join();
    }
}

/// One look at free space: warn when it is below the threshold (again
/// every `WARNING_REPEAT` while it stays there); returns when it last warned.
fn check_once(node: &Node, warned_at: Option<Instant>) -> Option<Instant> {
    let threshold = node.settings().disk_free_warning_size.bytes()?;
    let Ok((free, _)) = filesystem_space(&node.dir.root) else {
        return warned_at;
    };
    if free >= threshold {
        if warned_at.is_some() {
            tracing::info!(
                free_bytes = free,
                "free disk space is above disk_free_warning_size again"
            );
        }
        return None;
    }
    if warned_at.is_some_and(|t| t.elapsed() < WARNING_REPEAT) {
        return warned_at;
    }
    let usage = node.disk_usage();
    tracing::warn!(
        free_bytes = usage.free_bytes,
        threshold_bytes = threshold,
        held_by = %usage.holds.first().map(|h| h.reason.key()).unwrap_or_default(),
        "free disk space is below disk_free_warning_size: {}",
        usage.describe(&node.dir.root)
    );
    Some(Instant::now())
}

/// Whether `e` or anything in its source chain is "no space left on
/// device" (ENOSPC) or "disk quota exceeded" (EDQUOT). Errors whose
/// source was turned into text (a poisoned WAL writer's cause) are
/// recognised by the OS's message.
pub fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                return true;
            }
        }
        let text = err.to_string();
        if text.contains("No space left on device") || text.contains("Disk quota exceeded") {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, restart: u64, active: bool) -> SlotInfo {
        SlotInfo {
            name: name.into(),
            temporary: false,
            restart_lsn: Lsn(restart),
            active_pid: active.then_some(7),
            invalidated: false,
            xmin: 0,
            catalog_xmin: 0,
        }
    }

    #[test]
    fn holds_name_each_reason_largest_first_and_skip_empty_ones() {
        let i = HoldInputs {
            end: Lsn(100 << 20),
            redo: Lsn(99 << 20),
            seg_size_bytes: 1 << 20,
            slots: vec![slot("gone", 10 << 20, false), slot("unset", 0, true)],
            ready_segments: 30,
            wal_keep_bytes: 0,
            standbys: Vec::new(),
        };
        let h = holds(&i);
        let keys: Vec<String> = h.iter().map(|h| h.reason.key()).collect();
        assert_eq!(keys, ["slot:gone", "archive_backlog", "checkpoint"]);
        assert_eq!(h[0].bytes, 90 << 20);
        assert_eq!(h[1].bytes, 30 << 20);
        assert_eq!(h[2].bytes, 1 << 20);
        let text = DiskUsage {
            holds: h,
            ..Default::default()
        }
        .describe(Path::new("/d"));
        assert!(text.contains("\"gone\", inactive"), "{text}");
    }

    #[test]
    fn a_slot_names_the_lagging_standby_streaming_from_it() {
        let i = HoldInputs {
            end: Lsn(9 << 20),
            slots: vec![slot("s1", 1 << 20, true)],
            standbys: vec![("s1".into(), "replica-east".into())],
            seg_size_bytes: 1 << 20,
            ..Default::default()
        };
        let text = DiskUsage {
            holds: holds(&i),
            ..Default::default()
        }
        .describe(Path::new("/d"));
        assert!(
            text.contains(
                "8.0MB held by replication slot \"s1\" of lagging standby \"replica-east\""
            ),
            "{text}"
        );
    }

    #[test]
    fn a_slot_ahead_of_the_end_holds_nothing_and_keep_size_is_capped() {
        let i = HoldInputs {
            end: Lsn(5 << 20),
            slots: vec![slot("ahead", 6 << 20, true)],
            wal_keep_bytes: 1 << 30,
            seg_size_bytes: 1 << 20,
            ..Default::default()
        };
        let h = holds(&i);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].reason, HoldReason::WalKeepSize);
        assert_eq!(h[0].bytes, 5 << 20);
    }

    #[test]
    fn disk_full_is_found_through_the_source_chain_and_in_text() {
        let io = io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(is_disk_full(&io));
        let wrapped = crate::storage::StorageError::Io {
            op: "write",
            path: "x".into(),
            source: io,
        };
        assert!(is_disk_full(&wrapped));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(libc::EIO)));
        let text = io::Error::other("could not write: No space left on device (os error 28)");
        assert!(is_disk_full(&text));
    }

    #[test]
    fn the_description_names_free_space_and_every_holder() {
        let u = DiskUsage {
            free_bytes: 0,
            total_bytes: 40 << 20,
            wal_bytes: 39 << 20,
            holds: vec![WalHold {
                reason: HoldReason::ArchiveBacklog { segments: 12 },
                bytes: 12 << 20,
            }],
        };
        let d = u.describe(Path::new("/data"));
        assert!(d.contains("0B free of 40.0MB"), "{d}");
        assert!(
            d.contains("12.0MB held by 12 segment(s) waiting for archive_command"),
            "{d}"
        );
    }
}
