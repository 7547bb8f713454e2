//! What the end-to-end HA tests share: a node's HA settings, writes and
//! reads with bounded waits, a cluster of three `walrep start` nodes on a
//! real three-member etcd (n1 leading, n2 its confirmed synchronous
//! standby, n3 a standby), and a write load that records every
//! acknowledgement (which node, when) for the acknowledged-writes check and
//! for measuring write unavailability.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use walrep::ha::dcs::cluster_prefix;
use walrep::ha::etcd::{EtcdClient, EtcdConfig, KeyValue};

use super::cluster::basebackup_with;
use super::etcd::EtcdCluster;
use super::node::{init_datadir, TestNode};
use super::wait_for;

/// `ha_ttl` of the test clusters, in seconds.
pub const TTL_S: u64 = 6;
/// `ha_loop_wait` of the test clusters, in seconds.
pub const LOOP_WAIT_S: u64 = 1;
/// `ha_fence_margin` of the test clusters, in seconds.
pub const FENCE_MARGIN_S: u64 = 2;
/// `ha_cluster_name` of the test clusters.
pub const CLUSTER: &str = "failover";

/// The settings of member `name` of a test cluster on `etcd`.
pub fn ha_settings(etcd: &EtcdCluster, name: &str) -> Vec<String> {
    member_settings(etcd, CLUSTER, name, &["n1", "n2", "n3"])
}

/// The settings of member `name` of the HA cluster `cluster` on `etcd`
/// whose members are `members` (any of them the synchronous standby), with
/// the test clusters' timing.
pub fn member_settings(
    etcd: &EtcdCluster,
    cluster: &str,
    name: &str,
    members: &[&str],
) -> Vec<String> {
    vec![
        "ha_enabled=on".into(),
        format!("ha_endpoints={}", etcd.endpoint_list()),
        format!("ha_cluster_name={cluster}"),
        format!("ha_name={name}"),
        format!("ha_ttl={TTL_S}s"),
        format!("ha_loop_wait={LOOP_WAIT_S}s"),
        "ha_retry_timeout=1s".into(),
        format!("ha_fence_margin={FENCE_MARGIN_S}s"),
        format!("synchronous_standby_names=FIRST 1 ({})", members.join(", ")),
        "synchronous_commit=on".into(),
        "wal_retrieve_retry_interval=200ms".into(),
        "wal_receiver_timeout=5s".into(),
    ]
}

/// `walrep start` on `dir` with `settings`.
pub fn start(dir: &Path, settings: &[String]) -> TestNode {
    let refs: Vec<&str> = settings.iter().map(String::as_str).collect();
    TestNode::start(dir, &refs)
}

/// SET on a fresh connection with a bound on the reply.
pub fn set(node_port: u16, key: &str, value: &str) -> redis::RedisResult<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{node_port}/"))?;
    let mut c = client.get_connection_with_timeout(Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(3)))?;
    redis::cmd("SET").arg(key).arg(value).query(&mut c)
}

/// GET on a fresh connection; `None` when the key is missing or the node
/// does not answer.
pub fn get(node_port: u16, key: &str) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{node_port}/")).ok()?;
    let mut c = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .ok()?;
    redis::cmd("GET").arg(key).query(&mut c).ok()?
}

/// An `INFO replication` field; `None` when the node does not answer.
pub fn field(node: &TestNode, name: &str) -> Option<String> {
    node.try_client()?;
    Some(node.info_field("replication", name).unwrap_or_default())
}

/// The control file's timeline of `node` (`INFO persistence`).
pub fn timeline(node: &TestNode) -> String {
    node.info_field("persistence", "timeline")
        .expect("the node's timeline")
}

/// The acknowledged keys missing from (or different on) the node on
/// `port`.
pub fn missing_on<'a>(port: u16, keys: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    keys.into_iter()
        .filter(|k| get(port, k).as_deref() != Some(k.as_str()))
        .cloned()
        .collect()
}

/// Three `walrep start` nodes on a three-member etcd: n1 leads, n2 is the
/// confirmed synchronous standby (it was the only standby when the first
/// synchronous write went through), n3 a standby.
pub struct HaCluster {
    /// The nodes n1, n2, n3 (dropped before etcd).
    pub nodes: Vec<TestNode>,
    /// etcd.
    pub etcd: EtcdCluster,
    /// The data directories.
    pub tmp: tempfile::TempDir,
}

impl HaCluster {
    /// Start etcd and the three nodes; `None` when etcd is missing and the
    /// test is to be skipped.
    pub fn start() -> Option<HaCluster> {
        let etcd = EtcdCluster::start3()?;
        let tmp = tempfile::tempdir().unwrap();
        let d1 = init_datadir(tmp.path(), "n1", &[]);
        let n1 = start(&d1, &ha_settings(&etcd, "n1"));
        wait_for("n1 to lead", Duration::from_secs(30), || {
            (field(&n1, "ha_role")? == "leader").then_some(())
        });
        let standby = |name: &str| {
            let dir = basebackup_with(&n1, tmp.path(), name, name, &["--no-slot"]);
            start(&dir, &ha_settings(&etcd, name))
        };
        let n2 = standby("n2");
        // A synchronous write goes through only once n2 is confirmed and
        // named in `sync`; with FIRST 1 it stays the only one there while
        // it streams.
        wait_for("a first synchronous write", Duration::from_secs(60), || {
            set(n1.port, "first", "1").ok()
        });
        let n3 = standby("n3");
        let cluster = HaCluster {
            nodes: vec![n1, n2, n3],
            etcd,
            tmp,
        };
        cluster.wait_caught_up("first");
        Some(cluster)
    }

