//! One running node: opens the data directory, recovers, starts its threads
//! (WAL writer, WAL event listener, checkpointer, archiver, listeners, and on
//! a standby the recovery runtime) and stops them in PostgreSQL's order.
//!
//! # Layout
//! - [`init`]: `walrep init`, a new data directory with its first checkpoint.
//! - [`recovery`]: crash recovery (snapshot + redo to the end of WAL).
//! - [`checkpoint`]: the checkpointer, restartpoints and WAL removal.
//! - [`info`]: the node's INFO sections.
//! - [`replication`]: the node as a replication source; standby replies.

pub mod checkpoint;
pub mod info;
pub mod init;
pub mod recovery;
pub mod replication;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossbeam_channel::{Receiver, Sender};

use crate::archive::{self, ArchiveNotifier, ArchiverConfig, ArchiverHandle};
use crate::config::{ArchiveMode, Config};
pub use crate::datadir::{DataDir, DataDirLock};
use crate::replication::registry::WalSenderRegistry;
use crate::replication::server::{ServerHandle as ReplicationServerHandle, ServerOptions};
use crate::replication::slots::SlotManager;
use crate::server::{Backend, Role, Server, ServerSettings, WriteError};
use crate::standby::{StandbyRuntime, StandbyState};
use crate::store::{ClusterState, ControlFile, Level, Store};
use crate::syncrep::{self, SyncRep};
use crate::wal::writer::FlushHook;
use crate::wal::{SegmentDir, StdIo, Wal, WalConfig, WalError, WalEvent};
use crate::Lsn;
use checkpoint::{CheckpointCause, CheckpointDone, Checkpointer};

const ROLE_PRIMARY: u8 = 0;
const ROLE_STANDBY: u8 = 1;
const ROLE_RECOVERING: u8 = 2;

/// Why a running node should stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitRequest {
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// Recovery cannot go on (PostgreSQL's FATAL in the startup process).
    Fatal(String),
}

/// Shared state of one node; every thread holds an `Arc<Node>`.
pub struct Node {
    pub dir: DataDir,
    pub config: Arc<Config>,
    control: Mutex<ControlFile>,
    pub store: Store,
    /// The WAL writer; `None` on a standby until it is promoted.
    wal: RwLock<Option<Arc<Wal>>>,
    role: AtomicU8,
    pub syncrep: Arc<SyncRep>,
    checkpoint_lock: Mutex<()>,
    last_checkpoint: Mutex<Option<(CheckpointDone, u64)>>,
    pub started_at: Instant,
    pub ports: Mutex<Ports>,
    shutting_down: AtomicBool,
    /// The WAL directory handle shared by the writer, walsenders and
    /// removal (so a walsender knows what was removed).
    pub segdir: Arc<SegmentDir>,
    /// Replication slots (`slots/`).
    pub slots: Arc<SlotManager>,
    registry: Mutex<Option<Arc<WalSenderRegistry>>>,
    /// A standby's flush point (walreceiver / restored WAL); unused on a primary.
    standby_flush: Mutex<replication::FlushPoint>,
    /// Notified when `standby_flush` or the timeline changes.
    pub flush_changed: replication::FlushSignal,
    /// Notified on every standby reply (WAIT).
    replies: replication::FlushSignal,
    /// Replay and receive positions, recovery state and last transition.
    pub standby: StandbyState,
    /// Threads that follow the WAL writer (started with it, also at promotion).
    wal_threads: Mutex<WalThreads>,
    /// Where a fatal recovery error or a signal asks the node to stop.
    exit_tx: Sender<ExitRequest>,
    /// Snapshots and WAL that running base backups still copy.
    pub backup_pins: Arc<crate::backup::pin::BackupPins>,
    /// Random per start: sent to replication clients (`walrep_instance_id`)
    /// so a walreceiver pointed at its own node refuses to stream.
    pub instance_id: u64,
}

/// The archiver and the WAL event listener, owned by the node because
/// promotion starts them from the startup thread.
#[derive(Default)]
struct WalThreads {
    archiver: Option<(ArchiverHandle, Sender<()>)>,
    archiver_stats: Option<archive::ArchiverStatsHandle>,
    listener: Option<JoinHandle<()>>,
}

