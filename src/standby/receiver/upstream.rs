//! The upstream connection while WAL streams: a reader thread turns the
//! socket's input into [`Incoming`] messages on a bounded channel, so the
//! session thread waits on the upstream, its control wake-ups, the replay
//! position (for replies) and its timers at once, with one `select!`.
//!
//! A reader thread rather than mio with a `Waker` (as the Redis workers
//! use): everything else the session waits for arrives as crossbeam
//! channel tokens (its control, the replay position's `Watch`), which
//! `select!` waits on together and mio cannot; the walsender reads its
//! client the same way. The thread also reads the next messages while the
//! session writes and fsyncs the previous ones.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver};

use crate::replication::client::{ClientError, ReplicationClient, StreamEvent};

/// Messages read ahead of the session: 64 XLogData messages of at most
/// 128 kB (8 MB); a full queue pushes back on the upstream via TCP.
const INCOMING_QUEUE: usize = 64;

/// What the reader thread delivers.
#[derive(Debug)]
pub(super) enum Incoming {
    Event(StreamEvent),
    /// Reading failed; the reader has stopped.
    Failed(ClientError),
}

impl Incoming {
    /// The last message of a COPY: the reader stops after it.
    fn ends_stream(&self) -> bool {
        matches!(
            self,
            Incoming::Failed(_)
                | Incoming::Event(StreamEvent::EndOfTimeline { .. } | StreamEvent::ServerShutdown)
        )
    }
}

/// The reader thread of one START_REPLICATION.
pub(super) struct Reader {
    incoming: Receiver<Incoming>,
    /// Another handle on the socket, to end a blocked read.
    socket: TcpStream,
    /// Returns the connection when the reader stops.
    thread: JoinHandle<ReplicationClient>,
}

impl Reader {
    /// Read `client`'s stream on a new thread. `read_bound` bounds each
    /// read; a read that times out is delivered as `StreamEvent::Timeout`
    /// (the session keeps its own clock).
    pub fn spawn(
        mut client: ReplicationClient,
        read_bound: Duration,
        session: u64,
    ) -> io::Result<Reader> {
        let socket = client.socket_handle()?;
        let (tx, incoming) = bounded(INCOMING_QUEUE);
        let thread = std::thread::Builder::new()
            .name(format!("walreceiver-rd-{session}"))
            .spawn(move || loop {
                let msg = match client.recv(read_bound) {
                    Ok(ev) => Incoming::Event(ev),
                    Err(e) => Incoming::Failed(e),
                };
                let last = msg.ends_stream();
                if tx.send(msg).is_err() || last {
                    return client;
                }
            })?;
        Ok(Reader {
            incoming,
            socket,
            thread,
        })
    }

    /// The messages, for `select!`.
    pub fn incoming(&self) -> &Receiver<Incoming> {
        &self.incoming
    }

    /// The stream ended (timeline end, server shutdown or a failure was
    /// delivered): take the connection back. After a timeline end it is
    /// in command mode, ready for the next START_REPLICATION.
    pub fn finish(self) -> Option<ReplicationClient> {
        drop(self.incoming);
        self.thread.join().ok()
    }

    /// Stop reading now: a blocked read is ended by shutting the socket's
    /// read side; the connection comes back only to say goodbye.
    pub fn abort(self) -> Option<ReplicationClient> {
        drop(self.incoming);
        let _ = self.socket.shutdown(Shutdown::Read);
        self.thread.join().ok()
    }
}
