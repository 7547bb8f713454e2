//! A seeded simulator of a three-node HA cluster on a model of etcd: leases
//! expire on a model clock, nodes crash and restart, lose etcd or each other,
//! their clocks run fast or slow within the margin, their HA loops stall, and
//! operators ask for switchovers. After every step it checks the promise:
//!
//! - (a) never two write gates open at the same model time;
//! - (b) every acknowledged write is held by the next node that promotes
//!   (and by the leader once the cluster healed);
//! - (c) only a node that `sync` allows takes a free key and promotes
//!   (unless `ha_allow_async_failover`);
//! - (d) with etcd healthy and a confirmed sync standby, a crashed primary
//!   is replaced within ttl + loop_wait.
//!
//! A failure prints `SIM_SEED=<seed>`; `SIM_SEED=<seed> cargo test --test
//! ha_sim replay -- --nocapture` replays it with its trace, `SIM_SEEDS=n`
//! runs more seeds. Mutation tests break one rule and assert the checker
//! notices, so a checker that cannot fail would be caught.

use std::collections::BTreeSet;

use walrep_states::ha::{
    ClusterView, DcsReadError, FailoverKind, FailoverRecord, HaAction, HaConfig, HaInput, HaState,
    Lease, LocalRole, LocalState, MemberRecord, ReplicaProgress, ReplicaSyncState, SyncRecord,
    Versioned,
};
use walrep_states::{Lsn, Millis, TimelineId};

const N: usize = 3;
const SYSID: u64 = 7_100_000_000_000_000_000;
const TICK_MS: u64 = 5;

/// splitmix64: small, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }
}

/// etcd as the HA layer sees it: keys, revisions and leases on real time.
#[derive(Default)]
struct Etcd {
    revision: i64,
    next_lease: i64,
    /// (lease id, expiry in real ms, ttl)
    leases: Vec<(i64, u64, u64)>,
    leader: Option<Versioned<String>>,
    members: Vec<Versioned<MemberRecord>>,
    sync: Option<Versioned<SyncRecord>>,
    failover: Option<Versioned<FailoverRecord>>,
    history: Option<Versioned<Vec<walrep_states::ha::HistoryEntry>>>,
    initialize: Option<Versioned<u64>>,
    config: Option<Versioned<walrep_states::ha::ClusterConfigRecord>>,
}

impl Etcd {
    fn expire(&mut self, now: u64) {
        let dead: Vec<i64> = self
            .leases
            .iter()
            .filter(|l| l.1 <= now)
            .map(|l| l.0)
            .collect();
        if dead.is_empty() {
            return;
        }
        self.leases.retain(|l| l.1 > now);
        if self
            .leader
            .as_ref()
            .is_some_and(|l| dead.contains(&l.lease))
        {
            self.leader = None;
            self.revision += 1;
        }
        self.members.retain(|m| !dead.contains(&m.lease));
    }
    fn lease_alive(&self, id: i64) -> bool {
        self.leases.iter().any(|l| l.0 == id)
    }
    fn bump<T>(&mut self, value: T, lease: i64) -> Versioned<T> {
        self.revision += 1;
        Versioned {
            value,
            mod_revision: self.revision,
            lease,
        }
    }
    fn view(&self) -> ClusterView {
        ClusterView {
            leader: self.leader.clone(),
            members: self.members.clone(),
            sync: self.sync.clone(),
            failover: self.failover.clone(),
            config: self.config.clone(),
            history: self.history.clone(),
            initialize: self.initialize.clone(),
            unparsed: Vec::new(),
            revision: self.revision,
        }
    }
}

