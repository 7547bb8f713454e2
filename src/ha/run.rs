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

use super::status::{HaCounters, HaStatus};

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

/// The HA loop's hands on the local node: what a cycle reads there and
/// the node-side actions. [`NodeSlot`](super::control::NodeSlot) is the real one; the unit tests
/// drive the same loop through a recording double.
pub trait NodeHands {
    /// Now on the HA loop's monotonic clock (the store's).
    fn now(&self) -> walrep_states::Millis;
    /// `at` on that clock as an [`Instant`].
    fn instant(&self, at: walrep_states::Millis) -> Instant;
    /// The node's state for this cycle.
    fn local_state(&self) -> walrep_states::ha::LocalState;
    /// Whether a node is running (a stopped leader releases its key).
    fn running(&self) -> bool;
    /// Open the write gate until the fence deadline.
    fn open_gate(&self, until: walrep_states::Millis) -> Result<(), String>;
    /// Close the write gate now.
    fn close_gate(&self);
    /// Count only these standbys' confirmations in syncrep.
    fn set_sync_allowed(&self, names: Vec<String>) -> Result<(), String>;
    /// Promote the standby.
    fn promote(&self) -> Result<(), String>;
    /// Stop as a primary, rejoin `leader` at `repl_addr`, start as its standby.
    fn demote(&self, leader: &str, repl_addr: &str) -> Result<(), String>;
    /// Stream from `leader` at `repl_addr` (reload, no restart).
    fn follow(&self, leader: &str, repl_addr: &str) -> Result<(), String>;
    /// Keep the member slots: `leading` with the members whose keys are
    /// read this cycle (see [`super::slots`]).
    fn member_slots(&self, leading: bool, members: &[String]);
    /// What the last cycle found.
    fn status(&self) -> HaStatus;
    /// Record what this cycle found.
    fn set_status(&self, status: HaStatus);
}

/// Run HA cycles until `stop`; on the way out, a leader whose node has
/// stopped gives the key up so another member takes over at once instead
/// of after `ha_ttl`.
pub fn run<S: HaStore, H: NodeHands>(
    mut state: HaState,
    mut store: S,
    hands: Arc<H>,
    stop: Arc<AtomicBool>,
) {
    let loop_wait = Duration::from_millis(state.config().loop_wait_ms);
    let mut lease: Option<Lease> = None;
    let mut last_why = String::new();
    while !stop.load(Ordering::SeqCst) {
        let (next, ok) = cycle(&mut state, &mut store, &*hands, &mut lease, &mut last_why);
        let wait = if ok { next } else { loop_wait };
        let end = Instant::now() + wait;
        while Instant::now() < end && !stop.load(Ordering::SeqCst) {
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
        }
    }
    release_at_exit(&state, &mut store, &*hands);
}

/// A leader whose node has stopped gives the key up.
fn release_at_exit<S: HaStore, H: NodeHands>(state: &HaState, store: &mut S, hands: &H) {
    let leader = state.gate_until().is_some()
        || hands
            .status()
            .leader
            .as_deref()
            .is_some_and(|l| l == state.config().name);
    if leader && !hands.running() {
        match store.release_leader() {
            Ok(true) => tracing::info!("released the leader key: the node has stopped"),
            Ok(false) => {}
            Err(e) => tracing::warn!("could not release the leader key at shutdown: {e}"),
        }
    }
}

