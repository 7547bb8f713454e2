//! Network namespaces for the level-3 tests: a hub namespace holding a
//! bridge (and the test's clients, at 198.51.100.1) and one namespace per
//! node, each joined to the bridge by a veth pair, with addresses from
//! 198.51.100.0/24 that exist only inside those namespaces. Faults are
//! nftables rules in the nodes' own namespaces: a partition drops packets
//! from one node at another's input, loss drops a random share of them
//! (`numgen random`). Everything is removed when the [`Net`] is dropped,
//! also when the test panics (deleting a namespace takes its veth ends and
//! its rules with it); namespaces a killed test run left behind are removed
//! by the next one.
//!
//! Processes enter a namespace with setns(2) between fork and exec; test
//! threads enter one with setns(2) on themselves (a network namespace is
//! per thread), so the test process never needs an address of its own.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use super::node::walrep_bin;
use super::process::{ChildGuard, PROCESS_DEADLINE};
use super::resp::Resp;
use super::wait_for;

/// The first three octets of every address here (TEST-NET-2, RFC 5737:
/// never routed, so nothing outside can be reached by mistake).
pub const SUBNET: &str = "198.51.100";
/// The hub's address: where the test's clients connect from.
pub const HUB_ADDR: &str = "198.51.100.1";
/// Ports inside each node's namespace: every namespace has its own ports,
/// so each node uses the well-known ones.
pub const REDIS_PORT: u16 = 6379;
pub const REPLICATION_PORT: u16 = 5432;

const PREFIX: &str = "wrnet";
static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// A direction of traffic between two nodes of a [`Net`], or between a node
/// and the hub (its clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Node(usize),
    Hub,
}

/// One fault rule: packets from `from` arriving at node `at` are dropped,
/// all of them or `per_mille` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    from: Peer,
    at: usize,
    per_mille: u32,
}

/// A hub and `n` node namespaces, removed on drop.
pub struct Net {
    name: String,
    nodes: usize,
    rules: Mutex<Vec<Rule>>,
}

