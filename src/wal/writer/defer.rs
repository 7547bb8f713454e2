//! Holding back the flush position's wake-ups on one thread while it
//! finishes answering the client whose commit it just flushed.
//!
//! A Redis worker that serves one client leads that client's synchronous
//! flush itself (`Backend::start_wait`). Publishing the new flush position
//! wakes the walsenders (a walrep standby sent the WAL early is told it is
//! durable by a keepalive), and that wake-up used to come between the
//! worker's fdatasync and its answer: a futex syscall and a second thread
//! made runnable on the worker's path. While a [`FlushWakesDeferred`] guard
//! lives on a thread, the flushes that thread makes store the position
//! (`Wal::flushed`, the flush hook, every waiter's release: all as before)
//! but wake the flush watch's subscribers only when the guard is dropped,
//! right after the answer went out. What a standby may expose is still
//! bounded by what it was told; it is told a few microseconds later.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::watch::Watch;
use crate::Lsn;

/// A flush watch whose wake-up is held back, and the position to publish.
type Held = (Arc<Watch<Lsn>>, Lsn);

thread_local! {
    /// `Some` while a guard lives on this thread, holding `Some` once a
    /// flush happened.
    static HELD: RefCell<Option<Option<Held>>> = const { RefCell::new(None) };
}

/// While alive, flushes made on this thread wake the flush watch's
/// subscribers only when it is dropped (see the module docs). Not `Send`:
/// it belongs to the thread that made it. Nested guards: the outer one
/// publishes.
#[must_use = "the wake-ups are held back only while the guard lives"]
#[derive(Debug)]
pub struct FlushWakesDeferred {
    /// This guard started the deferral (not nested in another).
    owner: bool,
    _thread_bound: PhantomData<*const ()>,
}

/// Hold back the flush watch's wake-ups of flushes made on this thread
/// until the returned guard is dropped.
pub fn defer_flush_wakes() -> FlushWakesDeferred {
    let owner = HELD.with(|h| {
        let mut h = h.borrow_mut();
        if h.is_some() {
            return false;
        }
        *h = Some(None);
        true
    });
    FlushWakesDeferred {
        owner,
        _thread_bound: PhantomData,
    }
}

impl Drop for FlushWakesDeferred {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        if let Some(Some((watch, lsn))) = HELD.with(|h| h.borrow_mut().take()) {
            publish_max(&watch, lsn);
        }
    }
}

/// Publish `lsn` on `watch`, or hold it back if a guard lives on this
/// thread (a held position of another watch is published now).
pub(super) fn publish_flushed(watch: &Arc<Watch<Lsn>>, lsn: Lsn) {
    let earlier = HELD.with(|h| match h.borrow_mut().as_mut() {
        None => Some((Arc::clone(watch), lsn)),
        Some(held) => match held {
            Some((w, at)) if Arc::ptr_eq(w, watch) => {
                *at = (*at).max(lsn);
                None
            }
            _ => held.replace((Arc::clone(watch), lsn)),
        },
    });
    if let Some((w, at)) = earlier {
        publish_max(&w, at);
    }
}

/// A held-back position may be published after a later flush of another
/// thread published a higher one: the watch never goes back.
fn publish_max(watch: &Watch<Lsn>, lsn: Lsn) {
    watch.update(|v| {
        let moved = lsn > *v;
        if moved {
            *v = lsn;
        }
        moved
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_held_flush_wakes_subscribers_when_the_guard_goes() {
        let watch = Arc::new(Watch::new(Lsn(100)));
        let sub = watch.subscribe();
        {
            let _held = defer_flush_wakes();
            let _nested = defer_flush_wakes();
            publish_flushed(&watch, Lsn(200));
            publish_flushed(&watch, Lsn(300));
            drop(_nested);
            assert!(!sub.take(), "no wake-up while the guard lives");
            assert_eq!(watch.read(|v| *v), Lsn(100));
        }
        assert!(sub.wait(Duration::from_secs(5)));
        assert_eq!(watch.read(|v| *v), Lsn(300));
        // Without a guard: at once.
        publish_flushed(&watch, Lsn(400));
        assert!(sub.take());
        assert_eq!(watch.read(|v| *v), Lsn(400));
    }

    #[test]
    fn a_held_position_never_moves_the_watch_back() {
        let watch = Arc::new(Watch::new(Lsn(100)));
        let held = defer_flush_wakes();
        publish_flushed(&watch, Lsn(200));
        // Another thread's later flush, published at once.
        std::thread::scope(|s| {
            s.spawn(|| publish_flushed(&watch, Lsn(500)));
        });
        drop(held);
        assert_eq!(watch.read(|v| *v), Lsn(500));
    }

    #[test]
    fn another_watch_held_back_is_published_when_replaced() {
        let a = Arc::new(Watch::new(Lsn(0)));
        let b = Arc::new(Watch::new(Lsn(0)));
        let held = defer_flush_wakes();
        publish_flushed(&a, Lsn(10));
        publish_flushed(&b, Lsn(20));
        assert_eq!(a.read(|v| *v), Lsn(10));
        assert_eq!(b.read(|v| *v), Lsn(0));
        drop(held);
        assert_eq!(b.read(|v| *v), Lsn(20));
    }
}
