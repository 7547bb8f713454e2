//! The replication listener: accepts connections on `replication_port`,
//! runs one session thread per connection (bounded by `max_wal_senders`
//! after authentication, and apart from them by `max_startup_connections`
//! while authenticating: a full startup pool closes its oldest member for
//! a newcomer, so sockets held open cannot lock a standby out), and stops
//! them all on shutdown.
//!
//! Entry point: [`spawn`] with a [`ReplicationSource`] the node implements.

mod conn;
mod exec;
mod pool;
mod serve;
mod session;
mod startup;
mod walrange;
mod walsender;

#[cfg_attr(not(feature = "fuzzing"), allow(unused_imports))]
pub(crate) use startup::hba_lookup;
pub(crate) use startup::{format_chain, format_instance_id, parse_history_id_parameter};
pub use startup::{
    APPLY_FEEDBACK_ON_REQUEST, APPLY_FEEDBACK_PARAMETER, FLUSH_HINT_PARAMETER,
    HISTORY_ID_PARAMETER, INSTANCE_ID_PARAMETER, RECEIVE_UNFLUSHED_PARAMETER,
    UPSTREAM_CHAIN_PARAMETER,
};

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::pgwire::DEFAULT_MAX_MESSAGE_LEN;
use super::registry::WalSenderRegistry;
use super::slots::SlotManager;
use super::source::ReplicationSource;
use super::sqlstate::PgError;
use crate::config::{Config, HbaEntry};
use crate::security::roles::Roles;
use crate::security::tls::{self, TlsError};

/// What the replication server needs from the configuration.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Replication connections allowed at once (`max_wal_senders`).
    pub max_wal_senders: usize,
    /// Allow-list, first match decides (`hba`).
    pub hba: Vec<HbaEntry>,
    /// Roles: verifiers for scram-sha-256 and the replication attribute.
    pub roles: Arc<Roles>,
    /// TLS (`ssl`): SSLRequest is answered `S` and the handshake follows.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections still authenticating at once (`max_startup_connections`).
    pub max_startup_connections: usize,
    /// Silence after which a walsender gives up; `None` = never.
    pub wal_sender_timeout: Option<Duration>,
    /// Least time between two messages to an asynchronous walrep standby
    /// (`wal_sender_async_delay`; zero: each flush at once).
    pub wal_sender_async_delay: Duration,
    /// Time allowed for the startup packet and authentication
    /// (PostgreSQL's authentication_timeout).
    pub authentication_timeout: Duration,
    /// Largest frontend message accepted.
    pub max_message_len: usize,
    /// `server_version` reported; must start with "15." for PostgreSQL 15
    /// clients (pg_receivewal refuses newer majors than its own).
    pub server_version: String,
    /// How long shutdown waits for streaming clients to confirm what was
    /// sent before their connections are closed anyway.
    pub shutdown_timeout: Duration,
    /// This node's instance identifier, sent as the `walrep_instance_id`
    /// ParameterStatus (PostgreSQL clients ignore unknown parameters) so a
    /// walreceiver can tell it is connected to its own node.
    pub instance_id: u64,
    /// This node's status address, sent as the `walrep_status_url`
    /// ParameterStatus so a downstream's page can link to this node's.
    pub status_url: Option<String>,
}

impl ServerOptions {
    /// The options of a node's configuration; certificate paths are
    /// relative to `datadir`. A certificate or key that does not load is
    /// an error (the node refuses to start).
    pub fn from_config(c: &Config, datadir: &Path) -> Result<ServerOptions, TlsError> {
        let tls = match c.ssl.0 {
            false => None,
            true => Some(tls::server_config(tls::ServerFiles {
                cert_param: "ssl_cert_file",
                cert: &datadir.join(&c.ssl_cert_file),
                key_param: "ssl_key_file",
                key: &datadir.join(&c.ssl_key_file),
                client_ca: (!c.ssl_ca_file.is_empty())
                    .then(|| datadir.join(&c.ssl_ca_file))
                    .as_deref(),
            })?),
        };
        Ok(ServerOptions {
            max_wal_senders: c.max_wal_senders as usize,
            hba: c.hba.clone(),
            roles: Arc::new(Roles::new(&c.roles, &c.requirepass)),
            tls,
            max_startup_connections: c.max_startup_connections as usize,
            wal_sender_timeout: c.wal_sender_timeout.get().filter(|d| !d.is_zero()),
            wal_sender_async_delay: c.wal_sender_async_delay.get().unwrap_or_default(),
            authentication_timeout: c
                .authentication_timeout
                .get()
                .unwrap_or(Duration::from_secs(60)),
            status_url: crate::status::links::own_status_url(c),
            ..ServerOptions::default()
        })
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        let c = Config::default();
        ServerOptions {
            max_wal_senders: c.max_wal_senders as usize,
            hba: c.hba,
            roles: Arc::new(Roles::new(&[], "")),
            tls: None,
            max_startup_connections: c.max_startup_connections as usize,
            wal_sender_timeout: c.wal_sender_timeout.get(),
            wal_sender_async_delay: c.wal_sender_async_delay.get().unwrap_or_default(),
            authentication_timeout: c
                .authentication_timeout
                .get()
                .unwrap_or(Duration::from_secs(60)),
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            server_version: format!("15.0 (walrep {})", env!("CARGO_PKG_VERSION")),
            shutdown_timeout: Duration::from_secs(10),
            instance_id: rand::random(),
            status_url: None,
        }
    }
}

