//! Breadth-first exploration of the real recovery machine: from each start
//! configuration, feed every reachable machine every kind of event (answers
//! to what it asked for, with each possible outcome, plus unsolicited and
//! stale ones) and record the transition graph. statig cannot list its own
//! transitions; this makes the diagrams and the transition table come from
//! the code.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::action::ActionKind;
use super::config::RecoveryConfig;
use super::event::{
    Event, EventKind, PromoteTrigger, PromotionStep, RecordCheck, SessionId, WalFile,
};
use super::kind::StateKind;
use super::machine::State;
use super::promotion::Phase;
use super::round_state::{Location, Step};
use super::shared::Machine;
use super::Recovery;
use crate::history::TimelineHistory;
use crate::lsn::{Lsn, SegNo, TimelineId};
use crate::time::Millis;

/// Exploration stops after expanding this many machines (a bound; the
/// abstract state space is far smaller, see [`abstract_key`]).
pub const MAX_EXPANDED: usize = 100_000;

/// One edge: in `from`, an event of kind `event` leads to `to` with actions
/// of these kinds (sorted, without duplicates).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Edge {
    /// State before.
    pub from: StateKind,
    /// The event's kind.
    pub event: EventKind,
    /// State after.
    pub to: StateKind,
    /// The kinds of the actions produced.
    pub actions: Vec<ActionKind>,
}

impl Edge {
    /// An event that changed nothing visible: same state, no action.
    pub fn is_noop(&self) -> bool {
        self.from == self.to && self.actions.is_empty()
    }
}

/// The explored transition graph.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Graph {
    /// Every state reached.
    pub states: BTreeSet<StateKind>,
    /// Every edge taken.
    pub edges: BTreeSet<Edge>,
    /// Machines expanded.
    pub expanded: usize,
    /// Invariant violations met (must stay empty), with the trace line.
    pub violations: Vec<String>,
}

impl Graph {
    /// Whether some edge goes from `from` on `event` to `to`.
    pub fn has_edge(&self, from: StateKind, event: EventKind, to: StateKind) -> bool {
        self.edges
            .iter()
            .any(|e| e.from == from && e.event == event && e.to == to)
    }

    /// Distinct (from, event, to) triples.
    pub fn transitions(&self) -> BTreeSet<(StateKind, EventKind, StateKind)> {
        self.edges.iter().map(|e| (e.from, e.event, e.to)).collect()
    }

    /// Edges between states for diagrams: (from, to) → event kinds, leaving
    /// out events that change nothing visible.
    pub fn arrows(&self) -> BTreeMap<(StateKind, StateKind), BTreeSet<EventKind>> {
        let mut arrows: BTreeMap<_, BTreeSet<_>> = BTreeMap::new();
        for e in self.edges.iter().filter(|e| !e.is_noop()) {
            arrows.entry((e.from, e.to)).or_default().insert(e.event);
        }
        arrows
    }

    /// The transition table, one line per (from, event, to) with the union
    /// of action kinds seen, then per state the events it ignores.
    pub fn table(&self) -> String {
        let mut rows: BTreeMap<(StateKind, EventKind, StateKind), BTreeSet<ActionKind>> =
            BTreeMap::new();
        for e in self.edges.iter().filter(|e| !e.is_noop()) {
            rows.entry((e.from, e.event, e.to))
                .or_default()
                .extend(e.actions.iter().copied());
        }
        let mut out = String::new();
        for ((from, event, to), actions) in &rows {
            let list: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(out, "{from} --{event}--> {to} [{}]", list.join(", "));
        }
        for state in &self.states {
            let ignored: BTreeSet<EventKind> = self
                .edges
                .iter()
                .filter(|e| e.from == *state && e.is_noop())
                .map(|e| e.event)
                .filter(|k| !rows.keys().any(|(f, ev, _)| f == state && ev == k))
                .collect();
            if !ignored.is_empty() {
                let list: Vec<String> = ignored.iter().map(|k| k.to_string()).collect();
                let _ = writeln!(out, "{state} no visible effect: {}", list.join(", "));
            }
        }
        out
    }
}

/// The start configurations the diagrams are drawn from: a standby with
/// archive and stream, with the archive only, with the stream only.
pub fn standard_configs() -> Vec<RecoveryConfig> {
    let both = RecoveryConfig::default();
    vec![
        both.clone(),
        RecoveryConfig {
            stream_configured: false,
            ..both.clone()
        },
        RecoveryConfig {
            archive_configured: false,
            ..both
        },
    ]
}

