//! Automatic failover under network partitions, end to end: three `walrep
//! start` nodes (namespaces 0..2, `n0` the first primary) and a three-member
//! etcd (namespaces 3..5, `e1`..`e3`), each in its own network namespace
//! (see `support::netns`), faults made with nftables. Clients in the hub
//! look for the primary among the nodes; clients inside `n0`'s own
//! namespace keep writing to it through the partition. Every write is
//! recorded with the node that answered, when it was sent and when its
//! reply came, and the history is checked afterwards:
//!
//! - the old primary's last acknowledgement arrived before the first write
//!   the new primary acknowledged was even sent (no two primaries
//!   acknowledge at the same time: the rule is explained at
//!   [`check_one_primary_at_a_time`]);
//! - the old primary acknowledges no write sent after its fence deadline
//!   (partition + `ha_ttl` − `ha_fence_margin`), nor any sent after it
//!   first answered "fenced";
//! - every acknowledged write is on the new primary (walrep's history
//!   checker), and no timeline has writes acknowledged by two nodes;
//! - once the network heals, the old primary finds the new leader in etcd,
//!   is demoted, rejoins and streams from it as a standby (never a second
//!   primary), and all three nodes converge.
//!
//! Two partitions: the primary cut from everything (etcd, standbys,
//! clients in the hub), and etcd split so that the primary reaches only
//! the one etcd member in the minority while it still streams to its
//! standbys (its acknowledgements go on until the fence deadline: the
//! tight case). Runs as root.

mod support;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::etcd::EtcdCluster;
use support::ha::{member_settings, FENCE_MARGIN_S, LOOP_WAIT_S, TTL_S};
use support::netns::{init_primary, spawn_in, Net, NetNode, REDIS_PORT};
use support::resp::{CallError, Resp, Value};
use support::wait_for;
use support::workload::{converged, final_state, ClientWrites};
use walrep::ha::dcs::{cluster_prefix, Dcs};
use walrep::ha::etcd::{EtcdClient, EtcdConfig, EtcdDcs};
use walrep::history::{History, Outcome, Write};

/// Walrep nodes n0..n2 are namespaces 0..2; etcd members e1..e3 are 3..5.
const NODES: usize = 3;
const ETCD: [usize; 3] = [3, 4, 5];
const CLUSTER: &str = "partition";
/// A bound on a node noticing a fault or its end.
const FAULT_DEADLINE: Duration = Duration::from_secs(60);
/// A client gives up on a reply after this long (the write is then
/// unknown) and tries the next node.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Member `name`'s settings, with the HA tests' timing ([`TTL_S`] …).
fn ha_settings(etcd: &EtcdCluster, name: &str) -> Vec<String> {
    member_settings(etcd, CLUSTER, name, &["n0", "n1", "n2"])
}

/// Fields drop in order: nodes, then etcd, then the files, the network
/// last.
struct Cluster {
    nodes: Vec<NetNode>,
    etcd: EtcdCluster,
    tmp: tempfile::TempDir,
    net: Net,
}

/// `n0` leading with `n1` and `n2` as its standbys (copied with `walrep
/// basebackup -R --no-slot`), a synchronous write done; `None` when etcd
/// is missing and the test is skipped.
fn cluster() -> Option<Cluster> {
    let net = Net::create(NODES + ETCD.len());
    let etcd = EtcdCluster::start_in(&net, &ETCD)?;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n0");
    init_primary(&dir);
    let n0 = NetNode::start(&net, 0, "n0", &dir, &ha_settings(&etcd, "n0"));
    let mut c = Cluster {
        nodes: vec![n0],
        etcd,
        tmp,
        net,
    };
    c.wait_field(0, "ha_role", "leader");
    c.standby(1);
    c.standby(2);
    wait_for("a first synchronous write", FAULT_DEADLINE, || {
        let addr = c.redis_addr(0);
        spawn_in(&c.net.hub(), move || {
            let mut r = Resp::connect(&addr).ok()?;
            r.set_read_timeout(REQUEST_TIMEOUT);
            matches!(r.call(&["SET", "first", "1"]), Ok(Value::Status(_))).then_some(())
        })
        .join()
        .unwrap()
    });
    Some(c)
}