/// Everything a session shares with the server.
pub(crate) struct Ctx<S> {
    source: Arc<S>,
    options: ServerOptions,
    registry: Arc<WalSenderRegistry>,
    slots: Arc<SlotManager>,
    /// Never sent on: dropped at shutdown, so every receiver sees
    /// "disconnected" at once.
    shutdown_rx: Receiver<()>,
    stopping: AtomicBool,
    /// Set by [`ServerHandle::terminate`]: every session ends at once with
    /// this FATAL instead of the shutdown handshake.
    terminated: OnceLock<PgError>,
    /// Connections open (authenticated or not): a safety bound on threads.
    connections: AtomicUsize,
    /// Connections still authenticating, oldest first.
    startup: pool::StartupPool,
}

/// Session threads beyond `max_wal_senders + max_startup_connections`
/// tolerated at once (evicted or refused ones on their way out).
const THREAD_MARGIN: usize = 8;

/// A running replication server.
pub struct ServerHandle {
    addr: SocketAddr,
    registry: Arc<WalSenderRegistry>,
    shutdown_tx: Option<Sender<()>>,
    ctx_stopping: Arc<dyn Fn() + Send + Sync>,
    /// Sets the sessions' termination error (see [`ServerHandle::terminate`]).
    ctx_terminate: Arc<dyn Fn(PgError) + Send + Sync>,
    accept: Option<JoinHandle<()>>,
    sessions: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Disconnected once the listener and every session thread are gone
    /// (each holds a sender), so shutdown waits without polling.
    done_rx: Receiver<()>,
    shutdown_timeout: Duration,
}

/// Start serving replication connections on `listener` from `source`.
pub fn spawn<S: ReplicationSource>(
    listener: TcpListener,
    source: Arc<S>,
    slots: Arc<SlotManager>,
    registry: Arc<WalSenderRegistry>,
    options: ServerOptions,
) -> io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded(0);
    let shutdown_timeout = options.shutdown_timeout;
    let startup = pool::StartupPool::new(options.max_startup_connections);
    let ctx = Arc::new(Ctx {
        source,
        options,
        registry: Arc::clone(&registry),
        slots,
        shutdown_rx,
        stopping: AtomicBool::new(false),
        terminated: OnceLock::new(),
        connections: AtomicUsize::new(0),
        startup,
    });
    let sessions = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = crossbeam_channel::bounded(0);
    let accept = {
        let ctx = Arc::clone(&ctx);
        let sessions = Arc::clone(&sessions);
        std::thread::Builder::new()
            .name("repl-listener".into())
            .spawn(move || accept_loop(listener, ctx, sessions, done_tx))?
    };
    let stop_ctx = Arc::clone(&ctx);
    let terminate_ctx = Arc::clone(&ctx);
    Ok(ServerHandle {
        addr,
        registry,
        shutdown_tx: Some(shutdown_tx),
        ctx_stopping: Arc::new(move || stop_ctx.stopping.store(true, Ordering::SeqCst)),
        ctx_terminate: Arc::new(move |e| {
            let _ = terminate_ctx.terminated.set(e);
        }),
        accept: Some(accept),
        sessions,
        done_rx,
        shutdown_timeout,
    })
}

