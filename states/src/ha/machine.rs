//! The HA decision: one cycle's actions from the cluster view and the node's
//! own state, and the little state that must survive between cycles.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::action::{HaAction, HaDecision, Severity};
use super::input::{DcsReadError, HaConfig, HaConfigError, HaInput, LocalRole, ReplicaSyncState};
use super::records::{
    FailoverKind, FailoverRecord, HistoryEntry, MemberRecord, MemberRole, SyncRecord,
};
use super::view::{keys, ClusterView, Versioned};
use crate::{Lsn, Millis};

/// What one node's HA loop remembers between cycles. Everything else is read
/// again from the store and the node each cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaState {
    /// The node's settings.
    config: HaConfig,
    /// The deadline of the last `OpenGate`, while the gate may be open.
    gate_until: Option<Millis>,
    /// Standbys seen `sync` while a slot in `sync` was free, with the
    /// primary's flush LSN at that moment: no write can be acknowledged while
    /// a slot is free, so a standby that flushed that far holds every
    /// acknowledged write and is confirmed.
    sync_targets: BTreeMap<String, Lsn>,
    /// A switchover this leader is carrying out.
    handover: Option<Handover>,
    /// Set once the loop must stop for good.
    halted: Option<String>,
}

/// A hand-over in progress on the leader: fenced, waiting for the candidate
/// to flush everything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Handover {
    candidate: String,
    fenced_at: Millis,
}

/// How a node may take the leader key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Race {
    /// The normal rules: a confirmed synchronous standby (or the old leader),
    /// the healthiest of them.
    Sync,
    /// The operator named this node in a switchover.
    Switchover,
    /// The operator forced a failover to this node.
    Forced,
    /// `ha_allow_async_failover` and no synchronous member is alive.
    Async,
    /// A running primary and no `sync` record yet: a new cluster.
    Bootstrap,
}

/// One cycle's plan, built up by the rules.
struct Plan {
    actions: Vec<HaAction>,
    why: Vec<String>,
    severity: Severity,
    next_cycle_ms: u64,
    /// The fence deadline if the gate may be open after this cycle.
    gate: Option<Millis>,
}

impl Plan {
    fn new(loop_wait_ms: u64) -> Plan {
        Plan {
            actions: Vec::new(),
            why: Vec::new(),
            severity: Severity::Info,
            next_cycle_ms: loop_wait_ms,
            gate: None,
        }
    }

    fn say(&mut self, why: impl Into<String>) {
        self.why.push(why.into());
    }

    fn warn(&mut self, why: impl Into<String>) {
        self.severity = self.severity.max(Severity::Warn);
        self.say(why);
    }

    fn push(&mut self, action: HaAction) {
        self.actions.push(action);
    }

    fn has(&self, pred: impl Fn(&HaAction) -> bool) -> bool {
        self.actions.iter().any(pred)
    }
}

impl HaState {
    /// A machine for a node that just started: its gate is closed.
    pub fn new(config: HaConfig) -> Result<HaState, HaConfigError> {
        config.validate()?;
        Ok(HaState {
            config,
            gate_until: None,
            sync_targets: BTreeMap::new(),
            handover: None,
            halted: None,
        })
    }

    /// The node's settings.
    pub fn config(&self) -> &HaConfig {
        &self.config
    }

    /// The fence deadline last handed to the node, while its gate may be
    /// open.
    pub fn gate_until(&self) -> Option<Millis> {
        self.gate_until
    }

