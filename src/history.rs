//! A history of client operations and the checker that reads it after a
//! fault run (Jepsen's idea, our code): clients record every write when
//! they send it (invoke) and when it ends (ok, fail, or unknown), each with
//! a value never written before, and every read they make to check one;
//! the checker then compares the whole history with what the surviving
//! node holds. No IO here: callers bring the history and the final data.
//!
//! What the checker demands:
//! - every write acknowledged at `synchronous_commit` `on` or above is on
//!   the promoted node with its final value: the value of that write or of
//!   a later write of the same key that was acknowledged or is unknown;
//! - nothing appears that was never written, or whose write failed (the
//!   server refused it, so it cannot have happened);
//! - a read made on a standby right after a `remote_apply` acknowledgement
//!   sees that write (or a later one of the key);
//! - no two nodes acknowledged writes on the same history (timeline).
//!
//! "Unknown" is not "failed": a write whose connection broke or timed out
//! may or may not have happened, and either is allowed (indeterminate).
//! Each key has one writer that writes it in sequence, so a key's writes
//! are totally ordered by that writer's sequence number and the final value
//! is well defined.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Sent, no answer yet.
    Pending,
    /// Acknowledged ("OK").
    Ok,
    /// Refused by the server (`READONLY`, `LOADING`): it did not happen.
    Fail(String),
    /// No answer (connection broken, timed out) or an error after which the
    /// write may still have happened: indeterminate.
    Unknown(String),
}

/// One write in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The client that sent it (the key's only writer).
    pub client: usize,
    /// The node it was sent to, and that node's timeline when the client
    /// connected (the history the write lands on, if acknowledged).
    pub node: String,
    /// That node's timeline when the client connected.
    pub timeline: u32,
    /// The key (one writer per key).
    pub key: String,
    /// Its position among the writes of `key`, from 0.
    pub seq: u64,
    /// Unique in the whole history.
    pub value: String,
    /// The connection's `synchronous_commit`.
    pub level: String,
    /// Since the history began.
    pub invoked: Duration,
    /// Since the history began; `None` while pending.
    pub completed: Option<Duration>,
    /// How it ended.
    pub outcome: Outcome,
}

/// A read made to check a `remote_apply` acknowledgement: on `node`, right
/// after write `after` (an index into [`History::writes`]) was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The standby read.
    pub node: String,
    /// The acknowledged write it checks.
    pub after: WriteId,
    /// The value read, `None` when the key was absent.
    pub observed: Option<String>,
}

/// The identifier of a write in a [`History`].
pub type WriteId = usize;

/// Every operation of a run.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Every write, in the order they were sent.
    pub writes: Vec<Write>,
    /// The reads made to check acknowledgements.
    pub reads: Vec<Read>,
}

/// `synchronous_commit` levels in order of strength; unknown names rank
/// lowest so they are never taken for a durable acknowledgement.
pub fn level_rank(level: &str) -> u8 {
    match level {
        "local" => 1,
        "remote_write" => 2,
        "on" => 3,
        "remote_apply" => 4,
        _ => 0,
    }
}

