//! The hold a promotion puts on everything a client or a standby could
//! learn of the new timeline while its last syncs are still in flight:
//! the fsync of `wal/` (the history file's and the new segment's names),
//! the control file's update and the end-of-recovery record's flush.
//!
//! Promotion overlaps those syncs with the first writes: the node accepts
//! writes as soon as the end-of-recovery record is inserted, inserts and
//! flushes their WAL on the new timeline (the first flush makes the record
//! durable too: it precedes them in the same segment), but while the hold
//! is on
//! - no write is acknowledged, at any `synchronous_commit` level
//!   (`off` included), and no flushed write becomes visible to readers;
//! - walsenders see the new timeline end at its first byte (the switch
//!   point): they send none of its WAL, durable or not.
//!
//! So a crash before the release leaves nothing anyone was told: recovery
//! may find the control file old (the promotion never finished: the node
//! restarts on the old timeline; the new one's WAL, end-of-recovery record
//! included, is never read) or new (it did: the history file is durable,
//! made so before the record was written; the new timeline is replayed
//! with whatever of its record and writes were flushed, or starts at the
//! switch point if none was, its first segment made again when the fsync
//! of `wal/` that named it, run beside the control file's, was lost).
//! Either is a history some client could have seen; every image is listed
//! at `crate::standby::promote::write_end_of_recovery`. PostgreSQL flushes
//! its end-of-recovery record and makes the new segment's name durable
//! before it updates its control file, and does all three before it
//! accepts a write; this keeps its promise and runs the three side by
//! side, the record's flush inside the first writes' own.
//!
//! The hold is released by the startup thread once the control file and
//! the segments' names are durable and the record flushed; if a sync
//! fails, the node stops (an fsync failure is never retried) and writers
//! waiting here get an error, never "OK".

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::watch::{Subscription, Watch};
use crate::Lsn;

/// Longest a write waits here for the promotion's last syncs before it
/// answers an error (unconfirmed: it may or may not survive). Far above
/// any fdatasync a healthy disk takes; a disk that slow is failing.
pub const HOLD_WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Where the hold stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    /// Nothing held (a node that never promoted, or a finished promotion).
    Open,
    /// A promotion's last syncs (names, control file, record) are in
    /// flight.
    Held {
        /// The new timeline's first byte: walsenders send nothing past it.
        at: Lsn,
        /// The highest flush the WAL writer reported meanwhile, whose
        /// visibility the release catches up on.
        deferred: Lsn,
    },
    /// One of those syncs failed: the node is stopping and nothing
    /// of the new timeline will ever be acknowledged by this run.
    Failed,
}

/// The hold itself: a watch, so walsenders and writers can wait for it.
#[derive(Debug)]
pub struct PromotionHold {
    /// Fast path for the WAL writer's flush hook and every write: one
    /// load when nothing is held (always, but for one promotion's ~1 ms).
    /// Set before the state turns `Held`, cleared after it leaves it.
    on: AtomicBool,
    state: Watch<HoldState>,
}

impl Default for PromotionHold {
    fn default() -> Self {
        PromotionHold {
            on: AtomicBool::new(false),
            state: Watch::new(HoldState::Open),
        }
    }
}

/// Why a write was not acknowledged at a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldError {
    /// A promotion sync failed; the node is stopping.
    Failed,
    /// [`HOLD_WAIT_LIMIT`] passed.
    TimedOut,
}

impl PromotionHold {
    /// Put the hold on, before the promotion's WAL writer is attached.
    pub fn hold(&self, at: Lsn) {
        self.on.store(true, Ordering::SeqCst);
        self.state.publish(HoldState::Held {
            at,
            deferred: Lsn::INVALID,
        });
    }