impl Net {
    /// Create the namespaces, or fail the test with the reason (not root,
    /// no `ip` or `nft`): a level-3 test never passes without its network.
    pub fn create(nodes: usize) -> Net {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the network-namespace tests must run as root (they create namespaces, \
             veth pairs and nftables rules); this process runs as uid {}",
            unsafe { libc::geteuid() }
        );
        remove_leftovers();
        let name = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            NEXT_NET.fetch_add(1, Ordering::Relaxed)
        );
        let net = Net {
            name,
            nodes,
            rules: Mutex::new(Vec::new()),
        };
        net.build();
        net
    }

    fn build(&self) {
        let hub = self.hub();
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{HUB_ADDR}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for i in 0..self.nodes {
            let ns = self.ns(i);
            let (inner, outer) = (format!("{ns}i"), format!("{ns}o"));
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &outer,
                "netns", &hub,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "name", "eth0"]);
            let addr = format!("{}/24", self.addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &hub, "link", "set", &outer, "master", "br0"]);
            ip(&["-n", &hub, "link", "set", &outer, "up"]);
            nft(&ns, "add table inet walrep_faults");
            nft(
                &ns,
                "add chain inet walrep_faults input { type filter hook input priority 0; policy accept; }",
            );
        }
    }

    /// The hub's namespace (the clients').
    pub fn hub(&self) -> String {
        format!("{}h", self.name)
    }

    /// Node `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.name)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("{SUBNET}.{}", 11 + i)
    }

    fn peer_addr(&self, p: Peer) -> String {
        match p {
            Peer::Node(i) => self.addr(i),
            Peer::Hub => HUB_ADDR.to_string(),
        }
    }

    /// Drop every packet from `from` to node `to` (one way: the other
    /// direction still flows).
    pub fn cut_one_way(&self, from: Peer, to: usize) {
        self.add_rule(Rule {
            from,
            at: to,
            per_mille: 1000,
        });
    }

    /// Drop every packet between nodes `a` and `b`, both ways.
    pub fn partition(&self, a: usize, b: usize) {
        self.cut_one_way(Peer::Node(a), b);
        self.cut_one_way(Peer::Node(b), a);
    }

    /// Cut node `i` off from every other node and from the clients.
    pub fn isolate(&self, i: usize) {
        for j in (0..self.nodes).filter(|&j| j != i) {
            self.partition(i, j);
        }
        self.cut_one_way(Peer::Hub, i);
    }

    /// Drop `per_mille` of the packets arriving at every node, from
    /// anywhere (random, per packet).
    pub fn lose(&self, per_mille: u32) {
        for at in 0..self.nodes {
            self.add_rule(Rule {
                from: Peer::Hub,
                at,
                per_mille,
            });
            for j in (0..self.nodes).filter(|&j| j != at) {
                self.add_rule(Rule {
                    from: Peer::Node(j),
                    at,
                    per_mille,
                });
            }
        }
    }

    /// Remove every fault.
    pub fn heal(&self) {
        let mut rules = self.rules.lock().unwrap();
        for i in 0..self.nodes {
            nft(&self.ns(i), "flush chain inet walrep_faults input");
        }
        rules.clear();
    }

    fn add_rule(&self, r: Rule) {
        let from = self.peer_addr(r.from);
        let rule = if r.per_mille >= 1000 {
            format!("add rule inet walrep_faults input ip saddr {from} drop")
        } else {
            format!(
                "add rule inet walrep_faults input ip saddr {from} numgen random mod 1000 < {} drop",
                r.per_mille
            )
        };
        nft(&self.ns(r.at), &rule);
        self.rules.lock().unwrap().push(r);
    }

    /// The rules in force, as nft prints them (for a failure message).
    pub fn describe(&self) -> String {
        (0..self.nodes)
            .map(|i| {
                let out = run(
                    "ip",
                    &["netns", "exec", &self.ns(i), "nft", "list", "ruleset"],
                );
                format!("node {i} ({}):\n{out}", self.addr(i))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Run `f` on a new thread inside namespace `ns` (sockets it opens
    /// belong to `ns`); threads it spawns inherit the namespace.
    pub fn run_in<T: Send + 'static>(
        &self,
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        spawn_in(ns, f)
    }

    /// A command that runs in namespace `ns`.
    pub fn command(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(ns, program)
    }

    /// `walrep basebackup -R --no-slot` of node `from` into `dir`, run in
    /// node `i`'s namespace over the test network, as standby `name`. No
    /// slot: standbys here follow promoted nodes, which never had a slot
    /// made on the node they were copied from.
    pub fn basebackup(&self, i: usize, from: usize, dir: &Path, name: &str) {
        let out = self
            .command(&self.ns(i), walrep_bin())
            .args(["basebackup", "--from"])
            .arg(format!("{}:{REPLICATION_PORT}", self.addr(from)))
            .arg("-D")
            .arg(dir)
            .args(["--write-standby-config", "--application-name", name])
            .arg("--no-slot")
            .output()
            .expect("run walrep basebackup");
        assert!(
            out.status.success(),
            "walrep basebackup in {}: {}",
            self.ns(i),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A client connection from the hub to node `i`'s Redis port.
    pub fn client(&self, i: usize) -> Resp {
        let addr = format!("{}:{REDIS_PORT}", self.addr(i));
        self.run_in(&self.hub(), move || Resp::connect(&addr))
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("could not connect to node {i}: {e}"))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = quiet_ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = quiet_ip(&["netns", "del", &self.hub()]);
    }
}

/// Namespaces of earlier runs whose process is gone (a run killed before
/// its drop guards ran).
fn remove_leftovers() {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = quiet_ip(&["netns", "del", &name]);
        }
    }
}

/// Run `f` on a new thread inside namespace `ns` (for holders of a
/// namespace's name without its [`Net`], as an etcd member in one).
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let file = open_ns(ns);
    std::thread::spawn(move || {
        enter(&file);
        f()
    })
}

