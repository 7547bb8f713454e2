//! The HA loop's hands on the local node: what it reads of the node each
//! cycle ([`LocalState`]) and the node-side actions — open or close the
//! write gate, narrow or widen the standbys syncrep counts, promote,
//! follow a new leader by reload, ask for a demotion — each short and
//! non-blocking (a demotion is carried out by the supervisor's thread,
//! which owns the running node).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use walrep_states::ha::{LocalRole, LocalState, ReplicaProgress, ReplicaSyncState};
use walrep_states::{Millis, TimelineId};

use super::slots::MemberSlots;
use crate::node::{ExitRequest, Node};
use crate::replication::client::ConnInfo;
use crate::syncrep::{SyncMethod, SyncState};
use crate::Lsn;

/// Why a node-side HA action failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No node is running (it is being demoted or restarted).
    #[error("the node is not running (it is being stopped, rejoined or restarted)")]
    NotRunning,
    /// The promote request could not be written.
    #[error("could not request the promotion: {0}")]
    Promote(#[from] crate::standby::trigger::TriggerError),
    /// The leader's replication address is not host:port.
    #[error("the leader's replication address {0:?} is not host:port")]
    BadAddress(String),
    /// Reloading with the new upstream failed.
    #[error("could not switch primary_conninfo to the leader: {0}")]
    Reload(#[from] crate::node::NodeError),
}

/// The node the HA loop acts on, shared between the supervisor (which
/// starts, stops and rejoins it) and the HA thread.
pub struct NodeSlot {
    node: Mutex<Option<Arc<Node>>>,
    /// A demotion is in progress: the node is stopped or rejoining.
    demoting: AtomicBool,
    /// The member the node follows (set by Follow and Demote).
    following: Mutex<Option<String>>,
    /// The HA loop's monotonic clock: the one the store stamps lease
    /// renewals with, so fence deadlines compare with it.
    clock: fn() -> Millis,
    /// What the last cycle found (INFO, `walrep status`).
    status: Mutex<super::status::HaStatus>,
    /// The member slots this node keeps (`None`: `ha_use_slots` off).
    member_slots: Mutex<Option<MemberSlots>>,
}

impl NodeSlot {
    /// An empty slot whose HA loop reads time from `clock`.
    pub fn new(clock: fn() -> Millis) -> NodeSlot {
        NodeSlot {
            node: Mutex::new(None),
            demoting: AtomicBool::new(false),
            following: Mutex::new(None),
            clock,
            status: Mutex::default(),
            member_slots: Mutex::new(None),
        }
    }

    /// Keep member slots with `slots` (`ha_use_slots`).
    pub fn set_member_slots(&self, slots: MemberSlots) {
        *lock(&self.member_slots) = Some(slots);
    }
}

/// A monotonic clock as [`Millis`] since its first use in this process.
pub fn process_clock() -> Millis {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    Millis(START.get_or_init(Instant::now).elapsed().as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl NodeSlot {
    /// The running node, if any.
    pub fn node(&self) -> Option<Arc<Node>> {
        lock(&self.node).clone()
    }

    /// The supervisor started `node`; a demotion, if any, is over.
    pub fn attach(&self, node: Arc<Node>) {
        *lock(&self.node) = Some(node);
        self.demoting.store(false, Ordering::SeqCst);
    }

    /// The supervisor is stopping the node.
    pub fn detach(&self) {
        *lock(&self.node) = None;
    }

    /// Whether a demotion is in progress.
    pub fn demoting(&self) -> bool {
        self.demoting.load(Ordering::SeqCst)
    }

    /// The member the node follows, as the last Follow or Demote set it.
    pub fn following(&self) -> Option<String> {
        lock(&self.following).clone()
    }

    /// Now on the HA loop's monotonic clock.
    pub fn now(&self) -> Millis {
        (self.clock)()
    }

    /// What the last cycle found.
    pub fn status(&self) -> super::status::HaStatus {
        lock(&self.status).clone()
    }

    /// Record what this cycle found, for the node's INFO too.
    pub fn set_status(&self, status: super::status::HaStatus) {
        if let Some(node) = self.node() {
            node.set_ha_status(status.clone());
        }
        *lock(&self.status) = status;
    }

    /// `at` on the monotonic clock as an [`Instant`].
    pub fn instant(&self, at: Millis) -> Instant {
        let (now, now_ms) = (Instant::now(), self.now().0);
        if at.0 >= now_ms {
            now + Duration::from_millis(at.0 - now_ms)
        } else {
            now.checked_sub(Duration::from_millis(now_ms - at.0))
                .unwrap_or(now)
        }
    }

    /// The node's state for this cycle.
    pub fn local_state(&self) -> LocalState {
        match self.node() {
            Some(node) => local_state(&node, self.following()),
            None => LocalState {
                role: if self.demoting() {
                    LocalRole::Demoting
                } else {
                    LocalRole::Starting
                },
                system_identifier: 0,
                timeline: TimelineId(0),
                timeline_start_lsn: Lsn::INVALID,
                flush_lsn: Lsn::INVALID,
                replay_lsn: Lsn::INVALID,
                healthy: false,
                following: self.following(),
                replicas: Vec::new(),
                sync_count: 0,
                sync_any: false,
                sync_allowed: Vec::new(),
                gate_open: false,
            },
        }
    }

    /// Open the write gate until `until` (the fence deadline).
    pub fn open_gate(&self, until: Millis) -> Result<(), ControlError> {
        let node = self.node().ok_or(ControlError::NotRunning)?;
        node.write_gate().open_until(self.instant(until));
        Ok(())
    }

    /// Close the write gate now. With no node running there is nothing
    /// to fence (a node starts fenced).
    pub fn close_gate(&self) {
        if let Some(node) = self.node() {
            node.write_gate().close();
        }
    }

    /// Count only `names`' confirmations in syncrep.
    pub fn set_sync_allowed(&self, names: Vec<String>) -> Result<(), ControlError> {
        let node = self.node().ok_or(ControlError::NotRunning)?;
        node.set_sync_allowed(Some(names));
        Ok(())
    }

    /// Ask the standby to promote (its promote trigger, as `walrep
    /// promote`): the startup process finishes recovery in the background.
    pub fn promote(&self) -> Result<(), ControlError> {
        let node = self.node().ok_or(ControlError::NotRunning)?;
        if node.is_primary() {
            return Ok(());
        }
        crate::standby::trigger::request_promotion(&*node.storage, &node.dir.root)?;
        Ok(())
    }

    /// Stream from `leader` at `repl_addr`: `primary_conninfo` as an HA
    /// override, then a reload (the walreceiver reconnects; no restart).
    pub fn follow(&self, leader: &str, repl_addr: &str) -> Result<(), ControlError> {
        let node = self.node().ok_or(ControlError::NotRunning)?;
        let conninfo = leader_conninfo(&node, repl_addr)?;
        let settings = node.settings();
        let slot = member_slot_name(&settings);
        let slot_changed = slot
            .as_deref()
            .is_some_and(|s| settings.primary_slot_name != s);
        if settings.primary_conninfo != conninfo || slot_changed {
            let mut set = vec![("primary_conninfo", conninfo.as_str())];
            if let Some(s) = slot.as_deref() {
                set.push(("primary_slot_name", s));
            }
            node.set_overrides(&set)?;
            tracing::info!(
                leader,
                repl_addr,
                slot = slot.as_deref().unwrap_or(""),
                "following the new leader"
            );
        }
        *lock(&self.following) = Some(leader.to_string());
        Ok(())
    }

    /// Fence the node and ask the supervisor to stop it, rejoin it against
    /// the leader at `repl_addr` and start it again as the leader's standby.
    pub fn demote(&self, leader: &str, repl_addr: &str) -> Result<(), ControlError> {
        let node = self.node().ok_or(ControlError::NotRunning)?;
        node.write_gate().close();
        let conninfo = leader_conninfo(&node, repl_addr)?;
        self.demoting.store(true, Ordering::SeqCst);
        *lock(&self.following) = Some(leader.to_string());
        node.request_exit(ExitRequest::Demote { conninfo });
        Ok(())
    }
}

/// The slot this member streams on under HA (`ha_use_slots`): its name
/// sanitised as the leader names member slots; `None` with slots off (the
/// configured `primary_slot_name` stays).
pub fn member_slot_name(settings: &crate::config::Config) -> Option<String> {
    if !settings.ha_use_slots.0 {
        return None;
    }
    settings
        .ha_member_name()
        .map(|n| super::slots::slot_name(&n))
}

/// The `primary_conninfo` that streams from `repl_addr`: the user and
/// password of the configured one kept, this member's name as
/// application_name (synchronous_standby_names names members by it).
pub fn leader_conninfo(node: &Node, repl_addr: &str) -> Result<String, ControlError> {
    let (host, port) = crate::config::parse_host_port(repl_addr)
        .ok_or_else(|| ControlError::BadAddress(repl_addr.to_string()))?;
    let settings = node.settings();
    let current = ConnInfo::parse(&settings.primary_conninfo).unwrap_or_default();
    let port = port.to_string();
    let name = settings.ha_member_name().unwrap_or_default();
    let mut pairs = vec![("host", host.as_str()), ("port", port.as_str())];
    if !current.user.is_empty() {
        pairs.push(("user", current.user.as_str()));
    }
    if let Some(p) = current.password.as_deref() {
        pairs.push(("password", p));
    }
    pairs.push(("application_name", name.as_str()));
    Ok(crate::backup::standby_config::conninfo_string(&pairs))
}

/// What the node runs as and how far it is, read from its shared state.
fn local_state(node: &Node, following: Option<String>) -> LocalState {
    let control = node.control();
    let (role, timeline, flush_lsn, replay_lsn, healthy) =
        match (node.wal(), node.recovery_snapshot()) {
            (Some(wal), _) if node.is_primary() => {
                let flushed = wal.flushed();
                (
                    LocalRole::Primary,
                    wal.timeline(),
                    flushed,
                    flushed,
                    wal.poisoned().is_none(),
                )
            }
            (_, Some(r)) => (
                if promote_requested(node) {
                    LocalRole::Promoting
                } else {
                    LocalRole::Standby
                },
                r.replay_tli,
                r.receive_lsn.max(r.replay_lsn),
                r.replay_lsn,
                r.consistent,
            ),
            _ => (
                LocalRole::Starting,
                control.timeline,
                Lsn::INVALID,
                Lsn::INVALID,
                false,
            ),
        };
    let timeline_start_lsn = crate::wal::timeline::read_history(&node.dir.wal(), timeline)
        .ok()
        .and_then(|h| h.begin_of(timeline))
        .unwrap_or(Lsn::INVALID);
    let positions = node.standby_positions();
    let states = node.syncrep.sync_states(&positions);
    let replicas = positions
        .iter()
        .zip(states)
        .map(|(p, s)| ReplicaProgress {
            name: p.application_name.clone(),
            sync_state: match s {
                SyncState::Sync => ReplicaSyncState::Sync,
                SyncState::Potential => ReplicaSyncState::Potential,
                SyncState::Quorum => ReplicaSyncState::Quorum,
                SyncState::Async => ReplicaSyncState::Async,
            },
            flush_lsn: p.flush,
        })
        .collect();
    let config = node.syncrep.config();
    let (sync_count, sync_any) = match config.as_deref() {
        Some(c) if c.method == SyncMethod::Priority => (c.num_sync, false),
        Some(c) => (c.num_sync, true),
        None => (0, false),
    };
    let mut sync_allowed: Vec<String> = node
        .syncrep
        .allowed()
        .map(|a| a.as_ref().clone())
        .unwrap_or_default();
    sync_allowed.sort();
    LocalState {
        role,
        system_identifier: control.system_identifier,
        timeline,
        timeline_start_lsn,
        flush_lsn,
        replay_lsn,
        healthy,
        following,
        replicas,
        sync_count,
        sync_any,
        sync_allowed,
        gate_open: node.write_gate().is_open(),
    }
}

/// A promote request is waiting for the startup process.
fn promote_requested(node: &Node) -> bool {
    node.dir
        .root
        .join(crate::standby::trigger::PROMOTE_SIGNAL_FILE)
        .exists()
}

impl super::run::NodeHands for NodeSlot {
    fn now(&self) -> Millis {
        NodeSlot::now(self)
    }
    fn instant(&self, at: Millis) -> Instant {
        NodeSlot::instant(self, at)
    }
    fn local_state(&self) -> LocalState {
        NodeSlot::local_state(self)
    }
    fn running(&self) -> bool {
        self.node().is_some()
    }
    fn open_gate(&self, until: Millis) -> Result<(), String> {
        NodeSlot::open_gate(self, until).map_err(|e| e.to_string())
    }
    fn close_gate(&self) {
        NodeSlot::close_gate(self)
    }
    fn set_sync_allowed(&self, names: Vec<String>) -> Result<(), String> {
        NodeSlot::set_sync_allowed(self, names).map_err(|e| e.to_string())
    }
    fn promote(&self) -> Result<(), String> {
        NodeSlot::promote(self).map_err(|e| e.to_string())
    }
    fn demote(&self, leader: &str, repl_addr: &str) -> Result<(), String> {
        NodeSlot::demote(self, leader, repl_addr).map_err(|e| e.to_string())
    }
    fn follow(&self, leader: &str, repl_addr: &str) -> Result<(), String> {
        NodeSlot::follow(self, leader, repl_addr).map_err(|e| e.to_string())
    }
    fn member_slots(&self, leading: bool, members: &[String]) {
        let Some(node) = self.node() else {
            return;
        };
        let mut guard = lock(&self.member_slots);
        let Some(slots) = guard.as_mut() else {
            return;
        };
        keep_member_slots(&node, slots, leading, members, self.now());
    }
    fn status(&self) -> super::status::HaStatus {
        NodeSlot::status(self)
    }
    fn set_status(&self, status: super::status::HaStatus) {
        NodeSlot::set_status(self, status)
    }
}

/// One cycle's slot step: a leader creates and drops member slots as
/// [`MemberSlots::plan`] says (each change logged, the list of slots it
/// made saved); a node that does not lead moves them with its replay
/// position. Failures are logged; the next cycle tries again.
fn keep_member_slots(
    node: &Node,
    slots: &mut MemberSlots,
    leading: bool,
    members: &[String],
    now: Millis,
) {
    if !leading {
        slots.step_down();
        if let Some(r) = node.recovery_snapshot() {
            super::slots::advance(node, slots, r.replay_lsn);
        }
        return;
    }
    let list = node.slots.list();
    let existing = list.iter().map(|s| s.name.clone()).collect();
    let active = list
        .iter()
        .filter(|s| s.active_pid.is_some())
        .map(|s| s.name.clone())
        .collect();
    let names: Vec<&str> = members.iter().map(String::as_str).collect();
    let before = slots.managed();
    let plan = slots.plan(now, &names, &existing, &active);
    let result = super::slots::apply(node, slots, &plan);
    let (created, dropped) = match &result {
        Ok((c, d)) => (c.clone(), d.clone()),
        Err(_) => (Vec::new(), Vec::new()),
    };
    for name in &created {
        tracing::info!(slot = %name, "created replication slot \"{name}\" for a member: the leader keeps its WAL until it streams");
    }
    for name in &dropped {
        tracing::warn!(slot = %name, "dropped replication slot \"{name}\": its member has been gone longer than ha_member_slots_ttl");
    }
    if let Err(e) = &result {
        tracing::warn!("could not keep the members' replication slots: {e}");
    }
    let after = slots.managed();
    if after != before && !slots.save_failed {
        if let Err(e) = super::slots::save_managed(node, &after) {
            // Not retried (an fsync is never retried): the slots stay, and
            // a restart forgets which of them the HA layer made.
            slots.save_failed = true;
            tracing::error!(
                "{e}; the list of member slots is no longer saved until the node restarts"
            );
        }
    }
}
