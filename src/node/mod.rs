//! One running node: opens the data directory, recovers, starts its threads
//! (WAL writer, WAL event listener, checkpointer, archiver, listeners, and on
//! a standby the recovery runtime) and stops them in PostgreSQL's order.
//!
//! # Layout
//! - `running`: [`RunningNode`], start-up and fast shutdown.
//! - [`init`]: `walrep init`, a new data directory with its first checkpoint.
//! - [`recovery`]: crash recovery (snapshot + redo to the end of WAL).
//! - [`checkpoint`]: the checkpointer, restartpoints and WAL removal.
//! - [`info`]: the node's INFO sections and its status snapshot.
//! - [`replication`]: the node as a replication source; standby replies.
//! - `reload`: re-reading `walrep.toml` on SIGHUP or `walrep reload`.

pub mod checkpoint;
pub mod disk;
mod error;
pub mod fence;
pub mod info;
pub mod init;
pub mod promotion_hold;
pub mod recovery;
mod reload;
pub mod replication;
pub mod resetwal;
pub mod restart;
mod running;
pub mod startpoint;
mod walrepair;

pub use error::NodeError;
pub use running::{RunningNode, StartOptions, Termination};

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::archive::{self, ArchiveNotifier, ArchiverConfig, ArchiverHandle};
use crate::config::Config;
pub use crate::datadir::{DataDir, DataDirLock};
use crate::replication::registry::WalSenderRegistry;
use crate::replication::slots::SlotManager;
use crate::server::{Backend, Notify, PendingWait, Role, StartedWait, WriteError};
use crate::standby::{NodeHooks, StandbyError, StandbyProgress};
use crate::storage::{Storage, SyncFailure};
use crate::store::{ControlFile, ControlFileOwner, Level, Store};
use crate::syncrep::SyncRep;
use crate::wal::writer::FlushHook;
use crate::wal::{SegmentDir, Wal, WalError, WalEvent};
use crate::watch::Watch;
use crate::Lsn;
use checkpoint::{CheckpointCause, CheckpointDone};

const ROLE_PRIMARY: u8 = 0;
const ROLE_STANDBY: u8 = 1;
const ROLE_RECOVERING: u8 = 2;

/// Why a running node should stop.
#[derive(Debug)]
pub enum ExitRequest {
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// The node cannot go on.
    Fatal(FatalError),
    /// The HA loop found another member holding the leader key while this
    /// node runs as a primary: stop (fenced), rejoin against the leader,
    /// start again as its standby.
    Demote {
        /// The leader's replication address and this member's name.
        conninfo: String,
    },
}

/// Why a node cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    /// Recovery cannot go on (PostgreSQL's FATAL in the startup process).
    #[error(transparent)]
    Recovery(#[from] StandbyError),
    /// An fsync failed (PostgreSQL's PANIC): what was written may be lost,
    /// and an fsync is never retried.
    #[error(
        "{0}; stopping: after a failed fsync the data may be lost, and an fsync \
         is never retried (restart to recover from the WAL)"
    )]
    SyncFailed(SyncFailure),
    /// A WAL write failed (a full disk, an IO error): the writer stopped
    /// for good and nothing more can be committed until crash recovery
    /// runs again from what is on disk.
    #[error("{0}")]
    WalWriterFailed(WalError),
}

impl FatalError {
    /// Whether `restart_after_crash` restarts the node after this failure:
    /// an IO failure is cured by crash recovery from what is on disk (once
    /// the disk has room); a recovery that cannot go on is not.
    pub fn restartable(&self) -> bool {
        matches!(
            self,
            FatalError::SyncFailed(_) | FatalError::WalWriterFailed(_)
        )
    }

    /// What stopped the WAL writer, in the words clients are given:
    /// "a WAL write failure" and its cause.
    pub fn what_and_cause(&self) -> (&'static str, String) {
        match self {
            FatalError::SyncFailed(f) => ("a failed fsync", f.to_string()),
            FatalError::WalWriterFailed(e) => ("a WAL write failure", e.to_string()),
            FatalError::Recovery(e) => ("a recovery failure", e.to_string()),
        }
    }