/// Explore the machine from [`standard_configs`].
pub fn explore_standby() -> Graph {
    explore(&standard_configs())
}

/// Explore from a fresh machine per configuration.
pub fn explore(configs: &[RecoveryConfig]) -> Graph {
    explore_bounded(configs, MAX_EXPANDED)
}

/// Explore, expanding at most `max_expanded` machines.
pub fn explore_bounded(configs: &[RecoveryConfig], max_expanded: usize) -> Graph {
    let mut graph = Graph::default();
    let mut seen = BTreeSet::new();
    let mut unsolicited_tried = BTreeSet::new();
    let mut queue = VecDeque::new();
    for (i, config) in configs.iter().enumerate() {
        if let Ok(core) = Recovery::new(config.clone()) {
            graph.states.insert(core.state());
            seen.insert((i, abstract_key(&core)));
            queue.push_back((i, core));
        }
    }
    while let Some((i, core)) = queue.pop_front() {
        if graph.expanded >= max_expanded {
            break;
        }
        graph.expanded += 1;
        // Unsolicited events change nothing visible: tried once per state
        // and configuration, which keeps exploration fast.
        let (mut events, unsolicited) = sample_events_split(&core);
        if unsolicited_tried.insert((i, core.state())) {
            events.extend(unsolicited);
        }
        for (now, event) in events {
            let mut next = core.clone();
            next.handle(now, event);
            let Some(t) = drain(&mut next) else { continue };
            let mut actions: Vec<ActionKind> = t.actions.iter().map(|a| a.kind()).collect();
            actions.sort();
            actions.dedup();
            graph.states.insert(t.to);
            graph.edges.insert(Edge {
                from: t.from,
                event: t.event.kind(),
                to: t.to,
                actions,
            });
            if let Err(v) = next.check_invariants() {
                graph.violations.push(format!("{v}: {t}"));
            }
            if seen.insert((i, abstract_key(&next))) {
                queue.push_back((i, next));
            }
        }
    }
    graph
}

/// Drain the outbox and trace; the last transition record.
fn drain(core: &mut Recovery) -> Option<super::Transition> {
    while core.poll_action().is_some() {}
    let mut last = None;
    while let Some(t) = core.poll_transition() {
        last = Some(t);
    }
    last
}

/// What distinguishes machines for exploration: state, phase, outstanding
/// requests, walreceiver status, flags and counters (capped), but not the
/// LSN values themselves, nor whether a reload made the stream a source
/// (that doubles the space past [`MAX_EXPANDED`]; the walreceiver's status
/// tells the reloaded machines apart where it matters).
pub fn abstract_key(core: &Recovery) -> String {
    if core.state().is_final() {
        return format!("{:?}", core.state());
    }
    let m = core.shared();
    let seg = m.config.wal_segment_size;
    let round = m.round.as_ref().map(|r| {
        let step = match r.step {
            Step::Scan { at, .. } => format!("scan-{at:?}"),
            Step::Fetch { at, .. } => format!("fetch-{at:?}"),
            Step::Replay { source, .. } => format!("replay-{source}"),
        };
        let crossing = r.segno != m.replay_lsn.segno(seg);
        format!("{:?}/{step}/{}/{crossing}", r.mode, r.skip_archive)
    });
    let phase = match core.machine_state() {
        State::Promoting { promotion } => match &promotion.phase {
            Phase::StoppingReceiver { attempts, .. } => format!("stopping{}", attempts.min(&2)),
            Phase::Draining => format!("draining-{}", promotion.round_done),
            Phase::Probing { at, retry_at, .. } => format!("probing-{at:?}-{}", retry_at.is_some()),
            Phase::WritingHistory { .. } => "history".into(),
            Phase::WritingEndOfRecovery { .. } => "eor".into(),
        },
        State::AwaitingBaseBackup { wait } => format!("retry-{}", wait.retry_at.is_some()),
        _ => String::new(),
    };
    let received = m.received.as_ref().map(|r| {
        (
            r.ended_at.is_some(),
            r.ended_at.is_some_and(|e| m.replay_lsn >= e),
        )
    });
    format!(
        "{:?}|{round:?}|{phase}|{:?}|{received:?}|{}|{:?}|{:?}|{:?}|{}|{}|{}|{}|{}|{}|{:?}",
        core.state(),
        m.receiver.as_ref().map(|r| r.status),
        m.unreplayed_received(),
        m.replay_req.as_ref().map(|r| (r.source, r.for_round)),
        m.fetch_req
            .map(|f| (matches!(f.file, WalFile::History { .. }), f.at)),
        m.bad
            .iter()
            .filter(|b| b.at == m.replay_lsn)
            .map(|b| b.source)
            .collect::<std::collections::BTreeSet<_>>(),
        match m.stall.count {
            0 => 0,
            c if c < m.config.ping_pong_threshold => 1,
            _ => 2,
        },
        m.restore_failures.min(1),
        m.consistent,
        m.promote_pending,
        m.timelines.newest_known(None).is_some(),
        m.timelines.target.0.min(3),
        core.inline.map(|g| g.withdrawing),
    )
}