/// One cycle: renew, read, decide, act in order (stopping at the first
/// failure), keep the member slots, publish the status. Returns when to
/// run the next one and whether every action succeeded.
pub fn cycle<S: HaStore, H: NodeHands>(
    state: &mut HaState,
    store: &mut S,
    hands: &H,
    lease: &mut Option<Lease>,
    last_why: &mut String,
) -> (Duration, bool) {
    let mut counters = hands.status().counters;
    counters.cycles += 1;
    match store.keepalive() {
        Ok(l) => *lease = Some(l),
        Err(e) => {
            counters.dcs_errors += 1;
            tracing::warn!("lease renewal failed: {e}");
        }
    }
    let view = store.load().map_err(|e| {
        counters.dcs_errors += 1;
        DcsReadError {
            message: e.to_string(),
        }
    });
    let (leader, paused, members) = match &view {
        Ok(v) => (
            v.leader_name().map(str::to_string),
            v.paused(),
            Some(
                v.members
                    .iter()
                    .map(|m| m.value.name.clone())
                    .collect::<Vec<_>>(),
            ),
        ),
        Err(_) => (None, hands.status().paused, None),
    };
    let input = HaInput {
        now: hands.now(),
        wall_clock_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        lease: *lease,
        view,
        local: hands.local_state(),
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
        if let Err(e) = execute(action, store, hands, &mut counters) {
            tracing::warn!(action = %action, "HA action failed: {e}");
            ok = false;
            break;
        }
    }
    if !ok {
        counters.failed_cycles += 1;
    }
    // Patroni's last step: the leader's slots for the members it read.
    let leading = state.gate_until().is_some()
        && input.local.role == walrep_states::ha::LocalRole::Primary
        && leader.as_deref() == Some(state.config().name.as_str());
    if let Some(members) = members {
        hands.member_slots(leading, &members);
    }
    hands.set_status(HaStatus {
        leader,
        why: decision.why.clone(),
        gate_until: state.gate_until().map(|m| hands.instant(m)),
        halted: state.halted().map(str::to_string),
        paused,
        counters,
    });
    (Duration::from_millis(decision.next_cycle_ms), ok)
}

/// Run one action; a lost compare-and-swap is a failure too (the cycle
/// stops there). Store errors, leader keys taken, promotions and
/// demotions are counted.
fn execute<S: HaStore, H: NodeHands>(
    action: &HaAction,
    store: &mut S,
    hands: &H,
    counters: &mut HaCounters,
) -> Result<(), String> {
    fn cas<E: std::fmt::Display>(
        r: Result<bool, E>,
        what: &str,
        errors: &mut u64,
    ) -> Result<(), String> {
        match r {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{what}: compare-and-swap lost")),
            Err(e) => {
                *errors += 1;
                Err(format!("{what}: {e}"))
            }
        }
    }
    let errors = &mut counters.dcs_errors;
    match action {
        HaAction::PublishMember(m) => match store.publish_member(m) {
            Ok(()) => Ok(()),
            Err(e) => cas::<S::Error>(Err(e), "publish the member key", errors),
        },
        HaAction::Initialize { system_identifier } => {
            cas(store.initialize(*system_identifier), "initialize", errors)
        }
        HaAction::AcquireLeader => {
            cas(store.acquire_leader(), "acquire the leader key", errors)?;
            counters.leader_acquired += 1;
            Ok(())
        }
        HaAction::UpdateLeader => cas(store.update_leader(), "update the leader key", errors),
        HaAction::ReleaseLeader => cas(store.release_leader(), "release the leader key", errors),
        HaAction::WriteSync {
            record,
            expected_mod_revision,
        } => cas(
            store.write_sync(record, *expected_mod_revision),
            "write sync",
            errors,
        ),
        HaAction::SetSyncAllowed(names) => hands.set_sync_allowed(names.clone()),
        HaAction::OpenGate { until } => hands.open_gate(*until),
        HaAction::CloseGate => {
            hands.close_gate();
            Ok(())
        }
        HaAction::Promote => {
            hands.promote()?;
            counters.promotions += 1;
            Ok(())
        }
        HaAction::Demote {
            leader: Some(leader),
            repl_addr: Some(addr),
        } => {
            hands.demote(leader, addr)?;
            counters.demotions += 1;
            Ok(())
        }
        HaAction::Demote { .. } => {
            // No leader to rejoin yet: stay fenced until one appears.
            hands.close_gate();
            Ok(())
        }
        HaAction::Follow { leader, repl_addr } => hands.follow(leader, repl_addr),
        HaAction::AppendHistory {
            entry,
            expected_mod_revision,
        } => cas(
            store.append_history(entry, *expected_mod_revision),
            "append history",
            errors,
        ),
        HaAction::ClearFailover {
            expected_mod_revision,
        } => cas(
            store.write_failover(None, *expected_mod_revision),
            "clear failover",
            errors,
        ),
        HaAction::Halt { reason } => {
            hands.close_gate();
            Err(format!("halted: {reason}"))
        }
    }
}

