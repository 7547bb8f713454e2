//! The standby runtime: drives the recovery machine of `walrep-states` with
//! events from its watchers and executes its actions.
//!
//! It runs on the handles it is given ([`StandbyHandles`]): the control
//! file's owner, the WAL directory, the store, the configuration, the
//! watches it publishes its progress on, and [`NodeHooks`] for the few
//! things only the node can do (serve reads, take over the WAL writer at
//! promotion, accept writes, checkpoint, wake the archiver, stop). It knows
//! nothing else of the node, so it runs alone in a test with a double of
//! the hooks.
//!
//! # Layout
//! - `startup`: the startup process (owns the core; the event loop).
//! - `fetcher`: restore_command and local `wal/` lookups.
//! - [`pending`]: `backup_in_progress`, the marker of a copy still arriving.
//! - [`events`]: the startup thread's event queue, whose senders unpark it.
//! - `redo`: applies WAL records up to the limit the machine gives.
//! - [`receiver`]: the walreceiver (streams WAL from the upstream).
//! - `promote`: the promotion steps.
//! - [`trigger`]: promote_trigger_file and `walrep promote`.
//! - [`progress`]: replay and receive positions and the published status.
//! - [`tracelog`]: the transition trace in `log/transitions.jsonl`.

pub(crate) mod confirmed;
pub mod events;
pub(crate) mod fetcher;
pub mod pending;
pub mod progress;
pub(crate) mod promote;
pub mod receiver;
pub(crate) mod redo;
pub mod replayed;
pub(crate) mod startup;
pub mod tracelog;
pub mod trigger;

pub use progress::{StandbyProgress, StandbyStatus};
pub use replayed::Replayed;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};

use events::EventSender;

use crate::archive::RestoreCommand;
use crate::config::{Config, RecoveryTargetTimeline};
use crate::datadir::DataDir;
use crate::states::recovery::{
    ConfigError, Event, PromoteTrigger, Recovery, RecoveryConfig, TargetTimeline,
};
use crate::storage::Storage;
use crate::store::control::ControlError;
use crate::store::{ClusterState, ControlFile, ControlFileOwner, Store};
use crate::wal::{SegmentDir, SegmentError, TimelineError, Wal};
use crate::{Lsn, TimelineId};
use fetcher::Fetcher;
use redo::{Redo, RedoLink};
use startup::Startup;
use trigger::{spawn_trigger_watcher, TriggerConfig, TriggerError, TriggerEvent};

/// Capacity of the startup process's event queue. Producers are the fetcher
/// and redo (one outstanding request each), one walreceiver session and the
/// trigger watcher, so it never fills in practice; a full queue blocks the
/// producer rather than growing.
const EVENT_QUEUE: usize = 4096;

/// What the standby runtime works on. Everything here is shared with the
/// node (which keeps serving reads, walsenders and checkpoints beside it).
#[derive(Clone)]
pub struct StandbyHandles {
    /// The data directory (`wal/`, `log/`, `standby.signal`, `promote`).
    pub datadir: PathBuf,
    /// The node's one IO seam: restored files, history files, archive
    /// status and `standby.signal` go through it.
    pub storage: Arc<dyn Storage>,
    /// The node's running configuration (restore_command,
    /// primary_conninfo, ...): a reload replaces it, and the runtime
    /// follows (a new upstream, a new restore_command).
    pub config: crate::config::LiveConfig,
    /// The control file: recovery starts from its checkpoint, marks it in
    /// archive recovery, and promotion moves it to the new timeline.
    pub control: Arc<ControlFileOwner>,
    /// The WAL directory, shared with walsenders, WAL removal and the WAL
    /// writer promotion starts.
    pub segdir: Arc<SegmentDir>,
    /// The store WAL is replayed into (holding the checkpoint's snapshot).
    pub store: Arc<Store>,
    /// Where the runtime publishes its progress (the node reads it).
    pub progress: StandbyProgress,
    /// This node's instance identifier: the walreceiver refuses to stream
    /// from a server that has it (itself).
    pub instance_id: u64,
    /// What only the node can do.
    pub hooks: Arc<dyn NodeHooks>,
}