/// An event and the time to deliver it at.
pub type TimedEvent = (Millis, Event);

/// Events worth trying on `core`: the answers to its outstanding requests
/// (every outcome), the walreceiver's possible news, redo results, the
/// trigger, the timer (at its deadline), shutdown, promotion steps, and an
/// unsolicited instance of every other event kind. Each with its time.
pub fn sample_events(core: &Recovery) -> Vec<TimedEvent> {
    let (mut plausible, unsolicited) = sample_events_split(core);
    plausible.extend(unsolicited);
    plausible
}

/// [`sample_events`] in two parts: the plausible ones, and the unsolicited
/// instances of the remaining kinds (which change nothing visible).
pub fn sample_events_split(core: &Recovery) -> (Vec<TimedEvent>, Vec<TimedEvent>) {
    let m = core.shared();
    let now = core.now;
    let mut out: Vec<Event> = Vec::new();
    if core.state() == StateKind::Starting {
        out.extend(start_events(m));
    }
    if core.state() == StateKind::AwaitingBaseBackup {
        out.extend(backup_complete_events(m));
    }
    out.extend(fetch_answers(m));
    out.extend(receiver_news(core, m));
    out.extend(redo_results(m));
    out.extend(promotion_answers(core, m));
    if let Some(g) = core.inline_leave().filter(|g| g.withdrawing) {
        // Nothing, or up to what the session flushed (maybe unreported).
        let flushed = m.received.as_ref().map_or(m.replay_lsn, |r| r.upto);
        for applied in [Lsn::INVALID, plus(flushed, 0x28)] {
            out.push(Event::InlineApplyWithdrawn {
                session: g.leave.session,
                applied,
            });
        }
    }
    out.push(Event::PromoteRequested {
        trigger: PromoteTrigger::Command,
    });
    out.push(Event::ShutdownRequested);
    // A reload giving the standby an upstream, changing it, or taking it away.
    out.extend(
        [true, false].map(|stream_configured| Event::UpstreamReloaded { stream_configured }),
    );
    let mut timed: Vec<TimedEvent> = out.into_iter().map(|e| (now, e)).collect();
    timed.push((
        core.poll_timeout().unwrap_or(now).max(now),
        Event::TimerFired,
    ));
    let covered: BTreeSet<EventKind> = timed.iter().map(|e| e.1.kind()).collect();
    let others = unsolicited(m)
        .into_iter()
        .filter(|e| !covered.contains(&e.kind()))
        .map(|e| (now, e))
        .collect();
    (timed, others)
}

/// `lsn + bytes`, saturating (sample data must not overflow on any state).
fn plus(lsn: Lsn, bytes: u64) -> Lsn {
    Lsn(lsn.0.saturating_add(bytes))
}

fn seg_bytes(m: &Machine) -> u64 {
    m.config.wal_segment_size.bytes()
}

fn start_events(m: &Machine) -> Vec<Event> {
    let s = seg_bytes(m);
    let redo = Lsn(2 * s + 0x28);
    let started = |crash: bool, min: Lsn| Event::RecoveryStarted {
        redo_lsn: redo,
        tli: TimelineId::FIRST,
        history: TimelineHistory::root(TimelineId::FIRST),
        min_recovery_point: min,
        crash_recovery_first: crash,
    };
    vec![
        started(false, redo),
        started(true, plus(redo, s)),
        Event::BaseBackupPending {
            start: redo,
            tli: TimelineId::FIRST,
        },
    ]
}

/// The copy of a two-phase base backup completed: recovery starts at the
/// copy's start, consistent at its end (a segment later).
fn backup_complete_events(m: &Machine) -> Vec<Event> {
    vec![Event::RecoveryStarted {
        redo_lsn: m.replay_lsn,
        tli: m.timelines.target,
        history: m.timelines.expected.clone(),
        min_recovery_point: plus(m.replay_lsn, seg_bytes(m)),
        crash_recovery_first: false,
    }]
}

