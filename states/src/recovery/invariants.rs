//! The recovery machine's invariants, checked after every step by the
//! tests, the simulator and (cheaply) by the runtime in debug builds.

use std::fmt;

use super::action::WalSource;
use super::event::WalFile;
use super::kind::StateKind;
use super::machine::State;
use super::shared::{Machine, ReceiverStatus};
use crate::lsn::{Lsn, SegNo};

/// A broken invariant: which one and the values that broke it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvariantViolation {
    /// The invariant's name.
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for InvariantViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant {} broken: {}", self.invariant, self.detail)
    }
}

impl std::error::Error for InvariantViolation {}

pub(crate) fn violation(invariant: &'static str, detail: String) -> InvariantViolation {
    InvariantViolation { invariant, detail }
}

/// Check the invariants that hold in every state of the machine itself.
pub(crate) fn check_machine(m: &Machine, state: &State) -> Result<(), InvariantViolation> {
    check_bad_record(m)?;
    check_requests(m)?;
    check_lsn_space(m)?;
    check_shape(m, state)?;
    check_timelines(m)
}

/// Nothing at or past a known invalid record is read again from the copy
/// that holds it: a stream replay of the same session, or a round replay
/// making the same file available (the segment holding the record, or the
/// later one a record spanning into it was read with).
fn check_bad_record(m: &Machine) -> Result<(), InvariantViolation> {
    let Some(req) = &m.replay_req else {
        return Ok(());
    };
    let req_segno = req.segno(m.config.wal_segment_size);
    for bad in m.bad.iter().filter(|b| b.at == m.replay_lsn) {
        let same_copy = match req.source {
            WalSource::Stream => bad.source == WalSource::Stream && req.session == bad.session,
            _ => req.tli == bad.tli && bad.segno == req_segno,
        };
        if same_copy && req.upto > bad.at {
            return Err(violation(
                "never-reapply-bad-record",
                format!(
                    "replay from {} tli {} to {} reads the copy whose record at {} failed {:?}",
                    req.source, req.tli.0, req.upto, bad.at, bad.check
                ),
            ));
        }
    }
    Ok(())
}

/// Requests stay within what is there.
fn check_requests(m: &Machine) -> Result<(), InvariantViolation> {
    if let Some(req) = &m.replay_req {
        if req.upto < m.replay_lsn {
            return Err(violation(
                "replay-request-ahead",
                format!(
                    "replay request to {} is behind replay {}",
                    req.upto, m.replay_lsn
                ),
            ));
        }
        if req.source == WalSource::Stream {
            let received = m
                .received
                .as_ref()
                .filter(|r| Some(r.session) == req.session)
                .map_or(Lsn::INVALID, |r| r.upto);
            if req.upto > received {
                return Err(violation(
                    "replay-only-flushed-wal",
                    format!("stream replay to {} beyond flushed {received}", req.upto),
                ));
            }
        }
    }
    Ok(())
}

/// Rounds and requests name only segments that have positions: none after
/// the last segment of the LSN space.
fn check_lsn_space(m: &Machine) -> Result<(), InvariantViolation> {
    let last = SegNo::last(m.config.wal_segment_size);
    let asked = match m.fetch_req.map(|r| r.file) {
        Some(WalFile::Segment { segno, .. }) => Some(segno),
        _ => None,
    };
    let round = m.round.as_ref().map(|r| r.segno);
    match [asked, round].into_iter().flatten().find(|s| *s > last) {
        Some(segno) => Err(violation(
            "segments-in-lsn-space",
            format!("segment {segno} is past {last}, the last segment of the LSN space"),
        )),
        None => Ok(()),
    }
}

/// Which requests and sessions each state may have.
fn check_shape(m: &Machine, state: &State) -> Result<(), InvariantViolation> {
    let kind = state.kind();
    let live_receiver = m
        .receiver
        .as_ref()
        .is_some_and(|r| r.status != ReceiverStatus::Ended);
    let bad = |detail: &str| Err(violation("state-shape", format!("{kind}: {detail}")));
    match kind {
        StateKind::CrashRecovery | StateKind::ArchiveRecovery => {
            if m.round.is_none() {
                return bad("no round running");
            }
            if live_receiver {
                return bad("a walreceiver streams while the archive is read");
            }
            if m.fetch_req.is_none() && m.replay_req.is_none() {
                return bad("round waits for nothing");
            }
        }
        StateKind::AwaitingBaseBackup
            if m.round.is_some() || m.replay_req.is_some() || m.fetch_req.is_some() =>
        {
            return bad("reads or replays WAL before the copy is complete")
        }
        StateKind::RetryingArchive if m.round.is_some() => return bad("round still running"),
        StateKind::Streaming if m.receiver.is_none() => return bad("no walreceiver"),
        StateKind::Promoted | StateKind::Stopped if live_receiver => {
            return bad("walreceiver still running")
        }
        _ => {}
    }
    let active = !kind.is_final() && kind != StateKind::Promoting;
    if active && m.fetch_req.is_some() && m.round.is_none() {
        return bad("archive request outside a round");
    }
    Ok(())
}

/// The target's history is the target's; promotion outranks what it saw.
fn check_timelines(m: &Machine) -> Result<(), InvariantViolation> {
    let t = &m.timelines;
    if t.expected.timeline() != t.target {
        return Err(violation(
            "target-history",
            format!(
                "target {} but expected history of {}",
                t.target.0,
                t.expected.timeline().0
            ),
        ));
    }
    if t.highest_seen < t.target {
        return Err(violation(
            "highest-seen",
            format!(
                "highest seen {} below target {}",
                t.highest_seen.0, t.target.0
            ),
        ));
    }
    Ok(())
}
