//! One client's state as the commands see it: its output buffer, its
//! settings and the writes whose replies are held back until durable.
//!
//! No IO here: the connection ([`super::conn`]) feeds requests in and sends
//! `out`; the worker loop ([`super::worker`]) settles pending writes.
//!
//! Pipelined writes are inserted one after another and their replies held
//! back until the last of them meets its durability level, so a pipeline of
//! writes costs one wait (and, through group commit, shares fdatasyncs with
//! every other session). Before any other command the connection settles
//! its pending writes, so a client always reads its own writes and never
//! sees an "OK" for a write that did not meet its level.

use std::sync::Arc;

use super::backend::{Backend, ServerSettings, ServerStats, WriteError};
use super::clients::{ClientInfo, ClientRegistry};
use super::command::queued::Multi;
use super::command::scan::ScanCursors;
use super::protocol::reply::Reply;
use crate::config::SynchronousCommit;
use crate::store::{Level, Stamp};
use crate::Lsn;

/// What every session of one server shares.
pub struct SessionContext {
    pub backend: Arc<dyn Backend>,
    pub settings: ServerSettings,
    pub stats: Arc<ServerStats>,
    /// Where SCANs resume: shared, since a client may continue a scan on
    /// another connection.
    pub scans: Arc<ScanCursors>,
    /// Every open connection (CLIENT LIST, CLIENT KILL).
    pub clients: Arc<ClientRegistry>,
}

impl Clone for SessionContext {
    fn clone(&self) -> Self {
        SessionContext {
            backend: self.backend.clone(),
            settings: self.settings.clone(),
            stats: self.stats.clone(),
            scans: self.scans.clone(),
            clients: self.clients.clone(),
        }
    }
}

/// Who a connection is logged in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub name: String,
    pub access: crate::config::RedisAccess,
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
    /// Replies not sent yet; those from `pending.reply_mark` on wait for
    /// their writes to be confirmed.
    pub out: Vec<u8>,
    /// `CONFIG SET synchronous_commit` changes it for this connection only.
    pub synchronous_commit: SynchronousCommit,
    /// `HELLO 3` switched the connection to RESP3.
    pub resp3: bool,
    /// This connection in CLIENT LIST (its name lives there).
    pub client: Arc<ClientInfo>,
    /// A MULTI in progress: its queue.
    pub multi: Option<Multi>,
    /// WATCHed keys and what they were then.
    pub watched: Vec<(Vec<u8>, Stamp)>,
    /// End of this connection's last write (WAIT waits for it).
    pub last_write_end: Lsn,
    /// `None` until AUTH (or HELLO AUTH) succeeds; a passwordless default
    /// user logs every connection in at once, as in Redis.
    pub user: Option<AuthUser>,
    pending: Pending,
}

impl Session {
    /// A session for the connection `client`, registered in the server's
    /// client list until it is dropped.
    pub fn new(client: Arc<ClientInfo>, ctx: SessionContext) -> Session {
        let sc = ctx.settings.default_synchronous_commit;
        let roles = &ctx.settings.roles;
        let user = roles.default_needs_no_password().then(|| AuthUser {
            name: crate::security::roles::DEFAULT_USER.into(),
            access: roles.default_access(),
        });
        ctx.clients.add(client.clone());
        Session {
            user,
            id: client.id,
            ctx,
            out: Vec::with_capacity(256),
            synchronous_commit: sc,
            resp3: false,
            client,
            multi: None,
            watched: Vec::new(),
            last_write_end: Lsn::INVALID,
            pending: Pending::default(),
        }
    }

    /// Replies in this connection's protocol.
    pub fn reply(&mut self) -> Reply<'_> {
        Reply {
            out: &mut self.out,
            resp3: self.resp3,
        }
    }

    pub fn in_multi(&self) -> bool {
        self.multi.is_some()
    }

    /// Note a write inserted at `end` whose reply starts at `mark` in
    /// `out` (it may already be appended).
    pub fn note_write(
        &mut self,
        mark: usize,
        end: Lsn,
        level: Level,
        compact: impl IntoIterator<Item = Vec<u8>>,
    ) {
        if self.pending.level.is_none() {
            self.pending.reply_mark = mark.min(self.out.len());
        }
        self.pending.end = self.pending.end.max(end);
        self.pending.level = Some(self.pending.level.map_or(level, |l| l.max(level)));
        self.pending.compact.extend(compact);
        self.last_write_end = self.last_write_end.max(end);
    }

    pub fn has_pending(&self) -> bool {
        self.pending.level.is_some()
    }

    /// What the pending writes wait for: the end of the last one and the
    /// highest level asked.
    pub fn pending_wait(&self) -> Option<(Lsn, Level)> {
        self.pending.level.map(|l| (self.pending.end, l))
    }

    /// Bytes of `out` that may be sent now (replies before the first
    /// unconfirmed write).
    pub fn sendable(&self) -> usize {
        match self.pending.level {
            Some(_) => self.pending.reply_mark,
            None => self.out.len(),
        }
    }

    /// `n` bytes of `out` were sent.
    pub fn consume_out(&mut self, n: usize) {
        self.out.drain(..n);
        if self.pending.level.is_some() {
            self.pending.reply_mark -= n;
        }
    }

    /// The pending writes met their level (`Ok`): their replies may go, and
    /// the keys they superseded are appended to `compact`. Or they could
    /// not (`Err`): their replies are dropped — the client must never read
    /// "OK" for them — and the error takes their place.
    ///
    /// Returns true when the connection must be closed after its output is
    /// sent: after a failure the pipeline's replies no longer match its
    /// requests one to one.
    pub fn confirm(&mut self, result: &Result<(), WriteError>, compact: &mut Vec<Vec<u8>>) -> bool {
        let pending = std::mem::take(&mut self.pending);
        if pending.level.is_none() {
            return false;
        }
        match result {
            Ok(()) => {
                compact.extend(pending.compact);
                false
            }
            Err(e) => {
                self.out.truncate(pending.reply_mark);
                super::protocol::reply::error(&mut self.out, &e.to_string());
                true
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.ctx.clients.remove(self.id);
    }
}