fn accept_loop<S: ReplicationSource>(
    listener: TcpListener,
    ctx: Arc<Ctx<S>>,
    sessions: Arc<Mutex<Vec<JoinHandle<()>>>>,
    done_tx: Sender<()>,
) {
    let mut failures: u32 = 0;
    for stream in listener.incoming() {
        if ctx.stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(s) => {
                failures = 0;
                s
            }
            Err(e) => {
                // Out of descriptors and the like: count and back off
                // (at most 1 s) instead of spinning.
                failures = failures.saturating_add(1);
                let pause =
                    Duration::from_millis(10u64 << failures.min(7)).min(Duration::from_secs(1));
                tracing::warn!(
                    failures,
                    "could not accept a replication connection: {e}; retrying in {pause:?}"
                );
                std::thread::sleep(pause);
                continue;
            }
        };
        let bound =
            ctx.options.max_wal_senders + ctx.options.max_startup_connections + THREAD_MARGIN;
        let open = ctx.connections.fetch_add(1, Ordering::SeqCst) + 1;
        if open > bound && !threads_drain(&ctx.connections, bound) {
            serve::refuse_too_many(stream);
            ctx.connections.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let Ok(handle) = stream.try_clone() else {
            ctx.connections.fetch_sub(1, Ordering::SeqCst);
            continue;
        };
        let startup_id = ctx.startup.enter(handle);
        spawn_session(&ctx, stream, startup_id, &sessions, done_tx.clone());
    }
}

/// Over the thread bound, the sessions just closed by the startup pool are
/// usually on their way out: wait for that (at most [`DRAIN_WAIT`])
/// before refusing a newcomer. True if room was made.
fn threads_drain(connections: &AtomicUsize, bound: usize) -> bool {
    let deadline = Instant::now() + DRAIN_WAIT;
    while Instant::now() < deadline {
        // `connections` includes the newcomer.
        if connections.load(Ordering::SeqCst) <= bound {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// See [`threads_drain`].
const DRAIN_WAIT: Duration = Duration::from_millis(500);

/// One thread per connection; it gives back its connection count and its
/// `done` sender when it ends.
fn spawn_session<S: ReplicationSource>(
    ctx: &Arc<Ctx<S>>,
    stream: TcpStream,
    startup_id: u64,
    sessions: &Mutex<Vec<JoinHandle<()>>>,
    done: Sender<()>,
) {
    let ctx_thread = Arc::clone(ctx);
    let spawned = std::thread::Builder::new()
        .name("walsender".into())
        .spawn(move || {
            serve::run(&ctx_thread, stream, startup_id);
            ctx_thread.connections.fetch_sub(1, Ordering::SeqCst);
            drop(done);
        });
    match spawned {
        Ok(h) => {
            let mut s = sessions.lock().unwrap_or_else(|p| p.into_inner());
            s.retain(|h| !h.is_finished());
            s.push(h);
        }
        Err(e) => {
            ctx.connections.fetch_sub(1, Ordering::SeqCst);
            ctx.startup.leave(startup_id);
            tracing::error!("could not start a walsender thread: {e}");
        }
    }
}

impl ServerHandle {
    /// The listener's address (for a listener bound to port 0, the port
    /// the OS chose).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The walsenders of this server (`pg_stat_replication`).
    pub fn registry(&self) -> &Arc<WalSenderRegistry> {
        &self.registry
    }

    /// Stop accepting, end every session as PostgreSQL does at shutdown
    /// (streaming clients get the rest of the WAL and `COPY 0`), and wait
    /// for them, at most `shutdown_timeout` plus a second.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// End every session at once with `error` (a FATAL, PostgreSQL's
    /// 57P02 after a crash): no shutdown handshake, no more WAL sent; then
    /// wait for the sessions as [`ServerHandle::shutdown`] does.
    pub fn terminate(mut self, error: PgError) {
        (self.ctx_terminate)(error);
        self.stop();
    }

    fn stop(&mut self) {
        let Some(tx) = self.shutdown_tx.take() else {
            return;
        };
        (self.ctx_stopping)();
        drop(tx);
        // Wake the blocking accept with a connection to ourselves.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        // Streaming walsenders wait by parking: wake them to see `stopping`.
        for h in self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            h.thread().unpark();
        }
        // Every session thread drops its sender when it ends.
        let deadline = Instant::now() + self.shutdown_timeout + Duration::from_secs(1);
        let _ = self.done_rx.recv_deadline(deadline);
        let handles: Vec<_> =
            std::mem::take(&mut *self.sessions.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles.into_iter().filter(|h| h.is_finished()) {
            let _ = h.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