/// A history of `tli` descending from the target, forked at `fork`.
fn child_history(m: &Machine, tli: TimelineId, fork: Lsn) -> TimelineHistory {
    let mut h = m.timelines.expected.clone();
    let last_begin = h.spans().last().map_or(Lsn::INVALID, |s| s.begin);
    let fork = fork.max(last_begin);
    let mut t = m.timelines.target;
    // Intermediate timelines, a few at most (ids may be far apart).
    while t < tli && tli.0 - t.0 > 1 && h.spans().len() < 8 {
        let Some(n) = t.checked_next() else { break };
        h = h.fork(n, fork);
        t = n;
    }
    if t < tli {
        h = h.fork(tli, fork);
    }
    h
}

fn fetch_answers(m: &Machine) -> Vec<Event> {
    let Some(req) = m.fetch_req else {
        return Vec::new();
    };
    let failed = Event::RestoreCommandFailed {
        file: req.file,
        reason: "killed by signal 9".into(),
    };
    match (req.file, req.at) {
        (WalFile::Segment { tli, segno }, Location::Archive) => vec![
            Event::SegmentRestored { tli, segno },
            Event::SegmentNotInArchive { tli, segno },
            failed,
        ],
        (WalFile::Segment { tli, segno }, Location::Local) => vec![
            Event::SegmentFoundLocally { tli, segno },
            Event::SegmentNotFoundLocally { tli, segno },
        ],
        (WalFile::History { tli }, at) => {
            let fork = plus(m.replay_lsn, seg_bytes(m));
            let history = child_history(m, tli, fork);
            let early = child_history(m, tli, Lsn(m.replay_lsn.0.saturating_sub(1)));
            match at {
                Location::Archive => vec![
                    Event::HistoryRestored { tli, history },
                    Event::HistoryRestored {
                        tli,
                        history: early,
                    },
                    Event::HistoryNotInArchive { tli },
                    failed,
                ],
                Location::Local => vec![
                    Event::HistoryFoundLocally { tli, history },
                    Event::HistoryNotFoundLocally { tli },
                ],
            }
        }
    }
}

fn receiver_news(core: &Recovery, m: &Machine) -> Vec<Event> {
    let mut out = Vec::new();
    let stopping = match core.machine_state() {
        State::Promoting { promotion } => match promotion.phase {
            Phase::StoppingReceiver { session, .. } => Some(session),
            _ => None,
        },
        _ => None,
    };
    let received = m.received.as_ref();
    let flushed = received.map_or(m.replay_lsn, |r| r.upto).max(m.replay_lsn);
    if let Some(session) = stopping {
        out.push(Event::WalReceiverStopped {
            session,
            flushed: plus(flushed, seg_bytes(m) / 4),
        });
        // The stopped session held WAL its upstream had not confirmed.
        out.push(Event::UnconfirmedWalHeld {
            session,
            tli: received.map_or(m.timelines.target, |x| x.tli),
            from: flushed,
            to: plus(flushed, seg_bytes(m) / 3),
        });
    }
    let Some(r) = &m.receiver else {
        return out;
    };
    let s = r.session;
    let tli = received.map_or(r.tli, |x| x.tli);
    let next_tli = m.timelines.highest_seen.checked_next().unwrap_or(tli);
    if r.status == super::shared::ReceiverStatus::Connecting {
        out.push(Event::StreamConnected {
            session: s,
            upstream_tli: r.tli,
            upstream_flush: plus(flushed, 2 * seg_bytes(m)),
        });
        if r.tli > TimelineId::FIRST {
            out.push(Event::StreamConnected {
                session: s,
                upstream_tli: TimelineId(r.tli.0 - 1),
                upstream_flush: flushed,
            });
        }
    }
    if r.status != super::shared::ReceiverStatus::Ended {
        out.push(Event::WalFlushed {
            session: s,
            tli,
            upto: plus(flushed, seg_bytes(m) / 2),
        });
        out.push(Event::TimelineEnded {
            session: s,
            tli,
            next_tli,
            switch_point: flushed,
        });
    }
    out.push(Event::HistoryReceived {
        session: s,
        tli: next_tli,
        history: child_history(m, next_tli, flushed),
    });
    out.push(Event::StreamLost {
        session: s,
        reason: "connection reset by peer".into(),
    });
    // The session ends holding WAL sent before its upstream flushed it
    // (announced just before its end), and a new session may find the
    // restarted upstream with less WAL than was held.
    out.push(Event::UnconfirmedWalHeld {
        session: s,
        tli,
        from: flushed,
        to: plus(flushed, seg_bytes(m) / 3),
    });
    if let (Some(u), super::shared::ReceiverStatus::Connecting) = (m.unconfirmed, r.status) {
        out.push(Event::UnconfirmedWalTruncated {
            session: s,
            tli: u.tli,
            from: plus(u.from, u.to.saturating_sub(u.from) / 2),
        });
        out.push(Event::UnconfirmedWalTruncated {
            session: s,
            tli: u.tli,
            from: u.from,
        });
    }
    out
}

