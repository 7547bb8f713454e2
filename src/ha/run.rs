//! The HA thread: one cycle every `ha_loop_wait`, as Patroni's
//! `run_cycle` — renew the lease, read the cluster linearizably, read the
//! local node, ask the pure decision ([`walrep_states::ha::HaState`]) what
//! to do, and do it in order, stopping at the first action that fails (the
//! next cycle reads again and decides from what really happened). Each
//! cycle ends with one sentence saying what it did and why, logged when it
//! changes.
//!
//! The fence does not depend on this thread: the gate's deadline is kept
//! by the node itself ([`crate::node::fence`]), so a cycle that stalls on
//! the store, or a thread that is not scheduled, still fences the primary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use walrep_states::ha::{
    ClusterView, DcsReadError, FailoverRecord, HaAction, HaConfig, HaInput, HaState, HistoryEntry,
    Lease, MemberRecord, Severity, SyncRecord,
};

use super::control::NodeSlot;
use super::status::HaStatus;

/// What the HA loop needs from the consensus store: the operations of the
/// shared design, each bounded by `ha_retry_timeout`. A lost
/// compare-and-swap is `Ok(false)`, not an error.
pub trait HaStore: Send {
    /// Why a call failed.
    type Error: std::fmt::Display;
    /// Read the whole cluster linearizably.
    fn load(&mut self) -> Result<ClusterView, Self::Error>;
    /// Renew the node's lease (grant a new one when it is gone); `sent_at`
    /// on the HA loop's clock.
    fn keepalive(&mut self) -> Result<Lease, Self::Error>;
    /// Take the free leader key.
    fn acquire_leader(&mut self) -> Result<bool, Self::Error>;
    /// Keep the leader key on the current lease.
    fn update_leader(&mut self) -> Result<bool, Self::Error>;
    /// Give the leader key up.
    fn release_leader(&mut self) -> Result<bool, Self::Error>;
    /// `members/{name}` under the lease.
    fn publish_member(&mut self, record: &MemberRecord) -> Result<(), Self::Error>;
    /// CAS-write `sync`.
    fn write_sync(
        &mut self,
        record: &SyncRecord,
        expected_mod_revision: i64,
    ) -> Result<bool, Self::Error>;
    /// CAS-write (or with `None` delete) `failover`.
    fn write_failover(
        &mut self,
        record: Option<&FailoverRecord>,
        expected_mod_revision: i64,
    ) -> Result<bool, Self::Error>;
    /// CAS-append to `history`.
    fn append_history(
        &mut self,
        entry: &HistoryEntry,
        expected_mod_revision: i64,
    ) -> Result<bool, Self::Error>;
    /// `initialize` if absent.
    fn initialize(&mut self, system_identifier: u64) -> Result<bool, Self::Error>;
}

