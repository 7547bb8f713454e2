//! [`Watch`]: the one way a thread says "this value moved" to threads that
//! wait for it (the WAL writer's flush position, a standby's replay and
//! receive positions, standby replies, a standby's recovery status).
//!
//! A watch holds the current value and a version. A subscriber gets a
//! token on a bounded(1) crossbeam channel after each change, so it can
//! `select!` over it together with its socket's reader channel, timers and
//! shutdown; tokens coalesce (one waiting token covers any number of
//! changes), so the subscriber then reads the current value, never a queue
//! of old ones. [`Watch::wait_until`] is the blocking convenience built on
//! the same subscription.
//!
//! Publishing is cheap and allocation-free (a short lock, then a
//! non-blocking send per live subscriber), so it can run inline on hot
//! paths such as the end of every WAL flush.
//!
//! A thread on a commit's path (a walsender) waits with
//! `thread::park_timeout` instead of `select!`: its subscription also
//! unparks it ([`Subscription::unpark_on_change`]). A crossbeam receiver
//! blocked in `select!` is woken by a sender that still holds the
//! channel's waker lock; on two cores it runs at once, finds that lock
//! held while unregistering and sleeps again: a second sleep and wake-up
//! per hop. An unpark takes no lock, and a token sent to a channel nobody
//! blocks on wakes nobody. Subscriptions that were
//! dropped are pruned on every publish and subscribe: the subscriber list
//! never holds more than the live subscriptions, which their owners bound.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

/// A value that changes, and the subscribers woken when it does.
#[derive(Debug)]
pub struct Watch<T> {
    inner: Mutex<Inner<T>>,
}

#[derive(Debug)]
struct Inner<T> {
    value: T,
    /// Bumped by every publication.
    version: u64,
    /// No further publications (the publisher is gone).
    closed: bool,
    /// One entry per subscription registered here.
    subscribers: Vec<Waker>,
}

/// A subscription's sending side, kept by each watch it is registered with.
#[derive(Debug, Clone)]
struct Waker {
    token: Sender<()>,
    /// Dead once the [`Subscription`] is dropped.
    alive: Weak<Alive>,
}

/// What a [`Subscription`] shares with the wakers it registered.
#[derive(Debug, Default)]
struct Alive {
    /// Unparked after every token (see [`Subscription::unpark_on_change`]).
    thread: OnceLock<Thread>,
}

impl Waker {
    /// Hand a token over (a pending one already covers this change), then
    /// unpark the subscriber's thread if it waits by parking. `false`
    /// when the subscription is gone.
    fn wake(&self) -> bool {
        let Some(alive) = self.alive.upgrade() else {
            return false;
        };
        if matches!(self.token.try_send(()), Err(TrySendError::Disconnected(_))) {
            return false;
        }
        if let Some(t) = alive.thread.get() {
            t.unpark();
        }
        true
    }
}

/// Tokens from one or more watches: at most one waits; receiving it means
/// "some value may have changed: read it again".
#[derive(Debug)]
pub struct Subscription {
    tokens: Receiver<()>,
    waker: Waker,
    /// The wakers registered in watches hold a `Weak` of this.
    alive: Arc<Alive>,
}

impl Subscription {
    fn new() -> Subscription {
        let (token, tokens) = bounded(1);
        let alive = Arc::new(Alive::default());
        Subscription {
            tokens,
            waker: Waker {
                token,
                alive: Arc::downgrade(&alive),
            },
            alive,
        }
    }

    /// From now on also unpark the calling thread after every token, for
    /// a thread that waits with `thread::park_timeout` rather than
    /// `select!` (see the module docs): it then checks [`Subscription::take`].
    /// Only the first call's thread is kept.
    pub fn unpark_on_change(&self) {
        let _ = self.alive.thread.set(std::thread::current());
    }

    /// Take the waiting token, if any: `true` means some value may have
    /// changed since the last one was taken.
    pub fn take(&self) -> bool {
        self.tokens.try_recv().is_ok()
    }

