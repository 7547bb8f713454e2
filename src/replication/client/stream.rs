//! START_REPLICATION on the client side: entering COPY, receiving typed
//! events, sending status updates and feedback, and leaving COPY (by the
//! client, at a timeline end, or at server shutdown).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use walrep_states::{Lsn, TimelineId};

use super::{protocol, quote_ident, ClientError, QueryResult, ReplicationClient};
use crate::replication::pgwire::io::WireError;
use crate::replication::pgwire::{
    pg_epoch_micros, BackendMessage, FrontendMessage, HotStandbyFeedback, ReplicationMessage,
    StandbyMessage, StandbyStatusUpdate,
};

/// What START_REPLICATION led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// COPY started: call [`ReplicationClient::recv`].
    Streaming,
    /// The server has nothing on that (historic) timeline past the start:
    /// it answered with the next timeline right away.
    TimelineEnded {
        /// The timeline that follows the requested one.
        next_tli: TimelineId,
        /// Where the requested timeline ended: start the next one here.
        next_start: Lsn,
    },
}

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// WAL bytes starting at `start`; `wal_end` is the server's flush point.
    XLogData {
        /// LSN of `data[0]`.
        start: Lsn,
        /// The server's flush position when it sent this.
        wal_end: Lsn,
        /// Server clock (µs since 2000-01-01), for apply lag.
        server_time: i64,
        /// The WAL bytes.
        data: Vec<u8>,
    },
    /// A primary keepalive `k`.
    Keepalive {
        /// The server's flush position.
        wal_end: Lsn,
        /// Server clock (µs since 2000-01-01).
        server_time: i64,
        /// Answer with a status update now, or the server's
        /// `wal_sender_timeout` may end the connection.
        reply_requested: bool,
        /// A walrep upstream that agreed to say so: a commit waits for
        /// this standby's apply position, so replay progress up to
        /// `wal_end` should be reported at once (see
        /// [`PrimaryKeepalive::apply_feedback`](crate::replication::pgwire::PrimaryKeepalive::apply_feedback)).
        apply_feedback: bool,
        /// A walrep upstream that agreed to say so: no commit there may
        /// wait for this standby's flush position now (see
        /// [`PrimaryKeepalive::flush_deferrable`](crate::replication::pgwire::PrimaryKeepalive::flush_deferrable)).
        flush_deferrable: bool,
        /// With the flush hint: a commit there waited lately for this
        /// standby's written position alone (see
        /// [`PrimaryKeepalive::write_wanted`](crate::replication::pgwire::PrimaryKeepalive::write_wanted)).
        write_wanted: bool,
    },
    /// The server finished the timeline (CopyDone, next-timeline result);
    /// the connection is back in command mode.
    EndOfTimeline {
        /// The timeline to follow next.
        next_tli: TimelineId,
        /// Where the finished timeline ended and the next one branches off.
        next_start: Lsn,
    },
    /// The server is shutting down (`COPY 0`); the connection is closing.
    ServerShutdown,
    /// Nothing arrived within the timeout.
    Timeout,
}

/// Sends status updates from another thread while one thread receives.
/// Once the COPY is over (our CopyDone written, or the server left it),
/// sends do nothing: there is no stream left to carry them, and a status
/// update would reach the server as a stray message between commands.
#[derive(Clone)]
pub struct StatusSender {
    writer: Arc<Mutex<crate::security::NetStream>>,
    copy_open: Arc<AtomicBool>,
}

impl StatusSender {
    fn send(&self, m: StandbyMessage) -> Result<(), ClientError> {
        let mut out = Vec::with_capacity(40);
        FrontendMessage::CopyData(m.encode()).encode(&mut out);
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the writer's lock: our CopyDone is written under it.
        if !self.copy_open.load(Ordering::Acquire) {
            return Ok(());
        }
        w.write_all(&out)?;
        Ok(())
    }

    /// Standby status update `r` (0/0 = not reported).
    pub fn send_status(
        &self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), ClientError> {
        self.send(StandbyMessage::Status(StandbyStatusUpdate {
            write,
            flush,
            apply,
            client_time: pg_epoch_micros(SystemTime::now()),
            reply_requested,
        }))
    }