/// Where the node's listeners ended up (port 0 in tests picks a free one).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ports {
    pub redis: u16,
    pub replication: u16,
}

impl Node {
    pub fn control(&self) -> MutexGuard<'_, ControlFile> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn control_mut(&self) -> MutexGuard<'_, ControlFile> {
        self.control()
    }

    pub fn wal(&self) -> Option<Arc<Wal>> {
        self.wal.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_primary(&self) -> bool {
        self.role.load(Ordering::SeqCst) == ROLE_PRIMARY
    }

    /// A standby replayed up to its consistency point: reads are served.
    pub fn set_consistent(&self) {
        let _ = self.role.compare_exchange(
            ROLE_RECOVERING,
            ROLE_STANDBY,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// The oldest WAL any replication slot still needs.
    pub fn slots_min_restart_lsn(&self) -> Option<Lsn> {
        self.slots.min_restart_lsn()
    }

    pub fn registry(&self) -> Option<Arc<WalSenderRegistry>> {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn last_checkpoint(&self) -> Option<(CheckpointDone, u64)> {
        self.last_checkpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn archiver_stats(&self) -> Option<archive::ArchiverStatsHandle> {
        self.wal_threads().archiver_stats.clone()
    }

    fn wal_threads(&self) -> MutexGuard<'_, WalThreads> {
        self.wal_threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ask the node to stop (the main thread is waiting for this).
    pub fn request_exit(&self, why: ExitRequest) {
        let _ = self.exit_tx.try_send(why);
    }

    /// Set a standby's flush point (what cascading walsenders may send).
    pub fn set_standby_flush(&self, point: replication::FlushPoint) {
        let changed = {
            let mut f = self.standby_flush.lock().unwrap_or_else(|e| e.into_inner());
            let changed = *f != point;
            *f = point;
            changed
        };
        if changed {
            self.flush_changed.notify();
        }
    }

    /// Make `wal` the node's WAL writer and start what follows it (the WAL
    /// event listener; the archiver where `archive_mode` wants one on a
    /// primary). Used at start-up of a primary and at promotion.
    pub fn attach_wal(self: &Arc<Self>, wal: Arc<Wal>) -> anyhow::Result<()> {
        *self.wal.write().unwrap_or_else(|e| e.into_inner()) = Some(wal.clone());
        wal.set_flush_hook(flush_hook(
            self.store.visibility().clone(),
            self.syncrep.clone(),
        ));
        // Flushes before the hook (the end-of-recovery record) are covered
        // here: set_flush_hook returns only once none is in progress.
        let flushed = wal.flushed();
        self.store.visibility().advance_all(flushed);
        self.syncrep.on_local_flush(flushed);
        let notifier = self.ensure_archiver(false)?;
        let listener = start_wal_listener(&wal, notifier)?;
        self.wal_threads().listener = Some(listener);
        self.flush_changed.notify();
        Ok(())
    }

    /// Become a primary: writes are accepted from now on.
    pub fn accept_writes(&self) {
        self.role.store(ROLE_PRIMARY, Ordering::SeqCst);
        self.flush_changed.notify();
    }

    /// Start the archiver if `archive_mode` asks for one in this role.
    fn ensure_archiver(&self, in_recovery: bool) -> anyhow::Result<Option<ArchiveNotifier>> {
        let mut t = self.wal_threads();
        if let Some((h, _)) = &t.archiver {
            return Ok(Some(h.notifier()));
        }
        if !archive::archiver_should_run(self.config.archive_mode, in_recovery) {
            return Ok(None);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let handle = archive::spawn_archiver(
            ArchiverConfig::from_config(&self.dir.root, &self.config),
            rx,
        )?;
        let notifier = handle.notifier();
        t.archiver_stats = Some(handle.stats_handle());
        t.archiver = Some((handle, tx));
        Ok(Some(notifier))
    }

    /// Wake the archiver (a standby restored or received a file to archive).
    pub fn notify_archiver(&self) {
        if let Some((h, _)) = &self.wal_threads().archiver {
            h.notifier().segment_completed();
        }
    }
}

fn wal_error(e: WalError) -> WriteError {
    match e {
        WalError::ShutDown => WriteError::ShuttingDown,
        other => WriteError::WalFailed(other.to_string()),
    }
}

impl Backend for Node {
    fn store(&self) -> &Store {
        &self.store
    }

    fn role(&self) -> Role {
        match self.role.load(Ordering::SeqCst) {
            ROLE_PRIMARY => Role::Primary,
            ROLE_STANDBY => Role::Standby,
            _ => Role::Recovering,
        }
    }

    fn insert(&self, info: u8, payload: &[u8]) -> Result<Lsn, WriteError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(WriteError::ShuttingDown);
        }
        if !self.is_primary() {
            return Err(WriteError::ReadOnly);
        }
        let wal = self.wal().ok_or(WriteError::ReadOnly)?;
        wal.insert(crate::store::record::RM_KV, info, payload)
            .map_err(wal_error)
    }

    fn wait(&self, end: Lsn, level: Level) -> Result<(), WriteError> {
        if level == Level::Immediate {
            return Ok(());
        }
        let wal = self.wal().ok_or(WriteError::ReadOnly)?;
        wal.wait_flushed(end).map_err(wal_error)?;
        // The flush hook made the write readable by everyone before the
        // flush was published, so before its client hears "OK".
        debug_assert!(self.store.visibility().released(Level::LocalFlush) >= end);
        if level >= Level::RemoteWrite {
            self.syncrep.wait(end, level)?;
        }
        Ok(())
    }

    /// The local levels are met by the WAL alone: the caller flushes
    /// inline when no flush is in progress (PostgreSQL's XLogFlush), or
    /// joins the one in progress. The remote levels wait for standbys.
    fn wait_local(&self, end: Lsn, level: Level) -> Option<Result<(), WriteError>> {
        (level <= Level::LocalFlush).then(|| self.wait(end, level))
    }

    fn sync_standbys_defined(&self) -> bool {
        self.syncrep.defined()
    }

    /// The configuration, with `port` and `replication_port` as actually
    /// bound (port 0 in the file picks a free port).
    fn config(&self) -> Arc<Config> {
        let ports = *self.ports.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = (*self.config).clone();
        c.port = ports.redis;
        c.replication_port = ports.replication;
        Arc::new(c)
    }

    fn info_section(&self, name: &str) -> Option<String> {
        info::section(self, name)
    }

    fn wait_replicas(&self, upto: Lsn, wanted: usize, timeout: Duration) -> usize {
        self.count_acked(upto, wanted, timeout)
    }
}

/// A node with its threads running.
pub struct RunningNode {
    pub node: Arc<Node>,
    server: Option<Server>,
    replication: Option<ReplicationServerHandle>,
    checkpointer: Option<Checkpointer>,
    standby: Option<StandbyRuntime>,
    status: Option<crate::status::StatusServer>,
    expire: Option<crate::server::expire::ExpireCycle>,
    exit_rx: Receiver<ExitRequest>,
    lock: DataDirLock,
}

/// Options of `walrep start`.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// `-c name=value` overrides.
    pub overrides: Vec<String>,
}

impl RunningNode {
    /// Start the node in `datadir`: a primary recovers and serves; with
    /// `standby.signal` a standby starts its recovery runtime.
    pub fn start(
        datadir: impl Into<std::path::PathBuf>,
        opts: &StartOptions,
    ) -> anyhow::Result<RunningNode> {
        let dir = DataDir::new(datadir);
        dir.check()?;
        let config = Config::load(&dir.config_file(), &opts.overrides)?;
        let sync_config = syncrep::standby_names::parse(&config.synchronous_standby_names)?;
        let lock = DataDirLock::acquire(
            &dir,
            &[
                ("port", config.port),
                ("replication_port", config.replication_port),
            ],
        )?;
        if let Err(e) = crate::standby::trigger::remove_stale_promote_request(&dir.root) {
            tracing::warn!(error = %e, "could not remove a stale promote request");
        }
        let control = ControlFile::read(&dir.root)?;
        let standby = dir.is_standby();
        let segdir = Arc::new(SegmentDir::open(
            &dir.wal(),
            control.wal_segment_size,
            Arc::new(StdIo),
        )?);
        let store = Store::new();
        let snapshot = crate::store::checkpoint::load_snapshot(
            &dir.root,
            control.checkpoint_id,
            control.checkpoint_chunks,
            &store,
        )?;
        tracing::info!(checkpoint = %control.checkpoint_lsn, redo = %control.redo_lsn, keys = snapshot.keys, state = %control.state, "loaded the last checkpoint");
        let slots = SlotManager::open(
            &dir.root,
            config.max_replication_slots as usize,
            config.max_slot_wal_keep_size.bytes(),
        )?;
        let syncrep = Arc::new(SyncRep::new(
            sync_config,
            store.visibility().clone(),
            config.synchronous_standby_timeout.get(),
        ));
        let (exit_tx, exit_rx) = crossbeam_channel::bounded(8);
        let flush = replication::FlushPoint {
            tli: control.timeline,
            lsn: control.min_recovery_point.max(control.redo_lsn),
        };
        let config = Arc::new(config);
        let node = Arc::new(Node {
            dir,
            config: config.clone(),
            control: Mutex::new(control),
            store,
            wal: RwLock::new(None),
            role: AtomicU8::new(if standby {
                ROLE_RECOVERING
            } else {
                ROLE_PRIMARY
            }),
            syncrep,
            checkpoint_lock: Mutex::new(()),
            last_checkpoint: Mutex::new(None),
            started_at: Instant::now(),
            ports: Mutex::new(Ports::default()),
            shutting_down: AtomicBool::new(false),
            segdir,
            slots,
            registry: Mutex::new(None),
            standby_flush: Mutex::new(flush),
            flush_changed: replication::FlushSignal::default(),
            replies: replication::FlushSignal::default(),
            standby: StandbyState::default(),
            wal_threads: Mutex::new(WalThreads::default()),
            exit_tx,
            backup_pins: crate::backup::pin::BackupPins::new(),
            instance_id: rand::random(),
        });
        let mut running = RunningNode {
            node: node.clone(),
            server: None,
            replication: None,
            checkpointer: None,
            standby: None,
            status: None,
            expire: None,
            exit_rx,
            lock,
        };
        if standby {
            node.ensure_archiver(true)?;
            running.standby = Some(StandbyRuntime::start(node.clone())?);
        } else {
            start_primary(&node)?;
        }
        running.checkpointer = Some(Checkpointer::start(node.clone())?);
        running.expire = Some(crate::server::expire::ExpireCycle::start(node.clone())?);
        running.start_listeners()?;
        Ok(running)
    }

    fn start_listeners(&mut self) -> anyhow::Result<()> {
        let node = self.node.clone();
        let config = &node.config;
        let addr = listen_addr(&config.listen_addresses, config.port)?;
        let server = Server::start(
            addr,
            node.clone(),
            ServerSettings {
                max_connections: config.max_connections,
                log_connections: config.log_connections.0,
                log_disconnections: config.log_disconnections.0,
                max_bulk_len: config.proto_max_bulk_len.bytes().unwrap_or(64 << 20),
                default_synchronous_commit: config.synchronous_commit,
            },
        )
        .with_context(|| format!("could not listen on {addr} (port)"))?;
        self.replication = Some(start_replication(&node)?);
        if config.status_port != 0 {
            let addr = listen_addr(&config.listen_addresses, config.status_port)?;
            let status = crate::status::StatusServer::start(addr, node.clone())
                .with_context(|| format!("could not listen on {addr} (status_port)"))?;
            tracing::info!(addr = %status.local_addr(), "status endpoint ready: /status, /metrics");
            self.status = Some(status);
        }
        let ports = {
            let mut p = node.ports.lock().unwrap_or_else(|e| e.into_inner());
            p.redis = server.local_addr().port();
            *p
        };
        self.lock.record_ports(&[
            ("port", ports.redis),
            ("replication_port", ports.replication),
        ])?;
        let what = if node.is_primary() {
            "database system is ready to accept connections"
        } else {
            "standby is running; it accepts read-only connections once consistent"
        };
        tracing::info!(addr = %server.local_addr(), replication_port = ports.replication, "{what}");
        self.server = Some(server);
        Ok(())
    }

    /// The address clients connect to.
    pub fn redis_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(|s| s.local_addr())
    }

    /// Block until SIGINT or SIGTERM, or until recovery fails fatally.
    pub fn wait_for_exit(&self) -> anyhow::Result<ExitRequest> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        let tx = self.node.exit_tx.clone();
        let forwarder = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    let _ = tx.send(ExitRequest::Signal(sig));
                }
            })?;
        let why = self
            .exit_rx
            .recv()
            .unwrap_or(ExitRequest::Signal(signal_hook::consts::SIGTERM));
        handle.close();
        let _ = forwarder.join();
        Ok(why)
    }

    /// PostgreSQL's fast shutdown: stop accepting, let in-flight commits
    /// finish (those still waiting for a standby after a grace period get an
    /// error, never "OK"), stop recovery, write a shutdown checkpoint (or a
    /// restartpoint on a standby), stop the WAL writer.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let node = self.node.clone();
        tracing::info!("received shutdown request; shutting down");
        if let Some(server) = self.server.take() {
            stop_server(&node, server);
        }
        if let Some(e) = self.expire.take() {
            e.stop();
        }
        if let Some(c) = self.checkpointer.take() {
            c.stop();
        }
        if let Some(s) = self.status.take() {
            s.stop();
        }
        if let Some(s) = self.standby.take() {
            s.stop();
        }
        node.shutting_down.store(true, Ordering::SeqCst);
        let result = if node.wal().is_some_and(|w| w.poisoned().is_none()) {
            node.checkpoint(CheckpointCause::Shutdown)
                .map(|_| ())
                .map_err(anyhow::Error::from)
        } else if node.wal().is_none() {
            node.restartpoint(CheckpointCause::Shutdown)
                .map(|_| ())
                .map_err(anyhow::Error::from)
        } else {
            Ok(())
        };
        // Walsenders send everything up to the shutdown checkpoint, wait
        // (bounded) for their standbys to confirm it, then end with COPY 0.
        if let Some(r) = self.replication.take() {
            r.shutdown();
        }
        if let Some(wal) = node.wal() {
            let _ = wal.shutdown();
        }
        let threads = std::mem::take(&mut *node.wal_threads());
        if let Some(t) = threads.listener {
            let _ = t.join();
        }
        if let Some((handle, tx)) = threads.archiver {
            let _ = tx.send(());
            let _ = handle.join();
        }
        tracing::info!("database system is shut down");
        result
    }
}

