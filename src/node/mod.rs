//! One running node: opens the data directory, recovers, starts its threads
//! (WAL writer, WAL event listener, checkpointer, archiver, listeners) and
//! stops them in PostgreSQL's order at shutdown.
//!
//! # Layout
//! - [`init`]: `walrep init`, a new data directory with its first checkpoint.
//! - [`recovery`]: crash recovery (snapshot + redo to the end of WAL).
//! - [`checkpoint`]: the checkpointer and WAL removal.
//! - [`info`]: the node's INFO sections.

pub mod checkpoint;
pub mod info;
pub mod init;
pub mod recovery;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::archive::{self, ArchiveNotifier, ArchiverConfig, ArchiverHandle};
use crate::config::Config;
use crate::datadir::{DataDir, DataDirLock};
use crate::server::{Backend, Role, Server, ServerSettings, WriteError};
use crate::store::{ClusterState, ControlFile, Level, Store};
use crate::syncrep::{self, SyncRep};
use crate::wal::{Wal, WalConfig, WalError, WalEvent};
use crate::Lsn;
use checkpoint::{CheckpointCause, CheckpointDone, Checkpointer};

const ROLE_PRIMARY: u8 = 0;

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
    pub archiver_stats: Mutex<Option<archive::ArchiverStatsHandle>>,
    pub started_at: Instant,
    pub ports: Mutex<Ports>,
    shutting_down: AtomicBool,
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

    /// The oldest WAL any replication slot still needs.
    pub fn slots_min_restart_lsn(&self) -> Option<Lsn> {
        None
    }

    pub fn last_checkpoint(&self) -> Option<(CheckpointDone, u64)> {
        self.last_checkpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
        if self.is_primary() {
            Role::Primary
        } else {
            Role::Standby
        }
    }

    fn insert(&self, info: u8, payload: &[u8]) -> Result<Lsn, WriteError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(WriteError::ShuttingDown);
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
        // Make the write readable by everyone before its client hears "OK".
        self.store
            .visibility()
            .advance(Level::LocalFlush, wal.flushed());
        if !self.syncrep.defined() {
            self.store.visibility().advance_all(wal.flushed());
        }
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

    fn config(&self) -> Arc<Config> {
        self.config.clone()
    }

    fn info_section(&self, name: &str) -> Option<String> {
        info::section(self, name)
    }

    fn wait_replicas(&self, _upto: Lsn, _wanted: usize, _timeout: Duration) -> usize {
        0
    }
}

/// A node with its threads running.
pub struct RunningNode {
    pub node: Arc<Node>,
    server: Option<Server>,
    checkpointer: Option<Checkpointer>,
    archiver: Option<(ArchiverHandle, crossbeam_channel::Sender<()>)>,
    wal_listener: Option<JoinHandle<()>>,
    lock: DataDirLock,
}

/// Options of `walrep start`.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// `-c name=value` overrides.
    pub overrides: Vec<String>,
}