    /// Hot standby feedback `h`.
    pub fn send_feedback(
        &self,
        xmin: u32,
        xmin_epoch: u32,
        catalog_xmin: u32,
        catalog_xmin_epoch: u32,
    ) -> Result<(), ClientError> {
        self.send(StandbyMessage::Feedback(HotStandbyFeedback {
            client_time: pg_epoch_micros(SystemTime::now()),
            xmin,
            xmin_epoch,
            catalog_xmin,
            catalog_xmin_epoch,
        }))
    }
}

/// The two CommandCompletes after a next-timeline result set (or after COPY).
fn next_timeline(r: &QueryResult) -> Result<(TimelineId, Lsn), ClientError> {
    let tli = r
        .text(0, 0)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| protocol("invalid next timeline"))?;
    let start = r
        .text(0, 1)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| protocol("invalid next timeline start"))?;
    Ok((TimelineId(tli), start))
}

impl ReplicationClient {
    /// `START_REPLICATION [SLOT s] X/X [TIMELINE n]`.
    pub fn start_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: Option<TimelineId>,
    ) -> Result<StartOutcome, ClientError> {
        let mut q = "START_REPLICATION".to_string();
        if let Some(s) = slot {
            q.push_str(&format!(" SLOT {}", quote_ident(s)));
        }
        q.push_str(&format!(" PHYSICAL {start}"));
        if let Some(t) = timeline {
            q.push_str(&format!(" TIMELINE {}", t.0));
        }
        self.send(&FrontendMessage::Query(q))?;
        match self.read(self.io_timeout)? {
            BackendMessage::CopyBothResponse { .. } => {
                self.streaming = true;
                self.copy_open.store(true, Ordering::Release);
                Ok(StartOutcome::Streaming)
            }
            BackendMessage::ErrorResponse(e) => {
                self.collect_results(QueryResult::default()).ok();
                Err(ClientError::Server(Box::new(e)))
            }
            BackendMessage::RowDescription(columns) => {
                let r = self.collect_results(QueryResult {
                    columns,
                    ..QueryResult::default()
                })?;
                let (next_tli, next_start) = next_timeline(&r)?;
                Ok(StartOutcome::TimelineEnded {
                    next_tli,
                    next_start,
                })
            }
            other => Err(protocol(format!(
                "unexpected answer to START_REPLICATION: {other:?}"
            ))),
        }
    }

    /// A handle to send status updates from another thread.
    pub fn status_sender(&self) -> StatusSender {
        StatusSender {
            writer: Arc::clone(&self.writer),
            copy_open: Arc::clone(&self.copy_open),
        }
    }

    /// Send a standby status update `r` (write, flush, apply) from the
    /// receiving thread; [`StatusSender::send_status`] from any other.
    pub fn send_status(
        &self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), ClientError> {
        self.status_sender()
            .send_status(write, flush, apply, reply_requested)
    }

    /// Bytes of the stream that can be read now without waiting: those
    /// already buffered plus those the socket holds (for TLS, the
    /// encrypted bytes). A receiver that reads the socket itself drains
    /// this much into one batch before it fsyncs, so that what arrived
    /// meanwhile does not cost an fsync per message.
    pub fn readable_bytes(&self) -> usize {
        use std::os::fd::AsRawFd;
        let fd = self.reader.get_ref().socket().as_raw_fd();
        let mut pending: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer, which
        // points at a live local; the descriptor belongs to this client.
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut pending) };
        let socket = if rc == 0 { pending.max(0) as usize } else { 0 };
        self.reader.buffered().len() + socket
    }

    /// Whether any byte of the stream can be read now without waiting:
    /// [`ReplicationClient::readable_bytes`] `> 0`, without asking the
    /// socket when the buffer already holds some.
    pub fn has_readable(&self) -> bool {
        !self.reader.buffered().is_empty() || self.readable_bytes() > 0
    }

    /// Bytes of the stream already read from the socket and not yet
    /// returned as events (no system call).
    pub fn buffered_bytes(&self) -> usize {
        self.reader.buffered().len()
    }

    /// The next stream event, waiting at most `timeout` (at least 1 ms),
    /// [`StreamEvent::Timeout`] only once that has passed. The socket's
    /// read timeout is kept while it is no longer than the wait left and
    /// not much shorter (see `keeps_read_timeout`): a receive loop whose
    /// bound changes from call to call (its next timer, then the bound on
    /// a message's rest) sets it again only now and then, not per
    /// message; a timeout of the socket's before `timeout` reads on.
    pub fn recv(&mut self, timeout: Duration) -> Result<StreamEvent, ClientError> {
        if !self.streaming {
            return Err(protocol("not streaming"));
        }
        let deadline = Instant::now() + timeout;
        let mut left = timeout;
        loop {
            self.set_loose_read_timeout(left)?;
            match self.recv_event()? {
                StreamEvent::Timeout => {
                    left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(StreamEvent::Timeout);
                    }
                }
                ev => return Ok(ev),
            }
        }
    }

    /// The next stream event, within the socket's read timeout as set.
    fn recv_event(&mut self) -> Result<StreamEvent, ClientError> {
        let msg = match self.reader.read_backend().map_err(ClientError::from) {
            Err(ClientError::Wire(WireError::TimedOut)) => return Ok(StreamEvent::Timeout),
            other => other?,
        };
        match msg {
            BackendMessage::CopyData(p) => {
                match ReplicationMessage::decode(&p).map_err(|e| protocol(e.to_string()))? {
                    ReplicationMessage::XLogData { header, data } => Ok(StreamEvent::XLogData {
                        start: header.wal_start,
                        wal_end: header.wal_end,
                        server_time: header.send_time,
                        data,
                    }),
                    ReplicationMessage::Keepalive(k) => Ok(StreamEvent::Keepalive {
                        wal_end: k.wal_end,
                        server_time: k.send_time,
                        reply_requested: k.reply_requested,
                        apply_feedback: k.apply_feedback,
                        flush_deferrable: k.flush_deferrable,
                        write_wanted: k.write_wanted,
                    }),
                }
            }
            BackendMessage::CopyDone => {
                self.end_copy(true)?;
                self.streaming = false;
                let r = self.collect_results(QueryResult::default())?;
                let (next_tli, next_start) = next_timeline(&r)?;
                Ok(StreamEvent::EndOfTimeline {
                    next_tli,
                    next_start,
                })
            }
            BackendMessage::CommandComplete(tag) if tag == "COPY 0" => {
                self.end_copy(false)?;
                self.streaming = false;
                Ok(StreamEvent::ServerShutdown)
            }
            BackendMessage::ErrorResponse(e) => {
                // The server left COPY; its ReadyForQuery follows.
                self.end_copy(false)?;
                self.streaming = false;
                self.collect_results(QueryResult::default())?;
                Err(ClientError::Server(Box::new(e)))
            }
            other => Err(protocol(format!(
                "unexpected message while streaming: {other:?}"
            ))),
        }
    }

    /// Close our side of the COPY: no [`StatusSender`] writes after this;
    /// `copy_done` writes our CopyDone first, under the same lock.
    fn end_copy(&self, copy_done: bool) -> Result<(), ClientError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.copy_open.store(false, Ordering::Release);
        if copy_done {
            let mut out = Vec::new();
            FrontendMessage::CopyDone.encode(&mut out);
            w.write_all(&out)?;
        }
        Ok(())
    }

    /// End the COPY from our side (CopyDone) and return to command mode,
    /// discarding WAL still in flight; bounded by the I/O timeout.
    pub fn stop_streaming(&mut self) -> Result<(), ClientError> {
        if !self.streaming {
            return Ok(());
        }
        self.end_copy(true)?;
        let deadline = Instant::now() + self.io_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(protocol("timed out waiting for the server to end COPY"));
            }
            match self.read(left)? {
                BackendMessage::CopyData(_) => {}
                BackendMessage::CopyDone => break,
                BackendMessage::ErrorResponse(e) => {
                    self.streaming = false;
                    self.collect_results(QueryResult::default())?;
                    return Err(ClientError::Server(Box::new(e)));
                }
                other => {
                    return Err(protocol(format!(
                        "unexpected message ending COPY: {other:?}"
                    )))
                }
            }
        }
        self.streaming = false;
        self.collect_results(QueryResult::default()).map(|_| ())
    }
}
