//! Timelines on disk: `TTTTTTTT.history` files (text rules in
//! `walrep_states::TimelineHistory`), written durably; which timeline's file
//! holds the WAL at a position (PostgreSQL's XLogFileReadAnyTLI order); and
//! the first segment of a new timeline (PostgreSQL's XLogInitNewTimeline).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;
use walrep_states::{HistoryError, TimelineHistory};

use super::map::{MapError, MappedSegment};
use super::segdir::{PreparedSegment, SegmentDir, SegmentError};
use super::segment::{HeaderProblem, SegmentHeader, SEG_HEADER_SIZE};
use crate::storage::{durable_replace, replace_synced_file, sync_dir, Storage, StorageError};
use crate::{Lsn, SegNo, TimelineId, WalSegSize};

/// An error reading or writing timeline files.
#[derive(Debug, Error)]
pub enum TimelineError {
    /// Reading a history file or a segment failed.
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        /// The operation, as a verb for the message ("read", "rename").
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A `.history` file that does not parse (PostgreSQL: "syntax error in
    /// history file").
    #[error("invalid timeline history file \"{}\": {source}", path.display())]
    Parse {
        /// The history file.
        path: PathBuf,
        /// What is wrong with its text.
        #[source]
        source: HistoryError,
    },
    /// A history file for the new timeline already exists and says
    /// something else: another node promoted to the same timeline ID, so
    /// writing ours would fork history silently.
    #[error("timeline history file \"{}\" already exists with different contents", path.display())]
    Conflict {
        /// The existing history file.
        path: PathBuf,
    },
    /// A new timeline must have a higher ID than the one it branches off.
    #[error("new timeline {new} is not higher than timeline {parent}")]
    NotNewer {
        /// The timeline branched off.
        parent: u32,
        /// The timeline asked for.
        new: u32,
    },
    /// The old timeline's segment at the switch point, which the first
    /// segment of the new timeline copies up to the switch, is missing or
    /// bad.
    #[error("cannot start timeline {new}: segment {name} of timeline {old} is {problem}")]
    OldSegment {
        /// The timeline being started.
        new: u32,
        /// The timeline branched off.
        old: u32,
        /// The old segment's file name.
        name: String,
        /// What is wrong with it ("missing", a header problem, ...).
        problem: String,
    },
    /// Managing the WAL directory failed.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// A durable write failed; after a failed fsync nothing retries.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TimelineError {
    let path = path.to_path_buf();
    move |source| TimelineError::Io { op, path, source }
}

/// `wal_dir/TTTTTTTT.history`.
pub fn history_path(wal_dir: &Path, tli: TimelineId) -> PathBuf {
    wal_dir.join(tli.history_file_name())
}

/// The bytes of `tli`'s history file, `None` if it does not exist (what a
/// walsender answers TIMELINE_HISTORY with).
pub fn read_history_text(wal_dir: &Path, tli: TimelineId) -> Result<Option<String>, TimelineError> {
    let path = history_path(wal_dir, tli);
    match fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

/// The history of `tli`; a missing file means no ancestors (as PostgreSQL's
/// readTimeLineHistory assumes; timeline 1 never has one).
pub fn read_history(wal_dir: &Path, tli: TimelineId) -> Result<TimelineHistory, TimelineError> {
    match read_history_text(wal_dir, tli)? {
        None => Ok(TimelineHistory::root(tli)),
        Some(text) => TimelineHistory::parse(tli, &text).map_err(|source| TimelineError::Parse {
            path: history_path(wal_dir, tli),
            source,
        }),
    }
}

/// Store a history file received from elsewhere (archive, upstream's
/// TIMELINE_HISTORY) after checking it parses. An existing identical file
/// is left alone; a different one is never overwritten. Written through
/// `storage` under a temporary name, then renamed into place.
pub fn write_history_text(
    storage: &dyn Storage,
    wal_dir: &Path,
    tli: TimelineId,
    text: &str,
) -> Result<TimelineHistory, TimelineError> {
    write_history_text_with(storage, wal_dir, tli, text, NameSync::Now)
}

/// When a history file's new name is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSync {
    /// Before the write returns (an fsync of `wal/`).
    Now,
    /// By the caller's next fsync of `wal/`, which it owes before any WAL
    /// of the timeline is flushed or the control file names it (a
    /// promotion: the new WAL writer's start-up fsyncs `wal/` after the
    /// new timeline's segments are placed, one fsync for all the names).
    ByCaller,
}

fn write_history_text_with(
    storage: &dyn Storage,
    wal_dir: &Path,
    tli: TimelineId,
    text: &str,
    sync: NameSync,
) -> Result<TimelineHistory, TimelineError> {
    let path = history_path(wal_dir, tli);
    let history = TimelineHistory::parse(tli, text).map_err(|source| TimelineError::Parse {
        path: path.clone(),
        source,
    })?;
    match read_history_text(wal_dir, tli)? {
        Some(old) if old == text => return Ok(history),
        Some(_) => return Err(TimelineError::Conflict { path }),
        None => {}
    }
    match sync {
        NameSync::Now => durable_replace(storage, &path, text.as_bytes())?,
        NameSync::ByCaller => replace_synced_file(storage, &path, text.as_bytes())?,
    }
    Ok(history)
}

/// Write the history file of a new timeline `new` branching off `parent` at
/// `switch_point` (PostgreSQL's writeTimeLineHistory): the parent's file
/// verbatim, a blank line if there was one, then `parent<TAB>switch<TAB>reason`.
pub fn write_new_timeline_history(
    storage: &dyn Storage,
    wal_dir: &Path,
    parent: TimelineId,
    new: TimelineId,
    switch_point: Lsn,
    reason: &str,
) -> Result<TimelineHistory, TimelineError> {
    write_new_timeline_history_with(
        storage,
        wal_dir,
        (parent, new),
        switch_point,
        reason,
        NameSync::Now,
    )
}

/// [`write_new_timeline_history`] with the new name made durable when
/// `sync` says.
pub fn write_new_timeline_history_with(
    storage: &dyn Storage,
    wal_dir: &Path,
    (parent, new): (TimelineId, TimelineId),
    switch_point: Lsn,
    reason: &str,
    sync: NameSync,
) -> Result<TimelineHistory, TimelineError> {
    let text = new_timeline_history_text(wal_dir, (parent, new), switch_point, reason)?;
    write_history_text_with(storage, wal_dir, new, &text, sync)
}

/// The text of a new timeline's history file: the parent's file verbatim,
/// a blank line if there was one, `parent<TAB>switch<TAB>reason`, and the
/// new timeline's history id.
fn new_timeline_history_text(
    wal_dir: &Path,
    (parent, new): (TimelineId, TimelineId),
    switch_point: Lsn,
    reason: &str,
) -> Result<String, TimelineError> {
    if new <= parent {
        return Err(TimelineError::NotNewer {
            parent: parent.0,
            new: new.0,
        });
    }
    let mut text = String::new();
    if let Some(parent_text) = read_history_text(wal_dir, parent)? {
        text.push_str(&parent_text);
        text.push('\n');
    }
    let reason = reason.replace(['\n', '\t'], " ");
    text.push_str(&format!("{}\t{}\t{}\n", parent.0, switch_point, reason));
    text.push_str(&history_id_line(new, rand::random()));
    Ok(text)
}

/// A new timeline's history file written under its temporary name but not
/// yet fsynced ([`begin_new_timeline_history`]); [`UnsyncedHistory::finish`]
/// fsyncs and renames it. Split so that a caller can start other syncs
/// once the file exists: on a journaling file system its creation then
/// rides in the same journal commit as theirs, rather than in the next
/// one, which waits for theirs to finish.
#[derive(Debug)]
pub struct UnsyncedHistory {
    history: TimelineHistory,
    /// The file, its temporary name and its name; `None` when an identical
    /// file is already in place.
    pending: Option<(std::fs::File, PathBuf, PathBuf)>,
}

impl UnsyncedHistory {
    /// fsync the file's contents and rename it into place; its new name is
    /// the caller's to make durable (as [`NameSync::ByCaller`]).
    pub fn finish(self, storage: &dyn Storage) -> Result<TimelineHistory, TimelineError> {
        if let Some((file, tmp, path)) = self.pending {
            storage
                .sync_all(&file, &tmp)
                .map_err(StorageError::at("fsync", &tmp))?;
            drop(file);
            storage
                .rename(&tmp, &path)
                .map_err(StorageError::at("rename", &tmp))?;
        }
        Ok(self.history)
    }
}

/// [`write_new_timeline_history_with`] with [`NameSync::ByCaller`], up to
/// the fsync: the file is created and written under its temporary name;
/// [`UnsyncedHistory::finish`] does the rest.
pub fn begin_new_timeline_history(
    storage: &dyn Storage,
    wal_dir: &Path,
    (parent, new): (TimelineId, TimelineId),
    switch_point: Lsn,
    reason: &str,
) -> Result<UnsyncedHistory, TimelineError> {
    let text = new_timeline_history_text(wal_dir, (parent, new), switch_point, reason)?;
    let path = history_path(wal_dir, new);
    let history = TimelineHistory::parse(new, &text).map_err(|source| TimelineError::Parse {
        path: path.clone(),
        source,
    })?;
    match read_history_text(wal_dir, new)? {
        Some(old) if old == text => {
            return Ok(UnsyncedHistory {
                history,
                pending: None,
            })
        }
        Some(_) => return Err(TimelineError::Conflict { path }),
        None => {}
    }
    let tmp = crate::storage::replace_temp_path(&path);
    let file = storage
        .open(&tmp, crate::storage::OpenFor::Replace)
        .map_err(StorageError::at("create", &tmp))?;
    storage
        .write_at(&file, &tmp, 0, text.as_bytes())
        .map_err(StorageError::at("write", &tmp))?;
    Ok(UnsyncedHistory {
        history,
        pending: Some((file, tmp, path)),
    })
}

/// What starts the comment line that carries a timeline's history id.
/// PostgreSQL's reader (and walrep's) skips `#` lines, so its tools read
/// the file as before; a child's file copies its parent's lines, so the
/// newest file holds the id of every timeline on its history.
pub const HISTORY_ID_TAG: &str = "# walrep history_id";

/// The comment line naming `tli`'s history id.
pub fn history_id_line(tli: TimelineId, id: u64) -> String {
    format!("{HISTORY_ID_TAG} {} {}\n", tli.0, format_history_id(id))
}

/// A history id as written and printed: 16 hex digits.
pub fn format_history_id(id: u64) -> String {
    format!("{id:016X}")
}

/// The history ids a history file's text names, by timeline. Two nodes
/// that reached timeline N by different promotions have different ids for
/// N even when the switch points are the same (the same timeline number
/// with different histories is what HA tools have let happen).
pub fn history_ids(text: &str) -> std::collections::BTreeMap<TimelineId, u64> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.trim().strip_prefix(HISTORY_ID_TAG)?.split_whitespace();
            let tli = parts.next()?.parse().ok()?;
            let id = u64::from_str_radix(parts.next()?, 16).ok()?;
            Some((TimelineId(tli), id))
        })
        .collect()
}

