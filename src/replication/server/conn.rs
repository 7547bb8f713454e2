//! One connection's socket: a buffered writer for backend messages and the
//! reader thread that turns incoming bytes into frontend messages on a
//! bounded channel (so the session can wait on the client, new WAL and
//! shutdown at once). The reader records standby status updates itself
//! (see [`ReplyRecorder`]): a synchronous commit is released on the
//! thread that read its confirmation, one thread wake-up sooner. After
//! each message it also unparks the session thread (a streaming
//! walsender waits by parking, not in `select!`: see `crate::watch`),
//! except after a status update the session has no use for at once
//! (see [`StatusWake`]): those wait in the queue for its next wake-up.

use std::io::{self, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver};

use crate::replication::pgwire::io::WireError;
use crate::replication::pgwire::{
    BackendMessage, FrontendMessage, MessageReader, StandbyMessage, StandbyStatusUpdate,
    TransactionStatus,
};
use crate::replication::registry::ReplyRecorder;
use crate::replication::slots::SlotManager;
use crate::replication::sqlstate::PgError;
use crate::security::NetStream;

/// Frontend messages queued between the reader thread and the session: a
/// handful is enough, a full queue pushes back on the client via TCP.
const CLIENT_QUEUE: usize = 64;

/// What the reader thread delivers.
#[derive(Debug)]
pub(super) enum ClientEvent {
    Message(FrontendMessage),
    /// A standby status update (CopyData 'r'), read at `at`; `recorded`
    /// says whether the reader recorded its positions (false: it claimed
    /// WAL beyond what was sent, a protocol violation).
    Status {
        update: StandbyStatusUpdate,
        at: Instant,
        recorded: bool,
    },
    /// The client closed the connection or sent bytes that are not a
    /// message; the reader has stopped.
    Gone(String),
}

/// Whether the session must be woken for every standby status update.
/// A streaming walsender clears it: the reader has already recorded the
/// positions (and released the commits they confirm) and moved the
/// stream's slot, and what is left for the walsender (lags, the timeout
/// clock) keeps until it wakes for new WAL, for its next keepalive or
/// timeout, or for a half-full queue; an update asking for a reply, or
/// one the reader refused to record, still wakes it. Set again for the
/// shutdown handshake, which waits for the last confirmation.
#[derive(Clone)]
pub(super) struct StatusWake(Arc<WakeShared>);

struct WakeShared {
    every: AtomicBool,
    /// The replication slot of the stream, moved by the reader.
    slot: Mutex<Option<String>>,
    slots: Arc<SlotManager>,
}

impl StatusWake {
    pub fn new(slots: Arc<SlotManager>) -> StatusWake {
        StatusWake(Arc::new(WakeShared {
            every: AtomicBool::new(true),
            slot: Mutex::new(None),
            slots,
        }))
    }

    /// Wake the session for every status update (`true`) or only for
    /// those it needs at once (`false`).
    pub fn set_every(&self, every: bool) {
        self.0.every.store(every, Ordering::Release);
    }

    /// The slot the stream confirms positions to (`None` when it ends).
    pub fn set_slot(&self, slot: Option<&str>) {
        *self.0.slot.lock().unwrap_or_else(|p| p.into_inner()) = slot.map(str::to_string);
    }

    /// A recorded status update moves the slot here, as the walsender
    /// would: a slot's position never waits for the walsender to wake.
    fn confirm_slot(&self, ev: &ClientEvent) {
        if let ClientEvent::Status {
            update,
            recorded: true,
            ..
        } = ev
        {
            let slot = self.0.slot.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(name) = slot.as_deref() {
                self.0.slots.confirm_flush(name, update.flush);
            }
        }
    }

    /// Whether the event just queued (with `queued` events in the queue)
    /// must wake the session.
    fn wakes(&self, ev: &ClientEvent, queued: usize) -> bool {
        match ev {
            ClientEvent::Status {
                update, recorded, ..
            } => {
                self.0.every.load(Ordering::Acquire)
                    || update.reply_requested
                    || !recorded
                    || queued >= CLIENT_QUEUE / 2
            }
            _ => true,
        }
    }
}

/// The write side of a connection.
pub(super) struct Conn {
    stream: NetStream,
    /// Messages encoded but not yet written.
    out: Vec<u8>,
}