/// Recover a primary from its WAL and start its WAL writer.
fn start_primary(node: &Arc<Node>) -> anyhow::Result<()> {
    let control = node.control().clone();
    if control.state != ClusterState::ShutDown {
        tracing::warn!(state = %control.state, "database system was not properly shut down; automatic recovery in progress");
    }
    let history = crate::wal::read_history(&node.dir.wal(), control.timeline).map_err(|e| {
        anyhow::anyhow!(
            "could not read the history of timeline {}: {e}",
            control.timeline
        )
    })?;
    let rec = recovery::replay_to_end(&node.dir.root, &control, history, &node.store)?;
    tracing::info!(records = rec.records_replayed, end = %rec.end, elapsed_ms = rec.elapsed_ms, "recovery complete");
    let mut wal_cfg = WalConfig::new(
        node.dir.wal(),
        control.system_identifier,
        control.timeline,
        control.wal_segment_size,
        rec.end,
        rec.prev_record,
    );
    wal_cfg.segdir = Some(node.segdir.clone());
    wal_cfg.archive_mode = node.config.archive_mode != ArchiveMode::Off;
    wal_cfg.wal_writer_delay = node
        .config
        .wal_writer_delay
        .get()
        .unwrap_or(Duration::from_millis(200));
    let wal = Arc::new(Wal::start(wal_cfg).context("could not start the WAL writer")?);
    {
        let mut c = node.control_mut();
        c.state = ClusterState::InProduction;
        c.write(&node.dir.root)?;
    }
    node.attach_wal(wal)?;
    if control.state != ClusterState::ShutDown {
        // PostgreSQL ends crash recovery with a checkpoint so the WAL just
        // replayed is not needed again.
        node.checkpoint(CheckpointCause::EndOfRecovery)?;
    }
    Ok(())
}