#[cfg(test)]
mod tests {
    //! The real cycle, on the in-memory store with a test clock and a node
    //! double that records what the loop asked of it.

    use std::sync::Mutex;

    use walrep_states::ha::{LocalRole, LocalState, MemberRole};
    use walrep_states::{Lsn, Millis, TimelineId};

    use super::*;
    use crate::ha::dcs::{Dcs, DcsError, MemoryDcs, MemoryStore};

    const PREFIX: &str = "/walrep/main/";
    const TTL_MS: u64 = 6_000;
    const MARGIN_MS: u64 = 2_000;

    /// A node that does what it is told at once and records it.
    struct FakeNode {
        store: MemoryStore,
        local: Mutex<LocalState>,
        gate_until: Mutex<Option<Millis>>,
        calls: Mutex<Vec<String>>,
        status: Mutex<HaStatus>,
    }

    impl FakeNode {
        fn new(store: &MemoryStore, role: LocalRole) -> FakeNode {
            FakeNode {
                store: store.clone(),
                local: Mutex::new(LocalState {
                    role,
                    system_identifier: 7,
                    timeline: TimelineId(1),
                    timeline_start_lsn: Lsn::INVALID,
                    flush_lsn: Lsn(0x3000),
                    replay_lsn: Lsn(0x3000),
                    healthy: true,
                    following: None,
                    replicas: Vec::new(),
                    sync_count: 0,
                    sync_any: false,
                    sync_allowed: Vec::new(),
                    gate_open: false,
                }),
                gate_until: Mutex::new(None),
                calls: Mutex::new(Vec::new()),
                status: Mutex::default(),
            }
        }
        fn gate_open(&self) -> bool {
            self.gate_until
                .lock()
                .unwrap()
                .is_some_and(|u| self.store.now() < u)
        }
        fn record(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
        fn called(&self, prefix: &str) -> bool {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .any(|c| c.starts_with(prefix))
        }
    }

    impl NodeHands for FakeNode {
        fn now(&self) -> Millis {
            self.store.now()
        }
        fn instant(&self, _at: Millis) -> Instant {
            Instant::now()
        }
        fn local_state(&self) -> LocalState {
            let mut l = self.local.lock().unwrap().clone();
            l.gate_open = self.gate_open();
            l
        }
        fn running(&self) -> bool {
            true
        }
        fn open_gate(&self, until: Millis) -> Result<(), String> {
            *self.gate_until.lock().unwrap() = Some(until);
            self.record(format!("OpenGate {}", until.0));
            Ok(())
        }
        fn close_gate(&self) {
            *self.gate_until.lock().unwrap() = None;
            self.record("CloseGate".into());
        }
        fn set_sync_allowed(&self, names: Vec<String>) -> Result<(), String> {
            self.record(format!("SetSyncAllowed {names:?}"));
            Ok(())
        }
        fn promote(&self) -> Result<(), String> {
            self.record("Promote".into());
            Ok(())
        }
        fn demote(&self, leader: &str, repl_addr: &str) -> Result<(), String> {
            self.record(format!("Demote {leader} {repl_addr}"));
            Ok(())
        }
        fn follow(&self, leader: &str, repl_addr: &str) -> Result<(), String> {
            self.record(format!("Follow {leader} {repl_addr}"));
            Ok(())
        }
        fn member_slots(&self, leading: bool, members: &[String]) {
            self.record(format!("MemberSlots leading={leading} {members:?}"));
        }
        fn status(&self) -> HaStatus {
            self.status.lock().unwrap().clone()
        }
        fn set_status(&self, status: HaStatus) {
            *self.status.lock().unwrap() = status;
        }
    }

    fn state(name: &str) -> HaState {
        let mut c = HaConfig::with_defaults(name);
        c.ttl_ms = TTL_MS;
        c.loop_wait_ms = 1_000;
        c.retry_timeout_ms = 1_000;
        c.fence_margin_ms = MARGIN_MS;
        c.repl_addr = format!("{name}.example:5433");
        HaState::new(c).unwrap()
    }

    /// Loop state between cycles, as `run` keeps it.
    struct Loop<S> {
        state: HaState,
        store: S,
        lease: Option<Lease>,
        why: String,
    }