    /// Why the loop halted, if it did.
    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref()
    }

    /// The member a switchover from this leader is handing over to.
    pub fn handing_over_to(&self) -> Option<&str> {
        self.handover.as_ref().map(|h| h.candidate.as_str())
    }

    /// Decides one HA cycle (see the module documentation for the rules).
    pub fn decide(&mut self, input: &HaInput) -> HaDecision {
        if let Some(reason) = self.halted.clone() {
            let mut plan = Plan::new(self.config.loop_wait_ms);
            plan.severity = Severity::Error;
            plan.say(format!("HA halted: {reason}"));
            return self.finish(input, None, plan);
        }
        let view = match &input.view {
            Ok(view) => view,
            Err(err) => return self.store_unreachable(input, err),
        };
        let mut plan = Plan::new(self.config.loop_wait_ms);
        if let Some(reason) = self.identity_mismatch(input, view) {
            self.halted = Some(reason.clone());
            plan.severity = Severity::Error;
            plan.say(reason.clone());
            plan.push(HaAction::Halt { reason });
            return self.finish(input, None, plan);
        }
        if let Some((key, why)) = view.blocking_unparsed() {
            plan.severity = Severity::Error;
            plan.say(format!(
                "key {key} under our prefix is not ours or is corrupt ({why}): \
                 no promotion until an operator fixes it"
            ));
        }
        match input.local.role {
            LocalRole::Primary => self.as_primary(input, view, &mut plan),
            LocalRole::Standby => self.as_standby(input, view, &mut plan),
            LocalRole::Promoting => plan.say("promotion running: waiting for it to finish"),
            LocalRole::Demoting => plan.say("demotion running: waiting for it to finish"),
            LocalRole::Starting => plan.say("starting: no decision until the node runs"),
        }
        if input.local.role != LocalRole::Primary {
            self.handover = None;
        }
        self.finish(input, Some(view), plan)
    }

    /// The store could not be read: never decide leadership from that. A
    /// primary keeps its gate only until its own deadline (the keepalives
    /// the runtime keeps sending may still extend the lease, but only a
    /// confirmed read extends the gate); a standby keeps following.
    fn store_unreachable(&mut self, input: &HaInput, err: &DcsReadError) -> HaDecision {
        let mut plan = Plan::new(self.config.loop_wait_ms);
        match (input.local.role, self.gate_until) {
            (LocalRole::Primary, Some(until)) if until > input.now && input.local.gate_open => {
                plan.gate = Some(until);
                plan.warn(format!(
                    "store unreachable ({}): keeping the write gate until its deadline {until}, \
                     then fenced; not deciding leadership from a failed read",
                    err.message
                ));
            }
            (LocalRole::Primary, _) => plan.warn(format!(
                "store unreachable ({}): fenced (no confirmed lease), retrying",
                err.message
            )),
            _ => plan.warn(format!(
                "store unreachable ({}): no promotion without a fresh view; {}",
                err.message,
                match &input.local.following {
                    Some(leader) => format!("still following {leader}"),
                    None => "following nobody".to_string(),
                }
            )),
        }
        self.finish(input, None, plan)
    }

    /// A data directory from another cluster must never lead or follow here.
    fn identity_mismatch(&self, input: &HaInput, view: &ClusterView) -> Option<String> {
        let init = view.initialize.as_ref()?;
        let ours = input.local.system_identifier;
        // 0: not known yet (a node between rejoin and standby mode has no
        // control file loaded for a cycle). Such a node takes no key either:
        // racing for one needs the identifier to match.
        let known = input.local.role != LocalRole::Starting && ours != 0;
        (known && init.value != ours).then(|| {
            format!(
                "system identifier {ours} of this node differs from the cluster's {} \
                 (key initialize): this data directory belongs to another cluster; \
                 refusing to take part",
                init.value
            )
        })
    }

    /// The fence deadline from the last keepalive, if the view shows the
    /// leader key as ours on that very lease.
    fn confirmed_deadline(&self, input: &HaInput, view: &ClusterView) -> Option<Millis> {
        let lease = input.lease?;
        let leader = view.leader.as_ref()?;
        (leader.value == self.config.name && leader.lease == lease.id).then(|| {
            lease
                .sent_at
                .after_ms(lease.ttl_ms.saturating_sub(self.config.fence_margin_ms))
        })
    }

    fn as_primary(&mut self, input: &HaInput, view: &ClusterView, plan: &mut Plan) {
        let me = self.config.name.clone();
        match view.leader_name() {
            Some(owner) if owner == me => self.as_leader(input, view, plan),
            Some(owner) => {
                self.handover = None;
                let owner = owner.to_string();
                if view.paused() {
                    plan.warn(format!(
                        "paused: {owner} holds the leader key; staying fenced, not demoting"
                    ));
                    return;
                }
                let repl_addr = view.member(&owner).map(|m| m.value.repl_addr.clone());
                plan.push(HaAction::Demote {
                    leader: Some(owner.clone()),
                    repl_addr,
                });
                plan.warn(format!(
                    "running as primary but {owner} holds the leader key: fenced, demoting to \
                     rejoin as its standby"
                ));
            }
            None => {
                if let Some(h) = &self.handover {
                    let waited_ms = input.now.since_ms(h.fenced_at);
                    if waited_ms <= self.config.ttl_ms.saturating_mul(2) {
                        plan.say(format!(
                            "released the leader key to {}: fenced, waiting for it to take over",
                            h.candidate
                        ));
                        return;
                    }
                    self.handover = None;
                }
                match self.may_race(input, view) {
                    Ok(race) => {
                        plan.push(HaAction::AcquireLeader);
                        plan.next_cycle_ms = 0;
                        plan.say(format!(
                            "no leader key; running as primary and {}: taking the key back",
                            race_words(race)
                        ));
                    }
                    Err(why) => plan.warn(format!(
                        "no leader key and running as primary, but {why}: staying fenced"
                    )),
                }
            }
        }
    }

    fn as_leader(&mut self, input: &HaInput, view: &ClusterView, plan: &mut Plan) {
        let Some(leader) = view.leader.as_ref() else {
            return;
        };
        if input.lease.is_none_or(|l| l.id != leader.lease) {
            plan.push(HaAction::UpdateLeader);
            plan.next_cycle_ms = 0;
            plan.say("the leader key is mine but on an older lease: re-attaching it");
            return;
        }
        let Some(deadline) = self.confirmed_deadline(input, view) else {
            return;
        };
        if deadline <= input.now {
            plan.warn(format!(
                "I hold the leader key, but my last renewal is too old (fence deadline \
                 {deadline} passed): fenced until a renewal succeeds"
            ));
            return;
        }
        let me = self.config.name.clone();
        let sync_mine = view.sync.as_ref().is_some_and(|s| s.value.leader == me);
        let init_unparsed = view.unparsed.iter().any(|(k, _)| k == keys::INITIALIZE);
        if view.initialize.is_none() && !init_unparsed {
            plan.push(HaAction::Initialize {
                system_identifier: input.local.system_identifier,
            });
        }
        if let Some(failover) = &view.failover {
            if self.handle_failover(input, view, failover, plan) {
                return;
            }
        }
        if sync_mine {
            plan.gate = Some(deadline);
            plan.say(format!(
                "I am the leader with the lock (write gate until {deadline})"
            ));
            self.manage_sync(input, view, plan);
        } else {
            self.claim_sync(input, view, plan);
        }
        self.append_history(input, view, plan);
    }

    /// Make `sync` name this leader with no standbys, after syncrep stops
    /// counting anyone: the gate opens once that write is seen.
    fn claim_sync(&mut self, input: &HaInput, view: &ClusterView, plan: &mut Plan) {
        if !input.local.sync_allowed.is_empty() {
            plan.push(HaAction::SetSyncAllowed(Vec::new()));
        }
        plan.push(HaAction::WriteSync {
            record: SyncRecord {
                leader: self.config.name.clone(),
                sync_standbys: Vec::new(),
            },
            expected_mod_revision: rev(&view.sync),
        });
        plan.next_cycle_ms = 0;
        plan.say("I hold the leader key: writing sync naming me before opening the write gate");
    }

    /// Keep `sync` and syncrep's allowed set in step with the confirmed
    /// synchronous standbys, one change per cycle.
    fn manage_sync(&mut self, input: &HaInput, view: &ClusterView, plan: &mut Plan) {
        let Some(sync) = view.sync.as_ref() else {
            return;
        };
        let listed = &sync.value.sync_standbys;
        let allowed = &input.local.sync_allowed;
        let wanted = if input.local.sync_any {
            plan.warn("synchronous_standby_names uses ANY: HA does not support quorum commit, no standby is confirmed");
            0
        } else {
            input.local.sync_count
        };
        // Syncrep must never count a standby `sync` does not name.
        let allowed_listed: Vec<String> = allowed
            .iter()
            .filter(|a| listed.contains(a))
            .cloned()
            .collect();
        if &allowed_listed != allowed {
            plan.push(HaAction::SetSyncAllowed(allowed_listed.clone()));
        }
        // A listed standby stays while it streams as a synchronous candidate
        // (`sync`, or `potential` because a higher-priority one connected:
        // syncrep ranks only the allowed ones, so it still confirms).
        let streams = |name: &str| {
            input.local.replicas.iter().any(|r| {
                r.name == name
                    && matches!(
                        r.sync_state,
                        ReplicaSyncState::Sync | ReplicaSyncState::Potential
                    )
            })
        };
        // Remove: standbys gone or no longer synchronous candidates, or more
        // than asked for.
        let mut keep: Vec<String> = listed.iter().filter(|n| streams(n)).cloned().collect();
        keep.truncate(wanted);
        if &keep != listed {
            let still: Vec<String> = allowed_listed
                .iter()
                .filter(|a| keep.contains(a))
                .cloned()
                .collect();
            if still != allowed_listed {
                plan.push(HaAction::SetSyncAllowed(still));
            }
            let gone: Vec<&String> = listed.iter().filter(|n| !keep.contains(n)).collect();
            plan.say(format!(
                "{} no longer streams as a synchronous standby: no longer counting it, then removing it from sync",
                join(&gone)
            ));
            plan.push(write_sync(&self.config.name, keep, sync.mod_revision));
            return;
        }
        // Written but not yet counted: count it now.
        if &allowed_listed != listed {
            plan.push(HaAction::SetSyncAllowed(listed.clone()));
            plan.say(format!(
                "sync names [{}]: letting syncrep count them",
                listed.join(", ")
            ));
            return;
        }
        self.add_confirmed(input, sync, wanted, plan);
    }

    /// Add one confirmed standby to `sync` while a slot is free, then count it.
    fn add_confirmed(
        &mut self,
        input: &HaInput,
        sync: &Versioned<SyncRecord>,
        wanted: usize,
        plan: &mut Plan,
    ) {
        let listed = &sync.value.sync_standbys;
        if listed.len() >= wanted {
            self.sync_targets.clear();
            return;
        }
        let candidates: Vec<_> = input
            .local
            .replicas
            .iter()
            .filter(|r| r.sync_state == ReplicaSyncState::Sync && !listed.contains(&r.name))
            .collect();
        self.sync_targets
            .retain(|name, _| candidates.iter().any(|c| &c.name == name));
        for c in candidates {
            let target = *self
                .sync_targets
                .entry(c.name.clone())
                .or_insert(input.local.flush_lsn);
            if c.flush_lsn >= target {
                let mut names = listed.clone();
                names.push(c.name.clone());
                names.sort();
                plan.push(write_sync(
                    &self.config.name,
                    names.clone(),
                    sync.mod_revision,
                ));
                plan.push(HaAction::SetSyncAllowed(names));
                plan.say(format!(
                    "{} is synchronous and has flushed {target}: adding it to sync, then counting it",
                    c.name
                ));
                self.sync_targets.remove(&c.name);
                return;
            }
            plan.say(format!(
                "{} is synchronous but has flushed {} of {target}: not confirmed yet",
                c.name, c.flush_lsn
            ));
        }
    }

    /// Record the new timeline once this node leads on it.
    fn append_history(&self, input: &HaInput, view: &ClusterView, plan: &mut Plan) {
        let last = view
            .last_history_timeline()
            .unwrap_or(crate::TimelineId::FIRST);
        if input.local.timeline <= last {
            return;
        }
        let mut entries = view
            .history
            .as_ref()
            .map(|h| h.value.clone())
            .unwrap_or_default();
        let entry = super::records::HistoryEntry {
            timeline: input.local.timeline,
            switch_lsn: input.local.timeline_start_lsn,
            leader: self.config.name.clone(),
            at_ms: input.wall_clock_ms,
        };
        entries.push(entry.clone());
        plan.push(HaAction::AppendHistory {
            entry,
            expected_mod_revision: rev(&view.history),
        });
        plan.say(format!(
            "recording timeline {} in history",
            input.local.timeline.0
        ));
    }

    /// The leader's side of a `failover` request. Returns true when it owns
    /// the cycle (the gate stays closed while handing over).
    fn handle_failover(
        &mut self,
        input: &HaInput,
        view: &ClusterView,
        failover: &Versioned<FailoverRecord>,
        plan: &mut Plan,
    ) -> bool {
        let me = self.config.name.as_str();
        let request = &failover.value;
        let clear = HaAction::ClearFailover {
            expected_mod_revision: failover.mod_revision,
        };
        let starting = self.handover.is_none();
        let too_old =
            input.wall_clock_ms > request.requested_at_ms.saturating_add(self.config.ttl_ms);
        if starting && too_old {
            plan.push(clear);
            plan.warn("clearing a failover request older than ha_ttl: not starting it now");
            return false;
        }
        if request.leader.as_deref().is_some_and(|l| l != me)
            || request.candidate.as_deref() == Some(me)
        {
            self.handover = None;
            plan.push(clear);
            plan.say("clearing a failover request that is done or was made against another leader");
            return false;
        }
        let candidate = match &request.candidate {
            Some(c) => c.clone(),
            None => match best_sync_standby(view, me) {
                Some(c) => c,
                None => {
                    plan.push(clear);
                    plan.warn("switchover refused: no healthy synchronous standby to hand over to");
                    return false;
                }
            },
        };
        if let Err(why) = handover_target_ok(view, &candidate, request.kind, input) {
            self.handover = None;
            plan.push(clear);
            plan.warn(format!("switchover to {candidate} refused: {why}"));
            return false;
        }
        let fenced_at = match &self.handover {
            Some(h) if h.candidate == candidate => h.fenced_at,
            _ => {
                self.handover = Some(Handover {
                    candidate: candidate.clone(),
                    fenced_at: input.now,
                });
                plan.say(format!(
                    "switchover to {candidate}: fenced, waiting for it to flush {}",
                    input.local.flush_lsn
                ));
                plan.next_cycle_ms = self.config.loop_wait_ms.min(100);
                return true;
            }
        };
        let flushed = replica_flush(input, view, &candidate);
        if flushed >= input.local.flush_lsn {
            plan.push(HaAction::ReleaseLeader);
            plan.next_cycle_ms = 0;
            plan.say(format!(
                "switchover: {candidate} has flushed {flushed}, all I have: releasing the leader key to it"
            ));
            return true;
        }
        if input.now.since_ms(fenced_at) > self.config.ttl_ms {
            self.handover = None;
            plan.push(clear);
            plan.warn(format!(
                "switchover to {candidate} aborted: it reached only {flushed} of {} within ha_ttl",
                input.local.flush_lsn
            ));
            return false;
        }
        plan.say(format!(
            "switchover to {candidate}: fenced, it has flushed {flushed} of {}",
            input.local.flush_lsn
        ));
        plan.next_cycle_ms = self.config.loop_wait_ms.min(100);
        true
    }

    fn as_standby(&mut self, input: &HaInput, view: &ClusterView, plan: &mut Plan) {
        self.sync_targets.clear();
        let me = self.config.name.clone();
        match view.leader.as_ref() {
            Some(leader) if leader.value == me => self.holding_key_as_standby(input, view, plan),
            Some(leader) => {
                let owner = leader.value.clone();
                if let (Some(m), Some(entry)) = (view.member(&owner), diverged(input, view)) {
                    if view.paused() {
                        plan.warn(format!(
                            "paused: replayed past where timeline {} forked off mine, so I \
                             cannot follow {owner}; not rejoining until resumed",
                            entry.timeline.0
                        ));
                        return;
                    }
                    plan.push(HaAction::Demote {
                        leader: Some(owner.clone()),
                        repl_addr: Some(m.value.repl_addr.clone()),
                    });
                    plan.warn(format!(
                        "replayed timeline {} up to {}, past where timeline {} forked off it \
                         ({}): this WAL was never acknowledged and {owner} cannot stream past \
                         it; rejoining {owner}'s timeline",
                        input.local.timeline.0,
                        input.local.replay_lsn,
                        entry.timeline.0,
                        entry.switch_lsn
                    ));
                    return;
                }
                match view.member(&owner) {
                    Some(m) if input.local.following.as_deref() != Some(owner.as_str()) => {
                        plan.push(HaAction::Follow {
                            leader: owner.clone(),
                            repl_addr: m.value.repl_addr.clone(),
                        });
                        plan.say(format!("following the new leader {owner}"));
                    }
                    Some(_) => plan.say(format!("no action: following the leader {owner}")),
                    None => plan.warn(format!(
                        "{owner} holds the leader key but has no member key: cannot follow it yet"
                    )),
                }
            }
            None => match self.may_race(input, view) {
                Ok(race) => {
                    plan.push(HaAction::AcquireLeader);
                    if !input.local.sync_allowed.is_empty() {
                        plan.push(HaAction::SetSyncAllowed(Vec::new()));
                    }
                    plan.push(write_sync(&me, Vec::new(), rev(&view.sync)));
                    plan.push(HaAction::Promote);
                    let words = race_words(race);
                    if race != Race::Async && race != Race::Forced {
                        plan.say(format!("no leader key and {words}: taking the key, naming myself in sync, promoting"));
                    } else {
                        plan.warn(format!("no leader key and {words}: taking the key, naming myself in sync, promoting; acknowledged writes may be lost"));
                    }
                }
                Err(why) => plan.say(format!("no leader key, but {why}: not promoting")),
            },
        }
    }

    /// A standby with the key took it in an earlier cycle: promote if `sync`
    /// names it, else the sync write failed and the key goes back.
    fn holding_key_as_standby(&mut self, input: &HaInput, view: &ClusterView, plan: &mut Plan) {
        let me = self.config.name.as_str();
        let lease_ok = input
            .lease
            .zip(view.leader.as_ref())
            .is_some_and(|(l, k)| l.id == k.lease);
        if !lease_ok {
            plan.push(HaAction::UpdateLeader);
            plan.next_cycle_ms = 0;
            plan.say("I hold the leader key on an older lease: re-attaching it");
            return;
        }
        if view.paused() {
            plan.push(HaAction::ReleaseLeader);
            plan.say(
                "paused while holding the leader key as a standby: releasing it, not promoting",
            );
            return;
        }
        if view.sync.as_ref().is_some_and(|s| s.value.leader == me) {
            plan.push(HaAction::Promote);
            plan.say("I hold the leader key and sync names me: promoting");
        } else {
            plan.push(HaAction::ReleaseLeader);
            plan.warn(
                "took the leader key but the write of sync failed: releasing it, not promoting",
            );
        }
    }

    /// Whether this node may take a free leader key, and on what grounds.
    fn may_race(&self, input: &HaInput, view: &ClusterView) -> Result<Race, String> {
        let me = self.config.name.as_str();
        let local = &input.local;
        if view.paused() {
            return Err("the cluster is paused".into());
        }
        if let Some((key, _)) = view.blocking_unparsed() {
            return Err(format!("key {key} is not ours: no promotion"));
        }
        if !local.healthy {
            return Err("this node is not healthy".into());
        }
        if input.lease.is_none() {
            return Err("this node holds no lease".into());
        }
        let forced = view.failover.as_ref().map(|f| &f.value);
        if let Some(request) = forced {
            if request.candidate.as_deref() == Some(me) && request.kind == FailoverKind::Failover {
                return Ok(Race::Forced);
            }
            if let Some(other) = request.candidate.as_deref().filter(|c| *c != me) {
                if self.defers_to(input, view, request, other) {
                    return Err(format!("{other} is the requested candidate"));
                }
            }
        }
        if self.config.nofailover {
            return Err("ha_nofailover is set".into());
        }
        if let Some(last) = view.last_history_timeline() {
            if local.timeline < last {
                return Err(format!(
                    "my timeline {} is behind the cluster's timeline {} in history",
                    local.timeline.0, last.0
                ));
            }
        }
        if let Some(open) = view
            .members
            .iter()
            .find(|m| m.value.name != me && m.value.role == MemberRole::Primary)
        {
            return Err(format!("{} still reports an open primary", open.value.name));
        }
        let race = self.sync_grounds(input, view)?;
        if race == Race::Switchover || forced.is_some_and(|r| r.candidate.as_deref() == Some(me)) {
            return Ok(Race::Switchover);
        }
        self.healthiest(input, view, race)?;
        Ok(race)
    }

    /// Whether a `failover` request for `other` keeps this node out of the
    /// race: only while `other` is alive, healthy and could take the key
    /// itself (listed in `sync`, or a forced failover), and the request is
    /// not older than three TTLs (a leader starts a hand-over only within one
    /// TTL of the request and gives up after another, so the candidate has at
    /// least one more TTL to take the key).
    fn defers_to(
        &self,
        input: &HaInput,
        view: &ClusterView,
        request: &FailoverRecord,
        other: &str,
    ) -> bool {
        let fresh = input.wall_clock_ms
            <= request
                .requested_at_ms
                .saturating_add(self.config.ttl_ms.saturating_mul(3));
        let could_race = request.kind == FailoverKind::Failover
            || view.sync.as_ref().is_some_and(|s| s.value.allows(other));
        fresh && could_race && view.member(other).is_some_and(|m| m.value.healthy)
    }

    /// Rule 5's sync membership: listed in `sync` (or its leader), or the
    /// async fallback when allowed and no listed member is alive.
    fn sync_grounds(&self, input: &HaInput, view: &ClusterView) -> Result<Race, String> {
        let me = self.config.name.as_str();
        match view.sync.as_ref() {
            Some(sync) if sync.value.allows(me) => Ok(Race::Sync),
            None if input.local.role == LocalRole::Primary => Ok(Race::Bootstrap),
            sync => {
                let alive_listed = sync.is_some_and(|s| {
                    view.members.iter().any(|m| {
                        m.value.name != me && m.value.healthy && s.value.allows(&m.value.name)
                    })
                });
                if self.config.allow_async_failover && !alive_listed {
                    return Ok(Race::Async);
                }
                Err(match sync {
                    Some(s) => format!(
                        "I am not a confirmed synchronous standby (sync: leader {}, standbys [{}])",
                        s.value.leader,
                        s.value.sync_standbys.join(", ")
                    ),
                    None => "there is no sync record naming me".into(),
                })
            }
        }
    }

    /// No other eligible member is ahead (ties: the lower name wins).
    fn healthiest(&self, input: &HaInput, view: &ClusterView, race: Race) -> Result<(), String> {
        let me = self.config.name.as_str();
        let mine = input.local.flush_lsn;
        let last = view.last_history_timeline();
        let sync = view.sync.as_ref().map(|s| &s.value);
        // A leader handing over in a switchover has left the race.
        let handing_over = view
            .failover
            .as_ref()
            .and_then(|f| f.value.leader.as_deref());
        for m in &view.members {
            let m = &m.value;
            let eligible = m.name != me
                && Some(m.name.as_str()) != handing_over
                && m.healthy
                && !m.nofailover
                && view
                    .initialize
                    .as_ref()
                    .is_none_or(|i| i.value == m.system_identifier)
                && last.is_none_or(|t| m.timeline >= t)
                && matches!(m.role, MemberRole::Standby | MemberRole::Fenced)
                && (race == Race::Async || sync.is_some_and(|s| s.allows(&m.name)));
            if eligible && (m.flush_lsn > mine || (m.flush_lsn == mine && m.name.as_str() < me)) {
                return Err(format!(
                    "{} is at least as healthy (flushed {} against my {mine})",
                    m.name, m.flush_lsn
                ));
            }
        }
        Ok(())
    }

    /// Gate handling and the member key, for every cycle.
    fn finish(
        &mut self,
        input: &HaInput,
        view: Option<&ClusterView>,
        mut plan: Plan,
    ) -> HaDecision {
        let primary = input.local.role == LocalRole::Primary;
        let gate = plan.gate.filter(|until| primary && *until > input.now);
        let mut front = Vec::new();
        match gate {
            Some(until) => {
                if self.gate_until != Some(until) || !input.local.gate_open {
                    front.push(HaAction::OpenGate { until });
                }
                self.gate_until = Some(until);
            }
            None => {
                if input.local.gate_open || self.gate_until.is_some_and(|u| u > input.now) {
                    front.push(HaAction::CloseGate);
                }
                self.gate_until = None;
            }
        }
        front.append(&mut plan.actions);
        plan.actions = front;
        if let Some(view) = view {
            let record = self.member_record(input, view, &plan, gate.is_some());
            let current = view.member(&self.config.name);
            let stale = current
                .is_none_or(|m| m.value != record || input.lease.is_some_and(|l| l.id != m.lease));
            if stale && input.lease.is_some() {
                plan.push(HaAction::PublishMember(record));
            }
        }
        if plan.why.is_empty() {
            plan.say("no action");
        }
        HaDecision {
            actions: plan.actions,
            why: plan.why.join("; "),
            severity: plan.severity,
            next_cycle_ms: plan.next_cycle_ms,
        }
    }

    /// The record this node publishes about itself after this cycle.
    fn member_record(
        &self,
        input: &HaInput,
        view: &ClusterView,
        plan: &Plan,
        gate: bool,
    ) -> MemberRecord {
        let local = &input.local;
        let role = if plan.has(|a| matches!(a, HaAction::Promote)) {
            MemberRole::Promoting
        } else if plan.has(|a| matches!(a, HaAction::Demote { .. })) {
            MemberRole::Demoting
        } else {
            match local.role {
                LocalRole::Primary if gate => MemberRole::Primary,
                LocalRole::Primary => MemberRole::Fenced,
                LocalRole::Standby => MemberRole::Standby,
                LocalRole::Promoting => MemberRole::Promoting,
                LocalRole::Demoting => MemberRole::Demoting,
                LocalRole::Starting => MemberRole::Starting,
            }
        };
        MemberRecord {
            name: self.config.name.clone(),
            role,
            system_identifier: local.system_identifier,
            timeline: local.timeline,
            flush_lsn: local.flush_lsn,
            replay_lsn: local.replay_lsn,
            repl_addr: self.config.repl_addr.clone(),
            client_addr: self.config.client_addr.clone(),
            status_url: self.config.status_url.clone(),
            nofailover: self.config.nofailover,
            healthy: local.healthy,
            ha_paused_seen: view.paused(),
            version: self.config.version.clone(),
        }
    }
}

