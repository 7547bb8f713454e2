//! One client connection on a worker loop: non-blocking reads into a
//! request buffer, command execution, and sending the replies that may go.
//!
//! A connection stops executing requests (and so stops reading, leaving the
//! bytes to TCP flow control) while it must wait: for its pending writes to
//! be confirmed before a read ("stalled"), for a WAIT running off the loop,
//! or for its output to drain.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::time::Instant;

use mio::net::TcpStream;

use std::sync::Arc;

use super::backend::{Backend, Termination, WriteError};
use super::clients::{ClientInfo, KillSignal};
use super::command::batch::{self, Run};
use super::command::dispatch::{self, must_settle_before};
use super::command::{auth, Command, Flow, WaitRequest};
use super::protocol::{self, reply, Limits};
use super::session::{Session, SessionContext};

/// Output held back (unsent, or waiting for a write's confirmation) beyond
/// which the connection stops executing requests until it shrinks, so a
/// huge pipeline does not grow the buffer without bound.
pub const MAX_HELD_OUTPUT: usize = 1 << 20;
/// Consumed request bytes kept at the front of the buffer before it is
/// compacted.
const COMPACT_AFTER: usize = 64 << 10;
/// An empty buffer larger than this is given back to the allocator, so a
/// client that once sent or read a large value does not keep its memory.
const SHRINK_ABOVE: usize = 1 << 20;

/// Why a connection does not execute its next request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Nothing holds it.
    None,
    /// A non-write waits for the connection's pending writes.
    Stalled,
    /// A WAIT runs off the loop; its reply will come back.
    Waiting,
}

/// Requests framed ahead of running them at most (one run of writes).
const FRAME_AHEAD: usize = batch::MAX_RUN;

/// A request framed ahead: its arguments' ranges in the input buffer.
struct Frame {
    args: Vec<std::ops::Range<usize>>,
    consumed: usize,
}