impl RunningNode {
    /// Start the node in `datadir` (recover, then serve).
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
        let mut control = ControlFile::read(&dir.root)?;
        if dir.is_standby() {
            anyhow::bail!("standby.signal found: standby mode is not available in this build yet");
        }
        let store = Store::new();
        let wal_dir = dir.wal();
        let history = crate::wal::read_history(&wal_dir, control.timeline).map_err(|e| {
            anyhow::anyhow!(
                "could not read the history of timeline {}: {e}",
                control.timeline
            )
        })?;
        if control.state != ClusterState::ShutDown {
            tracing::warn!(state = %control.state, "database system was not properly shut down; automatic recovery in progress");
        }
        let rec = recovery::crash_recover(&dir.root, &control, history, &store)?;
        tracing::info!(
            keys = rec.snapshot_keys,
            records = rec.records_replayed,
            end = %rec.end,
            elapsed_ms = rec.elapsed_ms,
            "recovery complete"
        );
        let mut wal_cfg = WalConfig::new(
            &wal_dir,
            control.system_identifier,
            control.timeline,
            control.wal_segment_size,
            rec.end,
            rec.prev_record,
        );
        wal_cfg.archive_mode = config.archive_mode != crate::config::ArchiveMode::Off;
        wal_cfg.wal_writer_delay = config
            .wal_writer_delay
            .get()
            .unwrap_or(Duration::from_millis(200));
        let wal = Arc::new(Wal::start(wal_cfg).context("could not start the WAL writer")?);
        store.visibility().advance_all(wal.flushed());
        let crashed = control.state != ClusterState::ShutDown;
        control.state = ClusterState::InProduction;
        control.write(&dir.root)?;
        let syncrep = Arc::new(SyncRep::new(
            sync_config,
            store.visibility().clone(),
            config.synchronous_standby_timeout.get(),
        ));
        let config = Arc::new(config);
        let node = Arc::new(Node {
            dir,
            config: config.clone(),
            control: Mutex::new(control),
            store,
            wal: RwLock::new(Some(wal.clone())),
            role: AtomicU8::new(ROLE_PRIMARY),
            syncrep,
            checkpoint_lock: Mutex::new(()),
            last_checkpoint: Mutex::new(None),
            archiver_stats: Mutex::new(None),
            started_at: Instant::now(),
            ports: Mutex::new(Ports::default()),
            shutting_down: AtomicBool::new(false),
        });
        if crashed {
            // PostgreSQL ends crash recovery with a checkpoint so the WAL
            // just replayed is not needed again.
            node.checkpoint(CheckpointCause::EndOfRecovery)?;
        }
        let mut running = RunningNode {
            node: node.clone(),
            server: None,
            checkpointer: None,
            archiver: None,
            wal_listener: None,
            lock,
        };
        let notifier = running.start_archiver()?;
        running.wal_listener = Some(start_wal_listener(node.clone(), &wal, notifier)?);
        running.checkpointer = Some(Checkpointer::start(node.clone())?);
        let addr = listen_addr(&config.listen_addresses, config.port)?;
        let server = Server::start(
            addr,
            node.clone(),
            ServerSettings {
                max_connections: config.max_connections,
                max_bulk_len: config.proto_max_bulk_len.bytes().unwrap_or(64 << 20),
                default_synchronous_commit: config.synchronous_commit,
            },
        )
        .with_context(|| format!("could not listen on {addr} (port)"))?;
        let ports = {
            let mut p = node.ports.lock().unwrap_or_else(|e| e.into_inner());
            p.redis = server.local_addr().port();
            *p
        };
        running.lock.record_ports(&[
            ("port", ports.redis),
            ("replication_port", ports.replication),
        ])?;
        tracing::info!(addr = %server.local_addr(), timeline = %wal.timeline(), "database system is ready to accept connections");
        running.server = Some(server);
        Ok(running)
    }

    fn start_archiver(&mut self) -> anyhow::Result<Option<ArchiveNotifier>> {
        let node = &self.node;
        if !archive::archiver_should_run(node.config.archive_mode, !node.is_primary()) {
            return Ok(None);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let handle = archive::spawn_archiver(
            ArchiverConfig::from_config(&node.dir.root, &node.config),
            rx,
        )?;
        let notifier = handle.notifier();
        *node
            .archiver_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(handle.stats_handle());
        self.archiver = Some((handle, tx));
        Ok(Some(notifier))
    }

    /// The address clients connect to.
    pub fn redis_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(|s| s.local_addr())
    }

    /// Block until SIGINT or SIGTERM.
    pub fn wait_for_signal(&self) -> anyhow::Result<i32> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let sig = signals.forever().next().unwrap_or(SIGTERM);
        Ok(sig)
    }

    /// PostgreSQL's fast shutdown: stop accepting, let in-flight commits
    /// finish (those still waiting for a standby after a grace period get an
    /// error, never "OK"), write a shutdown checkpoint, stop the WAL writer.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let node = self.node.clone();
        tracing::info!("received shutdown request; shutting down");
        if let Some(mut server) = self.server.take() {
            // Sessions finish their in-flight commits; those still waiting
            // for a synchronous standby after the grace period are failed.
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
        if let Some(c) = self.checkpointer.take() {
            c.stop();
        }
        node.shutting_down.store(true, Ordering::SeqCst);
        let result = match node.wal() {
            Some(wal) if wal.poisoned().is_none() => node
                .checkpoint(CheckpointCause::Shutdown)
                .map(|_| ())
                .map_err(anyhow::Error::from),
            _ => Ok(()),
        };
        if let Some(wal) = node.wal() {
            let _ = wal.shutdown();
        }
        if let Some(t) = self.wal_listener.take() {
            let _ = t.join();
        }
        if let Some((handle, tx)) = self.archiver.take() {
            let _ = tx.send(());
            let _ = handle.join();
        }
        tracing::info!("database system is shut down");
        result
    }
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

/// Follows the WAL writer's events: a flush makes writes visible and lets
/// synchronous replication follow in degraded mode; a completed segment
/// wakes the archiver.
fn start_wal_listener(
    node: Arc<Node>,
    wal: &Wal,
    archiver: Option<ArchiveNotifier>,
) -> std::io::Result<JoinHandle<()>> {
    let events = wal.subscribe();
    std::thread::Builder::new().name("wal-events".into()).spawn(move || {
        for ev in events.iter() {
            match ev {
                WalEvent::Flushed(lsn) => {
                    node.store.visibility().advance(Level::LocalFlush, lsn);
                    if !node.syncrep.defined() {
                        node.store.visibility().advance_all(lsn);
                    }
                    node.syncrep.on_local_flush(lsn);
                }
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
