//! A caught-up, idle walsender of a synchronous walrep standby lends its
//! socket to the thread that writes the WAL: that thread (a Redis worker
//! leading a lone client's flush, the committer or the WAL writer) sends
//! the new WAL itself, right after its write and before its fdatasync, so
//! the transmit of a commit's WAL starts with no thread hop (the
//! walsender was woken for it before: one futex wake and one wake-up on
//! every synchronous commit's path).
//!
//! The walsender keeps the stream: it *arms* a [`DirectSend`] with its
//! sent and told-flush positions just before it parks, and *disarms* it
//! as soon as it wakes, taking back the positions the writer moved; the
//! writer sends only while armed, under the same lock, so the two never
//! write to the socket at once. What is sent is what the walsender would
//! send: WAL up to the written position (this walsender is one of a
//! candidate synchronous standby that honours `walEnd`), with `walEnd` the
//! flush position at that moment. After its fdatasync the same thread
//! sends the keepalive that tells the new flush position (the standby's
//! limit to expose and apply WAL), asking for the apply report when a
//! `remote_apply` commit waits for it, as the walsender's flush wake-up
//! would: a `remote_apply` commit's path then has no walsender wake-up
//! either. Other keepalives, status, timeouts, timeline ends and shutdown
//! stay with the walsender. A send that would block,
//! that the in-memory tail cannot serve, that is too large or that fails
//! wakes the walsender instead (a partial frame's rest is written by the
//! walsender before anything else). TLS connections are not lent.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, TryLockError};
use std::thread::Thread;
use std::time::{Instant, SystemTime};

use walrep_states::{Lsn, TimelineId};

use super::walsender::MAX_SEND_SIZE;
use crate::replication::pgwire::{
    pg_epoch_micros, BackendMessage, PrimaryKeepalive, ReplicationMessage, XLogDataHeader,
    XLOGDATA_HEADER_LEN,
};
use crate::replication::registry::SentRecorder;
use crate::wal::WrittenHook;

/// Lag samples of sends made while armed, kept until the walsender wakes
/// (it wakes at least once per flush; older samples are dropped).
const SAMPLES: usize = 64;

pub(super) struct DirectSend {
    state: Mutex<State>,
    walsender: Thread,
    sent_recorder: SentRecorder,
    /// The highest position a `remote_apply` commit waits for (the
    /// source's `apply_wanted`), read by the flush keepalive.
    apply_wanted: Box<dyn Fn() -> Lsn + Send + Sync>,
}

/// What the walsender told its standby last, for the flush keepalive
/// sent for it (see [`DirectSend::arm`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Told {
    /// The `walEnd` of the last message.
    pub flush: Lsn,
    /// How far a keepalive last asked for apply reports; `None`: this
    /// standby reports its apply position unasked (never flagged).
    pub apply_asked: Option<Lsn>,
    /// The flush hint's two flags as last told (false without the hint).
    pub flush_deferrable: bool,
    pub write_wanted: bool,
}

struct State {
    armed: bool,
    tli: TimelineId,
    /// Everything before this was sent (the walsender's `sent` while armed).
    sent: Lsn,
    told: Told,
    sock: TcpStream,
    frame: Vec<u8>,
    /// The unwritten rest of a frame (the socket's buffer was full).
    rest: Vec<u8>,
    error: Option<io::Error>,
    samples: Vec<(Lsn, Instant)>,
}

/// What the walsender takes back when it disarms.
pub(super) struct Taken {
    pub sent: Lsn,
    pub told: Told,
    pub rest: Vec<u8>,
    pub error: Option<io::Error>,
    pub samples: Vec<(Lsn, Instant)>,
}