/// What only the node can do, asked by the standby runtime. The node
/// implements it; a test double records what was asked.
pub trait NodeHooks: Send + Sync + 'static {
    /// Replay reached the minimum recovery point at `at`: serve reads.
    fn reached_consistency(&self, at: Lsn);

    /// A restored or received file was marked `.ready`
    /// (`archive_mode = always`): wake the archiver.
    fn wake_archiver(&self);

    /// Promotion: `wal` writes the new timeline and its end-of-recovery
    /// record is inserted (made durable under the hold, see
    /// [`NodeHooks::hold_promotion`]). Make it the node's WAL writer (its flush hook,
    /// the archiver, walsenders following the new timeline); writes are
    /// not accepted yet. Fails only if a thread cannot be started.
    fn attach_wal(&self, wal: Arc<Wal>) -> io::Result<()>;

    /// Promotion, before [`NodeHooks::attach_wal`]: the new timeline's
    /// names, the control file's update and the end-of-recovery record
    /// are about to be made durable while writes start. Until
    /// [`NodeHooks::release_promotion`], acknowledge no write, make no
    /// flushed write visible and send no WAL of the new timeline (which
    /// starts at `at`).
    fn hold_promotion(&self, at: Lsn);

    /// The promotion's last syncs returned: `ok`, they are durable
    /// (release what [`NodeHooks::hold_promotion`] held); else the node is
    /// stopping and nothing of the new timeline is ever confirmed.
    fn release_promotion(&self, ok: bool);

    /// Promotion is complete: accept writes.
    fn accept_writes(&self);

    /// Ask for a checkpoint soon (PostgreSQL requests one right after
    /// promotion); does not wait for it.
    fn request_checkpoint(&self);

    /// Recovery cannot go on (PostgreSQL's FATAL in the startup process):
    /// stop the node.
    fn fatal(&self, error: StandbyError);
}