    /// Whether the failure was a full disk (ENOSPC or EDQUOT).
    pub fn disk_full(&self) -> bool {
        match self {
            FatalError::SyncFailed(f) => {
                disk::is_disk_full(&std::io::Error::other(f.error.clone()))
            }
            FatalError::WalWriterFailed(e) => disk::is_disk_full(e),
            FatalError::Recovery(e) => disk::is_disk_full(e),
        }
    }
}

/// Shared state of one node, owned by [`RunningNode`]. The node's own
/// threads (checkpointer, WAL event listener) hold it; everything else sees
/// it through a narrow interface: the Redis front end as `Backend`,
/// walsenders as [`replication::NodeSource`], base backups as
/// [`BackupSource`](crate::backup::server::BackupSource), the status server
/// as [`SnapshotProvider`](crate::status::SnapshotProvider) and the standby
/// runtime as [`NodeHooks`] beside its own handles.
pub struct Node {
    pub(crate) dir: DataDir,
    /// The running configuration; a reload replaces it
    /// ([`Node::reload_config`]).
    pub config: crate::config::LiveConfig,
    /// `-c` overrides of `walrep start`: they win over the file at every
    /// reload too, as PostgreSQL's command-line options do. The HA loop
    /// appends its own (`primary_conninfo` of the leader it follows), which
    /// win over both.
    overrides: Mutex<Vec<String>>,
    /// Every durable write of the node goes through it; the first failed
    /// fsync poisons it and stops the node
    /// ([`crate::storage::PoisonOnSyncFailure`]).
    pub storage: Arc<dyn Storage>,
    /// The control file; every update goes through it.
    pub control_file: Arc<ControlFileOwner>,
    pub(crate) store: Arc<Store>,
    /// The WAL writer; `None` on a standby until it is promoted.
    wal: RwLock<Option<Arc<Wal>>>,
    role: AtomicU8,
    /// The HA write gate: checked at every write's admission and before
    /// every acknowledgement (always open with HA off).
    gate: Arc<fence::WriteGate>,
    /// A promotion's hold while its control file update is in flight: no
    /// acknowledgement, no visibility, no WAL of the new timeline sent.
    promotion_hold: Arc<promotion_hold::PromotionHold>,
    pub(crate) syncrep: Arc<SyncRep>,
    checkpoint_lock: Mutex<()>,
    /// Callers waiting for `checkpoint_lock` with a checkpoint that must
    /// not wait (shutdown, a base backup's start): a spread checkpoint
    /// running meanwhile finishes at full speed, as PostgreSQL's does.
    pub(crate) checkpoint_waiters: std::sync::atomic::AtomicUsize,
    last_checkpoint: Mutex<Option<(CheckpointDone, u64)>>,
    /// Requests to the checkpointer thread (bounded; a full queue already
    /// holds a request that serves this one too).
    checkpoint_requests: Sender<CheckpointCause>,
    pub(crate) started_at: Instant,
    /// Ports the listeners are bound to, known once they are (a test asks for port 0).
    pub ports: Mutex<Ports>,
    shutting_down: AtomicBool,
    /// A fatal error asked the node to stop: fast shutdown then writes no
    /// shutdown checkpoint (what is in memory may be ahead of what is
    /// durable), and the next start runs crash recovery.
    crashed: AtomicBool,
    /// The WAL directory handle shared by the writer, walsenders and
    /// removal (so a walsender knows what was removed).
    pub segdir: Arc<SegmentDir>,
    /// Replication slots (`slots/`).
    pub slots: Arc<SlotManager>,
    registry: Mutex<Option<Arc<WalSenderRegistry>>>,
    /// Directly connected standbys' positions, published on every reply
    /// (WAIT).
    replies: Watch<Vec<crate::syncrep::StandbyPosition>>,
    /// A standby's progress, as its runtime publishes it (kept after a
    /// promotion, for INFO); `None` on a node started as a primary.
    pub standby: Option<StandbyProgress>,
    /// Threads that follow the WAL writer (started with it, also at promotion).
    wal_threads: Mutex<WalThreads>,
    /// Where a fatal recovery error or a signal asks the node to stop.
    exit_tx: Sender<ExitRequest>,
    /// Snapshots and WAL that running base backups still copy.
    pub backup_pins: Arc<crate::backup::pin::BackupPins>,
    /// Random per start: sent to replication clients (`walrep_instance_id`)
    /// so a walreceiver pointed at its own node refuses to stream.
    pub instance_id: u64,
    /// Damaged WAL segments crash recovery replaced at this start (INFO).
    wal_repairs: Mutex<Vec<recovery::RepairedSegment>>,
    /// What the HA loop last found (INFO); `None` with HA off.
    ha_status: Mutex<Option<crate::ha::status::HaStatus>>,
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
    /// The Redis port (`port`).
    pub redis: u16,
    /// The replication port (`replication_port`).
    pub replication: u16,
}