/// Decides one HA cycle for `state`: the free-function form of
/// [`HaState::decide`].
pub fn decide(state: &mut HaState, input: &HaInput) -> HaDecision {
    state.decide(input)
}

fn rev<T>(v: &Option<Versioned<T>>) -> i64 {
    v.as_ref().map_or(0, |v| v.mod_revision)
}

fn write_sync(leader: &str, sync_standbys: Vec<String>, expected_mod_revision: i64) -> HaAction {
    HaAction::WriteSync {
        record: SyncRecord {
            leader: leader.to_string(),
            sync_standbys,
        },
        expected_mod_revision,
    }
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn race_words(race: Race) -> &'static str {
    match race {
        Race::Sync => "I am the healthiest confirmed synchronous member",
        Race::Switchover => "I am the switchover candidate",
        Race::Forced => "a forced failover names me",
        Race::Async => "no synchronous member is alive and ha_allow_async_failover is on",
        Race::Bootstrap => "there is no sync record yet (a new cluster)",
    }
}

/// The healthiest standby named in `sync`, for a switchover without a
/// candidate.
fn best_sync_standby(view: &ClusterView, me: &str) -> Option<String> {
    let sync = view.sync.as_ref()?;
    sync.value
        .sync_standbys
        .iter()
        .filter(|n| n.as_str() != me)
        .filter_map(|n| view.member(n))
        .filter(|m| m.value.healthy && !m.value.nofailover)
        .max_by(|a, b| {
            a.value
                .flush_lsn
                .cmp(&b.value.flush_lsn)
                .then_with(|| b.value.name.cmp(&a.value.name))
        })
        .map(|m| m.value.name.clone())
}

