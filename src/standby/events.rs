//! The startup thread's event queue: a bounded channel whose senders
//! unpark the startup thread after each send, and whose one reader waits
//! by parking ([`EventReceiver::recv_parked`]).
//!
//! Not a crossbeam receiver blocked in `recv` or `Select`: its sender
//! wakes it while still holding the channel's waker lock, and on two
//! cores the woken thread runs at once, finds that lock held while it
//! unregisters, and sleeps a second time until the sender lets go (the
//! same second sleep `crate::watch` avoids for walsenders). That was about
//! one wake-up in ten of a streaming standby's startup thread at 64
//! clients, each a second wait for a core on the way from the
//! walreceiver's exposure of received WAL to its replay (key visibility,
//! `remote_apply`). An unpark takes no lock. Nothing else changes: the
//! queue is the same bounded crossbeam channel, its senders block, time
//! out or fail as before.

use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{
    Receiver, RecvTimeoutError, SendError, SendTimeoutError, Sender, TryRecvError, TrySendError,
};

/// The thread that reads the queue, once it first waited.
type ReaderThread = Arc<OnceLock<Thread>>;

/// A queue of `capacity` events whose reader waits by parking.
pub fn bounded<E>(capacity: usize) -> (EventSender<E>, EventReceiver<E>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let reader = ReaderThread::default();
    (
        EventSender {
            tx,
            reader: Arc::clone(&reader),
        },
        EventReceiver { rx, reader },
    )
}

/// Sends to the queue and unparks its reader after every event queued.
#[derive(Debug)]
pub struct EventSender<E> {
    tx: Sender<E>,
    reader: ReaderThread,
}

impl<E> Clone for EventSender<E> {
    fn clone(&self) -> Self {
        EventSender {
            tx: self.tx.clone(),
            reader: Arc::clone(&self.reader),
        }
    }
}

/// A plain channel's sender, for a reader that blocks in crossbeam itself
/// (tests): it is woken by the channel, and no thread is unparked.
impl<E> From<Sender<E>> for EventSender<E> {
    fn from(tx: Sender<E>) -> Self {
        EventSender {
            tx,
            reader: ReaderThread::default(),
        }
    }
}

impl<E> EventSender<E> {
    /// `Sender::send`, then wake the reader.
    pub fn send(&self, ev: E) -> Result<(), SendError<E>> {
        let r = self.tx.send(ev);
        self.wake();
        r
    }

    /// `Sender::try_send`, then wake the reader if it was queued.
    pub fn try_send(&self, ev: E) -> Result<(), TrySendError<E>> {
        let r = self.tx.try_send(ev);
        if r.is_ok() {
            self.wake();
        }
        r
    }

    /// `Sender::send_timeout`, then wake the reader if it was queued.
    pub fn send_timeout(&self, ev: E, timeout: Duration) -> Result<(), SendTimeoutError<E>> {
        let r = self.tx.send_timeout(ev, timeout);
        if r.is_ok() {
            self.wake();
        }
        r
    }

    fn wake(&self) {
        if let Some(t) = self.reader.get() {
            t.unpark();
        }
    }
}

impl<E> Drop for EventSender<E> {
    /// The last sender gone disconnects the queue: the reader must look.
    /// The sender is let go first and the reader woken after: woken
    /// before, it could look, find the queue still connected and park
    /// again with nothing left to wake it.
    fn drop(&mut self) {
        let (placeholder, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.tx, placeholder));
        self.wake();
    }
}

/// The queue's one reader (the startup thread).
#[derive(Debug)]
pub struct EventReceiver<E> {
    rx: Receiver<E>,
    reader: ReaderThread,
}

impl<E> EventReceiver<E> {
    /// The next event, or a timeout after `timeout`: taken at once if one
    /// is queued, else the thread parks until a sender unparks it. Always
    /// called from the same thread (the first caller is the one senders
    /// unpark). A wake-up between the look at the queue and the park is
    /// not lost: the park then returns at once; other unparks of this
    /// thread (crossbeam's own, in its blocking calls) only make it look
    /// again.
    pub fn recv_parked(&self, timeout: Duration) -> Result<E, RecvTimeoutError> {
        let me = self.reader.get_or_init(std::thread::current);
        debug_assert_eq!(me.id(), std::thread::current().id(), "one reader thread");
        let deadline = Instant::now().checked_add(timeout);
        loop {
            match self.rx.try_recv() {
                Ok(ev) => return Ok(ev),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(RecvTimeoutError::Timeout);
                    }
                    std::thread::park_timeout(left);
                }
                None => std::thread::park(),
            }
        }
    }

    /// `Receiver::try_recv`.
    pub fn try_recv(&self) -> Result<E, TryRecvError> {
        self.rx.try_recv()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_parked_takes_a_queued_event_waits_for_a_sent_one_and_reports_timeout_and_disconnect() {
        let (tx, rx) = bounded(4);
        tx.send(1).unwrap();
        assert_eq!(rx.recv_parked(Duration::from_secs(10)), Ok(1));
        let sender = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send(2).unwrap())
        };
        assert_eq!(rx.recv_parked(Duration::from_secs(10)), Ok(2));
        sender.join().unwrap();
        assert_eq!(
            rx.recv_parked(Duration::from_millis(1)),
            Err(RecvTimeoutError::Timeout)
        );
        let dropper = std::thread::spawn(move || drop(tx));
        assert_eq!(
            rx.recv_parked(Duration::from_secs(10)),
            Err(RecvTimeoutError::Disconnected)
        );
        dropper.join().unwrap();
    }

    #[test]
    fn a_plain_channel_sender_still_queues() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let tx = EventSender::from(tx);
        tx.try_send(7).unwrap();
        assert!(matches!(tx.try_send(8), Err(TrySendError::Full(8))));
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(7));
    }
}
