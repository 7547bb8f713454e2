//! The Redis-protocol (RESP2 and RESP3) front end: listener, sessions,
//! commands.
//!
//! # Layout
//! - [`backend`]: the node as the front end sees it ([`Backend`]), a
//!   write's errors, the settings and counters.
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

pub mod backend;
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

pub use backend::{
    Backend, Notify, PendingWait, Role, ServerSettings, ServerStats, StartedWait, Termination,
    WriteError,
};

/// Worker loops of a server: one per two cores (at most 4). Measured on
/// the 2-core machine (docs/benchmarks/commit.md, "What changed, and
/// why"): one loop gathers twice the commits per fdatasync of two (46 vs
/// 30 at 64 clients) and spends less CPU per request (10 vs 12 us), so it
/// wins both when the disk is the limit and when the CPU is. Overridden
/// by `WALREP_IO_THREADS` (1..=16) for experiments.
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