/// Why a history from upstream cannot be followed: a timeline both know
/// has a different id on each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryMismatch {
    /// The first timeline whose ids differ.
    pub tli: TimelineId,
    /// Its history id in this node's history file.
    pub local_id: u64,
    /// Its history id in the upstream's.
    pub upstream_id: u64,
    /// Where the histories fork: the lower of the two switch points into
    /// `tli` (the WAL below it is common to both).
    pub fork: Lsn,
}

/// Compare the history ids of two history files' texts (`local` and
/// `upstream`, of any timelines): `Err` at the first timeline both name
/// with different ids. Timelines only one side names are not compared
/// (a file written before ids existed names none).
pub fn compare_history_ids(local: &str, upstream: &str) -> Result<(), HistoryMismatch> {
    let (a, b) = (history_ids(local), history_ids(upstream));
    for (tli, local_id) in &a {
        let Some(upstream_id) = b.get(tli) else {
            continue;
        };
        if local_id != upstream_id {
            let switch_into = |text: &str| {
                walrep_states::history::parse_lines(text)
                    .ok()
                    .and_then(|lines| {
                        lines
                            .iter()
                            .take_while(|l| l.parent < *tli)
                            .last()
                            .map(|l| l.switch_point)
                    })
                    .unwrap_or(Lsn::INVALID)
            };
            let fork = switch_into(local).min(switch_into(upstream));
            return Err(HistoryMismatch {
                tli: *tli,
                local_id: *local_id,
                upstream_id: *upstream_id,
                fork,
            });
        }
    }
    Ok(())
}

