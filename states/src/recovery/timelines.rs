//! Which timeline recovery follows and which timelines it knows of:
//! PostgreSQL's recoveryTargetTLI, expectedTLEs and the rules of
//! rescanLatestTimeLine and XLogFileReadAnyTLI, as data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::action::Report;
use crate::history::TimelineHistory;
use crate::lsn::{Lsn, SegNo, TimelineId, WalSegSize};

/// At most this many newer timelines' histories are kept: a bound on memory
/// when an archive holds a long run of history files.
pub const MAX_KNOWN_TIMELINES: usize = 64;

/// The timelines recovery knows of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timelines {
    /// recoveryTargetTLI: the timeline whose history recovery follows.
    pub target: TimelineId,
    /// expectedTLEs: the target's history; maps every position to the
    /// timeline its WAL belongs to.
    pub expected: TimelineHistory,
    /// Histories of timelines above the target, from the archive, `wal/` or
    /// the upstream: the candidates a rescan may switch to.
    pub known: BTreeMap<TimelineId, TimelineHistory>,
    /// The highest timeline id seen anywhere; promotion picks one above it.
    pub highest_seen: TimelineId,
}

/// Why a newer timeline was not followed (rescanLatestTimeLine's checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The current target is not on the new timeline's history.
    NotAChild,
    /// The new timeline forked off before the replay position: following it
    /// would need WAL that was already replayed differently.
    ForkedBeforeReplay {
        /// Where the new timeline forked.
        fork: Lsn,
    },
}

/// PostgreSQL's acceptance rule for a new target: the current target must be
/// on `new`'s history and must end there at or after `replay`.
pub fn check_new_timeline(
    target: TimelineId,
    new: &TimelineHistory,
    replay: Lsn,
) -> Result<(), Rejection> {
    match new.switch_point(target) {
        None => Err(Rejection::NotAChild),
        Some(Some(fork)) if fork < replay => Err(Rejection::ForkedBeforeReplay { fork }),
        Some(_) => Ok(()),
    }
}

impl Timelines {
    /// Start on `history`'s timeline.
    pub fn new(history: TimelineHistory) -> Timelines {
        let target = history.timeline();
        Timelines {
            target,
            expected: history,
            known: BTreeMap::new(),
            highest_seen: target,
        }
    }

    /// The timeline of the WAL at `lsn` on the target's history.
    pub fn timeline_of(&self, lsn: Lsn) -> TimelineId {
        self.expected.timeline_of(lsn)
    }

    /// Where `tli` ends on the target's history (`None`: it has not ended or
    /// is not on it).
    pub fn end_of(&self, tli: TimelineId) -> Option<Lsn> {
        self.expected.switch_point(tli).flatten()
    }

    /// Record that `tli` exists (promotion must pick a higher one).
    pub fn saw(&mut self, tli: TimelineId) {
        self.highest_seen = self.highest_seen.max(tli);
    }

    /// Record `tli`'s history. A history that describes another timeline is
    /// refused with the report to log.
    pub fn learn(&mut self, tli: TimelineId, history: &TimelineHistory) -> Result<(), Report> {
        if history.timeline() != tli || !history.is_consistent() {
            return Err(Report::HistoryIgnored { tli });
        }
        self.saw(tli);
        if tli > self.target && self.known.len() < MAX_KNOWN_TIMELINES {
            self.known.insert(tli, history.clone());
        }
        Ok(())
    }

    /// Whether `tli`'s history is known (or it is the target itself).
    pub fn knows(&self, tli: TimelineId) -> bool {
        tli == self.target || self.known.contains_key(&tli)
    }

    /// findNewestTimeLine over what is known: the highest timeline reached
    /// from the target through consecutive known histories, if above it.
    pub fn newest_known(&self, limit: Option<TimelineId>) -> Option<TimelineId> {
        let mut newest = self.target;
        while let Some(next) = newest.checked_next() {
            if !self.known.contains_key(&next) || limit.is_some_and(|l| newest >= l) {
                break;
            }
            newest = next;
        }
        (newest > self.target).then_some(newest)
    }

    /// Try to make `tli` (a known history) the target at replay position
    /// `replay`. Returns the reports to log; `Ok` when switched.
    pub fn switch_to(&mut self, tli: TimelineId, replay: Lsn) -> Result<Report, Report> {
        let Some(history) = self.known.get(&tli) else {
            return Err(Report::TimelineNotAChild {
                tli,
                target: self.target,
            });
        };
        match check_new_timeline(self.target, history, replay) {
            Err(Rejection::NotAChild) => Err(Report::TimelineNotAChild {
                tli,
                target: self.target,
            }),
            Err(Rejection::ForkedBeforeReplay { fork }) => {
                Err(Report::TimelineForkedBeforeReplay {
                    tli,
                    target: self.target,
                    fork,
                    replay,
                })
            }
            Ok(()) => {
                self.expected = history.clone();
                self.target = tli;
                self.known.retain(|t, _| *t > tli);
                Ok(Report::NewTargetTimeline { tli })
            }
        }
    }