/// Errors of the standby runtime: it could not start, or recovery cannot
/// go on (handed to [`NodeHooks::fatal`]).
#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    /// The recovery settings (targets, timeouts) are inconsistent.
    #[error("invalid recovery settings: {0}")]
    Settings(#[from] ConfigError),
    /// The control file's timeline has no readable history file.
    #[error("could not read the history of timeline {tli}: {source}")]
    History {
        /// The control file's timeline.
        tli: TimelineId,
        /// Why its history could not be read.
        source: TimelineError,
    },
    /// The control file could not be read or updated.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The operating system refused one of the runtime's threads.
    #[error("could not start the {thread} thread: {source}")]
    Spawn {
        /// Which thread (`startup`, `fetcher`, `redo`, ...).
        thread: &'static str,
        /// The spawn error.
        source: io::Error,
    },
    /// The promotion trigger watcher could not start.
    #[error(transparent)]
    Trigger(#[from] TriggerError),
    /// The machine stopped recovery (its reason is text: `walrep-states`
    /// knows no runtime types).
    #[error("{message}")]
    Recovery {
        /// The machine's reason, as it logs it.
        message: String,
    },
    /// A write or fsync of received WAL failed: never retried.
    #[error("walreceiver IO failure: could not write received WAL: {0}")]
    ReceivedWal(Arc<SegmentError>),
    /// The completed base backup could not be loaded.
    #[error("the completed base backup cannot be used: {0}")]
    CompletedBackup(String),
    /// A promotion step after the node accepted writes (the new
    /// timeline's names, the end-of-recovery record) failed: nothing of
    /// the new timeline was confirmed.
    #[error("the promotion could not finish: {0}")]
    Promotion(#[from] promote::PromotionError),
}

fn spawn_error(thread: &'static str) -> impl FnOnce(io::Error) -> StandbyError {
    move |source| StandbyError::Spawn { thread, source }
}

/// The threads of a running standby.
pub struct StandbyRuntime {
    /// The startup process's queue: shutdown is queued on it.
    events: Option<EventSender<Event>>,
    /// Dropped at shutdown: ends the reload watcher.
    shutdown: Option<Sender<()>>,
    reload_watcher: Option<JoinHandle<()>>,
    redo_stop: Arc<AtomicBool>,
    startup: Option<JoinHandle<()>>,
    fetcher: Option<JoinHandle<()>>,
    redo: Option<JoinHandle<()>>,
    trigger: Option<(trigger::TriggerWatcherHandle, Sender<()>)>,
    cancel_restore: Option<Sender<()>>,
    /// Waits for a two-phase base backup's copy to complete.
    backup_wait: Option<JoinHandle<()>>,
}

/// The machine's parameters from `walrep.toml`.
pub fn recovery_config(config: &Config, seg_size: crate::WalSegSize) -> RecoveryConfig {
    let interval = config
        .wal_retrieve_retry_interval
        .get()
        .unwrap_or_default()
        .as_millis()
        .max(1) as u64;
    RecoveryConfig {
        wal_segment_size: seg_size,
        archive_configured: !config.restore_command.trim().is_empty(),
        stream_configured: !config.primary_conninfo.trim().is_empty(),
        target_timeline: match config.recovery_target_timeline {
            RecoveryTargetTimeline::Latest => TargetTimeline::Latest,
            RecoveryTargetTimeline::Current => TargetTimeline::Current,
            RecoveryTargetTimeline::Id(n) => TargetTimeline::Id(crate::TimelineId(n)),
        },
        wal_retrieve_retry_interval_ms: interval,
        retry_backoff_max_ms: interval.max(60_000),
        ..RecoveryConfig::default()
    }
}

impl StandbyRuntime {
    /// Start recovery on `h` (its store already holds the snapshot of the
    /// control file's checkpoint).
    pub fn start(h: StandbyHandles) -> Result<StandbyRuntime, StandbyError> {
        let dir = DataDir::new(&h.datadir);
        let control = h.control.get();
        let seg_size = control.wal_segment_size;
        let config = h.config.get();
        let core = Recovery::new(recovery_config(&config, seg_size))?;
        let history = match crate::wal::read_history(&dir.wal(), control.timeline) {
            // A copy still arriving may not have its history file yet.
            Err(_) if h.progress.base_pending.load(Ordering::SeqCst) => {
                crate::TimelineHistory::root(control.timeline)
            }
            other => other.map_err(|source| StandbyError::History {
                tli: control.timeline,
                source,
            })?,
        };
        // Redo's position until it replays: the checkpoint's.
        h.progress.replayed.publish(Replayed {
            end: control.redo_lsn,
            last_record: control.checkpoint_lsn,
            tli: history.timeline_of(control.redo_lsn),
            ..Replayed::default()
        });
        let pending = h.progress.base_pending.load(Ordering::SeqCst);
        if control.state != ClusterState::InArchiveRecovery && !pending {
            h.control
                .update(|c| c.state = ClusterState::InArchiveRecovery)?;
        }
        let (events_tx, events_rx) = events::bounded(EVENT_QUEUE);
        let (fetch_tx, fetch_rx) = bounded(4);
        let (shutdown_tx, shutdown_rx) = bounded(1);
        let (cancel_tx, cancel_rx) = bounded::<()>(0);
        let redo_stop = Arc::new(AtomicBool::new(false));

        let fetcher = Fetcher {
            datadir: h.datadir.clone(),
            storage: h.storage.clone(),
            control: h.control.clone(),
            hooks: h.hooks.clone(),
            restore: RestoreCommand::from_config(&h.datadir, &config, seg_size),
            config: h.config.clone(),
            system_id: control.system_identifier,
            seg_size,
            archive_mode: config.archive_mode,
            events: events_tx.clone(),
            cancel: cancel_rx,
        };
        let fetcher = std::thread::Builder::new()
            .name("archive-fetcher".into())
            .spawn(move || fetcher.run(fetch_rx))
            .map_err(spawn_error("archive-fetcher"))?;

        let redo = Redo {
            store: h.store.clone(),
            reader: Redo::reader_for(&dir, &control, history.clone(), &h.progress.received),
            replayed: h.progress.replayed.clone(),
            received: h.progress.received.clone(),
            events: events_tx.clone(),
            stop: redo_stop.clone(),
        };
        let (redo_link, redo) = RedoLink::spawn(redo, 16).map_err(spawn_error("redo"))?;

        let trigger = start_trigger_watcher(&h, events_tx.clone())?;
        make_promotion_spares(&h.segdir);

        let backup_wait = match pending {
            true => Some(pending::spawn_waiter(
                h.clone(),
                events_tx.clone(),
                redo_stop.clone(),
            )?),
            false => None,
        };
        // WAL a previous run received past the upstream's confirmed flush
        // position is held again before anything replays it.
        let held = confirmed::held_at_start(&h.segdir);
        if let Some(held) = held {
            tracing::info!(
                "WAL from {} to {} on timeline {} was received before the upstream confirmed it flushed: it is not replayed until a stream confirms it or this standby is promoted",
                held.from, held.to, held.tli.0
            );
            h.progress.received.set_held(Some(held));
        }
        let prelude = held.map(|held| Event::UnconfirmedWalHeld {
            session: crate::states::recovery::SessionId(0),
            tli: held.tli,
            from: held.from,
            to: held.to,
        });
        let first = if pending {
            Event::BaseBackupPending {
                start: control.redo_lsn,
                tli: control.timeline,
            }
        } else {
            Event::RecoveryStarted {
                redo_lsn: control.redo_lsn,
                tli: control.timeline,
                history,
                min_recovery_point: control.min_recovery_point,
                crash_recovery_first: control.state == ClusterState::InProduction,
            }
        };
        tracing::info!(
            redo = %control.redo_lsn,
            timeline = control.timeline.0,
            min_recovery_point = %control.min_recovery_point,
            "entering standby mode"
        );
        let h_config = h.config.clone();
        let startup = Startup::new(
            core,
            receiver_sessions(&h, &control, events_tx.clone()),
            startup::Channels {
                events: events_rx,
                events_tx: events_tx.clone(),
                fetch: fetch_tx,
                redo: redo_link,
            },
            tracelog::TraceLog::open(&dir.log()),
            h,
        );
        let reload_watcher =
            startup::spawn_reload_watcher(h_config, events_tx.clone(), shutdown_rx)
                .map_err(spawn_error("standby-reload"))?;
        let startup = std::thread::Builder::new()
            .name("startup".into())
            .spawn(move || startup.run(prelude.into_iter().chain([first])))
            .map_err(spawn_error("startup"))?;
        Ok(StandbyRuntime {
            events: Some(events_tx),
            shutdown: Some(shutdown_tx),
            reload_watcher: Some(reload_watcher),
            redo_stop,
            startup: Some(startup),
            fetcher: Some(fetcher),
            redo: Some(redo),
            trigger: Some(trigger),
            cancel_restore: Some(cancel_tx),
            backup_wait,
        })
    }

    /// Whether recovery has ended (promoted or stopped).
    pub fn is_finished(&self) -> bool {
        self.startup.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Shut recovery down: the machine stops the walreceiver and exits; a
    /// running restore_command is killed; redo stops between records.
    pub fn stop(mut self) {
        self.request_shutdown();
        drop(self.cancel_restore.take());
        self.redo_stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.startup.take() {
            let _ = t.join();
        }
        if let Some((handle, tx)) = self.trigger.take() {
            let _ = tx.send(());
            let _ = handle.join();
        }
        for t in [
            self.reload_watcher.take(),
            self.fetcher.take(),
            self.redo.take(),
            self.backup_wait.take(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = t.join();
        }
    }
}

impl StandbyRuntime {
    /// Queue `ShutdownRequested` for the startup process (once) and end
    /// the reload watcher.
    fn request_shutdown(&mut self) {
        if let Some(tx) = self.events.take() {
            // Disconnected: recovery already ended (promoted or stopped).
            let sent = tx.send_timeout(Event::ShutdownRequested, startup::EVENT_SEND_BOUND);
            if let Err(crossbeam_channel::SendTimeoutError::Timeout(_)) = sent {
                tracing::warn!("the startup process did not take the shutdown request");
            }
        }
        drop(self.shutdown.take());
    }
}

impl Drop for StandbyRuntime {
    /// Dropped without `stop()`: recovery is still told to shut down.
    fn drop(&mut self) {
        self.request_shutdown();
    }
}

/// Create the spare segments promotion uses (pre-zeroed and fsynced) in
/// the background, so promoting writes only the new timeline's copy of the
/// switch segment's prefix instead of 32 MB of zeroes. The thread ends once
/// they exist; a failure only costs promotion the zero-filling.
fn make_promotion_spares(segdir: &Arc<SegmentDir>) {
    let segdir = segdir.clone();
    let spawned = std::thread::Builder::new()
        .name("wal-spares".into())
        .spawn(move || {
            if let Err(e) = segdir.make_spares(crate::wal::PROMOTION_SPARES) {
                tracing::warn!(error = %e, "could not create spare WAL segments for promotion");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the thread creating spare WAL segments");
    }
}

fn start_trigger_watcher(
    h: &StandbyHandles,
    events: EventSender<Event>,
) -> Result<(trigger::TriggerWatcherHandle, Sender<()>), StandbyError> {
    let mut cfg = TriggerConfig::new(&h.datadir);
    let config = h.config.get();
    if !config.promote_trigger_file.trim().is_empty() {
        let p = PathBuf::from(config.promote_trigger_file.trim());
        cfg.promote_trigger_file = Some(if p.is_absolute() {
            p
        } else {
            h.datadir.join(p)
        });
    }
    let (tx, rx) = bounded(1);
    let handle = spawn_trigger_watcher(cfg, rx, move |ev| {
        let trigger = match ev {
            TriggerEvent::PromoteTriggerFileFound { .. } => PromoteTrigger::File,
            TriggerEvent::PromoteRequested => PromoteTrigger::Command,
        };
        tracing::info!(?trigger, "received promote request");
        events.send(Event::PromoteRequested { trigger }).is_ok()
    })?;
    Ok((handle, tx))
}

/// Walreceiver sessions configured from `primary_conninfo` and friends.
fn receiver_sessions(
    h: &StandbyHandles,
    control: &ControlFile,
    events: EventSender<Event>,
) -> receiver::Sessions<Event> {
    let config = h.config.clone();
    let segdir = h.segdir.clone();
    let system_id = control.system_identifier;
    let instance_id = h.instance_id;
    receiver::Sessions::new(
        events,
        h.progress.received.clone(),
        // Read at every start: a reloaded primary_conninfo is used by the
        // next session.
        Box::new(move |from, tli| {
            receiver::ReceiverConfig::from_config(
                &config.get(),
                segdir.clone(),
                from,
                tli,
                system_id,
                instance_id,
            )
        }),
    )
}