impl DirectSend {
    /// For the walsender running on the calling thread; `sock` is a clone
    /// of its (plain) connection.
    pub fn new(
        sock: TcpStream,
        sent_recorder: SentRecorder,
        apply_wanted: Box<dyn Fn() -> Lsn + Send + Sync>,
    ) -> DirectSend {
        DirectSend {
            state: Mutex::new(State {
                armed: false,
                tli: TimelineId::FIRST,
                sent: Lsn::INVALID,
                told: Told::default(),
                sock,
                frame: Vec::new(),
                rest: Vec::new(),
                error: None,
                samples: Vec::new(),
            }),
            walsender: std::thread::current(),
            sent_recorder,
            apply_wanted,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The walsender is about to park, caught up at `sent` on `tli`,
    /// having told its standby `told`.
    pub fn arm(&self, tli: TimelineId, sent: Lsn, told: Told) {
        let mut st = self.lock();
        st.armed = true;
        st.tli = tli;
        st.sent = sent;
        st.told = told;
    }

    /// The walsender woke: nothing is sent for it any more until it arms
    /// again; what was, it takes back.
    pub fn disarm(&self) -> Taken {
        let mut st = self.lock();
        st.armed = false;
        Taken {
            sent: st.sent,
            told: st.told,
            rest: std::mem::take(&mut st.rest),
            error: st.error.take(),
            samples: std::mem::take(&mut st.samples),
        }
    }
}

impl WrittenHook for DirectSend {
    fn written(
        &self,
        tli: TimelineId,
        end: Lsn,
        flushed: Lsn,
        read: &dyn Fn(Lsn, &mut [u8]) -> bool,
    ) {
        // The walsender holds the lock only to arm or disarm: if it has
        // it now, it is awake and looks at the positions itself.
        let mut st = match self.state.try_lock() {
            Ok(st) => st,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.walsender.unpark();
                return;
            }
        };
        if !st.armed {
            drop(st);
            self.walsender.unpark();
            return;
        }
        if end <= st.sent {
            return;
        }
        if tli != st.tli
            || end.0 - st.sent.0 > MAX_SEND_SIZE
            || !st.send(end, flushed, read, &self.sent_recorder)
        {
            st.armed = false;
            drop(st);
            self.walsender.unpark();
        }
    }

    /// After the writer's fdatasync: tell the standby the new flush
    /// position now if it holds WAL past what it was told (the
    /// walsender's `tell_flush`), asking for its apply report if a
    /// commit waits for it (its `ask_for_apply`). Whatever is not done
    /// here the walsender does when the flush's watch wakes it, right
    /// after this.
    fn flushed(&self, tli: TimelineId, flushed: Lsn) {
        let mut st = match self.state.try_lock() {
            Ok(st) => st,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            // Awake: the flush's watch wakes it (again) to tell it.
            Err(TryLockError::WouldBlock) => return,
        };
        if !st.armed || tli != st.tli || st.told.flush >= st.sent || flushed <= st.told.flush {
            return;
        }
        let asked = st
            .told
            .apply_asked
            .map(|_| (self.apply_wanted)().min(flushed).min(st.sent));
        if !st.keepalive(flushed, asked) {
            st.armed = false;
            drop(st);
            self.walsender.unpark();
        }
    }
}

impl State {
    /// A keepalive with `walEnd` = `flushed`, flagged for an apply report
    /// if `asked` passes what was asked before; false when the walsender
    /// must take over (as [`State::send`]).
    fn keepalive(&mut self, flushed: Lsn, asked: Option<Lsn>) -> bool {
        let apply_feedback = match (asked, self.told.apply_asked) {
            (Some(a), Some(before)) => a > before,
            _ => false,
        };
        let k = PrimaryKeepalive {
            wal_end: flushed,
            send_time: pg_epoch_micros(SystemTime::now()),
            reply_requested: false,
            apply_feedback,
            flush_deferrable: self.told.flush_deferrable,
            write_wanted: self.told.write_wanted,
        };
        self.frame.clear();
        BackendMessage::CopyData(ReplicationMessage::Keepalive(k).encode()).encode(&mut self.frame);
        let written = match send_nonblocking(&self.sock, &self.frame) {
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                self.error = Some(e);
                return false;
            }
        };
        self.told.flush = flushed;
        if apply_feedback {
            self.told.apply_asked = asked;
        }
        if written < self.frame.len() {
            self.rest.extend_from_slice(&self.frame[written..]);
            return false;
        }
        true
    }

    /// Send `[sent, end)`; false when the walsender must take over (the
    /// tail did not hold it, the socket's buffer was full, it failed).
    fn send(
        &mut self,
        end: Lsn,
        flushed: Lsn,
        read: &dyn Fn(Lsn, &mut [u8]) -> bool,
        sent_recorder: &SentRecorder,
    ) -> bool {
        let n = (end.0 - self.sent.0) as usize;
        let payload = XLOGDATA_HEADER_LEN + n;
        self.frame.resize(5 + payload, 0);
        self.frame[0] = b'd';
        self.frame[1..5].copy_from_slice(&((4 + payload) as u32).to_be_bytes());
        let wal_end = flushed.max(self.told.flush);
        let header = XLogDataHeader {
            wal_start: self.sent,
            wal_end,
            send_time: pg_epoch_micros(SystemTime::now()),
        };
        let mut h = [0u8; XLOGDATA_HEADER_LEN];
        header.write(&mut h);
        self.frame[5..5 + XLOGDATA_HEADER_LEN].copy_from_slice(&h);
        if !read(self.sent, &mut self.frame[5 + XLOGDATA_HEADER_LEN..]) {
            return false;
        }
        // Before the write, as the walsender does: the standby may answer
        // before this returns.
        sent_recorder.record(end);
        let at = Instant::now();
        let written = match send_nonblocking(&self.sock, &self.frame) {
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                self.error = Some(e);
                return false;
            }
        };
        self.sent = end;
        self.told.flush = wal_end;
        if self.samples.len() == SAMPLES {
            self.samples.remove(0);
        }
        self.samples.push((end, at));
        if written < self.frame.len() {
            self.rest.extend_from_slice(&self.frame[written..]);
            return false;
        }
        true
    }
}