/// A command that runs in namespace `ns`.
pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let file = open_ns(ns);
    let mut cmd = Command::new(program);
    // SAFETY: setns(2) is async-signal-safe; the file stays open in the
    // parent until the command is spawned (the closure owns it).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn open_ns(ns: &str) -> File {
    File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("open network namespace {ns}: {e}"))
}

/// Move the calling thread into the namespace `file` names.
fn enter(file: &File) {
    // SAFETY: setns(2) on a namespace file we hold open.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns into a network namespace: {}",
        std::io::Error::last_os_error()
    );
}

/// Run a command, failing the test with its output when it fails.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("could not run {program} (install iproute2 and nftables): {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    run("ip", args);
}

fn quiet_ip(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

fn nft(ns: &str, rule: &str) {
    let mut args = vec!["netns", "exec", ns, "nft"];
    args.extend(rule.split(' '));
    run("ip", &args);
}

/// `walrep init` of a first primary in `dir` (1 MB segments) whose
/// replication connections from the test network are trusted (its
/// addresses exist only inside the test's namespaces); standbys copy that.
pub fn init_primary(dir: &Path) {
    let (ok, out, err) =
        super::node::walrep(&["init", dir.to_str().unwrap(), "--wal-segment-size", "1MB"]);
    assert!(ok, "walrep init: {out}{err}");
    let conf = dir.join("walrep.toml");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "\n[[hba]]\naddress = \"{SUBNET}.0/24\"\nmethod = \"trust\"\n"
    ));
    fs::write(&conf, text).unwrap();
}

/// A `walrep start` process in node `index`'s namespace, listening on its
/// address with the well-known ports.
pub struct NetNode {
    pub index: usize,
    pub name: String,
    pub datadir: PathBuf,
    pub log: PathBuf,
    pub settings: Vec<String>,
    child: Option<ChildGuard>,
}

impl NetNode {
    /// Start `walrep start datadir` in node `index`'s namespace with
    /// `settings` (`-c name=value`).
    pub fn start(
        net: &Net,
        index: usize,
        name: &str,
        datadir: &Path,
        settings: &[String],
    ) -> NetNode {
        let mut node = NetNode {
            index,
            name: name.to_string(),
            datadir: datadir.to_path_buf(),
            log: datadir.with_extension("log"),
            settings: settings.to_vec(),
            child: None,
        };
        node.launch(net);
        node
    }

    fn launch(&mut self, net: &Net) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut cmd = net.command(&net.ns(self.index), walrep_bin());
        cmd.arg("start").arg(&self.datadir);
        for s in [
            format!("listen_addresses={}", net.addr(self.index)),
            format!("port={REDIS_PORT}"),
            format!("replication_port={REPLICATION_PORT}"),
            "protected_mode=false".into(),
        ]
        .iter()
        .chain(&self.settings)
        {
            cmd.args(["-c", s]);
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(log);
        self.child = Some(ChildGuard::spawn(&mut cmd));
        let addr = format!("{}:{REDIS_PORT}", net.addr(self.index));
        wait_for(
            &format!("{} to answer PING (log {})", self.name, self.log.display()),
            PROCESS_DEADLINE,
            || {
                if let Some(st) = self.child.as_mut().and_then(|c| c.exited()) {
                    panic!(
                        "{} exited with {st} at start-up:\n{}",
                        self.name,
                        self.log_text()
                    );
                }
                let addr = addr.clone();
                let pong = net
                    .run_in(&net.hub(), move || {
                        let mut c = Resp::connect(&addr).ok()?;
                        c.call(&["PING"]).ok()
                    })
                    .join()
                    .unwrap();
                pong.map(|_| ())
            },
        );
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// Start again on the same data directory and settings.
    pub fn restart(&mut self, net: &Net) {
        assert!(self.child.is_none(), "kill the node first");
        self.launch(net);
    }
}
