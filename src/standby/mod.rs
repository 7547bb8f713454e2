//! The standby runtime: drives the recovery machine of `walrep-states` with
//! events from its watchers and executes its actions.
//!
//! # Layout
//! - [`startup`]: the startup process (owns the core; the event loop).
//! - [`fetcher`]: restore_command and local `wal/` lookups.
//! - [`redo`]: applies WAL records up to the limit the machine gives.
//! - [`receiver`]: the walreceiver (streams WAL from the upstream).
//! - [`promote`]: the promotion steps.
//! - [`trigger`]: promote_trigger_file and `walrep promote`.
//! - [`state`]: positions and status shared with INFO and walsenders.
//! - [`tracelog`]: the transition trace in `log/transitions.jsonl`.

pub mod fetcher;
pub mod progress;
pub mod promote;
pub mod receiver;
pub mod redo;
pub mod startup;
pub mod state;
pub mod tracelog;
pub mod trigger;

pub use state::StandbyState;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::Context as _;
use crossbeam_channel::{bounded, Sender};

use crate::archive::RestoreCommand;
use crate::config::{Config, RecoveryTargetTimeline};
use crate::node::Node;
use crate::states::recovery::{Event, PromoteTrigger, Recovery, RecoveryConfig, TargetTimeline};
use crate::store::ClusterState;
use fetcher::Fetcher;
use redo::Redo;
use startup::Startup;
use trigger::{spawn_trigger_watcher, TriggerConfig, TriggerEvent};

/// Capacity of the startup process's event queue. Producers are the fetcher
/// and redo (one outstanding request each), one walreceiver session and the
/// trigger watcher, so it never fills in practice; a full queue blocks the
/// producer rather than growing.
const EVENT_QUEUE: usize = 4096;

/// The threads of a running standby.
pub struct StandbyRuntime {
    shutdown: Option<Sender<()>>,
    redo_stop: Arc<AtomicBool>,
    startup: Option<JoinHandle<()>>,
    fetcher: Option<JoinHandle<()>>,
    redo: Option<JoinHandle<()>>,
    trigger: Option<(trigger::TriggerWatcherHandle, Sender<()>)>,
    cancel_restore: Option<Sender<()>>,
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
    /// Start recovery on `node` (its store already holds the snapshot of
    /// the control file's checkpoint).
    pub fn start(node: Arc<Node>) -> anyhow::Result<StandbyRuntime> {
        let control = node.control().clone();
        let seg_size = control.wal_segment_size;
        let core = Recovery::new(recovery_config(&node.config, seg_size))
            .map_err(|e| anyhow::anyhow!("invalid recovery settings: {e:?}"))?;
        let history = crate::wal::read_history(&node.dir.wal(), control.timeline).map_err(|e| {
            anyhow::anyhow!(
                "could not read the history of timeline {}: {e}",
                control.timeline
            )
        })?;
        {
            let st = &node.standby;
            st.replay_lsn.store(control.redo_lsn.0, Ordering::Release);
            st.last_record_lsn
                .store(control.checkpoint_lsn.0, Ordering::Release);
            st.replay_tli
                .store(history.timeline_of(control.redo_lsn).0, Ordering::Release);
        }
        if control.state != ClusterState::InArchiveRecovery {
            node.control_file
                .update(|c| c.state = ClusterState::InArchiveRecovery)?;
        }
        let (events_tx, events_rx) = bounded(EVENT_QUEUE);
        let (fetch_tx, fetch_rx) = bounded(4);
        let (redo_tx, redo_rx) = bounded(16);
        let (shutdown_tx, shutdown_rx) = bounded(1);
        let (cancel_tx, cancel_rx) = bounded::<()>(0);
        let redo_stop = Arc::new(AtomicBool::new(false));

        let fetcher = Fetcher {
            node: node.clone(),
            restore: RestoreCommand::from_config(&node.dir.root, &node.config, seg_size),
            system_id: control.system_identifier,
            seg_size,
            archive_mode: node.config.archive_mode,
            events: events_tx.clone(),
            cancel: cancel_rx,
        };
        let fetcher = std::thread::Builder::new()
            .name("archive-fetcher".into())
            .spawn(move || fetcher.run(fetch_rx))?;

        let replayed = Arc::new(crate::watch::Watch::new(progress::Replayed::default()));
        let receiver_shared = receiver::ReceiverShared::new(replayed.clone());
        let redo = Redo {
            node: node.clone(),
            reader: Redo::reader_for(&node, history.clone()),
            events: events_tx.clone(),
            stop: redo_stop.clone(),
            // Standby replies carry the apply position at once (remote_apply).
            on_applied: Box::new(move |lsn| {
                replayed.update(|r| {
                    r.end = lsn;
                    true
                })
            }),
        };
        let redo = std::thread::Builder::new()
            .name("redo".into())
            .spawn(move || redo.run(redo_rx))?;

        let trigger = start_trigger_watcher(&node, events_tx.clone())?;
        make_promotion_spares(&node);

        let first = Event::RecoveryStarted {
            redo_lsn: control.redo_lsn,
            tli: control.timeline,
            history,
            min_recovery_point: control.min_recovery_point,
            crash_recovery_first: control.state == ClusterState::InProduction,
        };
        let startup = Startup {
            core,
            node: node.clone(),
            events: events_rx,
            events_tx: events_tx.clone(),
            fetch: fetch_tx,
            redo: redo_tx,
            receivers: receiver_sessions(&node, receiver_shared.clone(), events_tx),
            receiver_shared,
            shutdown: shutdown_rx,
            trace: tracelog::TraceLog::open(&node.dir.log()),
            epoch: Instant::now(),
            partial: None,
            standby_signal_unsynced: false,
        };
        tracing::info!(
            redo = %control.redo_lsn,
            timeline = control.timeline.0,
            min_recovery_point = %control.min_recovery_point,
            "entering standby mode"
        );
        let startup = std::thread::Builder::new()
            .name("startup".into())
            .spawn(move || startup.run(first))
            .context("start the startup process")?;
        Ok(StandbyRuntime {
            shutdown: Some(shutdown_tx),
            redo_stop,
            startup: Some(startup),
            fetcher: Some(fetcher),
            redo: Some(redo),
            trigger: Some(trigger),
            cancel_restore: Some(cancel_tx),
        })
    }