/// The HA settings of this node, from its configuration.
pub fn ha_config(c: &crate::config::Config, ports: (u16, u16)) -> HaConfig {
    let ms = |t: crate::config::Time<1000>| t.get().map_or(0, |d| d.as_millis() as u64);
    let concrete = |port: u16| {
        let host = c.listen_addresses.trim();
        let unusable = host.is_empty()
            || host.contains(',')
            || host == "*"
            || host == "0.0.0.0"
            || host == "::";
        if unusable {
            String::new()
        } else {
            format!("{host}:{port}")
        }
    };
    let or = |set: &str, port: u16| {
        if set.is_empty() {
            concrete(port)
        } else {
            set.to_string()
        }
    };
    HaConfig {
        name: c.ha_member_name().unwrap_or_default(),
        ttl_ms: ms(c.ha_ttl),
        loop_wait_ms: ms(c.ha_loop_wait),
        retry_timeout_ms: ms(c.ha_retry_timeout),
        fence_margin_ms: ms(c.ha_fence_margin),
        allow_async_failover: c.ha_allow_async_failover.0,
        nofailover: c.ha_nofailover.0,
        repl_addr: or(&c.ha_repl_address, ports.1),
        client_addr: or(&c.ha_client_address, ports.0),
        status_url: None,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Run HA cycles until `stop`; on the way out, a leader whose node has
/// stopped gives the key up so another member takes over at once instead
/// of after `ha_ttl`.
pub fn run<S: HaStore>(
    mut state: HaState,
    mut store: S,
    slot: Arc<NodeSlot>,
    stop: Arc<AtomicBool>,
) {
    let loop_wait = Duration::from_millis(state.config().loop_wait_ms);
    let mut lease: Option<Lease> = None;
    let mut last_why = String::new();
    let mut cycles = 0u64;
    let mut failed_cycles = 0u64;
    while !stop.load(Ordering::SeqCst) {
        cycles += 1;
        let (next, ok) = cycle(&mut state, &mut store, &slot, &mut lease, &mut last_why);
        if !ok {
            failed_cycles += 1;
            tracing::debug!(cycles, failed_cycles, "HA cycle stopped at a failed action");
        }
        let wait = if ok { next } else { loop_wait };
        let end = Instant::now() + wait;
        while Instant::now() < end && !stop.load(Ordering::SeqCst) {
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
        }
    }
    let leader = state.gate_until().is_some()
        || slot
            .status()
            .leader
            .as_deref()
            .is_some_and(|l| l == state.config().name);
    if leader && slot.node().is_none() {
        match store.release_leader() {
            Ok(true) => tracing::info!("released the leader key: the node has stopped"),
            Ok(false) => {}
            Err(e) => tracing::warn!("could not release the leader key at shutdown: {e}"),
        }
    }
}

/// One cycle; returns when to run the next one and whether every action
/// succeeded.
fn cycle<S: HaStore>(
    state: &mut HaState,
    store: &mut S,
    slot: &NodeSlot,
    lease: &mut Option<Lease>,
    last_why: &mut String,
) -> (Duration, bool) {
    match store.keepalive() {
        Ok(l) => *lease = Some(l),
        Err(e) => tracing::warn!("lease renewal failed: {e}"),
    }
    let view = store.load().map_err(|e| DcsReadError {
        message: e.to_string(),
    });
    let leader = view
        .as_ref()
        .ok()
        .and_then(|v| v.leader_name().map(str::to_string));
    let input = HaInput {
        now: slot.now(),
        wall_clock_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        lease: *lease,
        view,
        local: slot.local_state(),
    };
    let decision = state.decide(&input);
    if decision.why != *last_why {
        match decision.severity {
            Severity::Info => tracing::info!("HA: {}", decision.why),
            Severity::Warn => tracing::warn!("HA: {}", decision.why),
            Severity::Error => tracing::error!("HA: {}", decision.why),
        }
        last_why.clone_from(&decision.why);
    }
    let mut ok = true;
    for action in &decision.actions {
        if let Err(e) = execute(action, store, slot) {
            tracing::warn!(action = %action, "HA action failed: {e}");
            ok = false;
            break;
        }
    }
    slot.set_status(HaStatus {
        leader,
        why: decision.why.clone(),
        gate_until: state.gate_until().map(|m| slot.instant(m)),
        halted: state.halted().map(str::to_string),
    });
    (Duration::from_millis(decision.next_cycle_ms), ok)
}

/// Run one action; a lost compare-and-swap is a failure too (the cycle
/// stops there).
fn execute<S: HaStore>(action: &HaAction, store: &mut S, slot: &NodeSlot) -> Result<(), String> {
    fn cas<E: std::fmt::Display>(r: Result<bool, E>, what: &str) -> Result<(), String> {
        match r {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{what}: compare-and-swap lost")),
            Err(e) => Err(format!("{what}: {e}")),
        }
    }
    match action {
        HaAction::PublishMember(m) => store.publish_member(m).map_err(|e| e.to_string()),
        HaAction::Initialize { system_identifier } => {
            cas(store.initialize(*system_identifier), "initialize")
        }
        HaAction::AcquireLeader => cas(store.acquire_leader(), "acquire the leader key"),
        HaAction::UpdateLeader => cas(store.update_leader(), "update the leader key"),
        HaAction::ReleaseLeader => cas(store.release_leader(), "release the leader key"),
        HaAction::WriteSync {
            record,
            expected_mod_revision,
        } => cas(
            store.write_sync(record, *expected_mod_revision),
            "write sync",
        ),
        HaAction::SetSyncAllowed(names) => slot
            .set_sync_allowed(names.clone())
            .map_err(|e| e.to_string()),
        HaAction::OpenGate { until } => slot.open_gate(*until).map_err(|e| e.to_string()),
        HaAction::CloseGate => {
            slot.close_gate();
            Ok(())
        }
        HaAction::Promote => slot.promote().map_err(|e| e.to_string()),
        HaAction::Demote {
            leader: Some(leader),
            repl_addr: Some(addr),
        } => slot.demote(leader, addr).map_err(|e| e.to_string()),
        HaAction::Demote { .. } => {
            // No leader to rejoin yet: stay fenced until one appears.
            slot.close_gate();
            Ok(())
        }
        HaAction::Follow { leader, repl_addr } => {
            slot.follow(leader, repl_addr).map_err(|e| e.to_string())
        }
        HaAction::AppendHistory {
            entry,
            expected_mod_revision,
        } => cas(
            store.append_history(entry, *expected_mod_revision),
            "append history",
        ),
        HaAction::ClearFailover {
            expected_mod_revision,
        } => cas(
            store.write_failover(None, *expected_mod_revision),
            "clear failover",
        ),
        HaAction::Halt { reason } => {
            slot.close_gate();
            Err(format!("halted: {reason}"))
        }
    }
}
