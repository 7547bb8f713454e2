//! The write gate (fence) of a node under automatic failover: a deadline on
//! the monotonic clock until which the node may admit and acknowledge
//! writes.
//!
//! The HA loop moves the deadline forward after each successful lease
//! renewal (to the time the renewal was *sent* + `ha_ttl` −
//! `ha_fence_margin`), but the node itself compares it with the clock at
//! every write's admission and again right before every acknowledgement.
//! So a primary whose HA thread stalls — paused, starved, stuck on a
//! socket — still stops acknowledging writes before any other node can see
//! its lease as expired and promote: the gate needs no thread to close.
//!
//! With HA off the gate is always open, and checking it costs one relaxed
//! atomic load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Whether writes may be admitted and acknowledged, and until when.
#[derive(Debug)]
pub struct WriteGate {
    /// HA on: the deadline applies. Off: the gate is always open.
    enabled: AtomicBool,
    /// The origin of `open_until_ns` (monotonic).
    origin: Instant,
    /// Nanoseconds after `origin` before which the gate is open; 0 =
    /// closed. Nanoseconds (584 years in a u64) rather than milliseconds:
    /// with whole milliseconds on both sides the gate closed up to 1 ms
    /// before the deadline it was given, which is safe for a fence but
    /// not the deadline the HA loop asked for.
    open_until_ns: AtomicU64,
}

impl WriteGate {
    /// A gate that is always open: HA is off, the node decides alone.
    pub fn always_open() -> WriteGate {
        WriteGate {
            enabled: AtomicBool::new(false),
            origin: Instant::now(),
            open_until_ns: AtomicU64::new(0),
        }
    }

    /// A closed gate under HA control: a node started with HA on admits
    /// no write until the HA loop holds the leader key and opens it.
    pub fn fenced() -> WriteGate {
        WriteGate {
            enabled: AtomicBool::new(true),
            ..WriteGate::always_open()
        }
    }

    /// Whether HA controls this gate.
    pub fn controlled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Whether a write may be admitted or acknowledged now.
    #[inline]
    pub fn is_open(&self) -> bool {
        if !self.enabled.load(Ordering::Relaxed) {
            return true;
        }
        self.elapsed_ns() < self.open_until_ns.load(Ordering::SeqCst)
    }

    /// Open the gate until `deadline` (monotonic). A deadline already past
    /// closes it.
    pub fn open_until(&self, deadline: Instant) {
        let ns = nanos(deadline.saturating_duration_since(self.origin));
        self.open_until_ns.store(ns, Ordering::SeqCst);
    }

    /// Close the gate now: no write is admitted or acknowledged until it
    /// is opened again.
    pub fn close(&self) {
        self.open_until_ns.store(0, Ordering::SeqCst);
    }

    /// How long the gate stays open without another renewal: `None` with
    /// HA off, zero when closed.
    pub fn remaining(&self) -> Option<Duration> {
        if !self.controlled() {
            return None;
        }
        let until = self.open_until_ns.load(Ordering::SeqCst);
        Some(Duration::from_nanos(
            until.saturating_sub(self.elapsed_ns()),
        ))
    }

    fn elapsed_ns(&self) -> u64 {
        nanos(self.origin.elapsed())
    }
}

/// A duration in whole nanoseconds, saturating at `u64::MAX` (584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_open_without_ha() {
        let g = WriteGate::always_open();
        assert!(g.is_open());
        g.close();
        assert!(g.is_open(), "HA off: nothing closes the gate");
        assert_eq!(g.remaining(), None);
    }

    #[test]
    fn fenced_until_opened_then_closes_at_the_deadline_by_itself() {
        let g = WriteGate::fenced();
        assert!(!g.is_open(), "a node started under HA starts fenced");
        assert_eq!(g.remaining(), Some(Duration::ZERO));
        let deadline = Instant::now() + Duration::from_millis(150);
        g.open_until(deadline);
        assert!(g.is_open());
        assert!(g.remaining().unwrap() > Duration::ZERO);
        // Nobody closes it: the clock does.
        while Instant::now() < deadline + Duration::from_millis(5) {
            std::thread::yield_now();
        }
        assert!(!g.is_open(), "the gate closes at its deadline on its own");
    }

    #[test]
    fn open_at_every_instant_before_the_deadline_and_closed_from_it() {
        let g = WriteGate::fenced();
        // A deadline in the middle of a millisecond: whole milliseconds
        // used to close the gate up to 1 ms early.
        let deadline = Instant::now() + Duration::from_micros(3_700);
        g.open_until(deadline);
        loop {
            let before = Instant::now();
            let open = g.is_open();
            let after = Instant::now();
            if after < deadline {
                assert!(open, "closed {:?} before its deadline", deadline - after);
            }
            if before >= deadline {
                assert!(!open, "open {:?} after its deadline", before - deadline);
                break;
            }
        }
    }

    #[test]
    fn close_and_past_deadline_close() {
        let g = WriteGate::fenced();
        g.open_until(Instant::now() + Duration::from_secs(60));
        assert!(g.is_open());
        g.close();
        assert!(!g.is_open());
        g.open_until(Instant::now() - Duration::from_millis(1));
        assert!(!g.is_open(), "a deadline already past closes the gate");
    }
}
