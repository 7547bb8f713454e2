//! The walreceiver's inline apply: with the recovery machine's leave
//! (`AllowInlineApply`), the session applies the WAL it just exposed
//! itself, when redo is free, instead of waking the startup thread to do
//! it: one thread hop fewer between a primary's flush and the record being
//! readable here (and on a `remote_apply` commit's path).
//!
//! The leave is published in atomics the session reads without a lock.
//! The session holds the gate's mutex (taken with `try_lock`, never
//! waiting) across its look at the leave and its apply; a withdrawal
//! clears the leave first and then takes the gate, so once
//! [`InlineGate::withdraw`] returns no apply is in progress and none
//! starts under the old leave. Redo's own lock is taken with `try_lock`
//! too: when the redo thread or the startup thread applies, the session
//! leaves the batch to the `Replay` its `WalFlushed` leads to, as before.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError, Weak};

use crate::{Lsn, TimelineId};

/// What the session calls to apply: redo, reached without waiting.
pub(crate) trait InlineRedo: Send + Sync {
    /// Apply records ending at or before `upto` if redo is free and the
    /// request short (never waits for redo); the end of the last record
    /// applied, if any was.
    fn try_apply(&self, upto: Lsn) -> Option<Lsn>;
}

/// The leave as published to the walreceiver, and the gate a withdrawal
/// waits on.
#[derive(Default)]
pub(crate) struct InlineGate {
    /// The session given leave; 0 = none (sessions count from 1).
    session: AtomicU64,
    /// Its timeline.
    tli: AtomicU32,
    /// It applies records ending at or before this.
    upto: AtomicU64,
    /// Held across an inline apply; a withdrawal takes it.
    gate: Mutex<Gate>,
    /// Inline applies made, ever (tests and the benchmark's counts).
    applies: AtomicU64,
}

#[derive(Default)]
struct Gate {
    /// End of the last record applied under the current leave.
    applied: Lsn,
    /// Redo, once its thread runs.
    redo: Option<Weak<dyn InlineRedo>>,
}

impl std::fmt::Debug for InlineGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineGate")
            .field("session", &self.session)
            .field("upto", &self.upto)
            .finish_non_exhaustive()
    }
}

impl InlineGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Redo's side, set when the redo thread starts.
    pub(crate) fn set_redo(&self, redo: Weak<dyn InlineRedo>) {
        self.lock().redo = Some(redo);
    }

    /// `AllowInlineApply`: `session` may apply its WAL of `tli` up to `upto`.
    pub(crate) fn allow(&self, session: u64, tli: TimelineId, upto: Lsn) {
        self.lock().applied = Lsn::INVALID;
        self.tli.store(tli.0, Ordering::Release);
        self.upto.store(upto.0, Ordering::Release);
        self.session.store(session, Ordering::Release);
    }

    /// `WithdrawInlineApply`: no session applies from now on; waits for an
    /// apply in progress (one short batch). Returns the end of the last
    /// record applied under the leave (`INVALID`: none).
    pub(crate) fn withdraw(&self) -> Lsn {
        self.session.store(0, Ordering::Release);
        std::mem::take(&mut self.lock().applied)
    }

    /// Inline applies made, ever.
    pub(crate) fn applies(&self) -> u64 {
        self.applies.load(Ordering::Acquire)
    }

    /// The session `session` exposed its WAL of `tli` up to `exposed`:
    /// apply it here if the leave covers it and nobody holds the gate or
    /// redo. Returns the new replay position if records were applied.
    pub(crate) fn try_apply(&self, session: u64, tli: TimelineId, exposed: Lsn) -> Option<Lsn> {
        if session == 0 || self.session.load(Ordering::Acquire) != session {
            return None;
        }
        let mut gate = match self.gate.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        // Again under the gate: a withdrawal clears the leave before it
        // takes the gate.
        if self.session.load(Ordering::Acquire) != session
            || self.tli.load(Ordering::Acquire) != tli.0
        {
            return None;
        }
        let limit = exposed.min(Lsn(self.upto.load(Ordering::Acquire)));
        let redo = gate.redo.as_ref()?.upgrade()?;
        let end = redo.try_apply(limit)?;
        gate.applied = gate.applied.max(end);
        self.applies.fetch_add(1, Ordering::AcqRel);
        Some(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Redo that applies whatever it is given.
    struct Eager(Mutex<Lsn>);

    impl InlineRedo for Eager {
        fn try_apply(&self, upto: Lsn) -> Option<Lsn> {
            let mut at = self.0.lock().unwrap();
            (upto > *at).then(|| {
                *at = upto;
                upto
            })
        }
    }

    #[test]
    fn only_the_session_given_leave_applies_and_only_up_to_the_leave() {
        let redo: Arc<dyn InlineRedo> = Arc::new(Eager(Mutex::new(Lsn(100))));
        let g = InlineGate::default();
        g.set_redo(Arc::downgrade(&redo));
        let tli = TimelineId(1);
        assert_eq!(g.try_apply(3, tli, Lsn(200)), None, "no leave given");
        g.allow(3, tli, Lsn(300));
        assert_eq!(g.try_apply(4, tli, Lsn(200)), None, "another session");
        assert_eq!(
            g.try_apply(3, TimelineId(2), Lsn(200)),
            None,
            "another timeline"
        );
        assert_eq!(g.try_apply(3, tli, Lsn(200)), Some(Lsn(200)));
        assert_eq!(g.try_apply(3, tli, Lsn(400)), Some(Lsn(300)), "capped");
        assert_eq!(g.withdraw(), Lsn(300));
        assert_eq!(g.try_apply(3, tli, Lsn(500)), None, "withdrawn");
        assert_eq!(g.withdraw(), Lsn::INVALID);
        assert_eq!(g.applies(), 2);
    }

    #[test]
    fn a_held_gate_is_never_waited_for() {
        let redo: Arc<dyn InlineRedo> = Arc::new(Eager(Mutex::new(Lsn(100))));
        let g = InlineGate::default();
        g.set_redo(Arc::downgrade(&redo));
        g.allow(1, TimelineId(1), Lsn(u64::MAX));
        let held = g.lock();
        assert_eq!(g.try_apply(1, TimelineId(1), Lsn(200)), None);
        drop(held);
        assert_eq!(g.try_apply(1, TimelineId(1), Lsn(200)), Some(Lsn(200)));
    }
}