    impl<S: HaStore> Loop<S> {
        fn cycle(&mut self, node: &FakeNode) -> bool {
            cycle(
                &mut self.state,
                &mut self.store,
                node,
                &mut self.lease,
                &mut self.why,
            )
            .1
        }
    }

    fn leader_of(store: &MemoryStore) -> Option<String> {
        let mut reader = MemoryDcs::new(store, PREFIX, "reader", TTL_MS);
        Dcs::load(&mut reader)
            .unwrap()
            .leader_name()
            .map(str::to_string)
    }

    /// A primary alone takes the key and opens its gate; then etcd goes
    /// away: the gate is never extended past the deadline of the last
    /// successful renewal, and is shut at it.
    #[test]
    fn keepalive_failures_close_the_gate_at_the_fence_deadline() {
        let store = MemoryStore::new();
        let node = FakeNode::new(&store, LocalRole::Primary);
        let mut l = Loop {
            state: state("n1"),
            store: MemoryDcs::new(&store, PREFIX, "n1", TTL_MS),
            lease: None,
            why: String::new(),
        };
        for _ in 0..10 {
            if node.gate_open() {
                break;
            }
            l.cycle(&node);
            store.advance_ms(1_000);
        }
        assert!(node.gate_open(), "gate never opened: {:?}", node.calls);
        assert_eq!(leader_of(&store).as_deref(), Some("n1"));
        assert!(node.called("MemberSlots leading=true"));
        let counters = node.status().counters;
        assert_eq!(counters.leader_acquired, 1);
        assert_eq!(counters.dcs_errors, 0);

        // One more healthy cycle: the deadline is the renewal's send time
        // + ttl - margin.
        l.cycle(&node);
        let sent = l.lease.unwrap().sent_at;
        let deadline = sent.after_ms(TTL_MS - MARGIN_MS);
        assert_eq!(*node.gate_until.lock().unwrap(), Some(deadline));

        store.set_unavailable(Some(DcsError::Unreachable("test".into())));
        node.calls.lock().unwrap().clear();
        let errors_before = node.status().counters.dcs_errors;
        while store.now() < deadline.after_ms(2_000) {
            store.advance_ms(500);
            l.cycle(&node);
            let until = *node.gate_until.lock().unwrap();
            assert!(
                until.is_none_or(|u| u <= deadline),
                "gate extended to {until:?} past {deadline:?} without a renewal"
            );
            if store.now() >= deadline {
                assert!(!node.gate_open(), "gate open at {:?}", store.now());
            }
        }
        assert!(!node.called("MemberSlots"), "no slot step without a read");
        let s = node.status();
        assert!(
            s.counters.dcs_errors >= errors_before + 2,
            "renewals and reads that failed are counted: {:?}",
            s.counters
        );
        assert!(s.leader.is_none());
    }

    /// Acquires the leader key for `rival` just before our node tries.
    struct Racing {
        inner: MemoryDcs,
        rival: MemoryDcs,
    }

    impl HaStore for Racing {
        type Error = DcsError;
        fn load(&mut self) -> Result<walrep_states::ha::ClusterView, DcsError> {
            Dcs::load(&mut self.inner)
        }
        fn keepalive(&mut self) -> Result<Lease, DcsError> {
            Dcs::keepalive(&mut self.inner)
        }
        fn acquire_leader(&mut self) -> Result<bool, DcsError> {
            Dcs::keepalive(&mut self.rival)?;
            assert!(Dcs::acquire_leader(&mut self.rival)?);
            Dcs::acquire_leader(&mut self.inner)
        }
        fn update_leader(&mut self) -> Result<bool, DcsError> {
            Dcs::update_leader(&mut self.inner)
        }
        fn release_leader(&mut self) -> Result<bool, DcsError> {
            Dcs::release_leader(&mut self.inner)
        }
        fn publish_member(&mut self, r: &MemberRecord) -> Result<(), DcsError> {
            Dcs::publish_member(&mut self.inner, r)
        }
        fn write_sync(&mut self, r: &SyncRecord, rev: i64) -> Result<bool, DcsError> {
            Dcs::write_sync(&mut self.inner, r, rev)
        }
        fn write_failover(
            &mut self,
            r: Option<&FailoverRecord>,
            rev: i64,
        ) -> Result<bool, DcsError> {
            Dcs::write_failover(&mut self.inner, r, rev)
        }
        fn append_history(&mut self, e: &HistoryEntry, rev: i64) -> Result<bool, DcsError> {
            Dcs::append_history(&mut self.inner, e, rev)
        }
        fn initialize(&mut self, id: u64) -> Result<bool, DcsError> {
            Dcs::initialize(&mut self.inner, id)
        }
    }