impl Node {
    /// The running configuration (as last reloaded).
    pub fn settings(&self) -> Arc<Config> {
        self.config.get()
    }

    /// A copy of the control file as last written.
    pub fn control(&self) -> ControlFile {
        self.control_file.get()
    }

    /// The WAL writer; `None` while the node is a standby.
    pub fn wal(&self) -> Option<Arc<Wal>> {
        self.wal.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The HA write gate (fence) of this node.
    pub fn write_gate(&self) -> &Arc<fence::WriteGate> {
        &self.gate
    }

    /// Record what the HA loop last found (INFO, `walrep status`).
    pub fn set_ha_status(&self, status: crate::ha::status::HaStatus) {
        *self.ha_status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }

    /// What the HA loop last found; `None` with HA off or before its
    /// first cycle.
    pub fn ha_status(&self) -> Option<crate::ha::status::HaStatus> {
        self.ha_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Under automatic failover: count only these standbys' confirmations
    /// (those the `sync` key names); `None` counts every standby
    /// `synchronous_standby_names` names.
    pub fn set_sync_allowed(&self, names: Option<Vec<String>>) {
        self.syncrep.set_allowed(names, &self.standby_positions());
    }

    /// Whether the node writes WAL (started as a primary, or promoted).
    pub fn is_primary(&self) -> bool {
        self.role.load(Ordering::SeqCst) == ROLE_PRIMARY
    }

    /// A standby replayed up to its consistency point: reads are served.
    fn set_consistent(&self) {
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

    /// The key-value store, as this node's readers see it (tests watch a
    /// primary through it while its Redis worker is inside a flush).
    pub fn kv_store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The walsenders connected to this node (`pg_stat_replication`); `None` before the replication port is up.
    pub fn registry(&self) -> Option<Arc<WalSenderRegistry>> {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Crash recovery replaced these damaged segments.
    pub fn note_wal_repairs(&self, repaired: Vec<recovery::RepairedSegment>) {
        *self.wal_repairs.lock().unwrap_or_else(|e| e.into_inner()) = repaired;
    }

    /// The damaged segments crash recovery replaced at this start.
    pub fn wal_repairs(&self) -> Vec<recovery::RepairedSegment> {
        self.wal_repairs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn last_checkpoint(&self) -> Option<(CheckpointDone, u64)> {
        self.last_checkpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn archiver_stats(&self) -> Option<archive::ArchiverStatsHandle> {
        self.wal_threads().archiver_stats.clone()
    }

    fn wal_threads(&self) -> MutexGuard<'_, WalThreads> {
        self.wal_threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ask the node to stop (the main thread is waiting for this).
    pub fn request_exit(&self, why: ExitRequest) {
        if matches!(&why, ExitRequest::Fatal(e) if e.restartable()) {
            self.crashed.store(true, Ordering::SeqCst);
        }
        let _ = self.exit_tx.try_send(why);
    }

    /// End of the last record in the store: the WAL writer's insert
    /// position on a primary, the replay position on a standby.
    pub fn replay_end(&self) -> Lsn {
        match (self.wal(), &self.standby) {
            (Some(wal), _) => wal.inserted(),
            (None, Some(p)) => p.replayed.read(|r| r.end),
            (None, None) => Lsn::INVALID,
        }
    }

    /// Make `wal` the node's WAL writer and start what follows it (the WAL
    /// event listener; the archiver where `archive_mode` wants one on a
    /// primary). Used at start-up of a primary and at promotion.
    pub fn attach_wal(&self, wal: Arc<Wal>) -> std::io::Result<()> {
        *self.wal.write().unwrap_or_else(|e| e.into_inner()) = Some(wal.clone());
        wal.set_flush_hook(flush_hook(
            self.store.visibility().clone(),
            self.syncrep.clone(),
            self.promotion_hold.clone(),
        ));
        // Flushes before the hook (the end-of-recovery record) are covered
        // here: set_flush_hook returns only once none is in progress.
        // Under a promotion's hold they wait for its release.
        let flushed = wal.flushed();
        if !self.promotion_hold.defer_flush(flushed) {
            self.store.visibility().advance_all(flushed);
            self.syncrep.on_local_flush(flushed);
        }
        let notifier = self.ensure_archiver(false)?;
        let failed = self.exit_tx.clone();
        let listener = start_wal_listener(&wal, notifier, failed)?;
        self.wal_threads().listener = Some(listener);
        Ok(())
    }

    /// Promotion: until [`Node::release_promotion`], acknowledge nothing,
    /// make no flushed write visible and send no WAL of the new timeline
    /// (which starts at `at`). See [`promotion_hold`].
    pub fn hold_promotion(&self, at: Lsn) {
        self.promotion_hold.hold(at);
    }

    /// The promotion's control file update returned (`ok`: it is
    /// durable). Visibility and synchronous replication catch up on the
    /// flushes held meanwhile, waiting writers and walsenders wake. On
    /// failure nothing is released: the node is stopping.
    pub fn release_promotion(&self, ok: bool) {
        let deferred = self.promotion_hold.release(ok);
        if !ok {
            return;
        }
        let Some(wal) = self.wal() else { return };
        // What the hook deferred, and any flush published since.
        let flushed = wal.flushed().max(deferred);
        self.store.visibility().advance(Level::LocalFlush, flushed);
        if !self.syncrep.defined() {
            self.store.visibility().advance_all(flushed);
        }
        self.syncrep.on_local_flush(flushed);
    }

    /// Become a primary: writes are accepted from now on.
    pub fn accept_writes(&self) {
        self.role.store(ROLE_PRIMARY, Ordering::SeqCst);
    }

    /// Ask the checkpointer for a checkpoint soon (does not wait).
    pub fn request_checkpoint(&self, cause: CheckpointCause) {
        let _ = self.checkpoint_requests.try_send(cause);
    }

    /// Start the archiver if `archive_mode` asks for one in this role.
    /// Fails only if its thread cannot be started.
    fn ensure_archiver(&self, in_recovery: bool) -> std::io::Result<Option<ArchiveNotifier>> {
        let mut t = self.wal_threads();
        if let Some((h, _)) = &t.archiver {
            return Ok(Some(h.notifier()));
        }
        if !archive::archiver_should_run(self.settings().archive_mode, in_recovery) {
            return Ok(None);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let handle = archive::spawn_archiver(
            ArchiverConfig::from_config(&self.dir.root, &self.settings(), self.storage.clone()),
            rx,
        )
        .map_err(|e| match e {
            archive::ArchiveError::Thread(e) => e,
            other => std::io::Error::other(other),
        })?;
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

impl Node {
    /// A `remote_apply` commit tells the walsenders before its flush, so
    /// the keepalive that announces the flush asks the standbys to report
    /// their replay at once (standbys that report apply on request).
    fn announce_apply_wait(&self, end: Lsn, level: Level) {
        if level == Level::RemoteApply && self.syncrep.defined() {
            self.syncrep.want_apply(end);
        }
    }

    /// The last check before an acknowledgement: a node fenced while the
    /// write waited answers an error, never "OK"; during a promotion's
    /// control file update it waits for that to be durable.
    fn gate_after_wait(&self) -> Result<(), WriteError> {
        self.promotion_hold
            .wait_open(promotion_hold::HOLD_WAIT_LIMIT)
            .map_err(|_| WriteError::PromotionUnfinished)?;
        if !self.gate.is_open() {
            return Err(WriteError::FencedUnconfirmed);
        }
        Ok(())
    }
}

/// A write flushed here, waiting for the synchronous standbys on a Redis
/// worker's loop ([`Backend::start_wait`]).
struct RemoteWait {
    wait: crate::syncrep::SyncWait,
    gate: Arc<fence::WriteGate>,
}

impl PendingWait for RemoteWait {
    fn poll(&self) -> Option<Result<(), WriteError>> {
        let result = self.wait.poll()?;
        if result.is_ok() && !self.gate.is_open() {
            return Some(Err(WriteError::FencedUnconfirmed));
        }
        Some(result)
    }
}

fn wal_error(e: WalError) -> WriteError {
    match e {
        WalError::ShutDown => WriteError::ShuttingDown,
        other => WriteError::WalFailed(other),
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
        if !self.gate.is_open() {
            return Err(WriteError::Fenced);
        }
        let wal = self.wal().ok_or(WriteError::ReadOnly)?;
        wal.insert(crate::store::record::RM_KV, info, payload)
            .map_err(wal_error)
    }

    /// Every acknowledgement passes here last, so the write gate is
    /// checked right before it: a node fenced while the write waited
    /// answers an error, never "OK".
    fn wait(&self, end: Lsn, level: Level) -> Result<(), WriteError> {
        if level > Level::Immediate {
            let wal = self.wal().ok_or(WriteError::ReadOnly)?;
            self.announce_apply_wait(end, level);
            wal.wait_flushed(end).map_err(wal_error)?;
            // The flush hook made the write readable by everyone before the
            // flush was published, so before its client hears "OK".
            debug_assert!(self.store.visibility().released(Level::LocalFlush) >= end);
        }
        if level >= Level::RemoteWrite {
            self.syncrep.wait(end, level)?;
        }
        self.gate_after_wait()
    }

    /// The local levels are met by the WAL alone: the caller flushes
    /// inline when no flush is in progress (PostgreSQL's XLogFlush), or
    /// joins the one in progress. The remote levels wait for standbys.
    fn wait_local(&self, end: Lsn, level: Level) -> Option<Result<(), WriteError>> {
        (level <= Level::LocalFlush).then(|| self.wait(end, level))
    }

    /// The local flush inline (as [`Backend::wait_local`]), then the wait
    /// for standbys without blocking: the reply that confirms it wakes the
    /// caller's loop directly, with no committer thread between them.
    fn start_wait(&self, end: Lsn, level: Level, notify: &Notify) -> Option<StartedWait> {
        if level <= Level::LocalFlush {
            return Some(StartedWait::Done(self.wait(end, level)));
        }
        let Some(wal) = self.wal() else {
            return Some(StartedWait::Done(Err(WriteError::ReadOnly)));
        };
        self.announce_apply_wait(end, level);
        if let Err(e) = wal.wait_flushed(end) {
            return Some(StartedWait::Done(Err(wal_error(e))));
        }
        // No standby gets WAL of a promotion's new timeline before its
        // control file is durable, and no write of it is confirmed.
        if self
            .promotion_hold
            .wait_open(promotion_hold::HOLD_WAIT_LIMIT)
            .is_err()
        {
            return Some(StartedWait::Done(Err(WriteError::PromotionUnfinished)));
        }
        let pending = match self.syncrep.start_wait(end, level, notify.clone()) {
            None => return Some(StartedWait::Done(self.gate_after_wait())),
            Some(w) => w,
        };
        Some(StartedWait::Pending(Box::new(RemoteWait {
            wait: pending,
            gate: self.gate.clone(),
        })))
    }

    fn write_ahead(&self, end: Lsn) {
        let Some(wal) = self.wal() else { return };
        if wal.written() < end {
            let _ = wal.write_ahead();
        }
    }

    fn after_async_commit(&self) {
        if let Some(wal) = self.wal() {
            let _ = wal.after_async_commit();
        }
    }

    fn sync_standbys_defined(&self) -> bool {
        self.syncrep.defined()
    }

    /// The configuration, with `port` and `replication_port` as actually
    /// bound (port 0 in the file picks a free port).
    fn config(&self) -> Arc<Config> {
        let ports = *self.ports.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = (*self.settings()).clone();
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

    fn wait_flushed(&self, upto: Lsn, timeout: Duration) -> bool {
        self.wal()
            .is_some_and(|wal| wal.wait_flushed_passively(upto, timeout))
    }
}

/// What the standby runtime asks of the node.
impl NodeHooks for Node {
    fn reached_consistency(&self, _at: Lsn) {
        self.set_consistent();
    }

    fn wake_archiver(&self) {
        self.notify_archiver();
    }

    fn attach_wal(&self, wal: Arc<Wal>) -> std::io::Result<()> {
        Node::attach_wal(self, wal)
    }

    fn hold_promotion(&self, at: Lsn) {
        Node::hold_promotion(self, at);
    }

    fn release_promotion(&self, ok: bool) {
        Node::release_promotion(self, ok);
    }

    fn accept_writes(&self) {
        Node::accept_writes(self);
    }

    fn request_checkpoint(&self) {
        Node::request_checkpoint(self, CheckpointCause::EndOfRecovery);
    }

    fn fatal(&self, error: StandbyError) {
        self.request_exit(ExitRequest::Fatal(FatalError::Recovery(error)));
    }
}

/// What every WAL flush does inline, before its waiters are released: make
/// the flushed writes visible (all levels when no synchronous standby is
/// configured) and let synchronous replication follow in degraded mode.
/// Inline rather than on an event thread: a commit then wakes nobody.
fn flush_hook(
    vis: Arc<crate::store::Visibility>,
    syncrep: Arc<SyncRep>,
    hold: Arc<promotion_hold::PromotionHold>,
) -> FlushHook {
    Box::new(move |lsn| {
        if hold.defer_flush(lsn) {
            return;
        }
        vis.advance(Level::LocalFlush, lsn);
        if !syncrep.defined() {
            vis.advance_all(lsn);
        }
        syncrep.on_local_flush(lsn);
    })
}

/// Follows the WAL writer's events: a completed segment wakes the archiver;
/// a failure that stopped the writer asks the node to stop (and, with
/// `restart_after_crash`, to recover and serve again). (Flushes are
/// followed inline by [`flush_hook`].)
fn start_wal_listener(
    wal: &Arc<Wal>,
    archiver: Option<ArchiveNotifier>,
    exit_tx: Sender<ExitRequest>,
) -> std::io::Result<JoinHandle<()>> {
    let events = wal.subscribe_segments();
    let writer = Arc::downgrade(wal);
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
                    let Some(cause) = writer.upgrade().and_then(|w| w.poisoned()) else {
                        continue;
                    };
                    tracing::error!("WAL writer stopped after an IO failure: the node stops serving and recovers from what is on disk");
                    let _ = exit_tx.try_send(ExitRequest::Fatal(FatalError::WalWriterFailed(cause)));
                }
                WalEvent::ShutDown => break,
            }
        }
    })
}