/// Stop the front end: sessions finish their in-flight commits; those still
/// waiting for a synchronous standby after the grace period are failed.
fn stop_server(node: &Arc<Node>, mut server: Server) {
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    let stopper = std::thread::spawn(move || {
        server.shutdown();
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(SYNC_WAIT_GRACE).is_err() {
        tracing::warn!("commits still waiting for synchronous standbys after {SYNC_WAIT_GRACE:?}: failing them");
        node.syncrep.shutdown();
    }
    let _ = stopper.join();
}

/// Bind the replication port and start the walsender listener.
fn start_replication(node: &Arc<Node>) -> anyhow::Result<ReplicationServerHandle> {
    let config = &node.config;
    let addr = listen_addr(&config.listen_addresses, config.replication_port)?;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("could not listen on {addr} (replication_port)"))?;
    let registry = WalSenderRegistry::new(config.max_wal_senders as usize);
    registry.set_observer(Arc::new(replication::ReplyObserver {
        node: Arc::downgrade(node),
    }));
    *node.registry.lock().unwrap_or_else(|e| e.into_inner()) = Some(registry.clone());
    let options = ServerOptions {
        instance_id: node.instance_id,
        ..ServerOptions::from_config(config)
    };
    let handle = crate::replication::server::spawn(
        listener,
        Arc::new(replication::NodeSource::new(node)),
        node.slots.clone(),
        registry,
        options,
    )?;
    node.ports
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replication = handle.local_addr().port();
    Ok(handle)
}

/// How long fast shutdown lets commits wait for synchronous standbys.
const SYNC_WAIT_GRACE: Duration = Duration::from_secs(5);

fn listen_addr(listen: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let host = listen.split(',').next().unwrap_or("127.0.0.1").trim();
    let host = if host == "*" || host.is_empty() {
        "0.0.0.0"
    } else {
        host
    };
    let ip: IpAddr = host
        .parse()
        .with_context(|| format!("invalid listen_addresses {listen:?}: expected an IP address"))?;
    Ok(SocketAddr::new(ip, port))
}

/// What every WAL flush does inline, before its waiters are released: make
/// the flushed writes visible (all levels when no synchronous standby is
/// configured) and let synchronous replication follow in degraded mode.
/// Inline rather than on an event thread: a commit then wakes nobody.
fn flush_hook(vis: Arc<crate::store::Visibility>, syncrep: Arc<SyncRep>) -> FlushHook {
    Box::new(move |lsn| {
        vis.advance(Level::LocalFlush, lsn);
        if !syncrep.defined() {
            vis.advance_all(lsn);
        }
        syncrep.on_local_flush(lsn);
    })
}

/// Follows the WAL writer's events: a completed segment wakes the archiver.
/// (Flushes are followed inline by [`flush_hook`].)
fn start_wal_listener(
    wal: &Wal,
    archiver: Option<ArchiveNotifier>,
) -> std::io::Result<JoinHandle<()>> {
    let events = wal.subscribe_segments();
    std::thread::Builder::new().name("wal-events".into()).spawn(move || {
        for ev in events.iter() {
            match ev {
                WalEvent::Flushed(_) => {}
                WalEvent::SegmentCompleted { .. } => {
                    if let Some(a) = &archiver {
                        a.segment_completed();
                    }
                }
                WalEvent::Poisoned => {
                    tracing::error!("WAL writer stopped after an IO failure: the node refuses writes until it is restarted");
                }
                WalEvent::ShutDown => break,
            }
        }
    })
}