impl Cluster {
    /// Standby `n<i>` in namespace `i`, copied from `n0` over the test
    /// network, started under HA.
    fn standby(&mut self, i: usize) {
        let name = format!("n{i}");
        let dir = self.tmp.path().join(&name);
        // The leader changes; a slot made on n0 would not exist on the
        // next one (the HA loop does not manage slots yet).
        self.net.basebackup(i, 0, &dir, &name);
        let settings = ha_settings(&self.etcd, &name);
        let node = NetNode::start(&self.net, i, &name, &dir, &settings);
        self.nodes.push(node);
        self.wait_field(i, "ha_role", "replica");
    }

    fn redis_addr(&self, i: usize) -> String {
        format!("{}:{REDIS_PORT}", self.net.addr(i))
    }

    /// A field of node `i`'s INFO replication, asked from the hub; `None`
    /// when it does not answer.
    fn field(&self, i: usize, name: &str) -> Option<String> {
        let (addr, name) = (self.redis_addr(i), name.to_string());
        spawn_in(&self.net.hub(), move || {
            let mut r = Resp::connect(&addr).ok()?;
            r.set_read_timeout(Duration::from_secs(2));
            r.info_field("replication", &name)
        })
        .join()
        .unwrap()
    }

    fn wait_field(&self, i: usize, name: &str, value: &str) {
        wait_for(
            &format!("{name} = {value} on n{i} (log {})", self.log(i)),
            FAULT_DEADLINE,
            || (self.field(i, name).as_deref() == Some(value)).then_some(()),
        );
    }

    fn log(&self, i: usize) -> String {
        self.nodes
            .get(i)
            .map_or_else(String::new, |n| n.log.display().to_string())
    }

    /// The cluster's keys, read from the hub as any etcd client would.
    fn view(&self) -> walrep_states::ha::ClusterView {
        let endpoints = self.etcd.endpoints();
        spawn_in(&self.net.hub(), move || {
            let client = EtcdClient::new(&EtcdConfig::new(endpoints)).unwrap();
            let prefix = cluster_prefix("/walrep", CLUSTER);
            let mut dcs = EtcdDcs::new(client, &prefix, "observer", Duration::from_secs(TTL_S));
            dcs.load()
        })
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("reading the cluster from etcd: {e}"))
    }

    /// The standby `sync` names: the only one allowed to take over.
    fn sync_standby(&self) -> String {
        let view = self.view();
        let sync = view.sync.expect("a sync key").value;
        assert_eq!(sync.leader, "n0", "{sync:?}");
        assert_eq!(sync.sync_standbys.len(), 1, "FIRST 1: {sync:?}");
        sync.sync_standbys[0].clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The whole logs outlive the temporary directory, for a look.
            let keep = std::env::temp_dir().join(format!("ha-partition-{}", std::process::id()));
            if fs::create_dir_all(&keep).is_ok() {
                for n in &self.nodes {
                    let _ = fs::copy(&n.log, keep.join(format!("{}.log", n.name)));
                }
                eprintln!("node logs kept in {}", keep.display());
            }
            for n in &self.nodes {
                let text = n.log_text();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- {} log (tail) ---\n{}",
                    n.name,
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
        }
    }
}