/// The highest timeline with a history file, probing upward from `from`
/// (PostgreSQL's findNewestTimeLine, on the local directory).
pub fn newest_timeline(wal_dir: &Path, from: TimelineId) -> TimelineId {
    let mut tli = from;
    while history_path(wal_dir, tli.next()).exists() {
        tli = tli.next();
    }
    tli
}

/// Whether the file of timeline `tli` may hold the WAL byte at `lsn`: the
/// timeline began in or before `lsn`'s segment and had not ended by `lsn`.
pub fn timeline_covers(
    history: &TimelineHistory,
    tli: TimelineId,
    lsn: Lsn,
    seg_size: WalSegSize,
) -> bool {
    history.spans().iter().any(|s| {
        s.tli == tli
            && s.begin.segno(seg_size) <= lsn.segno(seg_size)
            && s.end.is_none_or(|e| lsn < e)
    })
}

/// The timelines whose segment file may hold `lsn`, newest first: the
/// order in which to try files (a new timeline's copy of the switch segment
/// is preferred to the old timeline's file).
pub fn candidate_timelines(
    history: &TimelineHistory,
    lsn: Lsn,
    seg_size: WalSegSize,
) -> Vec<TimelineId> {
    history
        .spans()
        .iter()
        .rev()
        .filter(|s| timeline_covers(history, s.tli, lsn, seg_size))
        .map(|s| s.tli)
        .collect()
}