    /// Whether recovery has ended (promoted or stopped).
    pub fn is_finished(&self) -> bool {
        self.startup.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Shut recovery down: the machine stops the walreceiver and exits; a
    /// running restore_command is killed; redo stops between records.
    pub fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.try_send(());
        }
        drop(self.cancel_restore.take());
        self.redo_stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.startup.take() {
            let _ = t.join();
        }
        if let Some((handle, tx)) = self.trigger.take() {
            let _ = tx.send(());
            let _ = handle.join();
        }
        for t in [self.fetcher.take(), self.redo.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
    }
}

/// Create the spare segments promotion uses (pre-zeroed and fsynced) in
/// the background, so promoting writes only the new timeline's copy of the
/// switch segment's prefix instead of 32 MB of zeroes. The thread ends once
/// they exist; a failure only costs promotion the zero-filling.
fn make_promotion_spares(node: &Arc<Node>) {
    let segdir = node.segdir.clone();
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
    node: &Node,
    events: Sender<Event>,
) -> anyhow::Result<(trigger::TriggerWatcherHandle, Sender<()>)> {
    let mut cfg = TriggerConfig::new(&node.dir.root);
    if !node.config.promote_trigger_file.trim().is_empty() {
        let p = std::path::PathBuf::from(node.config.promote_trigger_file.trim());
        cfg.promote_trigger_file = Some(if p.is_absolute() {
            p
        } else {
            node.dir.root.join(p)
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

/// Walreceiver sessions configured from the node's `primary_conninfo` and friends.
fn receiver_sessions(
    node: &Arc<Node>,
    shared: Arc<receiver::ReceiverShared>,
    events: Sender<Event>,
) -> receiver::Sessions<Event> {
    let config = node.config.clone();
    let segdir = node.segdir.clone();
    let system_id = node.control().system_identifier;
    let instance_id = node.instance_id;
    receiver::Sessions::new(
        events,
        shared,
        Box::new(move |from, tli| {
            receiver::ReceiverConfig::from_config(
                &config,
                segdir.clone(),
                from,
                tli,
                system_id,
                instance_id,
            )
        }),
    )
}
