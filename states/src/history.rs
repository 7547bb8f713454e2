//! Timeline history: which timeline each WAL position belongs to, in
//! PostgreSQL's `TTTTTTTT.history` text format
//! (`parent-tli<TAB>switch-LSN<TAB>reason`, one line per ancestor).
//!
//! Pure data and text: reading and writing the files is the runtime's job.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::lsn::{Lsn, TimelineId};

/// One timeline and the WAL range it covers: `[begin, end)`; `end` is
/// `None` for the newest timeline (it has not ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineSpan {
    /// The timeline.
    pub tli: TimelineId,
    /// Its first position (where its parent ended).
    pub begin: Lsn,
    /// Its switch point to the next timeline, `None` for the newest.
    pub end: Option<Lsn>,
}

/// The history of one timeline: its ancestors oldest first, then itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineHistory {
    /// Oldest first; the last entry is the timeline the history belongs to
    /// and has `end == None`.
    spans: Vec<TimelineSpan>,
}

/// Why history text was rejected (PostgreSQL's reader rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryError {
    /// A line is not `tli<TAB>X/X<TAB>reason`.
    Syntax {
        /// The line number (1-based).
        line: usize,
        /// The line.
        text: String,
    },
    /// Timeline ids must strictly increase ("must be in increasing sequence").
    NotIncreasing {
        /// The line number (1-based).
        line: usize,
    },
    /// Every ancestor must be lower than the file's own timeline.
    NotAncestor {
        /// The line number (1-based).
        line: usize,
        /// The ancestor timeline on the line.
        tli: u32,
        /// The file's timeline.
        own: u32,
    },
    /// Switch points must not go backwards.
    SwitchPointBackwards {
        /// The line number (1-based).
        line: usize,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::Syntax { line, text } => {
                write!(f, "syntax error in history file line {line}: {text:?} (expected a numeric timeline ID and a X/X switch point)")
            }
            HistoryError::NotIncreasing { line } => {
                write!(f, "invalid data in history file line {line}: timeline IDs must be in increasing sequence")
            }
            HistoryError::NotAncestor { line, tli, own } => write!(
                f,
                "invalid data in history file line {line}: timeline {tli} is not lower than the file's timeline {own}"
            ),
            HistoryError::SwitchPointBackwards { line } => {
                write!(f, "invalid data in history file line {line}: switch point goes backwards")
            }
        }
    }
}

impl std::error::Error for HistoryError {}

/// One line of a history file: the parent timeline, where the child began
/// (the end of the parent) and the reason text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryLine {
    /// The ancestor timeline.
    pub parent: TimelineId,
    /// Where it ended: the first position of the next timeline.
    pub switch_point: Lsn,
    /// Free text (PostgreSQL writes the recovery stop reason).
    pub reason: String,
}

impl TimelineHistory {
    /// The history of a timeline with no ancestors (timeline 1, or any
    /// timeline whose history file does not exist).
    pub fn root(tli: TimelineId) -> TimelineHistory {
        TimelineHistory {
            spans: vec![TimelineSpan {
                tli,
                begin: Lsn::INVALID,
                end: None,
            }],
        }
    }

    /// Parse the text of `<own>.history`.
    pub fn parse(own: TimelineId, text: &str) -> Result<TimelineHistory, HistoryError> {
        let lines = parse_lines(text)?;
        let mut spans = Vec::with_capacity(lines.len() + 1);
        let mut begin = Lsn::INVALID;
        for (i, l) in lines.iter().enumerate() {
            if l.parent >= own {
                return Err(HistoryError::NotAncestor {
                    line: i + 1,
                    tli: l.parent.0,
                    own: own.0,
                });
            }
            if l.switch_point < begin {
                return Err(HistoryError::SwitchPointBackwards { line: i + 1 });
            }
            spans.push(TimelineSpan {
                tli: l.parent,
                begin,
                end: Some(l.switch_point),
            });
            begin = l.switch_point;
        }
        spans.push(TimelineSpan {
            tli: own,
            begin,
            end: None,
        });
        Ok(TimelineHistory { spans })
    }