/// Whether a write acknowledged at `level` must survive a promotion.
pub fn must_survive(level: &str) -> bool {
    level_rank(level) >= level_rank("on")
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Record a write as sent; complete it with [`History::complete`].
    pub fn invoke(&mut self, w: Write) -> WriteId {
        self.writes.push(Write {
            outcome: Outcome::Pending,
            completed: None,
            ..w
        });
        self.writes.len() - 1
    }

    /// Record how write `id` ended, at `at`.
    pub fn complete(&mut self, id: WriteId, outcome: Outcome, at: Duration) {
        let w = &mut self.writes[id];
        w.outcome = outcome;
        w.completed = Some(at);
    }

    /// Record a read made to check an acknowledgement.
    pub fn read(&mut self, r: Read) {
        self.reads.push(r);
    }

    /// Every key written.
    pub fn keys(&self) -> BTreeSet<&str> {
        self.writes.iter().map(|w| w.key.as_str()).collect()
    }

    /// Check the history against `final_state` (each key's value on the
    /// promoted or surviving node, `None` when absent).
    pub fn check(&self, final_state: &HashMap<String, Option<String>>) -> Report {
        let mut r = Report::default();
        self.count(&mut r);
        self.check_final(final_state, &mut r);
        self.check_reads(&mut r);
        self.check_histories(&mut r);
        r
    }

    fn count(&self, r: &mut Report) {
        for w in &self.writes {
            r.writes += 1;
            match &w.outcome {
                Outcome::Ok if must_survive(&w.level) => r.acknowledged += 1,
                Outcome::Ok => r.acknowledged_weak += 1,
                Outcome::Fail(_) => r.failed += 1,
                Outcome::Unknown(_) | Outcome::Pending => r.indeterminate += 1,
            }
        }
    }

    fn check_final(&self, state: &HashMap<String, Option<String>>, r: &mut Report) {
        let by_value: HashMap<&str, &Write> =
            self.writes.iter().map(|w| (w.value.as_str(), w)).collect();
        let mut by_key: BTreeMap<&str, Vec<&Write>> = BTreeMap::new();
        for w in &self.writes {
            by_key.entry(&w.key).or_default().push(w);
        }
        for (key, writes) in by_key {
            let last_acked = writes
                .iter()
                .filter(|w| w.outcome == Outcome::Ok && must_survive(&w.level))
                .map(|w| w.seq)
                .max();
            let observed = state.get(key).cloned().flatten();
            let found = observed.as_deref().map(|v| by_value.get(v).copied());
            match (last_acked, found) {
                (Some(seq), None) => {
                    r.lost.push(format!(
                        "{key}: write #{seq} was acknowledged, the key is absent"
                    ));
                }
                (_, Some(None)) => r.violations.push(format!(
                    "{key} = {:?}: a value no client ever wrote",
                    observed.unwrap_or_default()
                )),
                (_, Some(Some(w))) if w.key != key => r.violations.push(format!(
                    "{key} holds {}, a value written to {}",
                    w.value, w.key
                )),
                (_, Some(Some(w))) if matches!(w.outcome, Outcome::Fail(_)) => {
                    r.violations.push(format!(
                        "{key} = {}: that write was refused ({:?}), yet it happened",
                        w.value, w.outcome
                    ))
                }
                (Some(seq), Some(Some(w))) if w.seq < seq => r.lost.push(format!(
                    "{key} = {} (write #{}), but write #{seq} was acknowledged",
                    w.value, w.seq
                )),
                (_, Some(Some(w))) => {
                    r.keys_checked += 1;
                    if !matches!(w.outcome, Outcome::Ok) {
                        r.indeterminate_present += 1;
                    }
                }
                (None, None) => r.keys_checked += 1,
            }
        }
    }

    fn check_reads(&self, r: &mut Report) {
        let by_value: HashMap<&str, &Write> =
            self.writes.iter().map(|w| (w.value.as_str(), w)).collect();
        for read in &self.reads {
            let w = &self.writes[read.after];
            r.reads_checked += 1;
            let seen = read.observed.as_deref().and_then(|v| by_value.get(v));
            let fine = seen.is_some_and(|x| x.key == w.key && x.seq >= w.seq);
            if !fine {
                r.violations.push(format!(
                    "read of {} on {} after {} was acknowledged at {} saw {:?}",
                    w.key, read.node, w.value, w.level, read.observed
                ));
            }
        }
    }

    /// No timeline with acknowledged writes from two nodes.
    fn check_histories(&self, r: &mut Report) {
        let mut nodes: BTreeMap<u32, BTreeSet<&str>> = BTreeMap::new();
        for w in self.writes.iter().filter(|w| w.outcome == Outcome::Ok) {
            nodes.entry(w.timeline).or_default().insert(&w.node);
        }
        for (tli, n) in nodes {
            if n.len() > 1 {
                r.violations.push(format!(
                    "timeline {tli}: writes acknowledged by {} nodes ({})",
                    n.len(),
                    n.into_iter().collect::<Vec<_>>().join(", ")
                ));
            } else {
                r.histories
                    .push((tli, n.into_iter().next().unwrap_or("").to_string()));
            }
        }
    }
}

/// What the checker found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Writes sent.
    pub writes: usize,
    /// Acknowledged at `on` or above.
    pub acknowledged: usize,
    /// Acknowledged below `on` (`local`, `remote_write`, degraded): counted,
    /// not required to survive a promotion.
    pub acknowledged_weak: usize,
    /// Refused by the server.
    pub failed: usize,
    /// Unknown or never answered.
    pub indeterminate: usize,
    /// Keys whose final value is an indeterminate write (it happened).
    pub indeterminate_present: usize,
    /// Keys whose final value passed.
    pub keys_checked: usize,
    /// `remote_apply` reads checked.
    pub reads_checked: usize,
    /// Acknowledged writes missing or overwritten by an older value.
    pub lost: Vec<String>,
    /// Everything else that must never happen.
    pub violations: Vec<String>,
    /// (timeline, the one node that acknowledged writes on it).
    pub histories: Vec<(u32, String)>,
}

impl Report {
    /// Nothing lost, no violation.
    pub fn is_valid(&self) -> bool {
        self.lost.is_empty() && self.violations.is_empty()
    }

