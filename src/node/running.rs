//! [`RunningNode`]: a node with its threads running. Start-up opens the
//! data directory, loads the last checkpoint, recovers (a primary) or
//! starts the recovery runtime (a standby), then the checkpointer, the
//! expiry cycle and the listeners; `stop` is PostgreSQL's fast shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::checkpoint::{CheckpointCause, Checkpointer};
use super::{
    recovery, replication, DataDir, DataDirLock, ExitRequest, FatalError, Node, NodeError, Ports,
    WalThreads, ROLE_PRIMARY, ROLE_RECOVERING,
};
use crate::config::{ArchiveMode, Config};
use crate::replication::registry::WalSenderRegistry;
use crate::replication::server::{ServerHandle as ReplicationServerHandle, ServerOptions};
use crate::replication::slots::SlotManager;
use crate::server::{Server, ServerSettings};
use crate::standby::{StandbyHandles, StandbyProgress, StandbyRuntime};
use crate::storage::{PoisonOnSyncFailure, StdStorage, Storage};
use crate::store::{ClusterState, ControlFile, ControlFileOwner, Store};
use crate::syncrep::{self, SyncRep};
use crate::wal::{SegmentDir, Wal, WalConfig};
use crate::watch::Watch;

/// A node with its threads running.
pub struct RunningNode {
    /// The node's shared state, for what runs beside its threads (tests, the status page).
    pub node: Arc<Node>,
    server: Option<Server>,
    replication: Option<ReplicationServerHandle>,
    checkpointer: Option<Checkpointer>,
    standby: Option<StandbyRuntime>,
    status: Option<crate::status::StatusServer>,
    expire: Option<crate::server::expire::ExpireCycle>,
    disk_monitor: Option<super::disk::DiskMonitor>,
    exit_rx: Receiver<ExitRequest>,
    lock: DataDirLock,
    /// SIGINT and SIGTERM, caught from before the listeners open: a signal
    /// sent as soon as the node answers is a shutdown request, never the
    /// default action that kills it without its shutdown checkpoint.
    signals: Mutex<Option<signal_hook::iterator::Signals>>,
}

/// Options of `walrep start`.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// `-c name=value` overrides.
    pub overrides: Vec<String>,
    /// The storage under the node's (a test's `FaultyStorage`);
    /// `StdStorage` when `None`.
    pub storage: Option<Arc<dyn Storage>>,
}

/// The node's storage: the given one or the real one, wrapped so that the
/// first failed fsync refuses every later write and asks the node to stop
/// with a fatal error naming the file and the OS error.
fn node_storage(opts: &StartOptions, exit_tx: Sender<ExitRequest>) -> Arc<dyn Storage> {
    let inner = opts.storage.clone().unwrap_or_else(|| Arc::new(StdStorage));
    Arc::new(PoisonOnSyncFailure::new(inner, move |failure| {
        let _ = exit_tx.try_send(ExitRequest::Fatal(FatalError::SyncFailed(failure.clone())));
    }))
}