/// Whether the leader may hand over to `candidate`.
fn handover_target_ok(
    view: &ClusterView,
    candidate: &str,
    kind: FailoverKind,
    input: &HaInput,
) -> Result<(), String> {
    let m = view
        .member(candidate)
        .ok_or_else(|| "it has no member key (not running?)".to_string())?;
    if !m.value.healthy {
        return Err("it is not healthy".into());
    }
    if m.value.system_identifier != input.local.system_identifier {
        return Err("its system identifier differs".into());
    }
    let listed = view
        .sync
        .as_ref()
        .is_some_and(|s| s.value.allows(candidate));
    if kind == FailoverKind::Switchover && input.local.sync_count > 0 && !listed {
        return Err("it is not a confirmed synchronous standby (use a forced failover)".into());
    }
    Ok(())
}

/// The `history` entry of the timeline that forked off this standby's
/// timeline before the point it has replayed to, if one did: an
/// asynchronous standby that received WAL the old primary wrote after its
/// synchronous standby's last confirmation (never acknowledged) is ahead
/// of the new leader's timeline and can follow it only after a rejoin
/// cuts that WAL (PostgreSQL's "new timeline forked off current database
/// system timeline before current recovery point", which needs
/// pg_rewind). Replayed, not received, WAL is compared: WAL received on
/// the new timeline while replay is still on the old one is no sign.
fn diverged<'v>(input: &HaInput, view: &'v ClusterView) -> Option<&'v HistoryEntry> {
    let local = &input.local;
    let next = view
        .history
        .as_ref()?
        .value
        .iter()
        .filter(|e| e.timeline > local.timeline)
        .min_by_key(|e| e.timeline)?;
    (next.switch_lsn.is_valid() && local.replay_lsn > next.switch_lsn).then_some(next)
}

/// The WAL `name` has flushed: from the replication view if it streams from
/// us, else from its member key.
fn replica_flush(input: &HaInput, view: &ClusterView, name: &str) -> Lsn {
    input
        .local
        .replicas
        .iter()
        .find(|r| r.name == name)
        .map(|r| r.flush_lsn)
        .or_else(|| view.member(name).map(|m| m.value.flush_lsn))
        .unwrap_or(Lsn::INVALID)
}