    /// One line of figures.
    pub fn summary(&self) -> String {
        let hist: Vec<String> = self
            .histories
            .iter()
            .map(|(t, n)| format!("{n}@{t}"))
            .collect();
        format!(
            "{} writes: {} acknowledged (on or above), {} acknowledged below on, {} failed, \
             {} indeterminate ({} of them present); {} lost; {} reads checked; {} violations; \
             histories {}",
            self.writes,
            self.acknowledged,
            self.acknowledged_weak,
            self.failed,
            self.indeterminate,
            self.indeterminate_present,
            self.lost.len(),
            self.reads_checked,
            self.violations.len(),
            hist.join(" ")
        )
    }

    /// The summary and the first problems, for a failure message.
    pub fn explain(&self) -> String {
        let mut s = self.summary();
        for line in self.lost.iter().chain(&self.violations).take(20) {
            let _ = write!(s, "\n  {line}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &str, seq: u64, level: &str, outcome: Outcome) -> Write {
        Write {
            client: 0,
            node: "n1".into(),
            timeline: 1,
            key: key.into(),
            seq,
            value: format!("{key}#{seq}"),
            level: level.into(),
            invoked: Duration::ZERO,
            completed: Some(Duration::ZERO),
            outcome,
        }
    }

    fn history(writes: Vec<Write>) -> History {
        History {
            writes,
            reads: Vec::new(),
        }
    }

    fn state(pairs: &[(&str, Option<&str>)]) -> HashMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn the_last_acknowledged_value_or_a_later_unknown_one_passes() {
        let h = history(vec![
            w("a", 0, "on", Outcome::Ok),
            w("a", 1, "on", Outcome::Ok),
            w("a", 2, "on", Outcome::Unknown("timeout".into())),
        ]);
        let r = h.check(&state(&[("a", Some("a#1"))]));
        assert!(r.is_valid(), "{}", r.explain());
        let r = h.check(&state(&[("a", Some("a#2"))]));
        assert!(r.is_valid(), "{}", r.explain());
        assert_eq!(r.indeterminate_present, 1);
    }

    #[test]
    fn a_missing_or_older_acknowledged_value_is_lost() {
        let h = history(vec![
            w("a", 0, "on", Outcome::Ok),
            w("a", 1, "remote_apply", Outcome::Ok),
        ]);
        assert_eq!(h.check(&state(&[("a", None)])).lost.len(), 1);
        assert_eq!(h.check(&state(&[("a", Some("a#0"))])).lost.len(), 1);
    }

    #[test]
    fn writes_below_on_may_be_lost() {
        let h = history(vec![w("a", 0, "local", Outcome::Ok)]);
        assert!(h.check(&state(&[("a", None)])).is_valid());
    }

    #[test]
    fn phantom_and_refused_values_are_violations() {
        let h = history(vec![
            w("a", 0, "on", Outcome::Fail("READONLY".into())),
            w("b", 0, "on", Outcome::Ok),
        ]);
        let r = h.check(&state(&[("a", Some("a#0")), ("b", Some("b#0"))]));
        assert_eq!(r.violations.len(), 1, "{}", r.explain());
        let r = h.check(&state(&[("b", Some("nobody wrote this"))]));
        assert_eq!(r.violations.len(), 1, "{}", r.explain());
        let r = h.check(&state(&[("b", Some("a#0"))]));
        assert_eq!(r.violations.len(), 1, "{}", r.explain());
        assert!(r.violations[0].contains("written to a"), "{}", r.explain());
    }

    #[test]
    fn a_stale_read_after_remote_apply_is_a_violation() {
        let mut h = history(vec![
            w("a", 0, "remote_apply", Outcome::Ok),
            w("a", 1, "remote_apply", Outcome::Ok),
        ]);
        h.read(Read {
            node: "s1".into(),
            after: 1,
            observed: Some("a#1".into()),
        });
        assert!(h.check(&state(&[("a", Some("a#1"))])).is_valid());
        h.read(Read {
            node: "s1".into(),
            after: 1,
            observed: Some("a#0".into()),
        });
        let r = h.check(&state(&[("a", Some("a#1"))]));
        assert_eq!((r.reads_checked, r.violations.len()), (2, 1));
    }

    #[test]
    fn two_nodes_acknowledging_on_one_timeline_is_a_violation() {
        let mut other = w("b", 0, "on", Outcome::Ok);
        other.node = "n2".into();
        let h = history(vec![w("a", 0, "on", Outcome::Ok), other.clone()]);
        let st = state(&[("a", Some("a#0")), ("b", Some("b#0"))]);
        assert_eq!(h.check(&st).violations.len(), 1);
        other.timeline = 2;
        let h = history(vec![w("a", 0, "on", Outcome::Ok), other]);
        let r = h.check(&st);
        assert!(r.is_valid(), "{}", r.explain());
        assert_eq!(r.histories, vec![(1, "n1".into()), (2, "n2".into())]);
    }
}
