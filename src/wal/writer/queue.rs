//! The queue of sessions waiting for their WAL to be flushed, in LSN order.
//!
//! After each flush the flusher releases, under the queue lock and in
//! ascending LSN order, every waiter the flush covered, and nominates the
//! first waiter it did not cover as the next flusher (it wakes up, takes the
//! flush lock and flushes everything inserted meanwhile: group commit
//! without a hand-off to another thread).
//!
//! No lost wake-ups: a waiter registers *before* it tries the flush lock a
//! second time; a flusher scans the queue *after* it released the flush
//! lock. So either the waiter gets the lock, or the holder that kept it out
//! scans the queue after the waiter is in it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crate::Lsn;

const WAITING: u8 = 0;
const RELEASED: u8 = 1;
const NOMINATED: u8 = 2;

/// What woke a waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Its LSN is flushed (or the writer is poisoned/stopped: check).
    Released,
    /// It should flush.
    Nominated,
    /// The watchdog bound passed with no wake-up (should not happen).
    TimedOut,
}

/// One parked session.
#[derive(Debug)]
pub(crate) struct Waiter {
    key: (u64, u64),
    state: AtomicU8,
    thread: Thread,
    /// Position in the global release order (for tests of the LSN order).
    release_order: AtomicU64,
}

impl Waiter {
    /// Park until released or nominated, at most `bound`. Spins very
    /// briefly first: a flush that is about to finish costs less to wait
    /// for than a sleep and a wake-up.
    pub fn wait(&self, bound: Duration) -> Wake {
        for _ in 0..64 {
            if self.state.load(Ordering::Acquire) != WAITING {
                return self.wake();
            }
            std::hint::spin_loop();
        }
        let deadline = Instant::now() + bound;
        loop {
            if self.state.load(Ordering::Acquire) != WAITING {
                return self.wake();
            }
            let now = Instant::now();
            if now >= deadline {
                return Wake::TimedOut;
            }
            thread::park_timeout(deadline - now);
        }
    }

    fn wake(&self) -> Wake {
        match self.state.load(Ordering::Acquire) {
            NOMINATED => Wake::Nominated,
            _ => Wake::Released,
        }
    }

    #[cfg(test)]
    pub fn release_order(&self) -> u64 {
        self.release_order.load(Ordering::Acquire)
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Keyed by (LSN, arrival) so equal LSNs keep arrival order.
    waiters: BTreeMap<(u64, u64), Arc<Waiter>>,
    next_seq: u64,
    released: u64,
}

/// The wait queue.
#[derive(Debug, Default)]
pub(crate) struct WaitQueue {
    inner: Mutex<Inner>,
}

impl WaitQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueue the calling thread as waiting for `lsn`.
    pub fn register(&self, lsn: Lsn) -> Arc<Waiter> {
        let mut q = self.lock();
        q.next_seq += 1;
        let w = Arc::new(Waiter {
            key: (lsn.0, q.next_seq),
            state: AtomicU8::new(WAITING),
            thread: thread::current(),
            release_order: AtomicU64::new(0),
        });
        q.waiters.insert(w.key, w.clone());
        w
    }

    /// Remove a waiter that stopped waiting on its own.
    pub fn deregister(&self, w: &Waiter) {
        self.lock().waiters.remove(&w.key);
    }

    /// Nominate the first waiter beyond `flushed()` as the next flusher,
    /// then release, in LSN order, every waiter at or below it (`flushed`
    /// is read under the lock, so a late scan never releases out of order).
    pub fn release(&self, flushed: impl Fn() -> Lsn, nominate: bool) -> usize {
        let mut q = self.lock();
        let upto = flushed().0;
        // Nominate first: the next flush then overlaps with the wake-ups.
        let next = q.waiters.range((upto.saturating_add(1), 0)..).next();
        if let Some(key) = next.map(|(k, _)| *k).filter(|_| nominate) {
            if let Some(w) = q.waiters.remove(&key) {
                w.state.store(NOMINATED, Ordering::Release);
                w.thread.unpark();
            }
        }
        let mut n = 0;
        while let Some(entry) = q.waiters.first_entry() {
            if entry.key().0 > upto {
                break;
            }
            let w = entry.remove();
            q.released += 1;
            w.release_order.store(q.released, Ordering::Release);
            w.state.store(RELEASED, Ordering::Release);
            w.thread.unpark();
            n += 1;
        }
        n
    }

    /// Release everyone (poisoned or stopped writer): they re-check and fail.
    pub fn release_all(&self) {
        let mut q = self.lock();
        for (_, w) in std::mem::take(&mut q.waiters) {
            w.state.store(RELEASED, Ordering::Release);
            w.thread.unpark();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().waiters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    /// Poll `cond` until it holds or 30 s pass.
    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn releases_in_lsn_order_and_nominates_the_next_flusher() {
        let q = Arc::new(WaitQueue::default());
        // Registered in scrambled order.
        let lsns = [50u64, 10, 40, 20, 30, 60, 70];
        let barrier = Arc::new(Barrier::new(lsns.len() + 1));
        let handles: Vec<_> = lsns
            .iter()
            .map(|&lsn| {
                let (q, b) = (q.clone(), barrier.clone());
                thread::spawn(move || {
                    let w = q.register(Lsn(lsn));
                    b.wait();
                    let wake = w.wait(Duration::from_secs(30));
                    (lsn, wake, w.release_order())
                })
            })
            .collect();
        barrier.wait();
        wait_until("all waiters registered", || q.len() == lsns.len());
        assert_eq!(q.release(|| Lsn(45), true), 4);
        assert_eq!(q.len(), 2, "50 was nominated, 60 and 70 wait");
        assert_eq!(q.release(|| Lsn(100), false), 2);
        let mut got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        got.sort_by_key(|g| g.0);
        assert_eq!(
            got,
            vec![
                (10, Wake::Released, 1),
                (20, Wake::Released, 2),
                (30, Wake::Released, 3),
                (40, Wake::Released, 4),
                (50, Wake::Nominated, 0),
                (60, Wake::Released, 5),
                (70, Wake::Released, 6),
            ]
        );
    }

    #[test]
    fn release_all_wakes_everyone() {
        let q = Arc::new(WaitQueue::default());
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let q = q.clone();
                thread::spawn(move || q.register(Lsn(i)).wait(Duration::from_secs(30)))
            })
            .collect();
        wait_until("waiters registered", || q.len() == 4);
        q.release_all();
        for h in handles {
            assert_eq!(h.join().unwrap(), Wake::Released);
        }
        assert_eq!(q.len(), 0);
    }
}