/// Create the segment a new timeline starts writing in (PostgreSQL's
/// XLogInitNewTimeline): when `switch_point` is inside a segment, a copy of
/// that segment of `old` up to the switch point, with the new timeline in
/// its header and zeroes after it; at a segment boundary, an empty
/// pre-allocated segment. The copy's contents are durable when it returns;
/// the new names are made durable by the directory fsync of the WAL
/// writer's start-up ([`crate::wal::Wal::start`], which the caller runs
/// next), before anything is written into them.
///
/// With spare segments ready ([`SegmentDir::make_spares`]) only the prefix
/// is written, and the segment after it gets a spare too, so the new WAL
/// writer's look-ahead pre-allocation has nothing to write while the
/// end-of-recovery record is flushed.
pub fn init_new_timeline_segment(
    segdir: &SegmentDir,
    system_id: u64,
    old: TimelineId,
    new: TimelineId,
    switch_point: Lsn,
) -> Result<(), TimelineError> {
    let prepared = prepare_new_timeline_segment(segdir, system_id, old, new, switch_point)?;
    place_new_timeline_segment(segdir, new, switch_point, prepared)
}

/// The first half of [`init_new_timeline_segment`]: when `switch_point`
/// is inside a segment, the copy of its prefix, durable under a temporary
/// name (`None` at a segment boundary, where there is nothing to copy).
/// Writes no name, so it may run while the history file is made durable.
pub fn prepare_new_timeline_segment(
    segdir: &SegmentDir,
    system_id: u64,
    old: TimelineId,
    new: TimelineId,
    switch_point: Lsn,
) -> Result<Option<PreparedSegment>, TimelineError> {
    let seg_size = segdir.seg_size();
    let segno = switch_point.segno(seg_size);
    let offset = switch_point.segment_offset(seg_size);
    if offset == 0 {
        return Ok(None);
    }
    let prefix = old_segment_prefix(segdir, system_id, old, new, segno, offset)?;
    Ok(Some(segdir.prepare_segment(&prefix)?))
}

/// The second half of [`init_new_timeline_segment`]: name the new
/// timeline's first segment (the `prepared` copy, or an empty one at a
/// segment boundary) and give the segment after it a spare. Called after
/// the history file's rename, so that a journaling file system never
/// keeps a segment of the timeline without its history file.
pub fn place_new_timeline_segment(
    segdir: &SegmentDir,
    new: TimelineId,
    switch_point: Lsn,
    prepared: Option<PreparedSegment>,
) -> Result<(), TimelineError> {
    let segno = switch_point.segno(segdir.seg_size());
    match prepared {
        Some(p) => segdir.install_prepared(new, segno, p)?,
        None => {
            if !segdir.place_spare(new, segno)? {
                segdir.preallocate(new, segno)?;
            }
        }
    }
    segdir.place_spare(new, segno.next())?;
    Ok(())
}

