//! An authenticated replication connection's state, shared by the
//! commands it runs (see `serve` for its life: startup, the walsender slot,
//! the command loop), and why a command did not complete.

use std::sync::Arc;

use crossbeam_channel::Receiver;

use super::conn::{ClientEvent, Conn, StatusWake};
use super::Ctx;
use crate::replication::registry::WalSenderHandle;
use crate::replication::sqlstate::PgError;

/// Why a command did not complete normally.
pub(super) enum Failure {
    /// Report to the client; FATAL also ends the connection.
    Error(PgError),
    /// The connection is over (client gone, timeout, shutdown done).
    Gone(String),
}

impl From<PgError> for Failure {
    fn from(e: PgError) -> Self {
        Failure::Error(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Gone(format!("could not send data to client: {e}"))
    }
}

/// An authenticated replication connection.
pub(super) struct Session<S> {
    pub ctx: Arc<Ctx<S>>,
    pub conn: Conn,
    /// Messages from the reader thread.
    pub rx: Receiver<ClientEvent>,
    /// Which status updates the reader thread wakes this one for.
    pub status_wake: StatusWake,
    /// This connection's walsender entry (its id is our "pid").
    pub handle: WalSenderHandle,
    /// A walrep standby that honours the flush position it is told: it is
    /// sent WAL as soon as it is written (see `Client::receive_unflushed`).
    pub receive_unflushed: bool,
    /// The standby reports its apply position at once only when told a
    /// commit waits for it (see `Client::apply_feedback_on_request`).
    pub apply_feedback_on_request: bool,
    /// The standby is told in keepalives whether a commit may wait for
    /// its flush (see `Client::flush_hint`).
    pub flush_hint: bool,
}