    /// The token channel, for `select!`. (It never disconnects: a closed
    /// watch sends one last token; [`Watch::is_closed`] says so.)
    pub fn receiver(&self) -> &Receiver<()> {
        &self.tokens
    }

    /// Also wake this subscription when `other` changes (one channel for
    /// several values, e.g. a standby's replay and receive positions).
    pub fn also<U>(&self, other: &Watch<U>) {
        other.register(self.waker.clone());
    }

    /// Wait up to `timeout` for a token; `true` if one came.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.tokens.recv_timeout(timeout).is_ok()
    }
}

impl<T> Watch<T> {
    /// A watch holding `value` at version 0.
    pub fn new(value: T) -> Watch<T> {
        Watch {
            inner: Mutex::new(Inner {
                value,
                version: 0,
                closed: false,
                subscribers: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // A panic while holding the lock cannot leave a half-written value
        // (values are replaced whole or by the publisher's own closure).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Look at the current value without copying it.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.lock().value)
    }

    /// The number of publications so far.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Whether a live subscription is registered here (someone waits for
    /// the value to move).
    pub fn has_subscribers(&self) -> bool {
        self.lock()
            .subscribers
            .iter()
            .any(|w| w.alive.strong_count() > 0)
    }

    /// Replace the value and wake every subscriber. No allocation.
    pub fn publish(&self, value: T) {
        let mut g = self.lock();
        g.value = value;
        Self::changed(&mut g);
    }

    /// Change the value in place; `f` returns whether it changed, and
    /// subscribers are woken only then. No allocation of its own.
    pub fn update(&self, f: impl FnOnce(&mut T) -> bool) {
        let mut g = self.lock();
        if f(&mut g.value) {
            Self::changed(&mut g);
        }
    }

    /// The publisher is done: wake everyone one last time and forget them.
    /// The value stays readable; later subscribers are woken at once.
    pub fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        Self::changed(&mut g);
        g.subscribers.clear();
    }

    /// A new subscription to this watch (see [`Subscription::also`] to
    /// add more watches to it). Subscribe before reading the value, so a
    /// change in between still leaves a token.
    pub fn subscribe(&self) -> Subscription {
        let sub = Subscription::new();
        self.register(sub.waker.clone());
        sub
    }

    fn register(&self, waker: Waker) {
        let mut g = self.lock();
        g.subscribers.retain(|w| w.alive.strong_count() > 0);
        if g.closed {
            // Nothing will change any more: let it look at the value now.
            waker.wake();
            return;
        }
        g.subscribers.push(waker);
    }

    fn changed(g: &mut Inner<T>) {
        g.version += 1;
        g.subscribers.retain(Waker::wake);
    }
}

impl<T: Clone> Watch<T> {
    /// A copy of the current value.
    pub fn get(&self) -> T {
        self.lock().value.clone()
    }

    /// Block until `pred` holds for the value (`Ok`), or `timeout` passes
    /// or the watch is closed first (`Err`), returning the value then.
    pub fn wait_until(&self, mut pred: impl FnMut(&T) -> bool, timeout: Duration) -> Result<T, T> {
        let deadline = Instant::now() + timeout;
        let sub = self.subscribe();
        loop {
            {
                let g = self.lock();
                if pred(&g.value) {
                    return Ok(g.value.clone());
                }
                if g.closed {
                    return Err(g.value.clone());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !sub.wait(left) {
                let g = self.lock();
                return if pred(&g.value) {
                    Ok(g.value.clone())
                } else {
                    Err(g.value.clone())
                };
            }
        }
    }
}

impl<T: Default> Default for Watch<T> {
    fn default() -> Self {
        Watch::new(T::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn tokens_coalesce_and_the_latest_value_is_read() {
        let w = Watch::new(0u64);
        let sub = w.subscribe();
        for v in 1..=5 {
            w.publish(v);
        }
        assert_eq!(sub.receiver().try_recv(), Ok(()));
        assert!(sub.receiver().try_recv().is_err(), "tokens coalesce");
        assert_eq!(w.get(), 5);
        assert_eq!(w.version(), 5);
    }

    #[test]
    fn has_subscribers_counts_only_live_subscriptions() {
        let w = Watch::new(0u64);
        assert!(!w.has_subscribers());
        let sub = w.subscribe();
        let other = Watch::new(());
        sub.also(&other);
        assert!(w.has_subscribers() && other.has_subscribers());
        drop(sub);
        assert!(
            !w.has_subscribers(),
            "a dropped subscription no longer counts"
        );
        assert!(!other.has_subscribers());
    }

    #[test]
    fn update_wakes_only_on_a_change() {
        let w = Watch::new(3u64);
        let sub = w.subscribe();
        w.update(|v| std::mem::replace(v, 3) != 3);
        assert!(sub.receiver().try_recv().is_err());
        w.update(|v| {
            *v = 4;
            true
        });
        assert!(sub.receiver().try_recv().is_ok());
        assert_eq!(w.version(), 1);
    }

    #[test]
    fn one_subscription_follows_several_watches() {
        let a = Watch::new(0u32);
        let b = Watch::new("x");
        let sub = a.subscribe();
        sub.also(&b);
        b.publish("y");
        assert!(sub.wait(Duration::from_secs(5)));
        a.publish(1);
        assert!(sub.wait(Duration::from_secs(5)));
        assert!(!sub.wait(Duration::from_millis(1)));
    }

    #[test]
    fn a_parked_subscriber_is_unparked_by_a_publication() {
        let w = Arc::new(Watch::new(0u64));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let waiter = {
            let w = w.clone();
            thread::spawn(move || {
                let sub = w.subscribe();
                sub.unpark_on_change();
                ready_tx.send(()).unwrap();
                let deadline = Instant::now() + Duration::from_secs(30);
                // A long park: only the publication's unpark ends it soon.
                while !sub.take() {
                    assert!(Instant::now() < deadline, "never unparked");
                    thread::park_timeout(Duration::from_secs(30));
                }
                w.get()
            })
        };
        ready_rx.recv().unwrap();
        let t = Instant::now();
        w.publish(7);
        assert_eq!(waiter.join().unwrap(), 7);
        assert!(t.elapsed() < Duration::from_secs(20), "woken by the unpark");
    }

    #[test]
    fn dropped_subscriptions_are_pruned() {
        let w = Watch::new(0u8);
        for _ in 0..100 {
            drop(w.subscribe());
        }
        let _live = w.subscribe();
        assert_eq!(w.lock().subscribers.len(), 1);
        w.publish(1);
        assert_eq!(w.lock().subscribers.len(), 1);
    }

    #[test]
    fn wait_until_is_woken_by_a_publication() {
        let w = Arc::new(Watch::new(0u64));
        let publisher = {
            let w = w.clone();
            thread::spawn(move || {
                for v in 1..=10 {
                    w.publish(v);
                }
            })
        };
        assert_eq!(w.wait_until(|v| *v >= 10, Duration::from_secs(30)), Ok(10));
        publisher.join().unwrap();
        let t = Instant::now();
        assert_eq!(
            w.wait_until(|v| *v > 10, Duration::from_millis(20)),
            Err(10)
        );
        assert!(t.elapsed() >= Duration::from_millis(15));
    }

    #[test]
    fn close_ends_waits_and_wakes_every_subscriber() {
        let w = Arc::new(Watch::new(1u64));
        let sub = w.subscribe();
        let waiter = {
            let w = w.clone();
            thread::spawn(move || w.wait_until(|v| *v > 1, Duration::from_secs(30)))
        };
        while w.lock().subscribers.len() < 2 {
            thread::yield_now();
        }
        w.close();
        assert_eq!(waiter.join().unwrap(), Err(1));
        assert_eq!(sub.receiver().try_recv(), Ok(()));
        assert!(w.lock().subscribers.is_empty());
        let late = w.subscribe();
        assert!(
            late.wait(Duration::from_secs(5)),
            "a late subscriber is woken"
        );
        assert!(w.is_closed());
    }
}
