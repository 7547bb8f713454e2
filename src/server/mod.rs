//! The Redis-protocol (RESP2 and RESP3) front end: listener, sessions,
//! commands.
//!
//! # Layout
//! - [`protocol`]: request framing (with limits) and reply encoding.
//! - [`worker`]: an event loop (mio) serving many connections; it settles
//!   the pending writes of a whole pass with one wait.
//! - [`conn`]: one connection on a worker: reads, request execution, replies.
//! - [`session`]: a connection's state as the commands see it, and its
//!   writes waiting for their durability level.
//! - [`command`]: requests parsed into typed commands, then executed.
//! - [`clients`]: the open connections, for CLIENT LIST and CLIENT KILL.
//! - [`expire`]: the primary's deletion of expired keys (on access and in
//!   a bounded background cycle).
//!
//! The server does not know whether it runs on a primary or a standby, nor
//! how WAL is written: it talks to the node through [`Backend`], so it can be
//! tested against a fake and so promotion changes its behaviour at runtime.

pub mod clients;
pub mod command;
pub mod conn;
pub mod expire;
pub mod protocol;
pub mod session;
pub mod worker;

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
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

/// Worker loops of a server: one per two cores (at most 4). Measured on
/// the 2-core machine (docs/benchmarks.md): one loop gathers twice the
/// commits per fdatasync of two (46 vs 30 at 64 clients) and spends less
/// CPU per request (10 vs 12 us), so it wins both when the disk is the
/// limit and when the CPU is. Overridden by `WALREP_IO_THREADS` (1..=16)
/// for experiments.
fn worker_count() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let default = (cores / 2).clamp(1, 4);
    std::env::var("WALREP_IO_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=16).contains(n))
        .unwrap_or(default)
}

/// A running front end: its accept thread and its worker loops.
pub struct Server {
    local_addr: SocketAddr,
    /// The TLS listener's address (`tls_port`).
    tls_addr: Option<SocketAddr>,
    shutting_down: Arc<AtomicBool>,
    /// Set by [`Server::begin_termination`]: the workers answer every
    /// session with this error and close it.
    terminating: Arc<OnceLock<Arc<Termination>>>,
    accept_thread: Option<JoinHandle<()>>,
    tls_accept_thread: Option<JoinHandle<()>>,
    workers: Arc<Vec<Mutex<worker::WorkerHandle>>>,
    /// The counters its sessions keep (read by the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub stats: Arc<ServerStats>,
}