/// One `send` that never blocks (and raises no SIGPIPE); the count
/// written.
fn send_nonblocking(sock: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes; the socket is
        // open while `sock` lives.
        let r = unsafe {
            libc::send(
                sock.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::registry::WalSenderRegistry;
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::Duration;

    /// A connected pair: the walsender's end and the standby's.
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (s, c)
    }

    fn told(flush: Lsn) -> Told {
        Told {
            flush,
            apply_asked: Some(Lsn::INVALID),
            ..Told::default()
        }
    }

    /// The next message the standby reads: its CopyData payload.
    fn next_message(standby: &mut TcpStream) -> ReplicationMessage {
        let mut head = [0u8; 5];
        standby.read_exact(&mut head).unwrap();
        assert_eq!(head[0], b'd');
        let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; len - 4];
        standby.read_exact(&mut payload).unwrap();
        ReplicationMessage::decode(&payload).unwrap()
    }

    /// WAL bytes of LSN `l`: its low byte.
    fn tail(from: Lsn, to: Lsn) -> impl Fn(Lsn, &mut [u8]) -> bool {
        move |start: Lsn, buf: &mut [u8]| {
            if start < from || start.0 + buf.len() as u64 > to.0 {
                return false;
            }
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (start.0 + i as u64) as u8;
            }
            true
        }
    }

    #[test]
    fn an_armed_walsender_has_written_wal_sent_with_the_flush_position_as_wal_end() {
        let registry = WalSenderRegistry::new(1);
        let handle = registry.register("sb", "walrep", None, false).unwrap();
        let (ours, mut standby) = pair();
        let d = DirectSend::new(ours, handle.sent_recorder(), Box::new(|| Lsn::INVALID));
        d.arm(TimelineId::FIRST, Lsn(1000), told(Lsn(900)));
        d.written(
            TimelineId::FIRST,
            Lsn(1040),
            Lsn(1000),
            &tail(Lsn(0), Lsn(2000)),
        );
        // Recorded before the write: a reply may come before it returns.
        assert_eq!(registry.snapshot()[0].sent_lsn, Lsn(1040));
        let mut frame = vec![0u8; 5 + XLOGDATA_HEADER_LEN + 40];
        standby.read_exact(&mut frame).unwrap();
        assert_eq!(frame[0], b'd');
        assert_eq!(frame[5], b'w');
        assert_eq!(
            &frame[6..14],
            &1000u64.to_be_bytes(),
            "wal_start: what was sent"
        );
        assert_eq!(
            &frame[14..22],
            &1000u64.to_be_bytes(),
            "wal_end: the flush position, not the written one"
        );
        let wal = &frame[5 + XLOGDATA_HEADER_LEN..];
        assert!(wal.iter().enumerate().all(|(i, b)| *b == (1000 + i) as u8));
        let taken = d.disarm();
        assert_eq!((taken.sent, taken.told.flush), (Lsn(1040), Lsn(1000)));
        assert!(taken.rest.is_empty() && taken.error.is_none());
        assert_eq!(taken.samples.len(), 1);
    }

    #[test]
    fn nothing_is_sent_unarmed_or_past_what_the_tail_holds_and_the_walsender_is_woken() {
        let registry = WalSenderRegistry::new(1);
        let handle = registry.register("sb", "walrep", None, false).unwrap();
        let (ours, mut standby) = pair();
        let d = DirectSend::new(ours, handle.sent_recorder(), Box::new(|| Lsn::INVALID));
        // Unarmed: the walsender is awake and sends itself.
        d.written(
            TimelineId::FIRST,
            Lsn(1040),
            Lsn(1000),
            &tail(Lsn(0), Lsn(2000)),
        );
        // Armed, but the tail does not hold the WAL: disarmed, nothing sent.
        d.arm(TimelineId::FIRST, Lsn(1000), told(Lsn(1000)));
        d.written(
            TimelineId::FIRST,
            Lsn(1040),
            Lsn(1000),
            &tail(Lsn(1010), Lsn(2000)),
        );
        // Disarmed by that: a later write that the tail holds is not sent.
        d.written(
            TimelineId::FIRST,
            Lsn(1080),
            Lsn(1000),
            &tail(Lsn(0), Lsn(2000)),
        );
        // Another timeline is never sent.
        d.arm(TimelineId::FIRST, Lsn(1000), told(Lsn(1000)));
        d.written(
            TimelineId(2),
            Lsn(1040),
            Lsn(1000),
            &tail(Lsn(0), Lsn(2000)),
        );
        let taken = d.disarm();
        assert_eq!(taken.sent, Lsn(1000));
        assert!(taken.samples.is_empty());
        assert_eq!(registry.snapshot()[0].sent_lsn, Lsn::INVALID);
        standby
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(standby.read(&mut b).is_err(), "nothing was written");
        // Each refusal left the walsender (this thread) an unpark token.
        let t = Instant::now();
        std::thread::park_timeout(Duration::from_secs(10));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_flush_is_told_by_the_writing_thread_asking_for_the_apply_report_a_commit_waits_for() {
        let registry = WalSenderRegistry::new(1);
        let handle = registry.register("sb", "walrep", None, false).unwrap();
        let (ours, mut standby) = pair();
        let wanted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let w = std::sync::Arc::clone(&wanted);
        let d = DirectSend::new(
            ours,
            handle.sent_recorder(),
            Box::new(move || Lsn(w.load(std::sync::atomic::Ordering::SeqCst))),
        );
        d.arm(
            TimelineId::FIRST,
            Lsn(1000),
            Told {
                flush: Lsn(1000),
                apply_asked: Some(Lsn(1000)),
                flush_deferrable: false,
                write_wanted: true,
            },
        );
        // Nothing held past what the standby was told: nothing to tell.
        d.flushed(TimelineId::FIRST, Lsn(1000));
        d.written(
            TimelineId::FIRST,
            Lsn(1040),
            Lsn(1000),
            &tail(Lsn(0), Lsn(2000)),
        );
        assert!(matches!(
            next_message(&mut standby),
            ReplicationMessage::XLogData { .. }
        ));
        // A commit waits for its apply up to 1040; the flush reaches 1020
        // first: asked up to there, not past the flush.
        wanted.store(1040, std::sync::atomic::Ordering::SeqCst);
        d.flushed(TimelineId::FIRST, Lsn(1020));
        let ReplicationMessage::Keepalive(k) = next_message(&mut standby) else {
            panic!("a keepalive");
        };
        assert_eq!(k.wal_end, Lsn(1020));
        assert!(k.apply_feedback && k.write_wanted && !k.flush_deferrable && !k.reply_requested);
        // Another timeline's flush is not told here.
        d.flushed(TimelineId(2), Lsn(1040));
        d.flushed(TimelineId::FIRST, Lsn(1040));
        let ReplicationMessage::Keepalive(k) = next_message(&mut standby) else {
            panic!("a keepalive");
        };
        assert_eq!(k.wal_end, Lsn(1040));
        assert!(k.apply_feedback, "asked further, up to 1040");
        // Told all it holds: a later flush position is the walsender's.
        d.flushed(TimelineId::FIRST, Lsn(1080));
        let taken = d.disarm();
        assert_eq!(taken.told.flush, Lsn(1040));
        assert_eq!(taken.told.apply_asked, Some(Lsn(1040)));
        // Disarmed: nothing more is sent.
        d.flushed(TimelineId::FIRST, Lsn(1080));
        standby
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(standby.read(&mut b).is_err(), "nothing more was written");
    }

    #[test]
    fn a_standby_that_reports_its_apply_unasked_is_never_flagged() {
        let registry = WalSenderRegistry::new(1);
        let handle = registry.register("sb", "walrep", None, false).unwrap();
        let (ours, mut standby) = pair();
        let d = DirectSend::new(ours, handle.sent_recorder(), Box::new(|| Lsn(5000)));
        d.arm(
            TimelineId::FIRST,
            Lsn(1040),
            Told {
                flush: Lsn(1000),
                ..Told::default()
            },
        );
        d.flushed(TimelineId::FIRST, Lsn(1040));
        let ReplicationMessage::Keepalive(k) = next_message(&mut standby) else {
            panic!("a keepalive");
        };
        assert_eq!(k.wal_end, Lsn(1040));
        assert!(!k.apply_feedback);
        assert_eq!(d.disarm().told.apply_asked, None);
    }
}
