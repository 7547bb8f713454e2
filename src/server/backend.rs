//! What the front end knows of the node and of itself: the node through
//! [`Backend`] (its role, its store, WAL inserts and waits), the errors a
//! write can meet, the server's settings and counters. Everything in
//! `server/` stands on this file; it stands on nothing of `server/`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, SynchronousCommit};
use crate::security::roles::Roles;
use crate::security::tls::{self, TlsError};
use crate::store::{Level, Store};
use crate::Lsn;

/// What the node is right now, as far as clients are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    /// Answers reads (hot standby) and refuses writes.
    Standby,
    /// A standby not yet consistent: refuses reads (Redis's LOADING) and writes.
    Recovering,
}

/// Why a write was not accepted or not confirmed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("READONLY You can't write against a read only replica.")]
    ReadOnly,
    /// The WAL cannot be made durable (fsync failed): the node refuses writes
    /// until it is restarted; nothing retries an fsync.
    #[error("ERR WAL write failed; the node refuses writes, then recovers from its WAL and serves again (restart_after_crash): {0}")]
    WalFailed(crate::wal::WalError),
    #[error("ERR the node is shutting down")]
    ShuttingDown,
    /// The server ended every session before this write was confirmed
    /// (after a failure that stopped the WAL writer): whether the write
    /// survives depends on what crash recovery finds in the WAL.
    #[error("ERR {}; the write was not confirmed: it survives only if crash recovery finds it in the WAL; {}", .0.reason, .0.hint)]
    Terminated(Arc<Termination>),
    #[error("LOADING walrep is replaying WAL; reads are served once recovery is consistent")]
    NotConsistent,
    /// Under automatic failover this node does not hold a live leader
    /// lease (it is fenced): it admits no write, as a replica would not.
    #[error("READONLY You can't write against a fenced node: it does not hold the HA leader lease (another node may be the primary now)")]
    Fenced,
    /// The node was fenced while this write waited for its level: it is
    /// not acknowledged, and whether it survives depends on the next
    /// primary (as a cancelled synchronous wait in PostgreSQL).
    #[error("READONLY the node was fenced (it lost the HA leader lease) before this write was confirmed: it is not acknowledged and may or may not survive; retry against the current primary")]
    FencedUnconfirmed,
    /// The write waited for a promotion's control file update, which
    /// failed (the node is stopping) or did not finish in time: it is not
    /// acknowledged and may or may not survive.
    #[error("ERR the promotion could not be made durable before this write was confirmed: it is not acknowledged and may or may not survive")]
    PromotionUnfinished,
}

/// Why the server ends every session at once instead of letting them
/// finish (PostgreSQL's termination of every backend after a crash): each
/// client reads it as an error before its connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// What happened: "server is restarting after a WAL write failure: ...".
    pub reason: String,
    /// What the client can do: "reconnect in a moment".
    pub hint: String,
}

impl Termination {
    /// The error a client with no write in flight reads (as the reply to
    /// its command in progress, or before its next one), Redis style.
    pub fn error_text(&self) -> String {
        format!("ERR {}; {}", self.reason, self.hint)
    }
}

/// What the front end needs from the node.
pub trait Backend: Send + Sync + 'static {
    fn store(&self) -> &Store;
    fn role(&self) -> Role;
    /// Insert a key-value WAL record; returns its end LSN. Called with the
    /// store's write lock held, so WAL order is apply order.
    fn insert(&self, info: u8, payload: &[u8]) -> Result<Lsn, WriteError>;
    /// Block until the WAL up to `end` meets `level` (bounded by the node's
    /// own rules: a shutdown or WAL failure ends the wait with an error).
    fn wait(&self, end: Lsn, level: Level) -> Result<(), WriteError>;
    /// Like [`Backend::wait`], for a caller that serves other clients on
    /// the same thread: `Some(result)` if the node met (or failed) the
    /// level while taking no longer than a local WAL flush (it may flush
    /// inline, or join the flush in progress); `None` if meeting the level
    /// may take longer (a synchronous standby must confirm, or the
    /// implementation cannot tell): the caller then uses [`Backend::wait`]
    /// on a thread of its own.
    fn wait_local(&self, end: Lsn, level: Level) -> Option<Result<(), WriteError>> {
        let _ = (end, level);
        None
    }
    /// Like [`Backend::wait_local`], for every level: the local part is
    /// met inline (the caller may flush), and a wait for standbys is
    /// returned to the caller instead of blocking it
    /// ([`StartedWait::Pending`]): whoever ends it calls `notify`, and the
    /// caller then polls it. `None` if the implementation cannot wait that
    /// way (the caller then uses [`Backend::wait`] on a thread of its own).
    fn start_wait(&self, end: Lsn, level: Level, notify: &Notify) -> Option<StartedWait> {
        let _ = (end, level, notify);
        None
    }
    /// A commit up to `end` is about to be handed to another thread that
    /// flushes it and waits for standbys: start sending its WAL to them
    /// now if that costs no wait for the disk (see `Wal::write_ahead`).
    /// Failures are left to that thread's flush, which reports them.
    fn write_ahead(&self, end: Lsn) {
        let _ = end;
    }
    /// Commits at `synchronous_commit = off` were answered: wake whoever
    /// flushes them, or flush here if that thread is overdue and it costs
    /// no wait for another flush (see `Wal::after_async_commit`).
    /// Failures are the WAL's to report (it is poisoned).
    fn after_async_commit(&self) {}
    /// Whether `synchronous_standby_names` names any standby.
    fn sync_standbys_defined(&self) -> bool;
    /// The node's current configuration (CONFIG GET, defaults of sessions).
    fn config(&self) -> Arc<Config>;
    /// A section of INFO the node owns (`server`, `persistence`,
    /// `replication`, ...): `None` if it has no such section.
    fn info_section(&self, name: &str) -> Option<String>;
    /// WAIT: how many standbys have acknowledged WAL up to `upto`, waiting
    /// up to `timeout` for `wanted` of them.
    fn wait_replicas(&self, upto: Lsn, wanted: usize, timeout: Duration) -> usize;
    /// WAITAOF's local part: whether WAL up to `upto` is durable here,
    /// waiting up to `timeout` for the flushes the node does anyway (this
    /// does not flush; at `synchronous_commit = off` the WAL writer's
    /// next flush covers it, as Redis's `appendfsync everysec`).
    fn wait_flushed(&self, upto: Lsn, timeout: Duration) -> bool;
}