/// After promotion, rename the old timeline's segment holding the switch
/// point to `<name>.partial` (PostgreSQL does this at the end of archive
/// recovery) so that it is not archived under the name the old primary may
/// still archive a complete, diverging segment as; with archiving on, the
/// `.partial` file is marked `.ready`. Returns the new path, `None` when the
/// switch point is at a segment boundary or the file is absent.
///
/// `wal/` is fsynced for the new name only with archiving on, before the
/// `.ready` (the archiver must never find a `.ready` whose file a crash
/// renamed back). Without it nothing needs the name durable: a crash that
/// takes the rename leaves the file under its old name, as a crash just
/// before the rename does, and the next fsync of `wal/` carries it. That
/// keeps a directory write off the disk while the promoted node's first
/// commits are flushed.
pub fn rename_old_timeline_segment_partial(
    segdir: &SegmentDir,
    old: TimelineId,
    switch_point: Lsn,
    archive_mode: bool,
) -> Result<Option<PathBuf>, TimelineError> {
    let seg_size = segdir.seg_size();
    if switch_point.segment_offset(seg_size) == 0 {
        return Ok(None);
    }
    let segno = switch_point.segno(seg_size);
    let from = segdir.segment_path(old, segno);
    if !from.exists() {
        return Ok(None);
    }
    let name = format!("{}.partial", segno.file_name(old, seg_size));
    let to = segdir.path().join(&name);
    let storage = segdir.storage();
    storage
        .rename(&from, &to)
        .map_err(io_err("rename", &from))?;
    if archive_mode {
        sync_dir(&**storage, segdir.path())?;
        segdir.mark_ready(&name)?;
    }
    Ok(Some(to))
}

/// The first `offset` bytes of `(old, segno)` with the header re-stamped for `new`.
fn old_segment_prefix(
    segdir: &SegmentDir,
    system_id: u64,
    old: TimelineId,
    new: TimelineId,
    segno: SegNo,
    offset: u64,
) -> Result<Vec<u8>, TimelineError> {
    let seg_size = segdir.seg_size();
    let name = segno.file_name(old, seg_size);
    let bad = |problem: String| TimelineError::OldSegment {
        new: new.0,
        old: old.0,
        name: name.clone(),
        problem,
    };
    let path = segdir.segment_path(old, segno);
    let seg = match MappedSegment::open(&path, old, segno, seg_size) {
        Ok(m) => m,
        Err(MapError::Missing) => return Err(bad("missing".into())),
        Err(MapError::BadSize { found }) => return Err(bad(format!("{found} bytes long"))),
        Err(MapError::Io(e)) => return Err(io_err("read", &path)(e)),
    };
    let mut header = SegmentHeader::decode(&seg.map).map_err(|p| bad(p.to_string()))?;
    let problem = if header.system_id != system_id {
        Some(HeaderProblem::SystemId {
            expected: system_id,
            found: header.system_id,
        })
    } else if header.pageaddr != segno.start_lsn(seg_size) || header.tli != old {
        Some(HeaderProblem::PageAddr {
            expected: segno.start_lsn(seg_size),
            found: header.pageaddr,
        })
    } else {
        None
    };
    if let Some(p) = problem {
        return Err(bad(p.to_string()));
    }
    header.tli = new;
    let mut prefix = seg.map[..offset as usize].to_vec();
    let hlen = SEG_HEADER_SIZE as usize;
    if prefix.len() >= hlen {
        prefix[..hlen].copy_from_slice(&header.encode());
    }
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StdStorage;

    #[test]
    fn new_history_appends_to_parent_verbatim() {
        let d = tempfile::tempdir().unwrap();
        let h2 = write_new_timeline_history(
            &StdStorage,
            d.path(),
            TimelineId(1),
            TimelineId(2),
            Lsn(0x400_6B10),
            "no recovery target specified",
        )
        .unwrap();
        assert_eq!(h2.timeline(), TimelineId(2));
        let h3 = write_new_timeline_history(
            &StdStorage,
            d.path(),
            TimelineId(2),
            TimelineId(3),
            Lsn(0x600_0000),
            "no recovery target specified",
        )
        .unwrap();
        // Exactly what PostgreSQL 15 wrote for its timeline 3, plus the
        // history id comment lines (which its reader skips).
        let text = read_history_text(d.path(), TimelineId(3)).unwrap().unwrap();
        let without_ids: String = text
            .split_inclusive('\n')
            .filter(|l| !l.starts_with(HISTORY_ID_TAG))
            .collect();
        assert_eq!(
            without_ids,
            "1\t0/4006B10\tno recovery target specified\n\n2\t0/6000000\tno recovery target specified\n"
        );
        let ids = history_ids(&text);
        assert_eq!(
            ids.keys().copied().collect::<Vec<_>>(),
            [TimelineId(2), TimelineId(3)]
        );
        assert_eq!(read_history(d.path(), TimelineId(3)).unwrap(), h3);
        assert_eq!(newest_timeline(d.path(), TimelineId(1)), TimelineId(3));
        assert_eq!(
            read_history(d.path(), TimelineId(1)).unwrap(),
            TimelineHistory::root(TimelineId(1))
        );
        assert!(matches!(
            write_new_timeline_history(
                &StdStorage,
                d.path(),
                TimelineId(3),
                TimelineId(3),
                Lsn(1),
                "x"
            ),
            Err(TimelineError::NotNewer { .. })
        ));
        assert!(matches!(
            write_history_text(&StdStorage, d.path(), TimelineId(2), "1\t0/5\tother\n"),
            Err(TimelineError::Conflict { .. })
        ));
        assert!(matches!(
            write_history_text(&StdStorage, d.path(), TimelineId(4), "garbage\n"),
            Err(TimelineError::Parse { .. })
        ));
    }

    #[test]
    fn candidates_prefer_newest_file_for_switch_segment() {
        let s = WalSegSize::DEFAULT;
        let h = TimelineHistory::root(TimelineId(1)).fork(TimelineId(2), Lsn(0x300_0100));
        let c = |lsn| candidate_timelines(&h, Lsn(lsn), s);
        assert_eq!(c(0x200_0000), vec![TimelineId(1)]);
        // Before the switch point in the switch segment: both, newest first.
        assert_eq!(c(0x300_0028), vec![TimelineId(2), TimelineId(1)]);
        // From the switch point on: only the new timeline.
        assert_eq!(c(0x300_0100), vec![TimelineId(2)]);
        assert_eq!(c(0x500_0000), vec![TimelineId(2)]);
    }
}