fn redo_results(m: &Machine) -> Vec<Event> {
    let Some(req) = &m.replay_req else {
        return Vec::new();
    };
    let mut out = vec![
        Event::EndOfWalReached { at: req.upto },
        Event::InvalidRecord {
            at: m.replay_lsn,
            check: RecordCheck::Crc,
        },
    ];
    if req.upto > m.replay_lsn {
        // Redo stops below the limit: the next record is incomplete.
        out.push(Event::EndOfWalReached { at: m.replay_lsn });
        out.push(Event::WalReplayed {
            upto: plus(m.replay_lsn, req.upto.saturating_sub(m.replay_lsn) / 2),
        });
    }
    out
}

fn promotion_answers(core: &Recovery, m: &Machine) -> Vec<Event> {
    let State::Promoting { promotion } = core.machine_state() else {
        return Vec::new();
    };
    match promotion.phase {
        Phase::WritingHistory { tli, .. } => vec![
            Event::HistoryFileWritten { tli },
            Event::PromotionStepFailed {
                step: PromotionStep::WriteHistoryFile,
                reason: "fsync failed: EIO".into(),
            },
        ],
        Phase::WritingEndOfRecovery { tli, .. } => vec![
            Event::EndOfRecoveryWritten {
                tli,
                end: plus(m.replay_lsn, 0x28),
            },
            Event::PromotionStepFailed {
                step: PromotionStep::WriteEndOfRecovery,
                reason: "No space left on device".into(),
            },
        ],
        _ => Vec::new(),
    }
}

/// One unsolicited or stale instance of every event kind.
fn unsolicited(m: &Machine) -> Vec<Event> {
    let tli = m.timelines.target;
    let segno = SegNo(999);
    let stale = SessionId(0);
    let at = m.replay_lsn;
    vec![
        Event::RecoveryStarted {
            redo_lsn: at,
            tli,
            history: m.timelines.expected.clone(),
            min_recovery_point: at,
            crash_recovery_first: false,
        },
        Event::BaseBackupPending { start: at, tli },
        Event::SegmentRestored { tli, segno },
        Event::SegmentNotInArchive { tli, segno },
        Event::RestoreCommandFailed {
            file: WalFile::Segment { tli, segno },
            reason: "timed out".into(),
        },
        Event::SegmentFoundLocally { tli, segno },
        Event::SegmentNotFoundLocally { tli, segno },
        Event::HistoryRestored {
            tli,
            history: m.timelines.expected.clone(),
        },
        Event::HistoryNotInArchive { tli },
        Event::HistoryFoundLocally {
            tli,
            history: m.timelines.expected.clone(),
        },
        Event::HistoryNotFoundLocally { tli },
        Event::StreamConnected {
            session: stale,
            upstream_tli: tli,
            upstream_flush: at,
        },
        Event::WalFlushed {
            session: stale,
            tli,
            upto: plus(at, 1),
        },
        Event::TimelineEnded {
            session: stale,
            tli,
            next_tli: tli,
            switch_point: at,
        },
        Event::HistoryReceived {
            session: stale,
            tli,
            history: m.timelines.expected.clone(),
        },
        Event::StreamLost {
            session: stale,
            reason: "stale".into(),
        },
        Event::WalReceiverStopped {
            session: stale,
            flushed: at,
        },
        Event::InlineApplyWithdrawn {
            session: stale,
            applied: at,
        },
        Event::UnconfirmedWalHeld {
            session: stale,
            tli,
            from: at,
            to: plus(at, 1),
        },
        Event::UnconfirmedWalTruncated {
            session: stale,
            tli,
            from: at,
        },
        Event::WalReplayed { upto: at },
        Event::EndOfWalReached { at },
        Event::InvalidRecord {
            at,
            check: RecordCheck::Length,
        },
        Event::HistoryFileWritten { tli },
        Event::EndOfRecoveryWritten { tli, end: at },
        Event::PromotionStepFailed {
            step: PromotionStep::WriteHistoryFile,
            reason: "unsolicited".into(),
        },
    ]
}
