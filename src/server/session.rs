//! One client connection: read requests, execute them, make their writes
//! durable, reply.
//!
//! Pipelined writes are inserted one after another and their replies held
//! back until the last of them meets its durability level, so a pipeline of
//! writes costs one wait (and, through group commit, shares fdatasyncs with
//! every other session). Before any other command the session settles its
//! pending writes, so a client always reads its own writes and never sees an
//! "OK" for a write that did not meet its level.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::commands::{self, Flow};
use super::protocol::{self, reply, Limits};
use super::{Backend, ServerSettings, ServerStats, WriteError};
use crate::config::SynchronousCommit;
use crate::store::Level;
use crate::Lsn;

/// Replies held back longer than this are settled and sent early, so a huge
/// pipeline does not grow the output buffer without bound.
const MAX_HELD_OUTPUT: usize = 1 << 20;
/// Read size per syscall.
const READ_CHUNK: usize = 64 << 10;

/// What every session of one server shares.
pub struct SessionContext {
    pub backend: Arc<dyn Backend>,
    pub settings: ServerSettings,
    pub stats: Arc<ServerStats>,
}

/// Writes inserted but not yet confirmed at their level.
#[derive(Debug, Default)]
struct Pending {
    /// End LSN of the last write.
    end: Lsn,
    level: Option<Level>,
    /// Where in the output buffer the first unconfirmed reply starts.
    reply_mark: usize,
    /// Keys whose superseded versions can be dropped once confirmed.
    compact: Vec<Vec<u8>>,
}

/// Per-connection state the commands use.
pub struct Session {
    pub id: u64,
    pub ctx: SessionContext,
    pub out: Vec<u8>,
    /// `CONFIG SET synchronous_commit` changes it for this connection only.
    pub synchronous_commit: SynchronousCommit,
    pub client_name: Option<String>,
    /// End of this connection's last write (WAIT waits for it).
    pub last_write_end: Lsn,
    pending: Pending,
}

/// Run a connection to completion.
pub fn run(id: u64, stream: TcpStream, ctx: SessionContext) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _span = tracing::debug_span!("client", id, %peer).entered();
    let _ = stream.set_nodelay(true);
    let sc = ctx.settings.default_synchronous_commit;
    let mut session = Session {
        id,
        ctx,
        out: Vec::with_capacity(4096),
        synchronous_commit: sc,
        client_name: None,
        last_write_end: Lsn::INVALID,
        pending: Pending::default(),
    };
    if let Err(e) = session.serve(stream) {
        tracing::debug!(error = %e, "connection ended");
    }
}

impl Session {
    fn serve(&mut self, mut stream: TcpStream) -> io::Result<()> {
        let limits = Limits {
            max_bulk_len: self.ctx.settings.max_bulk_len,
        };
        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut start = 0;
        loop {
            if start > 0 && start == buf.len() {
                buf.clear();
                start = 0;
            }
            if buf.len() - start < READ_CHUNK && buf.capacity() - buf.len() < READ_CHUNK {
                buf.drain(..start);
                start = 0;
                buf.reserve(READ_CHUNK);
            }
            let filled = buf.len();
            buf.resize(filled + READ_CHUNK, 0);
            let n = match stream.read(&mut buf[filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    buf.truncate(filled);
                    self.finish(&mut stream)?;
                    return Err(e);
                }
            };
            buf.truncate(filled + n);
            if n == 0 {
                // EOF, or the server shut our read side: finish what was read.
                return self.finish(&mut stream);
            }
            loop {
                match protocol::next_request(&buf[start..], limits) {
                    Ok(Some(req)) => {
                        let base = start;
                        start += req.consumed;
                        let args: Vec<&[u8]> = req
                            .args
                            .iter()
                            .map(|r| &buf[base + r.start..base + r.end])
                            .collect();
                        if args.is_empty() {
                            continue;
                        }
                        self.ctx
                            .stats
                            .total_commands_processed
                            .fetch_add(1, Ordering::Relaxed);
                        match commands::execute(self, &args) {
                            Flow::Continue => {}
                            Flow::Close => return self.finish(&mut stream),
                        }
                        if self.out.len() > MAX_HELD_OUTPUT {
                            self.settle_and_send(&mut stream)?;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.ctx
                            .stats
                            .protocol_errors
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "protocol error, closing connection");
                        let _ = self.settle();
                        reply::error(&mut self.out, &format!("ERR {e}"));
                        return self.send(&mut stream);
                    }
                }
            }
            self.settle_and_send(&mut stream)?;
        }
    }

    /// Settle pending writes and send everything, then end the connection.
    fn finish(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        self.settle_and_send(stream)
    }

    fn settle_and_send(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        if let Err(e) = self.settle() {
            // The replies of the unconfirmed writes are dropped: the client
            // must never read "OK" for them. It gets the error instead, and
            // the connection is closed because the pipeline's replies can no
            // longer be matched one to one.
            reply::error(&mut self.out, &e.to_string());
            self.send(stream)?;
            return Err(io::Error::other(e.to_string()));
        }
        self.send(stream)
    }

    fn send(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        if !self.out.is_empty() {
            stream.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Wait until every pending write meets its level. On failure, drop the
    /// replies that depend on it.
    pub fn settle(&mut self) -> Result<(), WriteError> {
        let Some(level) = self.pending.level.take() else {
            return Ok(());
        };
        let pending = std::mem::take(&mut self.pending);
        match self.ctx.backend.wait(pending.end, level) {
            Ok(()) => {
                if !pending.compact.is_empty() {
                    let keys: Vec<&[u8]> = pending.compact.iter().map(|k| k.as_slice()).collect();
                    self.ctx.backend.store().compact(&keys);
                }
                Ok(())
            }
            Err(e) => {
                self.out.truncate(pending.reply_mark);
                Err(e)
            }
        }
    }

    /// Note a write inserted at `end` whose reply is about to be appended.
    pub fn note_write(
        &mut self,
        end: Lsn,
        level: Level,
        compact: impl IntoIterator<Item = Vec<u8>>,
    ) {
        if self.pending.level.is_none() {
            self.pending.reply_mark = self.out.len();
        }
        self.pending.end = self.pending.end.max(end);
        self.pending.level = Some(self.pending.level.map_or(level, |l| l.max(level)));
        self.pending.compact.extend(compact);
        self.last_write_end = self.last_write_end.max(end);
    }

    pub fn has_pending(&self) -> bool {
        self.pending.level.is_some()
    }
}