    /// The history of a new timeline `child` forked from this one's newest
    /// timeline at `switch_point`.
    pub fn fork(&self, child: TimelineId, switch_point: Lsn) -> TimelineHistory {
        let mut spans = self.spans.clone();
        let last = spans.last_mut().expect("history is never empty");
        last.end = Some(switch_point);
        spans.push(TimelineSpan {
            tli: child,
            begin: switch_point,
            end: None,
        });
        TimelineHistory { spans }
    }

    /// The timeline this history belongs to (its newest).
    pub fn timeline(&self) -> TimelineId {
        self.spans.last().expect("history is never empty").tli
    }

    /// Oldest first.
    pub fn spans(&self) -> &[TimelineSpan] {
        &self.spans
    }

    /// Whether `tli` is this timeline or one of its ancestors.
    pub fn contains(&self, tli: TimelineId) -> bool {
        self.spans.iter().any(|s| s.tli == tli)
    }

    /// The timeline the WAL at `lsn` belongs to on this history.
    pub fn timeline_of(&self, lsn: Lsn) -> TimelineId {
        self.spans
            .iter()
            .find(|s| s.end.is_none_or(|end| lsn < end))
            .map(|s| s.tli)
            .unwrap_or_else(|| self.timeline())
    }

    /// Where `tli` ends on this history (PostgreSQL's `tliSwitchPoint`):
    /// `Some(None)` for the newest timeline, `None` if `tli` is not in it.
    pub fn switch_point(&self, tli: TimelineId) -> Option<Option<Lsn>> {
        self.spans.iter().find(|s| s.tli == tli).map(|s| s.end)
    }

    /// Whether this history obeys PostgreSQL's reader rules: timeline ids
    /// strictly increase and no span ends before it begins. (`parse`
    /// guarantees it; a history built with `fork` at a point before its
    /// newest timeline began does not.)
    pub fn is_consistent(&self) -> bool {
        self.spans.windows(2).all(|w| {
            w[0].tli < w[1].tli && w[0].end == Some(w[1].begin) && w[0].begin <= w[1].begin
        }) && self.spans.last().is_some_and(|s| s.end.is_none())
    }

    /// The history of `tli` as seen from this one: this history's spans up
    /// to and including `tli`, with `tli` not ended. `None` if `tli` is not
    /// on this history. (What a timeline forked off an ancestor inherits.)
    pub fn ancestor(&self, tli: TimelineId) -> Option<TimelineHistory> {
        let n = self.spans.iter().position(|s| s.tli == tli)?;
        let mut spans = self.spans[..=n].to_vec();
        spans[n].end = None;
        Some(TimelineHistory { spans })
    }

    /// Where `tli` begins on this history, `None` if it is not on it.
    pub fn begin_of(&self, tli: TimelineId) -> Option<Lsn> {
        self.spans.iter().find(|s| s.tli == tli).map(|s| s.begin)
    }

    /// The text of the history file of `self.timeline()`:
    /// `parent<TAB>switch<TAB>reason` per ancestor. `reasons` gives the
    /// reason text per ancestor (oldest first); missing ones are written as
    /// "no recovery target specified", PostgreSQL's text for a promotion.
    pub fn to_text(&self, reasons: &[&str]) -> String {
        let mut out = String::new();
        for (i, s) in self.spans[..self.spans.len() - 1].iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let reason = reasons
                .get(i)
                .copied()
                .unwrap_or("no recovery target specified");
            let end = s.end.expect("ancestors have ended");
            out.push_str(&format!("{}\t{}\t{}\n", s.tli.0, end, reason));
        }
        out
    }
}