    /// The promotion's last syncs are done (`ok`) or one failed. Returns
    /// the highest flush deferred meanwhile (for visibility to catch up).
    pub fn release(&self, ok: bool) -> Lsn {
        let mut deferred = Lsn::INVALID;
        self.state.update(|s| {
            if let HoldState::Held { deferred: d, .. } = *s {
                deferred = d;
            }
            *s = if ok {
                HoldState::Open
            } else {
                HoldState::Failed
            };
            true
        });
        if ok {
            self.on.store(false, Ordering::SeqCst);
        }
        deferred
    }

    /// The flush hook: `true` if the flush to `lsn` must not be made
    /// visible yet (it was noted for the release), `false` to go on.
    pub fn defer_flush(&self, lsn: Lsn) -> bool {
        if !self.on.load(Ordering::SeqCst) {
            return false;
        }
        let mut held = false;
        self.state.update(|s| match s {
            HoldState::Held { deferred, .. } => {
                *deferred = (*deferred).max(lsn);
                held = true;
                false
            }
            HoldState::Failed => {
                held = true;
                false
            }
            HoldState::Open => false,
        });
        held
    }

    /// The switch point while the hold is on: walsenders send nothing of
    /// the new timeline past it. `None` once released.
    pub fn send_limit(&self) -> Option<Lsn> {
        if !self.on.load(Ordering::SeqCst) {
            return None;
        }
        match self.state.get() {
            HoldState::Held { at, .. } => Some(at),
            // Stopping: nothing of the new timeline goes out.
            HoldState::Failed => Some(Lsn::INVALID),
            HoldState::Open => None,
        }
    }

    /// Block (at most `limit`) until the hold is released; every
    /// acknowledgement passes here.
    pub fn wait_open(&self, limit: Duration) -> Result<(), HoldError> {
        if !self.on.load(Ordering::SeqCst) {
            return Ok(());
        }
        match self
            .state
            .wait_until(|s| !matches!(s, HoldState::Held { .. }), limit)
        {
            Ok(HoldState::Open) => Ok(()),
            Ok(_) => Err(HoldError::Failed),
            Err(_) => Err(HoldError::TimedOut),
        }
    }

    /// Add the hold's changes to `sub` (walsenders wake on the release).
    pub fn also(&self, sub: &Subscription) {
        sub.also(&self.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_open_hold_costs_nothing_and_limits_nothing() {
        let h = PromotionHold::default();
        assert!(!h.defer_flush(Lsn(100)));
        assert_eq!(h.send_limit(), None);
        assert_eq!(h.wait_open(Duration::ZERO), Ok(()));
    }

    #[test]
    fn a_held_promotion_defers_flushes_and_limits_senders_until_released() {
        let h = Arc::new(PromotionHold::default());
        h.hold(Lsn(4096));
        assert_eq!(h.send_limit(), Some(Lsn(4096)));
        assert!(h.defer_flush(Lsn(5000)));
        assert!(h.defer_flush(Lsn(4800)));
        assert_eq!(h.wait_open(Duration::ZERO), Err(HoldError::TimedOut));
        let waiter = {
            let h = h.clone();
            std::thread::spawn(move || h.wait_open(HOLD_WAIT_LIMIT))
        };
        assert_eq!(h.release(true), Lsn(5000), "the highest deferred flush");
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert_eq!(h.send_limit(), None);
        assert!(!h.defer_flush(Lsn(6000)));
    }

    #[test]
    fn a_failed_control_update_acknowledges_nothing_and_sends_nothing() {
        let h = Arc::new(PromotionHold::default());
        h.hold(Lsn(4096));
        let waiter = {
            let h = h.clone();
            std::thread::spawn(move || h.wait_open(HOLD_WAIT_LIMIT))
        };
        h.release(false);
        assert_eq!(waiter.join().unwrap(), Err(HoldError::Failed));
        assert_eq!(h.wait_open(Duration::ZERO), Err(HoldError::Failed));
        assert!(h.defer_flush(Lsn(5000)));
        assert_eq!(h.send_limit(), Some(Lsn::INVALID));
    }
}