impl RunningNode {
    /// Start the node in `datadir`: a primary recovers and serves; with
    /// `standby.signal` a standby starts its recovery runtime.
    pub fn start(
        datadir: impl Into<std::path::PathBuf>,
        opts: &StartOptions,
    ) -> Result<RunningNode, NodeError> {
        let began = Instant::now();
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
        let (exit_tx, exit_rx) = crossbeam_channel::bounded(8);
        let storage = node_storage(opts, exit_tx.clone());
        if let Err(e) = crate::standby::trigger::remove_stale_promote_request(&*storage, &dir.root)
        {
            tracing::warn!(error = %e, "could not remove a stale promote request");
        }
        let standby = dir.is_standby();
        let pending = crate::standby::pending::PendingBackup::read(&dir.root)?;
        let control = match &pending {
            Some(p) if standby && p.two_phase => provisional_control(&dir.root, p),
            Some(_) => {
                return Err(NodeError::BackupIncomplete {
                    datadir: dir.root.display().to_string(),
                })
            }
            None => check_history_id(&dir, ControlFile::read(&dir.root)?)?,
        };
        let segdir = Arc::new(SegmentDir::open(
            &dir.wal(),
            control.wal_segment_size,
            storage.clone(),
        )?);
        let (store, control) = if let Some(p) = &pending {
            tracing::info!(start = %p.start, timeline = p.tli.0, "base backup still being copied: streaming WAL, redo waits for the copy");
            (Arc::new(Store::new()), control)
        } else {
            let start = super::startpoint::load_start_checkpoint(&*storage, &dir.root, control)?;
            let control = start.control;
            tracing::info!(checkpoint = %control.checkpoint_lsn, redo = %control.redo_lsn, keys = start.keys, state = %control.state, "loaded the checkpoint recovery starts from");
            (Arc::new(start.store), control)
        };
        let slots = SlotManager::open(
            storage.clone(),
            &dir.root,
            config.max_replication_slots as usize,
            config.max_slot_wal_keep_size.bytes(),
        )?;
        let syncrep = Arc::new(SyncRep::new(
            sync_config,
            store.visibility().clone(),
            config.synchronous_standby_timeout.get(),
        ));
        let gate = Arc::new(if config.ha_enabled.0 {
            super::fence::WriteGate::fenced()
        } else {
            super::fence::WriteGate::always_open()
        });
        syncrep.set_fence(gate.clone());
        if config.ha_enabled.0 {
            // Under automatic failover a standby's confirmation counts only
            // once the `sync` key names it: until the HA loop says which,
            // nobody's does (the loop reads this set back as its own).
            syncrep.set_allowed(Some(Vec::new()), &[]);
        }
        let (checkpoint_requests, checkpoint_rx) = crossbeam_channel::bounded(4);
        let config = Arc::new(Watch::new(Arc::new(config)));
        let control_file = Arc::new(ControlFileOwner::new(
            storage.clone(),
            dir.root.clone(),
            control,
        ));
        // Before any checkpoint: what interrupted backups kept stays kept.
        let backup_pins = crate::backup::pin::BackupPins::open(storage.clone(), &dir.root);
        let node = Arc::new(Node {
            dir,
            config,
            overrides: Mutex::new(opts.overrides.clone()),
            storage,
            control_file,
            store,
            wal: RwLock::new(None),
            role: AtomicU8::new(if standby {
                ROLE_RECOVERING
            } else {
                ROLE_PRIMARY
            }),
            gate,
            promotion_hold: Default::default(),
            syncrep,
            checkpoint_lock: Mutex::new(()),
            checkpoint_waiters: Default::default(),
            last_checkpoint: Mutex::new(None),
            checkpoint_requests,
            started_at: Instant::now(),
            ports: Mutex::new(Ports::default()),
            shutting_down: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
            segdir,
            slots,
            registry: Mutex::new(None),
            replies: Watch::default(),
            standby: standby.then(|| {
                let progress = StandbyProgress::new();
                progress
                    .base_pending
                    .store(pending.is_some(), std::sync::atomic::Ordering::SeqCst);
                progress
            }),
            wal_threads: Mutex::new(WalThreads::default()),
            exit_tx,
            backup_pins,
            instance_id: rand::random(),
            wal_repairs: Default::default(),
            ha_status: Mutex::new(None),
        });
        let mut running = RunningNode {
            node: node.clone(),
            server: None,
            replication: None,
            checkpointer: None,
            standby: None,
            status: None,
            expire: None,
            disk_monitor: None,
            exit_rx,
            lock,
            signals: Mutex::new(None),
        };
        if let Some(progress) = node.standby.clone() {
            node.ensure_archiver(true).map_err(spawn("archiver"))?;
            running.standby = Some(StandbyRuntime::start(standby_handles(&node, progress))?);
        } else {
            start_primary(&node)?;
        }
        running.checkpointer =
            Some(Checkpointer::start(node.clone(), checkpoint_rx).map_err(spawn("checkpointer"))?);
        // Before the listeners, so a node that answers PING has nothing
        // more to start.
        running.expire = Some(
            crate::server::expire::ExpireCycle::start(node.clone())
                .map_err(spawn("expiry cycle"))?,
        );
        running.disk_monitor =
            Some(super::disk::DiskMonitor::start(node.clone()).map_err(spawn("disk monitor"))?);
        running.start_listeners(began)?;
        Ok(running)
    }

    /// Open the ports; `began` is when start-up began (the log says how
    /// long the node took to serve: snapshot load, redo, start-up).
    fn start_listeners(&mut self, began: Instant) -> Result<(), NodeError> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            .map_err(spawn("signal handler"))?;
        *self.signals.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(signals);
        let node = self.node.clone();
        let config = &node.settings();
        let addr = listen_addr(&config.listen_addresses, config.port)?;
        let settings = ServerSettings::from_config(config, &node.dir.root)?;
        let server = Server::start(addr, node.clone(), settings).map_err(listen(addr, "port"))?;
        self.replication = Some(start_replication(&node)?);
        if config.status_port != 0 {
            let addr = listen_addr(&config.listen_addresses, config.status_port)?;
            let status = crate::status::StatusServer::start(addr, node.clone())
                .map_err(listen(addr, "status_port"))?;
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
        let startup_ms = began.elapsed().as_millis() as u64;
        tracing::info!(addr = %server.local_addr(), tls_addr = ?server.tls_addr(), replication_port = ports.replication, startup_ms, "{what}");
        self.server = Some(server);
        Ok(())
    }