impl Conn {
    pub fn new(stream: NetStream) -> Conn {
        Conn {
            stream,
            out: Vec::with_capacity(8192),
        }
    }

    pub fn send(&mut self, m: &BackendMessage) {
        m.encode(&mut self.out);
    }

    /// Append already-encoded bytes (an XLogData frame).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Write `bytes` at once, after anything buffered (an XLogData frame,
    /// without copying it into the buffer).
    pub fn write_now(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.flush()?;
        self.stream.write_all(bytes)
    }

    /// Write anything buffered, `header` and `body` at once (a CopyData
    /// of base backup data: its frame, then the file's bytes straight from
    /// the caller's buffer), in one `writev` on a plain connection.
    pub fn write_framed(&mut self, header: &[u8], body: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(header);
        let NetStream::Plain(sock) = &mut self.stream else {
            self.flush()?;
            return self.stream.write_all(body);
        };
        let r = write_all_vectored(sock, &self.out, body);
        self.out.clear();
        r
    }

    pub fn flush(&mut self) -> io::Result<()> {
        let r = self.stream.write_all(&self.out);
        self.out.clear();
        r
    }

    /// ErrorResponse for `e`, and ReadyForQuery unless it is FATAL.
    pub fn error(&mut self, e: &PgError) -> io::Result<()> {
        self.send(&BackendMessage::ErrorResponse(e.to_fields()));
        if !e.is_fatal() {
            self.send(&BackendMessage::ReadyForQuery(TransactionStatus::Idle));
        }
        self.flush()
    }

    pub fn ready(&mut self) -> io::Result<()> {
        self.send(&BackendMessage::ReadyForQuery(TransactionStatus::Idle));
        self.flush()
    }

    /// Close both directions; the reader thread sees the end and exits.
    pub fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// `a` then `b` to `sock`, each `writev` taking what is left of both.
fn write_all_vectored(sock: &mut std::net::TcpStream, a: &[u8], b: &[u8]) -> io::Result<()> {
    let mut done = 0;
    let total = a.len() + b.len();
    while done < total {
        let n = if done < a.len() {
            let bufs = [io::IoSlice::new(&a[done..]), io::IoSlice::new(b)];
            sock.write_vectored(&bufs)
        } else {
            sock.write(&b[done - a.len()..])
        };
        match n {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Start the reader thread; it ends when the socket closes or the
/// receiver is dropped. Standby status updates are recorded through
/// `replies` as they are read; `session` is unparked after each event
/// that `wake` says it needs.
pub(super) fn spawn_reader(
    mut reader: MessageReader<NetStream>,
    id: u64,
    replies: ReplyRecorder,
    session: Thread,
    wake: StatusWake,
) -> io::Result<(Receiver<ClientEvent>, JoinHandle<()>)> {
    reader.get_ref().set_read_timeout(None)?;
    let (tx, rx) = bounded(CLIENT_QUEUE);
    let join = std::thread::Builder::new()
        .name(format!("walsender-rd-{id}"))
        .spawn(move || loop {
            let ev = match reader.read_frontend() {
                Ok(m) => status_event(m, &replies),
                Err(WireError::Closed) => ClientEvent::Gone("connection closed".into()),
                Err(e) => ClientEvent::Gone(e.to_string()),
            };
            let last = matches!(ev, ClientEvent::Gone(_));
            wake.confirm_slot(&ev);
            let wakes = wake.wakes(&ev, tx.len() + 1);
            let sent = tx.send(ev).is_ok();
            if wakes || !sent {
                session.unpark();
            }
            if !sent || last {
                return;
            }
        })?;
    Ok((rx, join))
}

/// A standby status update is recorded here and now; any other message
/// goes to the session as it is.
fn status_event(m: FrontendMessage, replies: &ReplyRecorder) -> ClientEvent {
    let update = match &m {
        FrontendMessage::CopyData(p) if p.first() == Some(&b'r') => match StandbyMessage::decode(p)
        {
            Ok(StandbyMessage::Status(r)) => r,
            _ => return ClientEvent::Message(m),
        },
        _ => return ClientEvent::Message(m),
    };
    let at = Instant::now();
    ClientEvent::Status {
        recorded: replies.record(&update),
        update,
        at,
    }
}
