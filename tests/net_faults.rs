//! Level 3 with a real network: nodes in their own network namespaces,
//! joined by veth pairs to a hub where the clients live, faults made with
//! nftables (full and one-way partitions, random loss) and a delaying relay
//! (50 ms round trips). Every scenario runs clients that record a history,
//! and passes walrep's history checker: every write acknowledged at `on`
//! or above is on the node that ends as primary, nothing appears that was
//! never written, `remote_apply` reads see their writes, no two nodes
//! accept writes on one timeline, and once healed every node's DEBUG
//! DIGEST is the same. Runs as root; without root the tests fail saying
//! so. `NET_SEED=n` replays the random partitions of the last test,
//! `NET_ROUNDS=n` runs more of them (default 8).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::delay::DelayRelay;
use support::netns::{init_primary, Net, NetNode, Peer, REPLICATION_PORT};
use support::node::walrep;
use support::process::ChildGuard;
use support::wait_for;
use support::workload::{converged, final_state, Spec, Target, Workload};
use walrep::history::{History, Report};
use walrep::Lsn;

/// A bound on a node noticing a fault or its end.
const FAULT_DEADLINE: Duration = Duration::from_secs(60);

struct Cluster {
    net: Net,
    tmp: tempfile::TempDir,
    nodes: Vec<NetNode>,
}

/// A primary in namespace 0 (`primary_settings` as `-c`), replication open
/// to the test network, and nothing else yet.
fn cluster(nodes: usize, primary_settings: &[String]) -> Cluster {
    let net = Net::create(nodes);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n0");
    init_primary(&dir);
    let primary = NetNode::start(&net, 0, "n0", &dir, primary_settings);
    Cluster {
        net,
        tmp,
        nodes: vec![primary],
    }
}

impl Cluster {
    /// A standby in namespace `i` named `n<i>`, copied with `walrep
    /// basebackup -R` from node `from` over the test network, started with
    /// `settings`.
    fn standby(&mut self, i: usize, from: usize, settings: &[String]) {
        let name = format!("n{i}");
        let dir = self.tmp.path().join(&name);
        self.net.basebackup(i, from, &dir, &name);
        let mut s = vec!["wal_retrieve_retry_interval=200ms".to_string()];
        s.extend(settings.iter().cloned());
        let node = NetNode::start(&self.net, i, &name, &dir, &s);
        self.nodes.push(node);
        self.wait_field(i, "replication", "recovery_state", "Streaming");
    }

    fn target(&self, i: usize) -> Target {
        Target::node(&self.net, i, &self.nodes[i].name)
    }

    fn field(&self, i: usize, section: &str, field: &str) -> Option<String> {
        self.net.client(i).info_field(section, field)
    }

    fn wait_field(&self, i: usize, section: &str, field: &str, value: &str) {
        wait_for(
            &format!("{field} = {value} on n{i}"),
            FAULT_DEADLINE,
            || (self.field(i, section, field).as_deref() == Some(value)).then_some(()),
        );
    }

    /// Wait until node 0 shows standby `name` as synchronous (FIRST) or a
    /// quorum member (ANY).
    fn wait_sync(&self, name: &str) {
        wait_for(&format!("{name} to be synchronous"), FAULT_DEADLINE, || {
            let info = self.net.client(0).text(&["INFO", "replication"]).ok()??;
            info.lines()
                .any(|l| {
                    l.contains(&format!("application_name={name},"))
                        && (l.contains("sync_state=sync") || l.contains("sync_state=quorum"))
                })
                .then_some(())
        });
    }