/// Called by whichever thread ends a [`PendingWait`] (a standby's reply
/// read on the primary, a shutdown): wakes the thread that owns the wait.
/// It must be quick and take no lock of the node.
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// What [`Backend::start_wait`] did.
pub enum StartedWait {
    /// The level was met (or failed) already.
    Done(Result<(), WriteError>),
    /// Flushed here; the standbys have yet to confirm.
    Pending(Box<dyn PendingWait>),
}

/// A write waiting for its level without a thread of its own.
pub trait PendingWait: Send {
    /// `Some(result)` once the wait is over. Call it after each notify, and
    /// at least every 100 ms while it goes on (timeouts are checked here).
    fn poll(&self) -> Option<Result<(), WriteError>>;
}

/// Counters the front end keeps for INFO.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub connected_clients: AtomicU64,
    pub total_connections_received: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub total_commands_processed: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Bytes held in every client's query and reply buffers
    /// (`maxmemory_clients` bounds it).
    pub client_buffer_bytes: AtomicU64,
    /// Clients closed for a limit: idle `timeout`, query buffer, memory.
    pub evicted_clients: AtomicU64,
    /// WAIT commands running (each on a thread of its own).
    pub waits_in_progress: AtomicU64,
}

/// Connection-independent settings of the front end.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub max_connections: u32,
    /// `log_connections`: log each accepted client at info.
    pub log_connections: bool,
    /// `log_disconnections`: log each closed client at info, with its duration.
    pub log_disconnections: bool,
    pub max_bulk_len: u64,
    pub default_synchronous_commit: SynchronousCommit,
    /// Who may log in, and to do what.
    pub roles: Arc<Roles>,
    /// `protected_mode`: no password for the default user => loopback only.
    pub protected_mode: bool,
    /// `tls_port` and its configuration (`None`: no TLS listener).
    pub tls: Option<(u16, Arc<rustls::ServerConfig>)>,
    /// `timeout`: close a client that completed no request for this long.
    pub idle_timeout: Option<Duration>,
    /// `client_query_buffer_limit`.
    pub max_query_buffer: usize,
    /// `client_output_buffer_limit`: most bytes one reply may take.
    pub max_reply_bytes: usize,
    /// `maxmemory_clients`.
    pub maxmemory_clients: u64,
}

impl ServerSettings {
    /// The front end's settings from a node's configuration; TLS files are
    /// relative to `datadir`, and a certificate or key that does not load
    /// is an error.
    pub fn from_config(c: &Config, datadir: &std::path::Path) -> Result<ServerSettings, TlsError> {
        let or = |tls_file: &str, ssl_file: &str| {
            datadir.join(if tls_file.is_empty() {
                ssl_file
            } else {
                tls_file
            })
        };
        let tls = match c.tls_port {
            0 => None,
            port => Some((
                port,
                tls::server_config(tls::ServerFiles {
                    cert_param: "tls_cert_file",
                    cert: &or(&c.tls_cert_file, &c.ssl_cert_file),
                    key_param: "tls_key_file",
                    key: &or(&c.tls_key_file, &c.ssl_key_file),
                    client_ca: None,
                })?,
            )),
        };
        let bytes = |s: crate::config::Size, default: u64| s.bytes().unwrap_or(default);
        Ok(ServerSettings {
            max_connections: c.max_connections,
            log_connections: c.log_connections.0,
            log_disconnections: c.log_disconnections.0,
            max_bulk_len: bytes(c.proto_max_bulk_len, 64 << 20),
            default_synchronous_commit: c.synchronous_commit,
            roles: Arc::new(Roles::new(&c.roles, &c.requirepass)),
            protected_mode: c.protected_mode.0,
            tls,
            idle_timeout: c.timeout.get().filter(|d| !d.is_zero()),
            max_query_buffer: bytes(c.client_query_buffer_limit, 1 << 30) as usize,
            max_reply_bytes: bytes(c.client_output_buffer_limit, 512 << 20) as usize,
            maxmemory_clients: bytes(c.maxmemory_clients, 2 << 30),
        })
    }

    /// Settings for tests of the front end: the defaults of an empty
    /// configuration with these few chosen.
    #[cfg(test)]
    pub fn for_tests(max_connections: u32, max_bulk_len: u64) -> ServerSettings {
        let mut s = ServerSettings::from_config(&Config::default(), std::path::Path::new("."))
            .expect("no TLS files to load");
        s.max_connections = max_connections;
        s.max_bulk_len = max_bulk_len;
        s.log_connections = true;
        s.log_disconnections = true;
        s
    }
}
