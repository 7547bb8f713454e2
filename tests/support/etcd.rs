//! A real etcd cluster on loopback for the HA tests: three (or any number
//! of) `etcd` members, each a child process with its own data directory
//! under one temporary directory, on ports reserved by [`super::ports`];
//! members killed, stopped and restarted by the test; everything killed and
//! removed when the cluster is dropped. For the partition tests, members
//! run instead each in a network namespace of a [`Net`], on its address
//! with etcd's usual ports, and are probed from the hub's namespace.
//!
//! etcd comes from Debian's `etcd-server` (3.4). A system etcd may be
//! running on the default ports 2379/2380: the tests never use those on
//! loopback (a namespace's ports are its own).

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::netns::{command_in, spawn_in, Net};
use super::ports::reserve_port;
use super::process::ChildGuard;
use super::wait_for;

/// How long a cluster (or a restarted member) may take to become healthy:
/// 0.7–2.4 s measured on a shared 2-core machine, so a generous bound.
pub const HEALTHY_DEADLINE: Duration = Duration::from_secs(30);

/// etcd's heartbeat and election timeout here (its defaults): the least
/// lease TTL is then 2 s (1.5 × the election timeout, rounded up).
pub const HEARTBEAT_MS: u32 = 100;
/// See [`HEARTBEAT_MS`].
pub const ELECTION_MS: u32 = 1000;

/// The path of `etcd`; missing, the test fails saying how to install it,
/// or with WALREP_SKIP_EXTERNAL=1 is skipped (`None`), as for every tool.
pub fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(found) = std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
    {
        return Some(found);
    }
    if std::env::var("WALREP_SKIP_EXTERNAL").as_deref() == Ok("1") {
        eprintln!("skipping: `etcd` is not installed (apt-get install etcd-server) and WALREP_SKIP_EXTERNAL=1");
        return None;
    }
    panic!("this test needs `etcd`: apt-get install etcd-server (or set WALREP_SKIP_EXTERNAL=1 to skip the tests that need it)");
}

/// One member: its ports, directory and process (when running).
struct Member {
    name: String,
    /// The address it listens on: 127.0.0.1, or its namespace's.
    host: String,
    /// The network namespace it runs in (`None`: the test's own).
    ns: Option<String>,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<ChildGuard>,
}