/// The clients and their shared history; times are since `start`.
struct Load {
    start: Instant,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `roaming` clients in the hub, each trying the nodes in turn until
    /// one acknowledges, and `pinned` clients inside `n0`'s namespace that
    /// only ever write to `n0`.
    fn start(c: &Cluster, roaming: usize, pinned: usize) -> Load {
        let start = Instant::now();
        let history = Arc::new(Mutex::new(History::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let all: Vec<(String, String)> = (0..NODES)
            .map(|i| (format!("n{i}"), c.redis_addr(i)))
            .collect();
        let handles = (0..roaming + pinned)
            .map(|id| {
                let (ns, targets) = if id < roaming {
                    (c.net.hub(), all.clone())
                } else {
                    (c.net.ns(0), all[..1].to_vec())
                };
                let client = Client {
                    id,
                    targets,
                    start,
                    history: history.clone(),
                    stop: stop.clone(),
                };
                spawn_in(&ns, move || client.run())
            })
            .collect();
        Load {
            start,
            history,
            stop,
            handles,
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Writes acknowledged by `node` so far.
    fn acked_by(&self, node: &str) -> usize {
        let h = self.history.lock().unwrap();
        h.writes
            .iter()
            .filter(|w| w.outcome == Outcome::Ok && w.node == node)
            .count()
    }

    fn wait_acked_by(&self, node: &str, more: usize) {
        let target = self.acked_by(node) + more;
        wait_for(
            &format!("{more} more writes acknowledged by {node}"),
            FAULT_DEADLINE,
            || (self.acked_by(node) >= target).then_some(()),
        );
    }

    fn finish(self) -> History {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            h.join().expect("client thread panicked");
        }
        let history = self.history.lock().unwrap().clone();
        history
    }
}

/// One client thread: keys `c<id>g<generation>k<i>`, values unique; after
/// an unknown outcome a new generation of keys, so that each key's writes
/// are a sequence with at most one indeterminate write at its end.
struct Client {
    id: usize,
    targets: Vec<(String, String)>,
    start: Instant,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
}

const KEYS_PER_CLIENT: u64 = 20;

impl Client {
    fn run(self) {
        let mut writes =
            ClientWrites::new(self.id, &self.history, self.start, KEYS_PER_CLIENT, "on");
        let mut at = 0usize;
        let mut conn: Option<(Resp, u32)> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let (node, addr) = &self.targets[at % self.targets.len()];
            let Some((resp, timeline)) = conn.as_mut() else {
                conn = connect(addr);
                if conn.is_none() {
                    at += 1;
                    writes.back_off();
                }
                continue;
            };
            let (_, _, outcome) = writes.write(node, *timeline, |key, value| {
                classify(resp.call(&["SET", key, value]))
            });
            if outcome != Outcome::Ok {
                conn = None;
                at += 1;
                writes.back_off();
            }
        }
    }
}

/// A connection to `addr` and the node's timeline (the history its
/// acknowledgements land on).
fn connect(addr: &str) -> Option<(Resp, u32)> {
    let mut resp = Resp::connect(addr).ok()?;
    resp.set_read_timeout(REQUEST_TIMEOUT);
    let timeline = resp.info_field("persistence", "timeline")?.parse().ok()?;
    Some((resp, timeline))
}

/// What a SET's reply says about the write. A refusal at admission
/// (`READONLY` from a standby or a fenced node) means it did not happen; a
/// write that was waiting for its standby when the gate closed "may or may
/// not survive": unknown, not failed.
fn classify(reply: Result<Value, CallError>) -> Outcome {
    match reply {
        Ok(Value::Status(s)) if s == "OK" => Outcome::Ok,
        Ok(other) => Outcome::Unknown(format!("unexpected reply {other:?}")),
        Err(CallError::Server(e)) if e.contains("may or may not survive") => Outcome::Unknown(e),
        Err(CallError::Server(e)) if e.starts_with("READONLY") || e.starts_with("LOADING") => {
            Outcome::Fail(e)
        }
        Err(e) => Outcome::Unknown(e.to_string()),
    }
}

/// The times one run measured, since the load started.
#[derive(Debug)]
struct Figures {
    partition: Duration,
    old_last_ack: Duration,
    old_first_fenced: Duration,
    new_leader_seen: Duration,
    new_first_send: Duration,
    new_first_ack: Duration,
}

impl Figures {
    fn print(&self, what: &str, old_acks: usize, new_acks: usize) {
        let after = |t: Duration| t.as_secs_f64() - self.partition.as_secs_f64();
        // Signed: an acknowledgement can arrive while the rules go in.
        println!(
            "{what}: after the partition, the old primary's last ack {:+.2}s, its first \
             fenced reply {:+.2}s (fence deadline at most +{}s); the new leader seen \
             {:+.2}s, its first acknowledged write sent {:+.2}s and acknowledged {:+.2}s; \
             {old_acks} writes acknowledged by the old primary, {new_acks} by the new one",
            after(self.old_last_ack),
            after(self.old_first_fenced),
            TTL_S - FENCE_MARGIN_S,
            after(self.new_leader_seen),
            after(self.new_first_send),
            after(self.new_first_ack),
        );
    }
}

/// At no time do two nodes acknowledge writes, checked from the history.
///
/// A write's acknowledgement is decided by its node at some instant
/// between the client's send and the client's receipt of the reply; only
/// that interval is observable. So the old primary's last decision is at
/// most the *receipt* time of its last acknowledgement, and the new
/// primary's first decision at least the *send* time of its first
/// acknowledged write. Requiring the former to be before the latter means
/// every possible order of the real decisions has all of the old
/// primary's acknowledgements before any of the new primary's: their
/// acknowledging periods do not overlap, whatever the network delays.
///
/// Also: the old primary acknowledged no write sent after its fence
/// deadline (the last keepalive it can have had answered was sent before
/// the partition, and the gate closes `ha_ttl - ha_fence_margin` after
/// that send at the latest), nor any write sent after it first answered
/// that it was fenced (the gate stays closed).
fn check_one_primary_at_a_time(
    history: &History,
    old: &str,
    new: &str,
    partition: Duration,
    new_leader_seen: Duration,
) -> Figures {
    fn acked<'h>(history: &'h History, node: &'h str) -> impl Iterator<Item = &'h Write> {
        history
            .writes
            .iter()
            .filter(move |w| w.outcome == Outcome::Ok && w.node == node)
    }
    let old_last_ack = acked(history, old)
        .filter_map(|w| w.completed)
        .max()
        .expect("the old primary acknowledged writes");
    let first_new = acked(history, new)
        .min_by_key(|w| w.invoked)
        .expect("the new primary acknowledged writes");
    let figures = Figures {
        partition,
        old_last_ack,
        old_first_fenced: history
            .writes
            .iter()
            .filter(|w| w.node == old && w.invoked >= partition)
            .filter(|w| match &w.outcome {
                Outcome::Fail(e) | Outcome::Unknown(e) => e.contains("fenced"),
                _ => false,
            })
            .filter_map(|w| w.completed)
            .min()
            .expect("the old primary answered that it is fenced"),
        new_leader_seen,
        new_first_send: first_new.invoked,
        new_first_ack: first_new.completed.unwrap(),
    };
    assert!(
        figures.old_last_ack < figures.new_first_send,
        "two primaries acknowledged at the same time: {old}'s last acknowledgement \
         arrived at {:?}, after {new}'s first acknowledged write was sent at {:?}",
        figures.old_last_ack,
        figures.new_first_send
    );
    let deadline = partition + Duration::from_secs(TTL_S - FENCE_MARGIN_S);
    let late: Vec<&Write> = acked(history, old)
        .filter(|w| w.invoked >= deadline || w.invoked > figures.old_first_fenced)
        .collect();
    assert!(
        late.is_empty(),
        "{old} acknowledged writes sent after its fence deadline {deadline:?} or after \
         it answered fenced at {:?}: {:?}",
        figures.old_first_fenced,
        &late[..late.len().min(5)]
    );
    figures
}

/// The standby that leads first after the partition, and when it was
/// seen leading.
fn wait_new_leader(c: &Cluster, load: &Load) -> (usize, Duration) {
    wait_for(
        "a standby to take over",
        Duration::from_secs(TTL_S + LOOP_WAIT_S) + FAULT_DEADLINE,
        || {
            (1..NODES)
                .find(|&i| c.field(i, "ha_role").as_deref() == Some("leader"))
                .map(|i| (i, load.now()))
        },
    )
}

/// The rest of a partition test once the fault is in force: the new
/// leader is the standby `sync` named, writes go on there, the network
/// heals, the old primary rejoins as the new leader's standby; then the
/// history is checked and every node converges.
fn fail_over_heal_and_check(
    c: &Cluster,
    load: Load,
    partition: Duration,
    sync_standby: &str,
    what: &str,
) {
    let (new, seen) = wait_new_leader(c, &load);
    let new_name = format!("n{new}");
    assert_eq!(
        new_name, sync_standby,
        "only the synchronous standby may take over"
    );
    load.wait_acked_by(&new_name, 50);
    // While partitioned, the old primary never took the key back.
    assert_eq!(c.view().leader_name(), Some(new_name.as_str()));

    c.net.heal();
    // It reads the new leader, is demoted and rejoins as its standby.
    wait_for(
        &format!("n0 to rejoin as a standby of {new_name} (log {})", c.log(0)),
        Duration::from_secs(90),
        || {
            (c.field(0, "role").as_deref() == Some("slave")
                && c.field(0, "ha_role").as_deref() == Some("replica")
                && c.field(0, "ha_leader").as_deref() == Some(new_name.as_str()))
            .then_some(())
        },
    );
    assert!(
        c.nodes[0]
            .log_text()
            .contains("rejoined the leader's timeline"),
        "n0 did not go through rejoin"
    );
    load.wait_acked_by(&new_name, 50);
    let history = load.finish();

    let figures = check_one_primary_at_a_time(&history, "n0", &new_name, partition, seen);
    figures.print(
        what,
        load_acked(&history, "n0"),
        load_acked(&history, &new_name),
    );
    let report = history.check(&final_state(&c.net, new, &history));
    assert!(
        report.is_valid(),
        "the history checker failed on {new_name}: {}\nfaults in force:\n{}",
        report.explain(),
        c.net.describe()
    );
    assert!(
        report.histories.iter().any(|(_, n)| *n == new_name),
        "{}",
        report.summary()
    );
    println!("checker: {}", report.summary());
    converged(&c.net, &[0, 1, 2]);
}

fn load_acked(history: &History, node: &str) -> usize {
    history
        .writes
        .iter()
        .filter(|w| w.outcome == Outcome::Ok && w.node == node)
        .count()
}

#[test]
fn a_primary_cut_from_etcd_and_its_standbys_fences_before_a_sync_standby_takes_over() {
    let Some(c) = cluster() else {
        return;
    };
    let sync_standby = c.sync_standby();
    let load = Load::start(&c, 4, 2);
    load.wait_acked_by("n0", 100);
    // n0 loses etcd, its standbys and the hub's clients; only the clients
    // in its own namespace still reach it.
    c.net.isolate(0);
    let partition = load.now();
    fail_over_heal_and_check(&c, load, partition, &sync_standby, "primary isolated");
}

#[test]
fn a_primary_reaching_only_an_etcd_minority_fences_while_the_majority_elects_its_sync_standby() {
    let Some(c) = cluster() else {
        return;
    };
    let sync_standby = c.sync_standby();
    let load = Load::start(&c, 4, 2);
    load.wait_acked_by("n0", 100);
    // e2 and e3 (the majority) are cut from e1 and from n0: n0 reaches
    // only e1, which has no quorum, and still streams to both standbys and
    // serves every client; the standbys reach every etcd member.
    let (e1, e2, e3) = (ETCD[0], ETCD[1], ETCD[2]);
    for majority in [e2, e3] {
        c.net.partition(majority, e1);
        c.net.partition(majority, 0);
    }
    let partition = load.now();
    fail_over_heal_and_check(&c, load, partition, &sync_standby, "etcd minority");
}