    /// Wait until node `i` (standby `name` of node 0) has reported the WAL
    /// it holds: node 0's view of its flush position is at or past the
    /// end of what it received, unchanged over three looks. After a cut of
    /// node 0 → `i`, WAL that reached `i` before the cut may still be
    /// acknowledged until then.
    fn wait_flush_reported(&self, i: usize, name: &str) {
        let mut looks: Vec<Lsn> = Vec::new();
        wait_for(
            &format!("n{i}'s flush position reported to n0"),
            FAULT_DEADLINE,
            || {
                let info = self.net.client(0).text(&["INFO", "replication"]).ok()??;
                let reported: Lsn = info
                    .lines()
                    .find(|l| l.contains(&format!("application_name={name},")))?
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("flush_lsn="))?
                    .parse()
                    .ok()?;
                let own: Lsn = self.field(i, "replication", "receive_lsn")?.parse().ok()?;
                if reported < own {
                    looks.clear();
                    return None;
                }
                if looks.last().is_some_and(|l| *l != reported) {
                    looks.clear();
                }
                looks.push(reported);
                (looks.len() >= 3).then_some(())
            },
        );
    }

    fn sync_waiters(&self, i: usize) -> u64 {
        self.field(i, "replication", "sync_waiters")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn promote(&self, i: usize) {
        let (ok, out, err) = walrep(&["promote", self.nodes[i].datadir.to_str().unwrap()]);
        assert!(ok, "walrep promote: {out}{err}");
        self.wait_field(i, "replication", "role", "master");
    }

    /// Check `history` against node `i`'s data; the report on success.
    fn check(&self, i: usize, history: &History) -> Report {
        let report = history.check(&final_state(&self.net, i, history));
        assert!(
            report.is_valid(),
            "the history checker failed on n{i}: {}\nfaults in force:\n{}",
            report.explain(),
            self.net.describe()
        );
        assert!(
            report.acknowledged > 0,
            "nothing was acknowledged: {}",
            report.summary()
        );
        eprintln!("checker: {}", report.summary());
        report
    }
}

fn spec(clients: usize, level: &'static str) -> Spec {
    Spec {
        clients,
        keys_per_client: 20,
        level,
        request_timeout: Duration::from_secs(30),
        read_back_on: None,
    }
}