fn rev<T>(v: &Option<Versioned<T>>) -> i64 {
    v.as_ref().map_or(0, |v| v.mod_revision)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Busy {
    Promoting,
    Demoting,
}

struct Node {
    name: String,
    up: bool,
    /// Local clock = real × rate (rate in parts per million).
    rate_ppm: u64,
    role: LocalRole,
    log: Vec<u64>,
    timeline: u32,
    timeline_start: usize,
    following: Option<String>,
    sync_allowed: Vec<String>,
    gate_until: Option<u64>,
    machine: HaState,
    lease: Option<Lease>,
    next_cycle: u64,
    busy: Option<(Busy, u64, Option<String>)>,
    etcd_cut_until: u64,
    down_until: u64,
    stall_next_ms: u64,
    /// A decision waiting for the end of a stall: (when, what).
    deferred: Option<(u64, walrep_states::ha::HaDecision)>,
    /// Writes waiting for their acknowledgement: (id, lsn).
    pending: Vec<(u64, usize)>,
}

impl Node {
    fn local(&self, real: u64) -> u64 {
        real * self.rate_ppm / 1_000_000
    }
    fn to_real(&self, local_ms: u64) -> u64 {
        local_ms * 1_000_000 / self.rate_ppm
    }
    fn gate_open(&self, real: u64) -> bool {
        self.up
            && self.role == LocalRole::Primary
            && self.gate_until.is_some_and(|u| self.local(real) < u)
    }
}

/// What a run may do, chosen from the seed (swarm testing) or by a test.
#[derive(Clone, Debug)]
struct Params {
    fence_margin_ms: u64,
    /// Largest clock-rate error, parts per million.
    rate_error_ppm: u64,
    allow_async_failover: bool,
    /// Mutation: syncrep counts any synchronous standby, not only those the
    /// HA layer allowed (breaks rule 4).
    count_unlisted: bool,
    faulty_ms: u64,
    heal_ms: u64,
    crash_pm: u64,
    etcd_cut_pm: u64,
    link_cut_pm: u64,
    stall_pm: u64,
    switchover_pm: u64,
    pause_pm: u64,
    /// `FIRST k` of synchronous_standby_names.
    sync_count: usize,
    write_pm: u64,
    /// Longest HA-loop stall.
    max_stall_ms: u64,
}

impl Params {
    fn swarm(rng: &mut Rng) -> Params {
        Params {
            fence_margin_ms: 2_000,
            rate_error_ppm: 50_000,
            allow_async_failover: false,
            count_unlisted: false,
            faulty_ms: 120_000,
            heal_ms: 60_000,
            crash_pm: rng.range(0, 600),
            etcd_cut_pm: rng.range(0, 600),
            link_cut_pm: rng.range(0, 600),
            stall_pm: rng.range(0, 400),
            switchover_pm: rng.range(0, 200),
            pause_pm: rng.range(0, 100),
            sync_count: 1 + rng.below(2) as usize,
            write_pm: rng.range(50_000, 400_000),
            max_stall_ms: rng.range(500, 25_000),
        }
    }
}

struct Sim {
    t: u64,
    rng: Rng,
    p: Params,
    etcd: Etcd,
    nodes: Vec<Node>,
    cut: [[u64; N]; N],
    acked: BTreeSet<u64>,
    next_write: u64,
    trace: Vec<String>,
    violations: Vec<String>,
    /// (real time, node) of every promotion and acquisition by a standby.
    promotions: Vec<(u64, usize)>,
    acquisitions: Vec<(u64, usize)>,
    /// (real time, node) of every gate opening.
    gate_openings: Vec<(u64, usize)>,
}

fn config(name: &str, p: &Params) -> HaConfig {
    let mut c = HaConfig::with_defaults(name);
    c.fence_margin_ms = p.fence_margin_ms;
    c.allow_async_failover = p.allow_async_failover;
    c.repl_addr = format!("{name}:5433");
    c.client_addr = format!("{name}:6379");
    c
}

impl Sim {
    fn new(seed: u64, p: Params) -> Sim {
        let mut rng = Rng(seed);
        let nodes = (0..N)
            .map(|i| {
                let name = format!("n{}", i + 1);
                let err = p.rate_error_ppm;
                Node {
                    machine: HaState::new(config(&name, &p)).unwrap(),
                    rate_ppm: 1_000_000 - err + rng.below(2 * err + 1),
                    role: if i == 0 {
                        LocalRole::Primary
                    } else {
                        LocalRole::Standby
                    },
                    following: (i != 0).then(|| "n1".to_string()),
                    name,
                    up: true,
                    log: Vec::new(),
                    timeline: 1,
                    timeline_start: 0,
                    sync_allowed: Vec::new(),
                    gate_until: None,
                    lease: None,
                    next_cycle: rng.below(1_000),
                    busy: None,
                    etcd_cut_until: 0,
                    down_until: 0,
                    stall_next_ms: 0,
                    deferred: None,
                    pending: Vec::new(),
                }
            })
            .collect();
        Sim {
            t: 0,
            rng,
            p,
            etcd: Etcd::default(),
            nodes,
            cut: [[0; N]; N],
            acked: BTreeSet::new(),
            next_write: 1,
            trace: Vec::new(),
            violations: Vec::new(),
            promotions: Vec::new(),
            acquisitions: Vec::new(),
            gate_openings: Vec::new(),
        }
    }

    fn note(&mut self, line: String) {
        if self.trace.len() < 20_000 {
            self.trace.push(format!("{:>8} {line}", self.t));
        }
    }

    fn violate(&mut self, what: String) {
        self.note(format!("VIOLATION {what}"));
        if self.violations.len() < 10 {
            self.violations.push(format!("t={} {what}", self.t));
        }
    }

    fn idx(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.nodes[a].up && self.nodes[b].up && self.cut[a][b] <= self.t
    }

    fn etcd_ok(&self, i: usize) -> bool {
        self.nodes[i].etcd_cut_until <= self.t
    }

    /// The standbys streaming from `p`: (index, flush), in priority order.
    fn streaming_from(&self, p: usize) -> Vec<(usize, usize)> {
        (0..N)
            .filter(|&s| s != p && self.linked(s, p))
            .filter(|&s| {
                let n = &self.nodes[s];
                n.role == LocalRole::Standby
                    && n.busy.is_none()
                    && n.following.as_deref() == Some(self.nodes[p].name.as_str())
                    && self.nodes[p].log.starts_with(&n.log)
            })
            .map(|s| (s, self.nodes[s].log.len()))
            .collect()
    }

    fn replicas(&self, p: usize) -> Vec<ReplicaProgress> {
        let k = self.p.sync_count;
        self.streaming_from(p)
            .into_iter()
            .enumerate()
            .map(|(rank, (s, flush))| ReplicaProgress {
                name: self.nodes[s].name.clone(),
                sync_state: if rank < k {
                    ReplicaSyncState::Sync
                } else {
                    ReplicaSyncState::Potential
                },
                flush_lsn: Lsn(flush as u64),
            })
            .collect()
    }

    fn local_state(&self, i: usize) -> LocalState {
        let n = &self.nodes[i];
        let upstream_ok = match (&n.following, n.role) {
            (Some(f), LocalRole::Standby) => self
                .idx(f)
                .is_none_or(|u| !self.linked(i, u) || self.nodes[u].log.starts_with(&n.log)),
            _ => true,
        };
        LocalState {
            role: n.busy.as_ref().map_or(n.role, |(b, _, _)| match b {
                Busy::Promoting => LocalRole::Promoting,
                Busy::Demoting => LocalRole::Demoting,
            }),
            system_identifier: SYSID,
            timeline: TimelineId(n.timeline),
            timeline_start_lsn: Lsn(n.timeline_start as u64),
            flush_lsn: Lsn(n.log.len() as u64),
            replay_lsn: Lsn(n.log.len() as u64),
            healthy: upstream_ok,
            following: n.following.clone(),
            replicas: if n.role == LocalRole::Primary {
                self.replicas(i)
            } else {
                Vec::new()
            },
            sync_count: self.p.sync_count,
            sync_any: false,
            sync_allowed: n.sync_allowed.clone(),
            gate_open: n.gate_open(self.t),
        }
    }

    fn run(&mut self) {
        let end = self.p.faulty_ms + self.p.heal_ms;
        let mut healed = false;
        while self.t < end && self.violations.is_empty() {
            if self.t < self.p.faulty_ms {
                self.faults();
            } else if !healed && self.p.heal_ms > 0 {
                healed = true;
                self.heal();
            }
            self.restart_due();
            self.finish_busy();
            self.step();
        }
    }

    /// Runs without random faults until `end` (scripted scenarios).
    fn run_until(&mut self, end: u64) {
        while self.t < end && self.violations.is_empty() {
            self.restart_due();
            self.finish_busy();
            self.step();
        }
    }

    /// One tick: HA loops, replication, clients, syncrep, the checks.
    fn step(&mut self) {
        for i in 0..N {
            self.run_deferred(i);
            if self.nodes[i].up && self.nodes[i].next_cycle <= self.t {
                self.cycle(i);
            }
        }
        self.replicate();
        self.client_writes();
        self.acknowledge();
        self.check_gates();
        self.t += TICK_MS;
    }

    fn faults(&mut self) {
        let i = self.rng.below(N as u64) as usize;
        if self.rng.chance(self.p.crash_pm) && self.nodes[i].up {
            let down = self.rng.range(500, 20_000);
            self.crash(i, down);
        }
        if self.rng.chance(self.p.etcd_cut_pm) {
            let until = self.t + self.rng.range(1_000, 25_000);
            self.nodes[i].etcd_cut_until = until;
            self.note(format!(
                "{} cut from etcd until {until}",
                self.nodes[i].name
            ));
        }
        if self.rng.chance(self.p.link_cut_pm) {
            let j = (i + 1 + self.rng.below(N as u64 - 1) as usize) % N;
            let until = self.t + self.rng.range(1_000, 20_000);
            self.cut[i][j] = until;
            self.cut[j][i] = until;
            self.note(format!(
                "{} cut from {} until {until}",
                self.nodes[i].name, self.nodes[j].name
            ));
        }
        if self.rng.chance(self.p.stall_pm) {
            self.nodes[i].stall_next_ms = self.rng.range(100, self.p.max_stall_ms);
        }
        if self.rng.chance(self.p.switchover_pm) {
            self.request_switchover();
        }
        if self.rng.chance(self.p.pause_pm) {
            let paused = !self.etcd.config.as_ref().is_some_and(|c| c.value.paused);
            self.set_paused(paused);
        }
    }

    fn request_switchover(&mut self) {
        let Some(leader) = self.etcd.leader.as_ref().map(|l| l.value.clone()) else {
            return;
        };
        let others: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .filter(|n| *n != leader)
            .collect();
        let candidate = match self.rng.below(3) {
            0 => None,
            k => Some(others[(k - 1) as usize].clone()),
        };
        let record = FailoverRecord {
            leader: Some(leader),
            candidate,
            kind: FailoverKind::Switchover,
            requested_at_ms: 1_700_000_000_000 + self.t,
        };
        self.note(format!("operator: switchover {record:?}"));
        self.etcd.failover = Some(self.etcd.bump(record, 0));
    }

    fn crash(&mut self, i: usize, down_ms: u64) {
        let n = &mut self.nodes[i];
        n.up = false;
        n.down_until = self.t + down_ms;
        n.gate_until = None;
        n.pending.clear();
        n.deferred = None;
        let name = n.name.clone();
        self.note(format!("{name} crashed for {down_ms}ms"));
    }

    fn restart_due(&mut self) {
        for i in 0..N {
            let n = &mut self.nodes[i];
            if n.up || n.down_until > self.t {
                continue;
            }
            n.up = true;
            // A demotion cut short leaves a primary's data directory; a
            // promotion cut short leaves a standby's.
            if let Some((Busy::Demoting, _, _)) = n.busy {
                n.role = LocalRole::Primary;
            }
            n.busy = None;
            n.machine = HaState::new(config(&n.name.clone(), &self.p)).unwrap();
            n.lease = None;
            n.sync_allowed.clear();
            n.next_cycle = self.t;
            let name = n.name.clone();
            self.note(format!("{name} restarted"));
        }
    }

    fn set_paused(&mut self, paused: bool) {
        self.note(format!("operator: paused = {paused}"));
        let record = walrep_states::ha::ClusterConfigRecord { paused };
        self.etcd.config = Some(self.etcd.bump(record, 0));
    }

    fn heal(&mut self) {
        self.note("heal: every node up, every link and etcd reachable".into());
        self.set_paused(false);
        for i in 0..N {
            self.nodes[i].etcd_cut_until = 0;
            self.nodes[i].stall_next_ms = 0;
            if !self.nodes[i].up {
                self.nodes[i].down_until = self.t;
            }
        }
        self.cut = [[0; N]; N];
    }

    fn finish_busy(&mut self) {
        for i in 0..N {
            let Some((kind, at, leader)) = self.nodes[i].busy.clone() else {
                continue;
            };
            if at > self.t || !self.nodes[i].up {
                continue;
            }
            self.nodes[i].busy = None;
            match kind {
                Busy::Promoting => {
                    let n = &mut self.nodes[i];
                    n.role = LocalRole::Primary;
                    n.timeline += 1;
                    n.timeline_start = n.log.len();
                    n.following = None;
                    n.sync_allowed.clear();
                    n.gate_until = None;
                    // The runtime runs a cycle as soon as promotion ends.
                    if n.deferred.is_none() {
                        n.next_cycle = self.t;
                    }
                    let line = format!("{} promoted to timeline {}", n.name, n.timeline);
                    self.note(line);
                }
                Busy::Demoting => self.rejoin(i, leader),
            }
        }
    }

    /// `walrep rejoin`: cut the tail the leader does not have, then stream.
    fn rejoin(&mut self, i: usize, leader: Option<String>) {
        let Some(l) = leader.as_deref().and_then(|l| self.idx(l)) else {
            self.nodes[i].role = LocalRole::Primary;
            return;
        };
        if !self.linked(i, l) {
            self.nodes[i].role = LocalRole::Primary;
            self.note(format!(
                "{} rejoin failed: leader unreachable",
                self.nodes[i].name
            ));
            return;
        }
        let common = common_prefix(&self.nodes[i].log, &self.nodes[l].log);
        let n = &mut self.nodes[i];
        let cut = n.log.len() - common;
        n.log.truncate(common);
        n.role = LocalRole::Standby;
        n.following = leader;
        n.gate_until = None;
        let line = format!("{} rejoined, {cut} entries cut", n.name);
        self.note(line);
    }

    fn cycle(&mut self, i: usize) {
        let t = self.t;
        let reachable = self.etcd_ok(i);
        self.etcd.expire(t);
        // etcd handles the keepalive a little after it was sent: the lease
        // runs from then.
        let processed = t + self.rng.below(30);
        if reachable {
            let ttl = 10_000;
            let sent_at = Millis(self.nodes[i].local(t));
            let id = match self.nodes[i].lease {
                Some(l) if self.etcd.lease_alive(l.id) => l.id,
                _ => {
                    self.etcd.next_lease += 1;
                    self.etcd.next_lease
                }
            };
            self.etcd.leases.retain(|l| l.0 != id);
            self.etcd.leases.push((id, processed + ttl, ttl));
            self.nodes[i].lease = Some(Lease {
                id,
                sent_at,
                ttl_ms: ttl,
            });
        } else if let Some(l) = self.nodes[i].lease {
            // A keepalive whose answer was lost still extends the lease.
            if self.rng.chance(300_000) && self.etcd.lease_alive(l.id) {
                self.etcd.leases.retain(|x| x.0 != l.id);
                self.etcd
                    .leases
                    .push((l.id, processed + l.ttl_ms, l.ttl_ms));
            }
        }
        let view = if reachable {
            Ok(self.etcd.view())
        } else {
            Err(DcsReadError {
                message: "unreachable".into(),
            })
        };
        let input = HaInput {
            now: Millis(self.nodes[i].local(t)),
            wall_clock_ms: 1_700_000_000_000 + t,
            lease: self.nodes[i].lease,
            view,
            local: self.local_state(i),
        };
        let decision = self.nodes[i].machine.decide(&input);
        let stall = std::mem::take(&mut self.nodes[i].stall_next_ms);
        let name = self.nodes[i].name.clone();
        let shown: Vec<String> = decision
            .actions
            .iter()
            .filter(|a| !matches!(a, HaAction::PublishMember(_)))
            .map(|a| a.to_string())
            .collect();
        if !shown.is_empty() || stall > 0 {
            self.note(format!(
                "{name} [{}] stall {stall} | {}",
                shown.join(", "),
                decision.why
            ));
        }
        // A stalled loop carries the decision out later: the world moves on
        // meanwhile and the actions meet it as it is then.
        self.nodes[i].deferred = Some((t + stall, decision));
        self.nodes[i].next_cycle = u64::MAX;
        self.run_deferred(i);
    }

    /// Carries out a node's decided actions once its stall is over.
    fn run_deferred(&mut self, i: usize) {
        let due = self.nodes[i]
            .deferred
            .as_ref()
            .is_some_and(|d| d.0 <= self.t);
        if !due {
            return;
        }
        let Some((_, decision)) = self.nodes[i].deferred.take() else {
            return;
        };
        if !self.nodes[i].up {
            return;
        }
        let mut failed = false;
        for action in &decision.actions {
            if !self.execute(i, action) {
                failed = true;
                break;
            }
        }
        self.check_gates();
        let wait = if failed {
            1_000
        } else {
            decision.next_cycle_ms.max(1)
        };
        self.nodes[i].next_cycle = self.t + self.nodes[i].to_real(wait).max(1);
    }

    /// Runs one action; false when it failed (the rest is skipped).
    fn execute(&mut self, i: usize, action: &HaAction) -> bool {
        let t = self.t;
        self.etcd.expire(t);
        let name = self.nodes[i].name.clone();
        let lease = self.nodes[i].lease.map_or(0, |l| l.id);
        if action.is_store_write() && !self.etcd_ok(i) {
            // Sometimes applied though the answer is lost.
            if self.rng.chance(300_000) {
                self.store_write(i, &name, lease, action);
            }
            return false;
        }
        match action {
            HaAction::SetSyncAllowed(names) => self.nodes[i].sync_allowed = names.clone(),
            HaAction::OpenGate { until } => {
                if self.nodes[i].role == LocalRole::Primary && self.nodes[i].busy.is_none() {
                    if !self.nodes[i].gate_open(t) {
                        self.gate_openings.push((t, i));
                    }
                    self.nodes[i].gate_until = Some(until.0);
                }
            }
            HaAction::CloseGate => {
                self.nodes[i].gate_until = None;
                self.nodes[i].pending.clear();
            }
            HaAction::Promote => return self.promote(i),
            HaAction::Demote { leader, .. } => {
                let n = &mut self.nodes[i];
                n.gate_until = None;
                n.pending.clear();
                let delay = self.rng.range(50, 500);
                n.busy = Some((Busy::Demoting, t + delay, leader.clone()));
            }
            HaAction::Follow { leader, .. } => self.nodes[i].following = Some(leader.clone()),
            HaAction::Halt { reason } => {
                self.violate(format!("{name} halted: {reason}"));
                return false;
            }
            _ => return self.store_write(i, &name, lease, action),
        }
        true
    }

    fn store_write(&mut self, i: usize, name: &str, lease: i64, action: &HaAction) -> bool {
        let alive = self.etcd.lease_alive(lease);
        match action {
            HaAction::PublishMember(record) => {
                if !alive {
                    return false;
                }
                let v = self.etcd.bump(record.clone(), lease);
                self.etcd.members.retain(|m| m.value.name != name);
                self.etcd.members.push(v);
                self.etcd
                    .members
                    .sort_by(|a, b| a.value.name.cmp(&b.value.name));
            }
            HaAction::Initialize { system_identifier } => {
                if self.etcd.initialize.is_some() {
                    return false;
                }
                self.etcd.initialize = Some(self.etcd.bump(*system_identifier, 0));
            }
            HaAction::AcquireLeader => {
                if self.etcd.leader.is_some() || !alive {
                    return false;
                }
                self.check_acquire(i);
                self.etcd.leader = Some(self.etcd.bump(name.to_string(), lease));
            }
            HaAction::UpdateLeader => {
                let ours = self.etcd.leader.as_ref().is_none_or(|l| l.value == name);
                if !ours || !alive {
                    return false;
                }
                if self.etcd.leader.is_none() {
                    self.check_acquire(i);
                }
                self.etcd.leader = Some(self.etcd.bump(name.to_string(), lease));
            }
            HaAction::ReleaseLeader => {
                if self.etcd.leader.as_ref().is_none_or(|l| l.value != name) {
                    return false;
                }
                self.etcd.leader = None;
                self.etcd.revision += 1;
            }
            HaAction::WriteSync {
                record,
                expected_mod_revision,
            } => {
                if rev(&self.etcd.sync) != *expected_mod_revision {
                    return false;
                }
                self.etcd.sync = Some(self.etcd.bump(record.clone(), 0));
            }
            HaAction::AppendHistory {
                entry,
                expected_mod_revision,
            } => {
                if rev(&self.etcd.history) != *expected_mod_revision {
                    return false;
                }
                let mut all = self
                    .etcd
                    .history
                    .as_ref()
                    .map(|h| h.value.clone())
                    .unwrap_or_default();
                all.push(entry.clone());
                self.etcd.history = Some(self.etcd.bump(all, 0));
            }
            HaAction::ClearFailover {
                expected_mod_revision,
            } => {
                if rev(&self.etcd.failover) != *expected_mod_revision {
                    return false;
                }
                self.etcd.failover = None;
                self.etcd.revision += 1;
            }
            _ => return false,
        }
        true
    }

    /// (c) at the moment a node takes a free key.
    fn check_acquire(&mut self, i: usize) {
        let name = self.nodes[i].name.clone();
        let role = self.nodes[i].role;
        let allowed = match &self.etcd.sync {
            Some(s) => s.value.allows(&name),
            None => role == LocalRole::Primary,
        };
        let forced = self
            .etcd
            .failover
            .as_ref()
            .is_some_and(|f| f.value.kind == FailoverKind::Failover);
        self.note(format!("{name} took the leader key (as {role:?})"));
        if role != LocalRole::Primary {
            self.acquisitions.push((self.t, i));
        }
        if !allowed && !forced && !self.p.allow_async_failover {
            let sync = self.etcd.sync.as_ref().map(|s| s.value.clone());
            self.violate(format!("(c) {name} took the key but sync is {sync:?}"));
        }
    }

    /// (b) and (c) at the moment a node promotes.
    fn promote(&mut self, i: usize) -> bool {
        let name = self.nodes[i].name.clone();
        if self.nodes[i].role != LocalRole::Standby || self.nodes[i].busy.is_some() {
            return false;
        }
        let holds_key = self.etcd.leader.as_ref().is_some_and(|l| l.value == name);
        let named = self
            .etcd
            .sync
            .as_ref()
            .is_some_and(|s| s.value.leader == name);
        if !holds_key || !named {
            self.violate(format!(
                "(c) {name} promotes without the key ({holds_key}) or sync naming it ({named})"
            ));
        }
        let log: BTreeSet<u64> = self.nodes[i].log.iter().copied().collect();
        let lost: Vec<u64> = self.acked.difference(&log).copied().take(5).collect();
        if !lost.is_empty() {
            self.violate(format!(
                "(b) {name} promotes without acknowledged writes {lost:?}"
            ));
        }
        self.promotions.push((self.t, i));
        let delay = self.rng.range(50, 300);
        self.nodes[i].busy = Some((Busy::Promoting, self.t + delay, None));
        true
    }

    fn replicate(&mut self) {
        for s in 0..N {
            let Some(up) = self.nodes[s].following.clone().and_then(|f| self.idx(&f)) else {
                continue;
            };
            if self.nodes[s].role != LocalRole::Standby
                || self.nodes[s].busy.is_some()
                || !self.linked(s, up)
            {
                continue;
            }
            let (mine, theirs) = (&self.nodes[s].log, &self.nodes[up].log);
            if !theirs.starts_with(mine) {
                // Diverged (it was ahead of the new leader): the node's
                // rejoin cuts the tail the leader lacks.
                if self.rng.chance(20_000) {
                    let common = common_prefix(mine, theirs);
                    self.nodes[s].log.truncate(common);
                    let line = format!(
                        "{} diverged from {}: rejoined",
                        self.nodes[s].name, self.nodes[up].name
                    );
                    self.note(line);
                }
                continue;
            }
            let take = self.rng.below(3) as usize;
            let have = mine.len();
            let end = (have + take).min(theirs.len());
            let more: Vec<u64> = theirs[have..end].to_vec();
            self.nodes[s].log.extend(more);
            self.nodes[s].timeline = self.nodes[s].timeline.max(self.nodes[up].timeline);
        }
    }

    fn client_writes(&mut self) {
        if !self.rng.chance(self.p.write_pm) {
            return;
        }
        let i = self.rng.below(N as u64) as usize;
        if self.nodes[i].gate_open(self.t) && self.nodes[i].pending.len() < 64 {
            let id = self.next_write;
            self.next_write += 1;
            self.nodes[i].log.push(id);
            let lsn = self.nodes[i].log.len();
            self.nodes[i].pending.push((id, lsn));
        }
    }

    /// Syncrep: a write is acknowledged once the gate is open at reply time
    /// and an allowed synchronous standby flushed it.
    fn acknowledge(&mut self) {
        for p in 0..N {
            if self.nodes[p].pending.is_empty() {
                continue;
            }
            if !self.nodes[p].gate_open(self.t) {
                self.nodes[p].pending.clear();
                continue;
            }
            let counted: Vec<usize> = self
                .replicas(p)
                .iter()
                .filter(|r| {
                    self.p.count_unlisted && r.sync_state == ReplicaSyncState::Sync
                        || self.nodes[p].sync_allowed.contains(&r.name)
                })
                .map(|r| r.flush_lsn.0 as usize)
                .collect();
            let k = self.p.sync_count;
            let mut confirmed = counted;
            confirmed.sort_unstable_by(|a, b| b.cmp(a));
            let Some(&upto) = confirmed.get(k - 1) else {
                continue;
            };
            let done: Vec<u64> = self.nodes[p]
                .pending
                .iter()
                .filter(|(_, lsn)| *lsn <= upto)
                .map(|(id, _)| *id)
                .collect();
            self.nodes[p].pending.retain(|(_, lsn)| *lsn > upto);
            self.acked.extend(done);
        }
    }

    /// (a) at this instant.
    fn check_gates(&mut self) {
        let open: Vec<String> = (0..N)
            .filter(|&i| self.nodes[i].gate_open(self.t))
            .map(|i| self.nodes[i].name.clone())
            .collect();
        if open.len() > 1 {
            self.violate(format!("(a) write gates open on {open:?}"));
        }
    }

    /// After healing: one leader, holding every acknowledged write, and the
    /// cluster acknowledges writes again.
    fn check_healed(&mut self) {
        let open: Vec<usize> = (0..N)
            .filter(|&i| self.nodes[i].gate_open(self.t))
            .collect();
        if open.len() != 1 {
            let roles: Vec<String> = self
                .nodes
                .iter()
                .map(|n| format!("{}:{:?}/{:?}", n.name, n.role, n.busy.as_ref().map(|b| b.0)))
                .collect();
            self.violate(format!(
                "(d) not converged after healing: gates open on {open:?}, roles {roles:?}, leader {:?}, sync {:?}",
                self.etcd.leader.as_ref().map(|l| &l.value),
                self.etcd.sync.as_ref().map(|s| &s.value)
            ));
            return;
        }
        let log: BTreeSet<u64> = self.nodes[open[0]].log.iter().copied().collect();
        let lost: Vec<u64> = self.acked.difference(&log).copied().take(5).collect();
        if !lost.is_empty() {
            self.violate(format!("(b) the leader lacks acknowledged writes {lost:?}"));
        }
    }
}

fn common_prefix(a: &[u64], b: &[u64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Runs one seed; the violations found (empty when the promise held).
fn run_seed(seed: u64, tweak: impl Fn(&mut Params)) -> (Vec<String>, Sim) {
    let mut rng = Rng(seed ^ 0xA5A5_5A5A);
    let mut p = Params::swarm(&mut rng);
    tweak(&mut p);
    let mut sim = Sim::new(seed, p);
    sim.run();
    if sim.violations.is_empty() {
        sim.check_healed();
        let acked_before = sim.acked.len();
        // The healed cluster must acknowledge writes again.
        let end = sim.t + 30_000;
        while sim.t < end && sim.acked.len() == acked_before && sim.violations.is_empty() {
            sim.p.write_pm = 500_000;
            sim.finish_busy();
            sim.step();
        }
        if sim.acked.len() == acked_before && sim.violations.is_empty() {
            sim.violate("(d) the healed cluster acknowledges no write".into());
        }
    }
    (sim.violations.clone(), sim)
}

/// A number from the environment (the test's knobs).
#[allow(clippy::disallowed_methods)]
fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn seeds() -> u64 {
    env_u64("SIM_SEEDS").unwrap_or(200)
}

#[test]
#[allow(clippy::disallowed_macros)] // the statistics of the run, on stderr
fn the_promise_holds_under_faults() {
    let (mut acked, mut promotions, mut attempted) = (0, 0, 0);
    let n = seeds();
    for seed in 0..n {
        let (violations, sim) = run_seed(seed, |_| {});
        assert!(
            violations.is_empty(),
            "SIM_SEED={seed}: {violations:#?}\nlast trace:\n{}",
            sim.trace[sim.trace.len().saturating_sub(60)..].join("\n")
        );
        acked += sim.acked.len();
        attempted += sim.next_write - 1;
        promotions += sim.promotions.len();
    }
    eprintln!(
        "ha_sim: {n} seeds, {} model seconds each, {attempted} writes, {acked} acknowledged, {promotions} promotions",
        (Params::swarm(&mut Rng(0)).faulty_ms + Params::swarm(&mut Rng(0)).heal_ms) / 1_000
    );
    // The runs did something: writes were acknowledged and failovers happened.
    assert!(acked > 5 * n as usize, "only {acked} writes acknowledged");
    assert!(promotions > n as usize / 10, "only {promotions} promotions");
}

/// Replays `SIM_SEED` with its whole trace on stderr.
#[test]
#[allow(clippy::disallowed_macros)]
fn replay() {
    let Some(seed) = env_u64("SIM_SEED") else {
        return;
    };
    let (violations, sim) = run_seed(seed, |_| {});
    eprintln!("{}", sim.trace.join("\n"));
    assert!(violations.is_empty(), "{violations:#?}");
}

/// The first seed on which the checker reports `what` for a broken rule.
fn caught(tweak: impl Fn(&mut Params) + Copy, what: &str) -> Option<u64> {
    (0..seeds().max(200)).find(|&seed| {
        let (violations, _) = run_seed(seed, tweak);
        violations.iter().any(|v| v.contains(what))
    })
}

#[test]
fn mutation_no_fence_margin_with_slow_clocks_is_caught() {
    let found = caught(
        |p| {
            p.fence_margin_ms = 0;
            p.rate_error_ppm = 100_000;
            p.etcd_cut_pm = 2_000;
            p.crash_pm = 0;
        },
        "(a)",
    );
    assert!(
        found.is_some(),
        "margin 0 with 10% slow clocks was never caught"
    );
}

#[test]
fn mutation_promoting_an_async_standby_is_caught() {
    let found = caught(
        |p| {
            p.allow_async_failover = true;
            p.crash_pm = 1_000;
        },
        "(b)",
    );
    assert!(found.is_some(), "async failover never lost a write");
}

#[test]
fn mutation_counting_unlisted_standbys_is_caught() {
    let found = caught(
        |p| {
            p.count_unlisted = true;
            p.crash_pm = 1_000;
        },
        "(b)",
    );
    assert!(
        found.is_some(),
        "syncrep counting unlisted standbys never lost a write"
    );
}

/// (d): etcd healthy, a confirmed sync standby: a crashed primary's key is
/// taken within ttl + loop_wait, and a new gate opens soon after.
#[test]
fn a_crashed_primary_is_replaced_within_ttl_plus_loop_wait() {
    for seed in 0..seeds().min(50) {
        let mut sim = Sim::new(
            seed,
            Params {
                crash_pm: 0,
                etcd_cut_pm: 0,
                link_cut_pm: 0,
                stall_pm: 0,
                switchover_pm: 0,
                pause_pm: 0,
                ..Params::swarm(&mut Rng(seed))
            },
        );
        sim.p.faulty_ms = 30_000 + sim.rng.below(5_000);
        sim.p.heal_ms = 0;
        sim.run();
        let leader = sim.etcd.leader.as_ref().map(|l| l.value.clone());
        let listed = sim.etcd.sync.as_ref().map(|s| s.value.sync_standbys.len());
        assert_eq!(leader.as_deref(), Some("n1"), "seed {seed}: n1 leads");
        assert_eq!(
            listed,
            Some(sim.p.sync_count),
            "seed {seed}: confirmed sync standbys"
        );
        let crash_at = sim.t;
        sim.crash(0, 1_000_000);
        sim.p.faulty_ms = sim.t + 40_000;
        sim.run();
        let (took, _) = *sim
            .acquisitions
            .first()
            .unwrap_or_else(|| panic!("seed {seed}: nobody took over"));
        // Model slack: etcd processing (30 ms), a slow clock's loop_wait.
        let bound = 10_000 + 1_000 * 1_000_000 / (1_000_000 - 50_000) + 30 + TICK_MS;
        assert!(
            took - crash_at <= bound,
            "seed {seed}: key taken {}ms after the crash (bound {bound})",
            took - crash_at
        );
        // Then promotion (at most 300 ms in the model) and one cycle.
        let (opened, _) = *sim
            .gate_openings
            .iter()
            .find(|(t, i)| *t > crash_at && *i != 0)
            .unwrap_or_else(|| panic!("seed {seed}: no new primary opened its gate"));
        assert!(
            opened - crash_at <= bound + 300 + 2 * TICK_MS,
            "seed {seed}: new primary serves {}ms after the crash",
            opened - crash_at
        );
        assert!(
            sim.nodes[1..].iter().any(|n| n.gate_open(sim.t)),
            "seed {seed}: no new primary serves"
        );
        assert!(
            sim.violations.is_empty(),
            "seed {seed}: {:?}",
            sim.violations
        );
    }
}

/// A scripted story, as a readable trace: bootstrap, the sync standby is
/// confirmed, the primary crashes and its sync standby takes over, the old
/// primary comes back and rejoins (the confirmed sync standby stays listed
/// though the newcomer ranks higher), then a switchover without a candidate
/// hands leadership to that confirmed standby.
#[test]
fn trace_of_failover_rejoin_and_switchover() {
    let mut p = Params::swarm(&mut Rng(1));
    (p.crash_pm, p.etcd_cut_pm, p.link_cut_pm, p.stall_pm) = (0, 0, 0, 0);
    (p.switchover_pm, p.pause_pm, p.sync_count) = (0, 0, 1);
    p.rate_error_ppm = 0;
    let mut sim = Sim::new(7, p);
    sim.run_until(20_000);
    sim.crash(0, 25_000);
    sim.run_until(70_000);
    let record = FailoverRecord {
        leader: sim.etcd.leader.as_ref().map(|l| l.value.clone()),
        candidate: None,
        kind: FailoverKind::Switchover,
        requested_at_ms: 1_700_000_000_000 + sim.t,
    };
    sim.note("operator: switchover".to_string());
    sim.etcd.failover = Some(sim.etcd.bump(record, 0));
    sim.run_until(100_000);
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    assert_eq!(
        sim.etcd.leader.as_ref().map(|l| l.value.as_str()),
        Some("n3"),
        "the switchover handed the key to the listed standby:\n{}",
        sim.trace[sim.trace.len().saturating_sub(40)..].join("\n")
    );
    assert!(sim.nodes[2].gate_open(sim.t));
    // Keep the story: drop the routine renewals.
    let story: Vec<&str> = sim
        .trace
        .iter()
        .map(String::as_str)
        .filter(|l| {
            !(l.contains("[OpenGate until")
                && l.contains("] stall 0 | I am the leader with the lock (write gate until")
                && !l.contains(", "))
        })
        .collect();
    insta::assert_snapshot!(story.join("\n"));
}

/// A switchover in a healthy cluster (a named listed standby, or none)
/// moves leadership within ttl + two loop waits, and nothing is lost.
#[test]
fn a_switchover_completes_in_a_healthy_cluster() {
    for seed in 0..seeds().min(40) {
        let mut p = Params::swarm(&mut Rng(seed));
        (p.crash_pm, p.etcd_cut_pm, p.link_cut_pm, p.stall_pm) = (0, 0, 0, 0);
        (p.switchover_pm, p.pause_pm) = (0, 0);
        let mut sim = Sim::new(seed, p);
        sim.run_until(30_000);
        let leader = sim.etcd.leader.as_ref().map(|l| l.value.clone());
        let listed = sim
            .etcd
            .sync
            .as_ref()
            .map(|s| s.value.sync_standbys.clone())
            .unwrap_or_default();
        assert_eq!(leader.as_deref(), Some("n1"), "seed {seed}");
        let candidate = (seed % 2 == 0).then(|| listed[0].clone());
        let record = FailoverRecord {
            leader: leader.clone(),
            candidate: candidate.clone(),
            kind: FailoverKind::Switchover,
            requested_at_ms: 1_700_000_000_000 + sim.t,
        };
        sim.etcd.failover = Some(sim.etcd.bump(record, 0));
        let asked = sim.t;
        let deadline = asked + 10_000 + 2 * 1_100;
        while sim.t < deadline
            && !(1..N).any(|i| sim.nodes[i].gate_open(sim.t))
            && sim.violations.is_empty()
        {
            sim.run_until(sim.t + TICK_MS);
        }
        let new = (1..N).find(|&i| sim.nodes[i].gate_open(sim.t));
        assert!(
            new.is_some(),
            "seed {seed}: no new leader {}ms after the switchover request:\n{}",
            sim.t - asked,
            sim.trace[sim.trace.len().saturating_sub(30)..].join("\n")
        );
        if let Some(c) = candidate {
            assert_eq!(sim.nodes[new.unwrap_or(0)].name, c, "seed {seed}");
        }
        sim.run_until(sim.t + 5_000);
        assert!(
            sim.violations.is_empty(),
            "seed {seed}: {:?}",
            sim.violations
        );
        assert!(sim.etcd.failover.is_none(), "seed {seed}: request cleared");
    }
}
