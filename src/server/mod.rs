//! The Redis-protocol (RESP2) front end: listener, sessions, commands.
//!
//! # Layout
//! - [`protocol`]: request framing (with limits) and reply encoding.
//! - [`session`]: one connection: read, execute, wait for durability, reply.
//! - [`commands`]: the command table.
//!
//! The server does not know whether it runs on a primary or a standby, nor
//! how WAL is written: it talks to the node through [`Backend`], so it can be
//! tested against a fake and so promotion changes its behaviour at runtime.

pub mod commands;
pub mod protocol;
pub mod session;

use std::collections::HashMap;
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
    pub max_bulk_len: u64,
    pub default_synchronous_commit: SynchronousCommit,
}

/// A running front end: its accept thread and the open connections.
pub struct Server {
    local_addr: SocketAddr,
    shutting_down: Arc<AtomicBool>,
    connections: Arc<Mutex<HashMap<u64, TcpStream>>>,
    accept_thread: Option<JoinHandle<()>>,
    sessions: Arc<Mutex<Vec<JoinHandle<()>>>>,
    pub stats: Arc<ServerStats>,
}

impl Server {
    /// Bind `addr` and start accepting connections.
    pub fn start(
        addr: SocketAddr,
        backend: Arc<dyn Backend>,
        settings: ServerSettings,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        let shutting_down = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(HashMap::new()));
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(ServerStats::default());
        let acceptor = Acceptor {
            listener,
            backend,
            settings,
            shutting_down: shutting_down.clone(),
            connections: connections.clone(),
            sessions: sessions.clone(),
            stats: stats.clone(),
        };
        let accept_thread = std::thread::Builder::new()
            .name("redis-listener".into())
            .spawn(move || acceptor.run())?;
        Ok(Server {
            local_addr,
            shutting_down,
            connections,
            accept_thread: Some(accept_thread),
            sessions,
            stats,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting, let every session finish the commands it has read
    /// (their commits complete or fail), then close them.
    pub fn shutdown(&mut self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        // Wake the accept loop with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_millis(500));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        for s in lock(&self.connections).values() {
            let _ = s.shutdown(Shutdown::Read);
        }
        let sessions = std::mem::take(&mut *lock(&self.sessions));
        for s in sessions {
            let _ = s.join();
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
    backend: Arc<dyn Backend>,
    settings: ServerSettings,
    shutting_down: Arc<AtomicBool>,
    /// Clones of every open connection, so shutdown can end their reads.
    connections: Arc<Mutex<HashMap<u64, TcpStream>>>,
    sessions: Arc<Mutex<Vec<JoinHandle<()>>>>,
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
        if open >= self.settings.max_connections as u64 {
            self.stats
                .rejected_connections
                .fetch_add(1, Ordering::Relaxed);
            let mut s = stream;
            let _ = io::Write::write_all(&mut s, b"-ERR max number of clients reached\r\n");
            return;
        }
        let Ok(clone) = stream.try_clone() else {
            return;
        };
        lock(&self.connections).insert(id, clone);
        self.stats.connected_clients.fetch_add(1, Ordering::SeqCst);
        let ctx = session::SessionContext {
            backend: self.backend.clone(),
            settings: self.settings.clone(),
            stats: self.stats.clone(),
        };
        let connections = self.connections.clone();
        let stats = self.stats.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("client-{id}"))
            .spawn(move || {
                session::run(id, stream, ctx);
                lock(&connections).remove(&id);
                stats.connected_clients.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(h) => {
                let mut sessions = lock(&self.sessions);
                sessions.retain(|h| !h.is_finished());
                sessions.push(h);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not start a session thread");
                lock(&self.connections).remove(&id);
                self.stats.connected_clients.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests;
