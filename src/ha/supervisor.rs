//! `walrep start` with `ha_enabled`: the node and its HA loop in one
//! process, as Patroni runs PostgreSQL. The main thread owns the running
//! node; the HA thread acts on it through a [`NodeSlot`]. When the HA loop
//! demotes the node (another member holds the leader key while this node
//! runs as a primary), the main thread stops it without a shutdown
//! checkpoint, runs `walrep rejoin` against the leader (the WAL written
//! past the fork is quarantined, never served) and starts it again as the
//! leader's standby — in this process, as `restart_after_crash` restarts a
//! node. A failure that stops the WAL writer restarts the node the same
//! way (fenced: the HA loop decides whether it may serve again).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::control::NodeSlot;
use crate::node::restart::{pin_ports, shutdown_flag, termination};
use crate::node::{ExitRequest, NodeError, RunningNode, StartOptions};
use crate::replication::client::ConnInfo;

/// First wait before retrying a rejoin that failed.
const REJOIN_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two rejoin attempts.
const REJOIN_RETRY_MAX: Duration = Duration::from_secs(15);
/// Bound on connecting to the leader and on each of its replies.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a back-off wait looks for a shutdown request.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Why the supervisor stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The node failed to start or stop.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The HA thread could not be started.
    #[error("could not start the HA thread: {0}")]
    Spawn(std::io::Error),
}

/// The HA loop the supervisor runs beside the node: it runs until `stop`
/// is set, acting on the node through `slot`.
pub type HaLoop = Box<dyn FnOnce(Arc<NodeSlot>, Arc<AtomicBool>) + Send>;

/// Run the node in `datadir` under HA until a signal or a failure that a
/// restart does not cure; `ha_loop` runs on its own thread meanwhile.
/// `on_start` runs after every (re)start, as in [`crate::node::restart::run`];
/// `clock` is the HA loop's monotonic clock (the store's).
pub fn run<T>(
    datadir: &Path,
    opts: &StartOptions,
    clock: fn() -> walrep_states::Millis,
    ha_loop: HaLoop,
    mut on_start: impl FnMut(&RunningNode) -> T,
) -> Result<ExitRequest, SupervisorError> {
    let signalled = shutdown_flag()?;
    let mut opts = opts.clone();
    let node = RunningNode::start(datadir, &opts)?;
    pin_ports(&node, &mut opts);
    let slot = Arc::new(NodeSlot::new(clock));
    let stop = Arc::new(AtomicBool::new(false));
    let ha = {
        let (slot, stop) = (slot.clone(), stop.clone());
        std::thread::Builder::new()
            .name("ha".into())
            .spawn(move || ha_loop(slot, stop))
            .map_err(SupervisorError::Spawn)?
    };
    let result = supervise(datadir, &mut opts, node, &slot, &signalled, &mut on_start);
    stop.store(true, Ordering::SeqCst);
    let _ = ha.join();
    result
}

/// The main thread's loop: wait for the node to exit and act on why.
fn supervise<T>(
    datadir: &Path,
    opts: &mut StartOptions,
    mut node: RunningNode,
    slot: &NodeSlot,
    signalled: &AtomicBool,
    on_start: &mut impl FnMut(&RunningNode) -> T,
) -> Result<ExitRequest, SupervisorError> {
    loop {
        slot.attach(node.node.clone());
        let held = on_start(&node);
        let why = node.wait_for_exit()?;
        slot.detach();
        drop(held);
        let restart_after_crash = node.node.settings().restart_after_crash.0;
        node = match why {
            ExitRequest::Demote { conninfo } => {
                tracing::warn!(
                    upstream = %crate::replication::client::redact_conninfo(&conninfo),
                    "demoting: another member holds the leader key; stopping without a shutdown checkpoint, rejoining it and starting as its standby"
                );
                let slot = super::control::member_slot_name(&node.node.settings());
                node.stop_for_demotion()?;
                if !rejoin_until_done(datadir, &conninfo, signalled) {
                    return Ok(ExitRequest::Signal(signal_hook::consts::SIGTERM));
                }
                set_override(&mut opts.overrides, "primary_conninfo", &conninfo);
                if let Some(slot) = slot {
                    set_override(&mut opts.overrides, "primary_slot_name", &slot);
                }
                RunningNode::start(datadir, opts)?
            }
            ExitRequest::Fatal(e) if e.restartable() && restart_after_crash => {
                tracing::error!("{e}");
                tracing::error!("terminating client sessions because the WAL writer stopped; the node runs crash recovery and starts again fenced (restart_after_crash)");
                if let Err(err) = node.terminate(termination(&e, true)) {
                    tracing::warn!(error = %err, "stopping after the failure reported an error");
                }
                RunningNode::start(datadir, opts)?
            }
            ExitRequest::Fatal(e) => {
                tracing::info!(reason = %e, "shutdown requested");
                node.terminate(termination(&e, false))?;
                return Ok(ExitRequest::Fatal(e));
            }
            other => {
                tracing::info!(reason = ?other, "shutdown requested");
                node.stop()?;
                return Ok(other);
            }
        };
        if signalled.load(Ordering::SeqCst) {
            node.stop()?;
            return Ok(ExitRequest::Signal(signal_hook::consts::SIGTERM));
        }
    }
}

/// `walrep rejoin` against the leader until it works or a signal asks to
/// stop (false); every failure is logged and retried with a counted
/// back-off (a node whose last checkpoint is past the fork needs a new
/// base backup and says so at every attempt).
fn rejoin_until_done(datadir: &Path, conninfo: &str, signalled: &AtomicBool) -> bool {
    let info = match ConnInfo::parse(conninfo) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "the leader's connection string does not parse; cannot rejoin");
            return false;
        }
    };
    let opts = crate::rejoin::RejoinOptions {
        datadir: datadir.to_path_buf(),
        conninfo: info,
        timeout: REJOIN_TIMEOUT,
        storage: Arc::new(crate::storage::StdStorage),
    };
    let mut delay = REJOIN_RETRY_FIRST;
    for attempt in 1u64.. {
        match crate::rejoin::rejoin(&opts) {
            Ok(r) => {
                tracing::warn!(
                    fork = %r.fork,
                    local_tli = r.local_tli.0,
                    leader_tli = r.upstream_tli.0,
                    records_cut = r.records,
                    quarantine = ?r.quarantine,
                    "rejoined the leader's timeline: WAL written past the fork was never acknowledged under synchronous replication and is kept in quarantine"
                );
                return true;
            }
            Err(e) => {
                tracing::error!(
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    "rejoin failed: {e}"
                );
            }
        }
        if !sleep_unless(signalled, delay) {
            return false;
        }
        delay = (delay * 2).min(REJOIN_RETRY_MAX);
    }
    false
}

/// Sleep `d` in short steps; false if a signal arrived meanwhile.
fn sleep_unless(signalled: &AtomicBool, d: Duration) -> bool {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        if signalled.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(SIGNAL_POLL);
    }
    !signalled.load(Ordering::SeqCst)
}

/// Replace (or add) `name=value` in `-c` style overrides.
pub fn set_override(overrides: &mut Vec<String>, name: &str, value: &str) {
    overrides.retain(|s| s.split_once('=').is_none_or(|(n, _)| n.trim() != name));
    overrides.push(format!("{name}={value}"));
}