/// Parse the lines of a history file (blank lines and `#` comments skipped;
/// timeline ids must strictly increase).
pub fn parse_lines(text: &str) -> Result<Vec<HistoryLine>, HistoryError> {
    let mut out: Vec<HistoryLine> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = || HistoryError::Syntax {
            line: i + 1,
            text: raw.to_string(),
        };
        let mut parts = line.splitn(3, ['\t', ' ']);
        let tli: u32 = parts
            .next()
            .and_then(|t| t.parse().ok())
            .ok_or_else(syntax)?;
        let lsn: Lsn = parts
            .next()
            .map(str::trim)
            .and_then(|t| t.parse().ok())
            .ok_or_else(syntax)?;
        let reason = parts.next().unwrap_or("").trim().to_string();
        if out.last().is_some_and(|prev| prev.parent.0 >= tli) {
            return Err(HistoryError::NotIncreasing { line: i + 1 });
        }
        out.push(HistoryLine {
            parent: TimelineId(tli),
            switch_point: lsn,
            reason,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgres_history_with_blank_lines() {
        // The text PostgreSQL 15 wrote for timeline 3.
        let text = "1\t0/4006B10\tno recovery target specified\n\n2\t0/6000000\tno recovery target specified\n";
        let h = TimelineHistory::parse(TimelineId(3), text).unwrap();
        assert_eq!(h.timeline(), TimelineId(3));
        assert_eq!(h.timeline_of(Lsn(0x400_6B0F)), TimelineId(1));
        assert_eq!(h.timeline_of(Lsn(0x400_6B10)), TimelineId(2));
        assert_eq!(h.timeline_of(Lsn(0x600_0000)), TimelineId(3));
        assert_eq!(h.switch_point(TimelineId(1)), Some(Some(Lsn(0x400_6B10))));
        assert_eq!(h.switch_point(TimelineId(3)), Some(None));
        assert_eq!(h.switch_point(TimelineId(4)), None);
        assert_eq!(h.to_text(&[]), text);
    }

    #[test]
    fn fork_extends_history() {
        let h = TimelineHistory::root(TimelineId(1)).fork(TimelineId(2), Lsn(0x300_0028));
        assert_eq!(
            h.to_text(&[]),
            "1\t0/3000028\tno recovery target specified\n"
        );
        let back = TimelineHistory::parse(TimelineId(2), &h.to_text(&[])).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn ancestor_cuts_the_history() {
        let text = "1\t0/4006B10\tx\n2\t0/6000000\ty\n";
        let h = TimelineHistory::parse(TimelineId(3), text).unwrap();
        let two = h.ancestor(TimelineId(2)).unwrap();
        assert_eq!(two.timeline(), TimelineId(2));
        assert_eq!(two.switch_point(TimelineId(2)), Some(None));
        assert_eq!(two.switch_point(TimelineId(1)), Some(Some(Lsn(0x400_6B10))));
        assert_eq!(h.ancestor(TimelineId(4)), None);
        assert!(h.is_consistent());
        assert!(!h.fork(TimelineId(4), Lsn(0x10)).is_consistent());
        assert!(!h.fork(TimelineId(2), Lsn(0x700_0000)).is_consistent());
        assert_eq!(h.begin_of(TimelineId(3)), Some(Lsn(0x600_0000)));
        assert_eq!(h.begin_of(TimelineId(1)), Some(Lsn(0)));
    }

    #[test]
    fn rejects_bad_history() {
        assert!(matches!(
            TimelineHistory::parse(TimelineId(3), "2\t0/1\tx\n1\t0/2\ty\n"),
            Err(HistoryError::NotIncreasing { line: 2 })
        ));
        assert!(matches!(
            TimelineHistory::parse(TimelineId(2), "2\t0/1\tx\n"),
            Err(HistoryError::NotAncestor { .. })
        ));
        assert!(matches!(
            TimelineHistory::parse(TimelineId(2), "one\t0/1\n"),
            Err(HistoryError::Syntax { line: 1, .. })
        ));
        assert!(matches!(
            TimelineHistory::parse(TimelineId(3), "1\t0/5\tx\n2\t0/4\ty\n"),
            Err(HistoryError::SwitchPointBackwards { line: 2 })
        ));
        assert_eq!(
            TimelineHistory::parse(TimelineId(1), "# nothing\n\n").unwrap(),
            TimelineHistory::root(TimelineId(1))
        );
    }
}
