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
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{Config, SynchronousCommit};
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("READONLY You can't write against a read only replica.")]
    ReadOnly,
    /// The WAL cannot be made durable (fsync failed): the node refuses writes
    /// until it is restarted; nothing retries an fsync.
    #[error("ERR WAL write failed, the node refuses writes until it is restarted: {0}")]
    WalFailed(String),
    #[error("ERR the node is shutting down")]
    ShuttingDown,
    #[error("LOADING walrep is replaying WAL; reads are served once recovery is consistent")]
    NotConsistent,
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

/// Counters the front end keeps for INFO.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub connected_clients: AtomicU64,
    pub total_connections_received: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub total_commands_processed: AtomicU64,
    pub protocol_errors: AtomicU64,
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
    shutting_down: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
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
        settings: ServerSettings,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        let shutting_down = Arc::new(AtomicBool::new(false));
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
            let h =
                worker::WorkerHandle::start(i, ctx.clone(), shutting_down.clone(), gate.clone());
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
        let acceptor = Acceptor {
            listener,
            settings,
            shutting_down: shutting_down.clone(),
            workers: workers.clone(),
            stats: stats.clone(),
        };
        let accept_thread = std::thread::Builder::new()
            .name("redis-listener".into())
            .spawn(move || acceptor.run())?;
        Ok(Server {
            local_addr,
            shutting_down,
            accept_thread: Some(accept_thread),
            workers,
            stats,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting, let every connection finish the requests it has
    /// received (their commits complete or fail, their replies are sent,
    /// within a bound for clients that do not read), then close them.
    pub fn shutdown(&mut self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        // Wake the accept loop with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_millis(500));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
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

struct Acceptor {
    listener: TcpListener,
    settings: ServerSettings,
    shutting_down: Arc<AtomicBool>,
    /// Connections are handed to the workers in turn.
    workers: Arc<Vec<Mutex<worker::WorkerHandle>>>,
    stats: Arc<ServerStats>,
}

impl Acceptor {
    fn run(self) {
        let _span = tracing::info_span!("redis-listener", addr = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default()).entered();
        let mut next_id = 0u64;
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
            next_id += 1;
            self.admit(next_id, stream);
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
        if let Err(s) = lock(worker).accept(id, stream) {
            tracing::warn!("a worker loop is gone; refusing the connection");
            let _ = s.shutdown(Shutdown::Both);
            self.stats.connected_clients.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests;