/// Frame the complete requests in `inbuf` from `start` (at most
/// [`FRAME_AHEAD`], and none past the first that cannot join a run of
/// writes), and the protocol error that ends them, if one does.
fn frame_ahead(
    inbuf: &[u8],
    start: usize,
    limits: Limits,
) -> (Vec<Frame>, Option<protocol::ProtocolError>) {
    let mut frames = Vec::new();
    let mut at = start;
    while frames.len() < FRAME_AHEAD {
        match protocol::next_request(&inbuf[at..], limits) {
            Ok(Some(mut req)) => {
                for r in &mut req.args {
                    *r = at + r.start..at + r.end;
                }
                let joins = req
                    .args
                    .first()
                    .is_some_and(|r| batch::may_join(&inbuf[r.clone()]));
                frames.push(Frame {
                    args: req.args,
                    consumed: req.consumed,
                });
                at += req.consumed;
                if !joins {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => return (frames, Some(e)),
        }
    }
    (frames, None)
}

/// A client connection served by a worker loop.
pub struct Conn {
    pub stream: TcpStream,
    /// The TLS session of a `tls_port` client (`None`: plain).
    tls: Option<Box<rustls::ServerConnection>>,
    pub session: Session,
    /// Bytes received; requests before `start` are consumed.
    inbuf: Vec<u8>,
    start: usize,
    /// Edge-triggered readiness: true until a read returns WouldBlock.
    pub readable: bool,
    /// True until a write returns WouldBlock.
    pub writable: bool,
    /// The peer closed its sending side (or the server stopped reading).
    pub eof: bool,
    /// Send what may be sent, then close (QUIT, protocol error, failed write).
    pub closing: bool,
    pub hold: Hold,
    /// The pending writes were handed to the worker's committer thread.
    pub handed_off: bool,
    /// A WAIT the worker must run off the loop.
    pub wait_job: Option<WaitRequest>,
    /// Queued in the worker's ready list.
    pub queued: bool,
    /// When its last writes were confirmed (group-commit siblings).
    pub last_commit: Option<std::time::Instant>,
    /// `client{id, peer}`: entered whenever the worker drives this
    /// connection, so its log lines say which client they concern.
    pub span: tracing::Span,
    /// When it was accepted (`log_disconnections` reports the duration).
    pub since: std::time::Instant,
    /// When it last completed a request: the idle `timeout` clock. Bytes
    /// of an unfinished request do not reset it, so a client trickling a
    /// request byte by byte is idle too.
    pub last_request: Instant,
    /// Bytes this connection counts in `client_buffer_bytes`.
    pub accounted: u64,
    /// The server ended the session ([`Conn::terminate`]): nothing more
    /// is run or answered, only the error is sent.
    pub terminated: bool,
}

impl Conn {
    pub fn new(
        id: u64,
        stream: TcpStream,
        tls: Option<Box<rustls::ServerConnection>>,
        ctx: SessionContext,
        kills: Arc<KillSignal>,
    ) -> Conn {
        let _ = stream.set_nodelay(true);
        let peer_addr = stream.peer_addr().ok();
        let peer = peer_addr.map_or_else(|| "?".to_string(), |a| a.to_string());
        let local = stream
            .local_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let span = tracing::info_span!("client", id, %peer, tls = tls.is_some());
        if ctx.settings.log_connections {
            span.in_scope(|| tracing::info!("connection received"));
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let client = Arc::new(ClientInfo::new(id, peer, local, fd, kills));
        let mut session = Session::new(client, ctx);
        let denied = auth::protected_mode_refuses(&session, peer_addr.map(|a| a.ip()));
        if denied {
            span.in_scope(|| {
                tracing::info!("protected mode: refusing a client that is not local while the default user has no password")
            });
            reply::error(&mut session.out, auth::DENIED);
        }
        Conn {
            stream,
            tls,
            session,
            inbuf: Vec::new(),
            start: 0,
            readable: true,
            writable: true,
            eof: false,
            closing: denied,
            hold: Hold::None,
            handed_off: false,
            wait_job: None,
            queued: false,
            last_commit: None,
            span,
            since: std::time::Instant::now(),
            last_request: Instant::now(),
            accounted: 0,
            terminated: false,
        }
    }

    /// Execute buffered requests and read more while nothing holds the
    /// connection. `reading` is false once the server shuts down: only the
    /// requests already received are finished.
    pub fn drive(&mut self, scratch: &mut [u8], reading: bool) -> io::Result<()> {
        loop {
            self.run_requests();
            if self.hold != Hold::None
                || self.closing
                || self.eof
                || !self.readable
                || !reading
                || self.session.out.len() > MAX_HELD_OUTPUT
            {
                return Ok(());
            }
            if self.tls.is_some() {
                self.read_tls(scratch)?;
            } else {
                self.read_plain(scratch)?;
            }
            self.check_query_buffer();
        }
    }

    fn read_plain(&mut self, scratch: &mut [u8]) -> io::Result<()> {
        match self.stream.read(scratch) {
            Ok(0) => self.eof = true,
            Ok(n) => {
                self.inbuf.extend_from_slice(&scratch[..n]);
                // A short read emptied the socket: edge-triggered
                // polling reports the next arrival, so skip the read
                // that would only say EAGAIN (one syscall per request).
                if n < scratch.len() {
                    self.readable = false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Read decrypted bytes: plaintext rustls holds first, else ciphertext
    /// from the socket (which may also move the handshake on; what rustls
    /// must answer goes out with the next send).
    fn read_tls(&mut self, scratch: &mut [u8]) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        loop {
            match tls.reader().read(scratch) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&scratch[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Closed without close_notify: an end like any other.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.eof = true;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            match tls.read_tls(&mut self.stream) {
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        // Send the alert rustls queued, then give up.
                        let _ = tls.write_tls(&mut self.stream);
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// `client_query_buffer_limit`: a client that buffers more request
    /// bytes than this (one huge request or a pipeline it does not read
    /// replies for) is told and closed, as Redis closes it.
    fn check_query_buffer(&mut self) {
        let buffered = self.inbuf.len() - self.start;
        if buffered > self.session.ctx.settings.max_query_buffer && !self.closing {
            tracing::warn!(buffered, "closing a client past client_query_buffer_limit");
            let stats = &self.session.ctx.stats;
            stats.evicted_clients.fetch_add(1, Ordering::Relaxed);
            reply::error(
                &mut self.session.out,
                "ERR Protocol error: the client's query buffer exceeds client_query_buffer_limit",
            );
            self.inbuf.clear();
            self.start = 0;
            self.closing = true;
        }
    }

    /// Whether the next request may run now.
    fn may_run(&self) -> bool {
        self.hold == Hold::None && !self.closing && self.session.out.len() <= MAX_HELD_OUTPUT
    }

    fn run_requests(&mut self) {
        let limits = Limits {
            max_bulk_len: self.session.ctx.settings.max_bulk_len,
        };
        // One clock read for the requests run now (a pipeline's are all
        // "now" for the idle timeout and CLIENT LIST).
        let mut now: Option<Instant> = None;
        // Out of `self` while requests borrow it (put back below).
        let inbuf = std::mem::take(&mut self.inbuf);
        let backend = self.session.ctx.backend.clone();
        while self.may_run() {
            // The complete requests present are framed first, so their
            // arguments live as long as a run of writes that logs them
            // together (see `command::batch`).
            let (frames, error) = frame_ahead(&inbuf, self.start, limits);
            if frames.is_empty() && error.is_none() {
                break;
            }
            let all: Vec<&[u8]> = frames
                .iter()
                .flat_map(|f| f.args.iter().map(|r| &inbuf[r.clone()]))
                .collect();
            let mut run = Run::default();
            let (mut first, mut ran_all) = (0, true);
            for f in &frames {
                let args = &all[first..first + f.args.len()];
                first += f.args.len();
                if !self.may_run() || !self.run_one(args, f.consumed, &mut run, &*backend, &mut now)
                {
                    ran_all = false;
                    break;
                }
            }
            run.finish(&mut self.session, &*backend);
            match error {
                Some(e) if ran_all && self.may_run() => self.protocol_error(&e),
                _ => {}
            }
        }
        self.inbuf = inbuf;
        self.compact_input();
    }

    /// Run one framed request (`consumed` bytes of the input). False when
    /// it must wait for the connection's pending writes (it did not run).
    fn run_one<'s, 'a>(
        &mut self,
        args: &'a [&'a [u8]],
        consumed: usize,
        run: &mut Run<'s, 'a>,
        backend: &'s dyn Backend,
        now: &mut Option<Instant>,
    ) -> bool {
        if args.is_empty() {
            self.start += consumed;
            return true;
        }
        let parsed = Command::from_frame(args);
        let joins = matches!(&parsed, Ok(cmd) if run.admits(&self.session, backend, cmd));
        if !joins {
            run.finish(&mut self.session, backend);
        }
        // A command that reads or reports anything first waits
        // for this connection's earlier writes; a refused one
        // reads nothing and its error queues behind their replies.
        let settles = matches!(&parsed, Ok(cmd) if must_settle_before(&self.session, cmd));
        if settles && self.session.has_pending() {
            self.hold = Hold::Stalled;
            return false;
        }
        self.start += consumed;
        let at = *now.get_or_insert_with(Instant::now);
        self.last_request = at;
        self.session.client.note_command(args[0], at);
        let stats = &self.session.ctx.stats;
        stats
            .total_commands_processed
            .fetch_add(1, Ordering::Relaxed);
        // Who may run what is checked before anything runs,
        // and before MULTI queues it (a refused command marks
        // the transaction, as in Redis).
        let parsed =
            parsed.and_then(|cmd| dispatch::check(&self.session, &cmd, args[0]).map(|()| cmd));
        match parsed {
            Ok(cmd) if joins => {
                let bytes = args.iter().map(|a| a.len()).sum();
                run.execute(&mut self.session, backend, cmd, bytes);
            }
            parsed => {
                run.finish(&mut self.session, backend);
                let flow = dispatch::respond(&mut self.session, args, parsed);
                self.follow(flow);
            }
        }
        true
    }

    fn protocol_error(&mut self, e: &protocol::ProtocolError) {
        let stats = &self.session.ctx.stats;
        stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %e, "protocol error, closing connection");
        reply::error(&mut self.session.out, &format!("ERR {e}"));
        self.closing = true;
    }

    /// Do what the command asked of the connection.
    fn follow(&mut self, flow: Flow) {
        match flow {
            Flow::Continue => {}
            Flow::Close => self.closing = true,
            Flow::Wait(w) => {
                self.wait_job = Some(w);
                self.hold = Hold::Waiting;
            }
        }
    }

    fn compact_input(&mut self) {
        if self.start == self.inbuf.len() {
            self.inbuf.clear();
            self.start = 0;
            if self.inbuf.capacity() > SHRINK_ABOVE {
                self.inbuf = Vec::new();
            }
        } else if self.start > COMPACT_AFTER {
            self.inbuf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Send the replies that may go. Returns true when the output shrank
    /// below [`MAX_HELD_OUTPUT`] and requests may run again. Errors mean
    /// the peer is gone.
    pub fn send(&mut self) -> io::Result<bool> {
        let was_full = self.session.out.len() > MAX_HELD_OUTPUT;
        if self.tls.is_some() {
            self.send_tls()?;
        } else {
            self.send_plain()?;
        }
        if self.session.out.is_empty() && self.session.out.capacity() > SHRINK_ABOVE {
            self.session.out = Vec::new();
        }
        Ok(was_full && self.session.out.len() <= MAX_HELD_OUTPUT)
    }

    fn send_plain(&mut self) -> io::Result<()> {
        while self.writable {
            let n = self.session.sendable();
            if n == 0 {
                break;
            }
            match self.stream.write(&self.session.out[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => self.session.consume_out(k),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Seal what may be sent into TLS records (rustls holds a bounded
    /// amount) and write the records, handshake messages included.
    fn send_tls(&mut self) -> io::Result<()> {
        let Conn {
            tls: Some(tls),
            stream,
            session,
            writable,
            ..
        } = self
        else {
            return Ok(());
        };
        while *writable {
            if tls.wants_write() {
                match tls.write_tls(stream) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => *writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            let n = session.sendable();
            if n == 0 {
                break;
            }
            match tls.writer().write(&session.out[..n])? {
                0 => break,
                k => session.consume_out(k),
            }
        }
        Ok(())
    }

    /// End the session with `why`: a pending write gets it as its reply
    /// (never "OK": it was not confirmed), a WAIT in progress too, an idle
    /// client reads it before the connection closes. Requests not yet run
    /// never are.
    pub fn terminate(&mut self, why: &Arc<Termination>) {
        self.terminated = true;
        self.handed_off = false;
        self.wait_job = None;
        if self.session.has_pending() {
            let failed = Err(WriteError::Terminated(why.clone()));
            self.session.confirm(&failed, &mut Vec::new());
        } else if self.hold == Hold::Waiting || !self.closing {
            reply::error(&mut self.session.out, &why.error_text());
        }
        // A WAIT's thread ends by its own timeout; its count is not sent.
        self.hold = Hold::None;
        self.closing = true;
    }

    /// Bytes held in this connection's buffers (what `maxmemory_clients`
    /// counts).
    pub fn buffered_bytes(&self) -> u64 {
        (self.inbuf.capacity() + self.session.out.capacity()) as u64
    }

    /// Nothing left to do for it: close it now.
    pub fn finished(&self) -> bool {
        let idle = !self.session.has_pending()
            && !self.handed_off
            && self.hold != Hold::Waiting
            && self.session.out.is_empty()
            && self.tls.as_ref().is_none_or(|t| !t.wants_write());
        idle && (self.closing || (self.eof && !self.has_complete_request()))
    }

    fn has_complete_request(&self) -> bool {
        let limits = Limits {
            max_bulk_len: self.session.ctx.settings.max_bulk_len,
        };
        matches!(
            protocol::next_request(&self.inbuf[self.start..], limits),
            Ok(Some(_)) | Err(_)
        )
    }
}