    /// XLogFileReadAnyTLI's candidates for reading position `pos` of segment
    /// `segno`, newest first: timelines on the target's history that begin
    /// in or before the segment and have not ended at `pos`.
    pub fn candidates(&self, segno: SegNo, pos: Lsn, seg_size: WalSegSize) -> Vec<TimelineId> {
        self.expected
            .spans()
            .iter()
            .rev()
            .filter(|s| s.begin.segno(seg_size) <= segno && s.end.is_none_or(|e| e > pos))
            .map(|s| s.tli)
            .collect()
    }

    /// The history a timeline forked at `switch_point` gets: the target's
    /// history cut at the timeline `switch_point` belongs to, then forked.
    pub fn fork(&self, new: TimelineId, switch_point: Lsn) -> (TimelineId, TimelineHistory) {
        let parent = self.timeline_of(switch_point);
        let base = self
            .expected
            .ancestor(parent)
            .unwrap_or_else(|| self.expected.clone());
        (parent, base.fork(new, switch_point))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> WalSegSize {
        WalSegSize::new(1 << 20).unwrap()
    }

    fn two_at(fork: u64) -> TimelineHistory {
        TimelineHistory::root(TimelineId(1)).fork(TimelineId(2), Lsn(fork))
    }

    #[test]
    fn acceptance_follows_rescan_latest_timeline() {
        let h2 = two_at(0x30_0000);
        assert_eq!(
            check_new_timeline(TimelineId(1), &h2, Lsn(0x20_0000)),
            Ok(())
        );
        assert_eq!(
            check_new_timeline(TimelineId(1), &h2, Lsn(0x30_0000)),
            Ok(())
        );
        assert_eq!(
            check_new_timeline(TimelineId(1), &h2, Lsn(0x30_0001)),
            Err(Rejection::ForkedBeforeReplay {
                fork: Lsn(0x30_0000)
            })
        );
        let other = TimelineHistory::root(TimelineId(5)).fork(TimelineId(6), Lsn(1));
        assert_eq!(
            check_new_timeline(TimelineId(1), &other, Lsn(0)),
            Err(Rejection::NotAChild)
        );
    }

    #[test]
    fn newest_known_needs_consecutive_histories() {
        let mut t = Timelines::new(TimelineHistory::root(TimelineId(1)));
        let h2 = two_at(0x30_0000);
        let h4 = h2
            .fork(TimelineId(3), Lsn(0x40_0000))
            .fork(TimelineId(4), Lsn(0x50_0000));
        t.learn(TimelineId(4), &h4).unwrap();
        assert_eq!(t.newest_known(None), None, "3 is missing");
        t.learn(TimelineId(2), &h2).unwrap();
        assert_eq!(t.newest_known(None), Some(TimelineId(2)));
        assert_eq!(t.highest_seen, TimelineId(4));
        assert_eq!(
            t.learn(TimelineId(3), &h2),
            Err(Report::HistoryIgnored { tli: TimelineId(3) })
        );
    }

    #[test]
    fn switching_replaces_the_expected_history() {
        let mut t = Timelines::new(TimelineHistory::root(TimelineId(1)));
        t.learn(TimelineId(2), &two_at(0x30_0000)).unwrap();
        assert!(matches!(
            t.switch_to(TimelineId(2), Lsn(0x30_0008)),
            Err(Report::TimelineForkedBeforeReplay { .. })
        ));
        assert_eq!(t.target, TimelineId(1));
        assert_eq!(
            t.switch_to(TimelineId(2), Lsn(0x10_0000)),
            Ok(Report::NewTargetTimeline { tli: TimelineId(2) })
        );
        assert_eq!(t.target, TimelineId(2));
        assert_eq!(t.timeline_of(Lsn(0x2F_FFFF)), TimelineId(1));
        assert_eq!(t.end_of(TimelineId(1)), Some(Lsn(0x30_0000)));
        assert!(t.known.is_empty());
    }

    #[test]
    fn candidates_are_newest_first_and_skip_ended_timelines() {
        let mut t = Timelines::new(TimelineHistory::root(TimelineId(1)));
        t.learn(TimelineId(2), &two_at(0x30_0000)).unwrap();
        t.switch_to(TimelineId(2), Lsn(0)).unwrap();
        let s = seg();
        // Segment 2 lies before the fork: only timeline 1 has it.
        assert_eq!(
            t.candidates(SegNo(2), Lsn(0x20_0000), s),
            vec![TimelineId(1)]
        );
        // The fork segment: the new timeline's copy first, then the old one.
        assert_eq!(
            t.candidates(SegNo(3), Lsn(0x30_0000), s),
            vec![TimelineId(2)]
        );
        let t2 = {
            let mut t2 = Timelines::new(TimelineHistory::root(TimelineId(1)));
            t2.learn(TimelineId(2), &two_at(0x38_0000)).unwrap();
            t2.switch_to(TimelineId(2), Lsn(0)).unwrap();
            t2
        };
        assert_eq!(
            t2.candidates(SegNo(3), Lsn(0x30_0000), s),
            vec![TimelineId(2), TimelineId(1)]
        );
        let (parent, h) = t2.fork(TimelineId(3), Lsn(0x20_0000));
        assert_eq!(parent, TimelineId(1));
        assert_eq!(h.timeline(), TimelineId(3));
        assert!(!h.contains(TimelineId(2)));
    }
}