impl Server {
    /// Bind `addr`, start the worker loops and accept connections.
    pub fn start(
        addr: SocketAddr,
        backend: Arc<dyn Backend>,
        mut settings: ServerSettings,
    ) -> io::Result<Server> {
        settings.max_connections = fit_descriptors(settings.max_connections);
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        let tls_listener = match &settings.tls {
            Some((port, _)) => Some(TcpListener::bind(SocketAddr::new(addr.ip(), *port))?),
            None => None,
        };
        let tls_addr = tls_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let shutting_down = Arc::new(AtomicBool::new(false));
        let terminating = Arc::new(OnceLock::new());
        let stats = Arc::new(ServerStats::default());
        let ctx = session::SessionContext {
            backend,
            settings: settings.clone(),
            stats: stats.clone(),
            scans: Arc::new(command::scan::ScanCursors::new()),
            clients: Arc::new(clients::ClientRegistry::default()),
        };
        let mut handles = Vec::new();
        let gate = Arc::new(worker::FlushGate::default());
        for i in 0..worker_count() {
            let flags = worker::StopFlags {
                shutting_down: shutting_down.clone(),
                terminating: terminating.clone(),
            };
            let h = worker::WorkerHandle::start(i, ctx.clone(), flags, gate.clone());
            match h {
                Ok(h) => handles.push(Mutex::new(h)),
                Err(e) => {
                    shutting_down.store(true, Ordering::SeqCst);
                    for h in &handles {
                        let mut h = lock(h);
                        h.wake();
                        h.join();
                    }
                    return Err(e);
                }
            }
        }
        let _ = gate
            .wakers
            .set(handles.iter().map(|h| lock(h).waker()).collect());
        let workers = Arc::new(handles);
        let next_id = Arc::new(AtomicU64::new(0));
        let acceptor = |listener, tls| Acceptor {
            listener,
            tls,
            settings: settings.clone(),
            shutting_down: shutting_down.clone(),
            workers: workers.clone(),
            stats: stats.clone(),
            next_id: next_id.clone(),
        };
        let plain = acceptor(listener, false);
        let accept_thread = std::thread::Builder::new()
            .name("redis-listener".into())
            .spawn(move || plain.run())?;
        let tls_accept_thread = match tls_listener {
            Some(l) => {
                let tls = acceptor(l, true);
                Some(
                    std::thread::Builder::new()
                        .name("redis-tls-listener".into())
                        .spawn(move || tls.run())?,
                )
            }
            None => None,
        };
        Ok(Server {
            local_addr,
            tls_addr,
            shutting_down,
            terminating,
            accept_thread: Some(accept_thread),
            tls_accept_thread,
            workers,
            stats,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TLS listener's address, when `tls_port` is set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// End every session at once with `why` (PostgreSQL's termination of
    /// backends after a crash): a client waiting for a write gets it as
    /// that write's reply, any other client as an error before its
    /// connection is closed. Unread requests are not run. The caller then
    /// releases what the writes wait for and calls [`Server::shutdown`].
    pub fn begin_termination(&self, why: Termination) {
        let _ = self.terminating.set(Arc::new(why));
        for w in self.workers.iter() {
            lock(w).wake();
        }
    }

    /// Stop accepting, let every connection finish the requests it has
    /// received (their commits complete or fail, their replies are sent,
    /// within a bound for clients that do not read), then close them.
    pub fn shutdown(&mut self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        // Wake the accept loops with a connection of our own.
        for (addr, thread) in [
            (Some(self.local_addr), self.accept_thread.take()),
            (self.tls_addr, self.tls_accept_thread.take()),
        ] {
            let (Some(addr), Some(thread)) = (addr, thread) else {
                continue;
            };
            let mut wake = addr;
            if wake.ip().is_unspecified() {
                wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let _ = TcpStream::connect_timeout(&wake, Duration::from_millis(500));
            let _ = thread.join();
        }
        for w in self.workers.iter() {
            lock(w).wake();
        }
        for w in self.workers.iter() {
            lock(w).join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.accept_thread.is_some() {
            self.shutdown();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Descriptors kept for everything but clients (WAL segments, the
/// replication port, archive commands), as Redis keeps 32 + a margin.
const RESERVED_DESCRIPTORS: u64 = 256;

/// Raise the open-file limit as far as allowed, and lower
/// `max_connections` if the limit cannot hold it plus the reserve (Redis
/// does both): clients must never take the descriptors the WAL needs.
fn fit_descriptors(max_connections: u32) -> u32 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write one rlimit through valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return max_connections;
        }
        let wanted = u64::from(max_connections) + RESERVED_DESCRIPTORS;
        if lim.rlim_cur < wanted {
            let raised = libc::rlimit {
                rlim_cur: (wanted as libc::rlim_t).min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = raised.rlim_cur;
            }
        }
    }
    let room = lim.rlim_cur.saturating_sub(RESERVED_DESCRIPTORS).max(1);
    if room < u64::from(max_connections) {
        tracing::warn!(
            max_connections,
            open_files_limit = lim.rlim_cur,
            "max_connections lowered to {room}: the open-file limit cannot hold more clients and the node's own files"
        );
        return room as u32;
    }
    max_connections
}

struct Acceptor {
    listener: TcpListener,
    /// Connections of this listener speak TLS (`tls_port`).
    tls: bool,
    settings: ServerSettings,
    shutting_down: Arc<AtomicBool>,
    /// Connections are handed to the workers in turn.
    workers: Arc<Vec<Mutex<worker::WorkerHandle>>>,
    stats: Arc<ServerStats>,
    /// Connection ids, shared by both listeners.
    next_id: Arc<AtomicU64>,
}

impl Acceptor {
    fn run(self) {
        let _span = tracing::info_span!("redis-listener", addr = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default()).entered();
        for conn in self.listener.incoming() {
            if self.shutting_down.load(Ordering::SeqCst) {
                break;
            }
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
            self.admit(id, stream);
        }
    }

    fn admit(&self, id: u64, stream: TcpStream) {
        self.stats
            .total_connections_received
            .fetch_add(1, Ordering::Relaxed);
        let open = self.stats.connected_clients.load(Ordering::SeqCst);
        if open >= self.settings.max_connections as u64 || self.workers.is_empty() {
            self.stats
                .rejected_connections
                .fetch_add(1, Ordering::Relaxed);
            let mut s = stream;
            let _ = io::Write::write_all(&mut s, b"-ERR max number of clients reached\r\n");
            return;
        }
        self.stats.connected_clients.fetch_add(1, Ordering::SeqCst);
        let worker = &self.workers[(id as usize) % self.workers.len()];
        if let Err(s) = lock(worker).accept(id, stream, self.tls) {
            tracing::warn!("a worker loop is gone; refusing the connection");
            let _ = s.shutdown(Shutdown::Both);
            self.stats.connected_clients.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests;