    /// The address clients connect to.
    pub fn redis_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(|s| s.local_addr())
    }

    /// Block until SIGINT or SIGTERM, or until recovery fails fatally;
    /// SIGHUP meanwhile reloads the configuration.
    pub fn wait_for_exit(&self) -> Result<ExitRequest, NodeError> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let taken = self
            .signals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut signals = match taken {
            Some(s) => s,
            None => signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
                .map_err(spawn("signal handler"))?,
        };
        let handle = signals.handle();
        let tx = self.node.exit_tx.clone();
        let node = Arc::downgrade(&self.node);
        let forwarder = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if sig != SIGHUP {
                        let _ = tx.send(ExitRequest::Signal(sig));
                        break;
                    }
                    // The error is logged; the running values stay.
                    if let Some(node) = node.upgrade() {
                        let _ = node.reload_config();
                    }
                }
            })
            .map_err(spawn("signals thread"))?;
        let why = self
            .exit_rx
            .recv()
            .unwrap_or(ExitRequest::Signal(signal_hook::consts::SIGTERM));
        handle.close();
        let _ = forwarder.join();
        if matches!(&why, ExitRequest::Fatal(e) if e.restartable()) {
            self.node.crashed.store(true, Ordering::SeqCst);
        }
        Ok(why)
    }

    /// PostgreSQL's fast shutdown: stop accepting, let in-flight commits
    /// finish (those still waiting for a standby after a grace period get an
    /// error, never "OK"), stop recovery, write a shutdown checkpoint (or a
    /// restartpoint on a standby), stop the WAL writer.
    pub fn stop(self) -> Result<(), NodeError> {
        self.stop_with(None)
    }

    /// Stop after a failure that stopped the WAL writer, as PostgreSQL's
    /// postmaster ends every backend after a crash: each Redis client gets
    /// `sessions.redis` as an error (a write waiting for its level gets it
    /// as its reply) and each replication session the FATAL
    /// `sessions.replication`, at once, before the rest stops as in
    /// [`RunningNode::stop`] (without the shutdown checkpoint).
    pub fn terminate(self, sessions: Termination) -> Result<(), NodeError> {
        self.stop_with(Some(sessions))
    }

    /// Stop a primary the HA loop demotes, as `pg_ctl stop -m immediate`:
    /// every session is ended at once (a write waiting for its level gets
    /// the error, never "OK") and no shutdown checkpoint is written, so the
    /// last checkpoint stays before the fork and `walrep rejoin` can cut the
    /// WAL this node wrote past it.
    pub fn stop_for_demotion(self) -> Result<(), NodeError> {
        self.node.crashed.store(true, Ordering::SeqCst);
        self.node.gate.close();
        let redis = crate::server::Termination {
            reason: "this node was demoted: another member holds the HA leader key".into(),
            hint: "reconnect to the current primary".into(),
        };
        let replication = crate::replication::sqlstate::PgError::fatal(
            crate::replication::sqlstate::ADMIN_SHUTDOWN,
            "terminating connection: the primary is being demoted (another member holds the HA leader key)",
        );
        self.stop_with(Some(Termination { redis, replication }))
    }

    fn stop_with(mut self, termination: Option<Termination>) -> Result<(), NodeError> {
        let node = self.node.clone();
        tracing::info!("received shutdown request; shutting down");
        match (self.server.take(), termination) {
            (Some(server), Some(t)) => {
                terminate_server(&node, server, t.redis);
                if let Some(r) = self.replication.take() {
                    r.terminate(t.replication);
                }
            }
            (Some(server), None) => stop_server(&node, server),
            (None, _) => {}
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
        if let Some(m) = self.disk_monitor.take() {
            m.stop();
        }
        node.shutting_down.store(true, Ordering::SeqCst);
        let result = if node.crashed.load(Ordering::SeqCst) {
            // PostgreSQL's shutdown after a crash: no checkpoint from
            // memory that may be ahead of the disk; crash recovery next.
            Ok(())
        } else if node.wal().is_some_and(|w| w.poisoned().is_none()) {
            node.checkpoint(CheckpointCause::Shutdown).map(|_| ())
        } else if node.wal().is_none() {
            node.restartpoint(CheckpointCause::Shutdown).map(|_| ())
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
        Ok(result?)
    }
}

/// The control data a standby streams with while its copy's bulk (and
/// its real control file) is still arriving: held in memory only, never
/// written (the copy writes the real one; restartpoints wait for it).
fn provisional_control(
    root: &std::path::Path,
    p: &crate::standby::pending::PendingBackup,
) -> ControlFile {
    ControlFile {
        system_identifier: p.system_id,
        state: crate::store::ClusterState::InArchiveRecovery,
        timeline: p.tli,
        wal_segment_size: p.wal_segment_size,
        checkpoint_lsn: p.start,
        redo_lsn: p.start,
        checkpoint_id: 0,
        checkpoint_timeline: p.tli,
        min_recovery_point: crate::Lsn::INVALID,
        time_ms: crate::store::control::now_ms(),
        checkpoint_chunks: 0,
        // Phase 1 fetched the history files: the timeline's id is there.
        history_id: crate::store::history_id_of(root, p.tli).unwrap_or(0),
        prev_checkpoint: None,
    }
}

/// What the standby runtime works on: the node's own handles, and the
/// node itself only as [`NodeHooks`].
fn standby_handles(node: &Arc<Node>, progress: StandbyProgress) -> StandbyHandles {
    StandbyHandles {
        datadir: node.dir.root.clone(),
        storage: node.storage.clone(),
        config: node.config.clone(),
        control: node.control_file.clone(),
        segdir: node.segdir.clone(),
        store: node.store.clone(),
        progress,
        instance_id: node.instance_id,
        hooks: node.clone(),
    }
}

/// Recover a primary from its WAL and start its WAL writer.
/// The control file's history id and the one its timeline's history file
/// names must agree: a history file that another promotion's copy replaced
/// (the same timeline number, another history) is refused, not followed.
/// A control file without an id (timeline 1, or written by an older walrep)
/// takes the file's, kept at its next update.
fn check_history_id(dir: &DataDir, mut control: ControlFile) -> Result<ControlFile, NodeError> {
    let tli = control.timeline;
    let file = crate::store::history_id_of(&dir.root, tli);
    match (control.history_id, file) {
        (0, found) => control.history_id = found.unwrap_or(0),
        (ours, Some(theirs)) if ours != theirs => {
            return Err(NodeError::HistoryIdMismatch {
                tli,
                control: crate::wal::timeline::format_history_id(ours),
                file: crate::wal::timeline::format_history_id(theirs),
            })
        }
        (ours, None) => {
            return Err(NodeError::HistoryIdMissing {
                tli,
                control: crate::wal::timeline::format_history_id(ours),
            })
        }
        _ => {}
    }
    Ok(control)
}

fn start_primary(node: &Arc<Node>) -> Result<(), NodeError> {
    let control = node.control();
    if control.state != ClusterState::ShutDown {
        tracing::warn!(state = %control.state, "database system was not properly shut down; automatic recovery in progress");
    }
    let history =
        crate::wal::read_history(&node.dir.wal(), control.timeline).map_err(|source| {
            NodeError::History {
                tli: control.timeline,
                source,
            }
        })?;
    let settings = node.settings();
    let repair = recovery::WalRepair::from_settings(
        &*node.storage,
        &node.dir.root,
        &settings,
        control.wal_segment_size,
        false,
    );
    let rec = recovery::replay_to_end(
        &node.dir.root,
        &control,
        history.clone(),
        &node.store,
        &repair,
    )?;
    node.note_wal_repairs(rec.repaired.clone());
    if control.min_recovery_point.is_valid() && rec.end < control.min_recovery_point {
        // A base backup cut short by a crash (or a standby that lost WAL
        // it had replayed): serving it would present an older state as
        // the copy. PostgreSQL: "WAL ends before end of online backup".
        return Err(NodeError::BeforeConsistency {
            end: rec.end,
            min_recovery_point: control.min_recovery_point,
        });
    }
    let crashed = control.state != ClusterState::ShutDown;
    if crashed {
        let synced = recovery::sync_replayed_wal(&node.segdir, control.redo_lsn, rec.end)?;
        tracing::debug!(segments = synced, "replayed WAL is durable");
    }
    tracing::info!(records = rec.records_replayed, end = %rec.end, elapsed_ms = rec.elapsed_ms, "recovery complete");
    // A crash inside a promotion's last window may have taken the new
    // timeline's first segment by name (never anything acknowledged).
    recovery::restore_switch_segment(&node.segdir, &history, control.system_identifier, rec.end)
        .map_err(|source| NodeError::History {
            tli: control.timeline,
            source,
        })?;
    let mut wal_cfg = WalConfig::new(
        node.dir.wal(),
        control.system_identifier,
        control.timeline,
        control.wal_segment_size,
        rec.end,
        rec.prev_record,
    );
    wal_cfg.segdir = Some(node.segdir.clone());
    wal_cfg.archive_mode = node.settings().archive_mode != ArchiveMode::Off;
    wal_cfg.wal_writer_delay = node
        .settings()
        .wal_writer_delay
        .get()
        .unwrap_or(Duration::from_millis(200));
    let wal = Arc::new(Wal::start(wal_cfg).map_err(NodeError::StartWal)?);
    node.control_file.update(|c| {
        c.state = ClusterState::InProduction;
        // Consistent now; a later crash recovery needs no minimum.
        c.min_recovery_point = crate::Lsn::INVALID;
    })?;
    node.attach_wal(wal)
        .map_err(spawn("WAL writer's threads"))?;
    // Under HA the crashed primary may have lost the leader key and must
    // then rejoin the new leader: a checkpoint past the fork would forbid
    // that, so it waits for the next timed or WAL-triggered checkpoint.
    if crashed && !node.gate.controlled() {
        // As PostgreSQL, crash recovery ends with a checkpoint so the WAL
        // just replayed is not needed again; unlike it, the node serves
        // meanwhile (the replayed WAL is durable and the last checkpoint
        // stays valid until this one completes: docs/architecture.md,
        // "What bounds restart time").
        node.request_checkpoint(CheckpointCause::EndOfRecovery);
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

/// End every session at once: the sessions are told first, then what
/// their writes wait for (synchronous standbys) is released, so no waiting
/// client hears anything but the termination.
fn terminate_server(node: &Arc<Node>, mut server: Server, why: crate::server::Termination) {
    server.begin_termination(why);
    node.syncrep.shutdown();
    server.shutdown();
}

/// What the sessions are told when the node ends them after a crash.
#[derive(Debug, Clone)]
pub struct Termination {
    /// The error each Redis client reads.
    pub redis: crate::server::Termination,
    /// The FATAL each replication session receives.
    pub replication: crate::replication::sqlstate::PgError,
}

/// Bind the replication port and start the walsender listener.
fn start_replication(node: &Arc<Node>) -> Result<ReplicationServerHandle, NodeError> {
    let config = &node.settings();
    let addr = listen_addr(&config.listen_addresses, config.replication_port)?;
    let listener = std::net::TcpListener::bind(addr).map_err(listen(addr, "replication_port"))?;
    let registry = WalSenderRegistry::new(config.max_wal_senders as usize);
    registry.set_observer(Arc::new(replication::ReplyObserver {
        node: Arc::downgrade(node),
    }));
    *node.registry.lock().unwrap_or_else(|e| e.into_inner()) = Some(registry.clone());
    let options = ServerOptions {
        instance_id: node.instance_id,
        ..ServerOptions::from_config(config, &node.dir.root)?
    };
    let handle = crate::replication::server::spawn(
        listener,
        Arc::new(replication::NodeSource::new(node)),
        node.slots.clone(),
        registry,
        options,
    )
    .map_err(spawn("replication server"))?;
    node.ports
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replication = handle.local_addr().port();
    Ok(handle)
}

/// How long fast shutdown lets commits wait for synchronous standbys.
const SYNC_WAIT_GRACE: Duration = Duration::from_secs(5);

fn listen_addr(listen: &str, port: u16) -> Result<SocketAddr, NodeError> {
    let host = listen.split(',').next().unwrap_or("127.0.0.1").trim();
    let host = if host == "*" || host.is_empty() {
        "0.0.0.0"
    } else {
        host
    };
    let ip: IpAddr = host.parse().map_err(|_| NodeError::ListenAddresses {
        value: listen.to_string(),
    })?;
    Ok(SocketAddr::new(ip, port))
}

fn listen(addr: SocketAddr, parameter: &'static str) -> impl FnOnce(std::io::Error) -> NodeError {
    move |source| NodeError::Listen {
        addr,
        parameter,
        source,
    }
}

fn spawn(what: &'static str) -> impl FnOnce(std::io::Error) -> NodeError {
    move |source| NodeError::Spawn { what, source }
}