    /// A standby named in `sync` races for the free key and loses the
    /// compare-and-swap: nothing after it runs (no sync write, no
    /// promotion), the cycle counts as failed, not as an etcd error.
    #[test]
    fn a_lost_compare_and_swap_stops_the_action_list() {
        let store = MemoryStore::new();
        let sync = SyncRecord {
            leader: "n0".into(),
            sync_standbys: vec!["n1".into()],
        };
        store.put_raw(
            &format!("{PREFIX}sync"),
            &serde_json::to_vec(&sync).unwrap(),
        );
        let node = FakeNode::new(&store, LocalRole::Standby);
        let mut l = Loop {
            state: state("n1"),
            store: Racing {
                inner: MemoryDcs::new(&store, PREFIX, "n1", TTL_MS),
                rival: MemoryDcs::new(&store, PREFIX, "n2", TTL_MS),
            },
            lease: None,
            why: String::new(),
        };
        assert!(!l.cycle(&node), "the cycle reports the lost race");
        assert_eq!(leader_of(&store).as_deref(), Some("n2"));
        assert!(!node.called("Promote"), "{:?}", node.calls);
        assert!(!node.called("SetSyncAllowed"), "{:?}", node.calls);
        let mut reader = MemoryDcs::new(&store, PREFIX, "reader", TTL_MS);
        assert_eq!(Dcs::load(&mut reader).unwrap().sync.unwrap().value, sync);
        let c = node.status().counters;
        assert_eq!(
            (c.failed_cycles, c.dcs_errors, c.leader_acquired),
            (1, 0, 0)
        );
        assert!(node.called("MemberSlots leading=false"));
    }

    /// A primary that finds another member holding the key is demoted
    /// towards it (and counted); a standby follows the leader.
    #[test]
    fn a_primary_under_another_leader_is_demoted_and_a_standby_follows() {
        let store = MemoryStore::new();
        let mut n2 = MemoryDcs::new(&store, PREFIX, "n2", 60_000);
        Dcs::keepalive(&mut n2).unwrap();
        assert!(Dcs::acquire_leader(&mut n2).unwrap());
        let record = MemberRecord {
            name: "n2".into(),
            role: MemberRole::Primary,
            system_identifier: 7,
            timeline: TimelineId(2),
            flush_lsn: Lsn(0x4000),
            replay_lsn: Lsn(0x4000),
            repl_addr: "n2.example:5433".into(),
            client_addr: "n2.example:6380".into(),
            status_url: None,
            nofailover: false,
            healthy: true,
            ha_paused_seen: false,
            version: "test".into(),
        };
        Dcs::publish_member(&mut n2, &record).unwrap();

        let primary = FakeNode::new(&store, LocalRole::Primary);
        let mut l = Loop {
            state: state("n1"),
            store: MemoryDcs::new(&store, PREFIX, "n1", TTL_MS),
            lease: None,
            why: String::new(),
        };
        assert!(l.cycle(&primary));
        assert!(
            primary.called("Demote n2 n2.example:5433"),
            "{:?}",
            primary.calls
        );
        assert!(!primary.gate_open());
        assert_eq!(primary.status().counters.demotions, 1);
        assert_eq!(primary.status().leader.as_deref(), Some("n2"));

        let standby = FakeNode::new(&store, LocalRole::Standby);
        let mut l = Loop {
            state: state("n3"),
            store: MemoryDcs::new(&store, PREFIX, "n3", TTL_MS),
            lease: None,
            why: String::new(),
        };
        assert!(l.cycle(&standby));
        assert!(
            standby.called("Follow n2 n2.example:5433"),
            "{:?}",
            standby.calls
        );
        assert!(standby.called("MemberSlots leading=false"));
    }
}