#[cfg(test)]
mod history_id_tests {
    use super::*;

    fn file(lines: &[(u32, &str)], ids: &[(u32, u64)]) -> String {
        let mut t = String::new();
        for (p, lsn) in lines {
            t.push_str(&format!("{p}\t{lsn}\tno recovery target specified\n"));
        }
        for (tli, id) in ids {
            t.push_str(&history_id_line(TimelineId(*tli), *id));
        }
        t
    }

    #[test]
    fn postgres_reads_a_file_with_ids_as_before() {
        let t = file(&[(1, "0/3000000")], &[(2, 0xAB)]);
        let h = TimelineHistory::parse(TimelineId(2), &t).unwrap();
        assert_eq!(h.spans().len(), 2);
        assert_eq!(history_ids(&t)[&TimelineId(2)], 0xAB);
    }

    #[test]
    fn the_same_timeline_with_different_ids_forks_at_the_lower_switch_point() {
        let here = file(&[(1, "0/3000100")], &[(2, 1)]);
        let there = file(&[(1, "0/3000080")], &[(2, 2)]);
        let m = compare_history_ids(&here, &there).unwrap_err();
        assert_eq!(m.tli, TimelineId(2));
        assert_eq!((m.local_id, m.upstream_id), (1, 2));
        assert_eq!(m.fork, "0/3000080".parse().unwrap());
    }

    #[test]
    fn a_descendant_of_the_same_history_matches() {
        let here = file(&[(1, "0/3000100")], &[(2, 7)]);
        let there = file(&[(1, "0/3000100"), (2, "0/5000000")], &[(2, 7), (3, 9)]);
        assert_eq!(compare_history_ids(&here, &there), Ok(()));
        // A file written before ids existed names none: nothing to compare.
        assert_eq!(
            compare_history_ids(&file(&[(1, "0/1")], &[]), &there),
            Ok(())
        );
    }
}