/// `what` holds at every poll for `window`: an assertion about a stretch
/// of time (nothing may happen), not a wait.
fn holds_for(what: &str, window: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        assert!(cond(), "{what} stopped holding");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every client waits on node 0 and, for a while, nothing is
/// acknowledged: the fault stopped synchronous commits.
fn assert_commits_stall(c: &Cluster, load: &Workload, fault: &str) {
    let clients = 8;
    wait_for(
        &format!("every client to wait ({fault})"),
        FAULT_DEADLINE,
        || (load.pending() == clients && c.sync_waiters(0) >= 1).then_some(()),
    );
    let acked = load.acknowledged();
    holds_for(
        &format!("no write acknowledged ({fault})"),
        Duration::from_millis(500),
        || load.acknowledged() == acked,
    );
}

fn sync_primary(names: &str) -> Vec<String> {
    vec![
        format!("synchronous_standby_names={names}"),
        "synchronous_commit=on".into(),
    ]
}

#[test]
fn partitioned_from_its_sync_standby_a_primary_waits_then_completes_on_heal() {
    let mut c = cluster(2, &sync_primary("FIRST 1 (n1)"));
    c.standby(1, 0, &[]);
    c.wait_sync("n1");
    let load = Workload::start(&c.net, c.target(0), spec(8, "on"));
    load.wait_acknowledged(200, FAULT_DEADLINE);
    c.net.partition(0, 1);
    assert_commits_stall(&c, &load, "partitioned from n1");
    c.net.heal();
    load.wait_acknowledged(200, FAULT_DEADLINE);
    let history = load.finish();
    c.check(0, &history);
    converged(&c.net, &[0, 1]);
}

#[test]
fn partitioned_with_a_bounded_wait_a_primary_degrades_loudly_and_recovers() {
    let mut settings = sync_primary("FIRST 1 (n1)");
    settings.push("synchronous_standby_timeout=500ms".into());
    let mut c = cluster(2, &settings);
    c.standby(1, 0, &[]);
    c.wait_sync("n1");
    let load = Workload::start(&c.net, c.target(0), spec(8, "on"));
    load.wait_acknowledged(100, FAULT_DEADLINE);
    c.net.partition(0, 1);
    c.wait_field(0, "replication", "sync_degraded", "1");
    load.wait_acknowledged(100, FAULT_DEADLINE);
    assert!(
        c.nodes[0].log_text().contains("degrading to local commits"),
        "degraded without a warning in the log"
    );
    c.net.heal();
    c.wait_field(0, "replication", "sync_degraded", "0");
    load.wait_acknowledged(100, FAULT_DEADLINE);
    let history = load.finish();
    c.check(0, &history);
    converged(&c.net, &[0, 1]);
}

#[test]
fn a_partition_during_promotion_loses_no_acknowledged_write() {
    // n1 synchronous; n2 cascades from n1, so it follows the promotion.
    let mut c = cluster(3, &sync_primary("FIRST 1 (n1)"));
    c.standby(1, 0, &[]);
    c.wait_sync("n1");
    // (Copied from the primary: base backups come from primaries.)
    let cascade = format!(
        "primary_conninfo=host={} port={REPLICATION_PORT} application_name=n2",
        c.net.addr(1)
    );
    c.standby(2, 0, &[cascade]);
    let load = Workload::start(&c.net, c.target(0), spec(8, "on"));
    load.wait_acknowledged(200, FAULT_DEADLINE);
    // The primary is cut off from everyone while n1 is still streaming,
    // and n1 is promoted at once.
    c.net.isolate(0);
    c.promote(1);
    load.retarget(c.target(1));
    load.wait_acknowledged(200, FAULT_DEADLINE);
    c.net.heal();
    // The old primary would need `walrep rejoin`; here it stops.
    c.nodes[0].kill9();
    load.wait_acknowledged(50, FAULT_DEADLINE);
    let history = load.finish();
    let report = c.check(1, &history);
    assert_eq!(c.field(1, "persistence", "timeline").as_deref(), Some("2"));
    assert!(report.histories.iter().any(|(t, n)| *t == 2 && n == "n1"));
    converged(&c.net, &[1, 2]);
}

#[test]
fn one_way_partitions_make_commits_wait_and_promotion_keeps_every_acknowledged_write() {
    let mut c = cluster(2, &sync_primary("FIRST 1 (n1)"));
    c.standby(1, 0, &[]);
    c.wait_sync("n1");
    let load = Workload::start(&c.net, c.target(0), spec(8, "on"));
    load.wait_acknowledged(200, FAULT_DEADLINE);
    // WAL no longer reaches n1; n1's replies still reach the primary.
    c.net.cut_one_way(Peer::Node(0), 1);
    c.wait_flush_reported(1, "n1");
    assert_commits_stall(&c, &load, "primary to n1 cut");
    c.net.heal();
    load.wait_acknowledged(200, FAULT_DEADLINE);
    // n1 receives WAL but its replies are lost: commits wait again, with
    // their WAL on n1; then n1 is promoted.
    c.net.cut_one_way(Peer::Node(1), 0);
    assert_commits_stall(&c, &load, "n1 to primary cut");
    c.promote(1);
    load.retarget(c.target(1));
    load.wait_acknowledged(200, FAULT_DEADLINE);
    c.nodes[0].kill9();
    c.net.heal();
    let history = load.finish();
    c.check(1, &history);
}

#[test]
fn fifty_ms_round_trips_and_one_percent_loss_under_load() {
    let mut c = cluster(2, &sync_primary("FIRST 1 (n1)"));
    // n1 reaches the primary through a relay in its own namespace that
    // adds 25 ms each way.
    let relay_addr = format!("{}:15432", c.net.addr(1));
    let _relay = DelayRelay::start(
        &c.net,
        &c.net.ns(1),
        &relay_addr,
        &format!("{}:{REPLICATION_PORT}", c.net.addr(0)),
        Duration::from_millis(25),
    );
    let conninfo = format!(
        "primary_conninfo=host={} port=15432 application_name=n1",
        c.net.addr(1)
    );
    c.standby(1, 0, &[conninfo]);
    c.wait_sync("n1");
    c.net.lose(10);
    let mut s = spec(16, "remote_apply");
    s.read_back_on = Some(c.target(1));
    let load = Workload::start(&c.net, c.target(0), s);
    load.wait_acknowledged(300, Duration::from_secs(90));
    let history = load.finish();
    c.net.heal();
    let report = c.check(0, &history);
    assert!(report.reads_checked > 0, "no read-after-write was checked");
    // Every remote_apply commit crossed the relay twice.
    let mut latencies: Vec<Duration> = history
        .writes
        .iter()
        .filter(|w| w.outcome == walrep::history::Outcome::Ok)
        .filter_map(|w| Some(w.completed? - w.invoked))
        .collect();
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    assert!(
        median >= Duration::from_millis(50),
        "median commit latency {median:?}: the 50 ms round trip is not in effect"
    );
    eprintln!("median commit latency over the slow link: {median:?}");
    converged(&c.net, &[0, 1]);
}

#[test]
fn random_partitions_then_heal_and_every_node_converges() {
    let seed: u64 = std::env::var("NET_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64
        });
    eprintln!("NET_SEED={seed}");
    let mut c = cluster(3, &sync_primary("ANY 1 (n1, n2)"));
    c.standby(1, 0, &[]);
    c.standby(2, 0, &[]);
    c.wait_sync("n1");
    let load = Workload::start(&c.net, c.target(0), spec(8, "on"));
    load.wait_acknowledged(100, FAULT_DEADLINE);
    let mut rng = seed;
    let rounds: u32 = std::env::var("NET_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    for round in 0..rounds {
        rng = splitmix64(rng);
        let fault = (rng >> 33) % 5;
        match fault {
            0 => c.net.partition(0, 1),
            1 => c.net.partition(0, 2),
            2 => c
                .net
                .cut_one_way(Peer::Node(0), 1 + ((rng >> 40) % 2) as usize),
            3 => c
                .net
                .cut_one_way(Peer::Node(1 + ((rng >> 40) % 2) as usize), 0),
            _ => {
                c.net.partition(0, 1);
                c.net.partition(0, 2);
            }
        }
        // One standby still reachable both ways keeps commits going; with
        // none, they wait.
        if fault == 4 {
            assert_commits_stall(&c, &load, &format!("round {round}: both standbys cut"));
        } else {
            load.wait_acknowledged(100, FAULT_DEADLINE);
        }
        c.net.heal();
        load.wait_acknowledged(50, FAULT_DEADLINE);
        eprintln!(
            "round {round}: fault {fault}, {} acknowledged",
            load.acknowledged()
        );
    }
    let history = load.finish();
    c.check(0, &history);
    converged(&c.net, &[0, 1, 2]);
}

/// SplitMix64: the next seeded random number.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The namespaces are gone after a test, also one that panicked.
#[test]
fn namespaces_are_removed_even_when_a_test_panics() {
    let names = std::panic::catch_unwind(|| {
        let net = Net::create(1);
        let names = vec![net.hub(), net.ns(0)];
        assert!(Path::new(&format!("/run/netns/{}", names[0])).exists());
        // A node process started there dies with the guard too.
        let mut cmd = net.command(&net.ns(0), "sleep");
        cmd.arg("60");
        let _child = ChildGuard::spawn(&mut cmd);
        std::panic::panic_any(names);
    })
    .expect_err("the closure panics")
    .downcast::<Vec<String>>()
    .expect("the names");
    for n in names.iter() {
        assert!(
            !Path::new(&format!("/run/netns/{n}")).exists(),
            "namespace {n} left behind"
        );
    }
}