/// A running etcd cluster, killed and removed when dropped.
pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    /// The namespace the test's probes (/health, status) run in, when the
    /// members are in namespaces.
    probe_ns: Option<String>,
    // Last: removed after the members are killed.
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Start `n` members and wait until every one reports healthy; `None`
    /// when etcd is missing and the test is to be skipped.
    pub fn start(n: usize) -> Option<EtcdCluster> {
        let places = (0..n)
            .map(|_| {
                (
                    "127.0.0.1".to_string(),
                    None,
                    reserve_port(),
                    reserve_port(),
                )
            })
            .collect();
        EtcdCluster::start_at(places, None)
    }

    /// One member in each of `net`'s node namespaces `nodes`, listening on
    /// that node's address with etcd's usual ports (2379, 2380: every
    /// namespace has its own), probed from the hub; the faults of `net`
    /// apply to them as to any node. Drop the cluster before the `Net`.
    pub fn start_in(net: &Net, nodes: &[usize]) -> Option<EtcdCluster> {
        let places = nodes
            .iter()
            .map(|&i| (net.addr(i), Some(net.ns(i)), 2379, 2380))
            .collect();
        EtcdCluster::start_at(places, Some(net.hub()))
    }

    /// Start one member per (host, namespace, client port, peer port) and
    /// wait until every one reports healthy.
    fn start_at(
        places: Vec<(String, Option<String>, u16, u16)>,
        probe_ns: Option<String>,
    ) -> Option<EtcdCluster> {
        let binary = etcd_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("walrep-etcd-")
            .tempdir()
            .expect("temporary directory for etcd");
        let members: Vec<Member> = places
            .into_iter()
            .zip(1..)
            .map(|((host, ns, client_port, peer_port), k)| Member {
                name: format!("e{k}"),
                host,
                ns,
                client_port,
                peer_port,
                data_dir: dir.path().join(format!("e{k}.etcd")),
                log: dir.path().join(format!("e{k}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}:{}", m.name, m.host, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("walrep-test-{}", std::process::id());
        let mut cluster = EtcdCluster {
            binary,
            members,
            initial_cluster,
            token,
            probe_ns,
            dir,
        };
        for i in 0..cluster.members.len() {
            cluster.launch(i);
        }
        cluster.wait_healthy();
        Some(cluster)
    }

    /// Three members, the usual test cluster.
    pub fn start3() -> Option<EtcdCluster> {
        EtcdCluster::start(3)
    }

    /// Client URLs of every member (running or not).
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The endpoints as a comma-separated list (`--endpoints`).
    pub fn endpoint_list(&self) -> String {
        self.endpoints().join(",")
    }

    /// Client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        let m = &self.members[i];
        format!("http://{}:{}", m.host, m.client_port)
    }

    /// The directory of the members' data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&mut self, i: usize) {
        let m = &self.members[i];
        // A restarted member's log goes on after its earlier run's.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("etcd log file");
        let mut cmd = match &m.ns {
            Some(ns) => command_in(ns, &self.binary),
            None => Command::new(&self.binary),
        };
        let (client, peer) = (
            format!("http://{}:{}", m.host, m.client_port),
            format!("http://{}:{}", m.host, m.peer_port),
        );
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-state=new")
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg(format!("--heartbeat-interval={HEARTBEAT_MS}"))
            .arg(format!("--election-timeout={ELECTION_MS}"))
            // An isolated member does not run up the raft term.
            .arg("--pre-vote")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log);
        if cfg!(target_arch = "aarch64") {
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        self.members[i].child = Some(ChildGuard::spawn(&mut cmd));
    }

    /// Wait until every running member says it is healthy (it has a
    /// leader and can commit: etcd's /health), within [`HEALTHY_DEADLINE`].
    pub fn wait_healthy(&self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_some() {
                self.wait_member_healthy(i);
            }
        }
    }

    /// Wait until member `i` says it is healthy.
    pub fn wait_member_healthy(&self, i: usize) {
        let what = format!("etcd member {} healthy", self.members[i].name);
        wait_for(&what, HEALTHY_DEADLINE, || {
            self.assert_running(i);
            self.healthy(i).then_some(())
        });
    }

    /// Whether member `i` answers /health with "true" now.
    pub fn healthy(&self, i: usize) -> bool {
        self.get(i, "/health")
            .is_some_and(|(code, body)| code == 200 && body.contains(r#""health":"true""#))
    }

    /// Fail the test with the member's log when its process exited.
    fn assert_running(&self, i: usize) {
        let m = &self.members[i];
        // try_wait needs &mut; a gone process shows in /proc.
        if let Some(child) = &m.child {
            if super::process::process_gone(child.pid()) {
                panic!(
                    "etcd member {} exited; its log:\n{}",
                    m.name,
                    tail(&m.log, 40)
                );
            }
        }
    }

    /// The index of the member that is etcd's raft leader now, if one is.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| {
            self.members[i].child.is_some()
                && self
                    .post(i, "/v3/maintenance/status", "{}")
                    .is_some_and(|(code, body)| code == 200 && is_leader(&body))
        })
    }

    /// SIGKILL member `i` (a crash); nothing if it is not running.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill();
        }
    }

    /// SIGTERM member `i` and wait for its exit (a clean stop hands raft
    /// leadership over at once).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            child.signal_and_wait(libc::SIGTERM);
        }
    }

    /// Start member `i` again on its data directory and ports (no wait).
    pub fn restart(&mut self, i: usize) {
        assert!(
            self.members[i].child.is_none(),
            "etcd member {} is still running",
            self.members[i].name
        );
        self.launch(i);
    }

    /// GET from member `i` (from the probe namespace when there is one);
    /// `None` when nothing answers (bounded: 2 s).
    fn get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        self.exchange(i, format!("GET {path} HTTP/1.0\r\nHost: etcd\r\n\r\n"))
    }

    /// POST a JSON body to member `i`; `None` when nothing answers.
    fn post(&self, i: usize, path: &str, body: &str) -> Option<(u16, String)> {
        self.exchange(
            i,
            format!(
                "POST {path} HTTP/1.0\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    }

    fn exchange(&self, i: usize, request: String) -> Option<(u16, String)> {
        let m = &self.members[i];
        let addr = std::net::SocketAddr::new(m.host.parse().ok()?, m.client_port);
        match &self.probe_ns {
            Some(ns) => spawn_in(ns, move || exchange(addr, &request)).join().ok()?,
            None => exchange(addr, &request),
        }
    }

    /// Whether member `i` is running (as far as the test knows).
    pub fn running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for m in &self.members {
                eprintln!(
                    "--- etcd member {} log (tail) ---\n{}",
                    m.name,
                    tail(&m.log, 15)
                );
            }
        }
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                child.kill();
            }
        }
    }
}

/// Whether a /v3/maintenance/status body says its member is the leader
/// (`leader` equals the header's `member_id`).
fn is_leader(body: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    let leader = v["leader"].as_str();
    leader.is_some() && leader == v["header"]["member_id"].as_str()
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One HTTP/1.0 exchange with `addr`; `None` when nothing answers
/// (bounded: 2 s per step).
fn exchange(addr: std::net::SocketAddr, request: &str) -> Option<(u16, String)> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}