    /// Node `name` ("n1".."n3").
    pub fn node(&self, name: &str) -> &TestNode {
        &self.nodes[index(name)]
    }

    /// Node `name`, mutable (to kill or restart it).
    pub fn node_mut(&mut self, name: &str) -> &mut TestNode {
        &mut self.nodes[index(name)]
    }

    /// Every node's client port, n1 first.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Wait until every node has `key` (written by the test) replicated.
    pub fn wait_caught_up(&self, key: &str) {
        for n in &self.nodes {
            wait_for(
                &format!("{key} on {}", n.datadir.display()),
                Duration::from_secs(30),
                || get(n.port, key).map(|_| ()),
            );
        }
    }

    /// A client of the cluster's keys in etcd.
    pub fn etcd_client(&self) -> EtcdClient {
        EtcdClient::new(&EtcdConfig::new(self.etcd.endpoints())).unwrap()
    }

    /// The `leader` key as etcd holds it now (with its revisions and lease).
    pub fn leader_key(&self) -> Option<KeyValue> {
        let key = format!("{}leader", cluster_prefix("/walrep", CLUSTER));
        self.etcd_client().get(key.as_bytes()).unwrap()
    }

    /// The member whose `ha_role` is `leader` now, if exactly one is.
    pub fn leading(&self) -> Option<&'static str> {
        let leading: Vec<&'static str> = ["n1", "n2", "n3"]
            .into_iter()
            .filter(|n| field(self.node(n), "ha_role").as_deref() == Some("leader"))
            .collect();
        (leading.len() == 1).then(|| leading[0])
    }
}

fn index(name: &str) -> usize {
    match name {
        "n1" => 0,
        "n2" => 1,
        "n3" => 2,
        other => panic!("no node {other}"),
    }
}

/// One acknowledged write.
#[derive(Clone, Debug)]
pub struct Ack {
    /// The key (its value is the key too).
    pub key: String,
    /// The client port of the node that acknowledged it.
    pub port: u16,
    /// When the client got `OK`.
    pub at: Instant,
}

/// One refused or unanswered write.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// The client port of the node written to.
    pub port: u16,
    /// When the client got the error.
    pub at: Instant,
    /// The error's code (`READONLY`, ...), or its text when it has none
    /// (a timeout, a refused connection).
    pub code: String,
}

/// Writers sending `SET key key` at `synchronous_commit = on`, each to the
/// node that acknowledged its last write; on an error a writer moves on to
/// the next node of the list, as a client of a failover cluster does.
pub struct Load {
    acks: Arc<Mutex<Vec<Ack>>>,
    refusals: Arc<Mutex<Vec<Refusal>>>,
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<()>>,
    attempts: Arc<AtomicU64>,
}

impl Load {
    /// Start `writers` clients over `ports` (the first is tried first).
    pub fn start(writers: usize, ports: Vec<u16>) -> Load {
        let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let refusals: Arc<Mutex<Vec<Refusal>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicU64::new(0));
        let writers = (0..writers)
            .map(|w| {
                let (acks, refusals, stop, attempts, ports) = (
                    acks.clone(),
                    refusals.clone(),
                    stop.clone(),
                    attempts.clone(),
                    ports.clone(),
                );
                std::thread::spawn(move || {
                    let mut target = 0usize;
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let key = format!("w{w}:{i}");
                        let port = ports[target % ports.len()];
                        attempts.fetch_add(1, Ordering::SeqCst);
                        match set(port, &key, &key) {
                            Ok(_) => acks.lock().unwrap().push(Ack {
                                key,
                                port,
                                at: Instant::now(),
                            }),
                            Err(e) => {
                                refusals.lock().unwrap().push(Refusal {
                                    port,
                                    at: Instant::now(),
                                    code: e.code().map_or_else(|| e.to_string(), String::from),
                                });
                                target += 1;
                                // A refused write comes back at once: do not
                                // spin on a node that says no.
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Load {
            acks,
            refusals,
            stop,
            writers,
            attempts,
        }
    }

    /// The acknowledgements so far.
    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    /// The acknowledgements so far, in time order.
    pub fn acks_sorted(&self) -> Vec<Ack> {
        let mut acks = self.acks();
        acks.sort_by_key(|a| a.at);
        acks
    }

    /// The refusals so far.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.refusals.lock().unwrap().clone()
    }

    /// Wait until at least `n` more writes than now are acknowledged.
    pub fn wait_acks(&self, what: &str, n: usize, deadline: Duration) {
        let base = self.acks.lock().unwrap().len();
        wait_for(what, deadline, || {
            (self.acks.lock().unwrap().len() >= base + n).then_some(())
        });
    }

    /// Wait until a write is acknowledged after `t`.
    pub fn wait_ack_after(&self, what: &str, t: Instant, deadline: Duration) -> Ack {
        wait_for(what, deadline, || {
            self.acks.lock().unwrap().iter().find(|a| a.at > t).cloned()
        })
    }

    /// Stop the writers and return every acknowledgement, in time order.
    pub fn stop(self) -> (Vec<Ack>, Vec<Refusal>) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.writers {
            w.join().unwrap();
        }
        let mut acks = self.acks.lock().unwrap().clone();
        acks.sort_by_key(|a| a.at);
        let refusals = self.refusals.lock().unwrap().clone();
        (acks, refusals)
    }

    /// How many writes were sent so far.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::SeqCst)
    }
}

/// The longest time between two consecutive acknowledgements in `acks`
/// (sorted by time) within `[from, to]`, counting from `from` and to `to`.
pub fn longest_gap(acks: &[Ack], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for a in acks.iter().filter(|a| a.at >= from && a.at <= to) {
        gap = gap.max(a.at - last);
        last = a.at;
    }
    gap.max(to.saturating_duration_since(last))
}
