//! `walrep bench --scenario ha`: the automatic-failover soak. Three walrep
//! nodes with HA on (`FIRST 1 (n1, n2, n3)`, `synchronous_commit = on`)
//! and a three-member etcd this run starts itself; clients write unique
//! values under load and follow whichever node is the primary, recording
//! every operation. Per round a fault hits the current primary:
//! - `kill -9`, then the node is started again and must come back as a
//!   standby of the new leader by itself (the HA loop's demote and rejoin);
//! - a partition (as root, in a private network namespace): the primary is
//!   cut from etcd and from the standbys. Each etcd member listens on one
//!   extra client port per walrep node and each node talks to etcd only on
//!   its own ports, so cutting a node on loopback is dropping those ports
//!   and its replication port; its Redis port stays reachable, so clients
//!   see what the fenced old primary answers;
//! - a process stall: SIGSTOP longer than `ha_ttl`, then SIGCONT. The
//!   resumed old primary must not acknowledge anything (the classic GC
//!   pause): half the clients keep waiting on it to see its answers;
//!
//! and after every third round a planned `walrep ha switchover`, measured
//! separately. Per round: the failover time (the old primary's last
//! acknowledgement to the new one's first, as the clients saw them), every
//! acknowledged write checked on the new primary (walrep's history
//! checker, over every round so far), and whether two nodes acknowledged in
//! overlapping time. Any lost write, overlap or acknowledgement by a
//! resumed old primary fails the run, with the seed to replay it.
//!
//! The timing: the failover time is about the lease's remaining time at
//! the fault (`ha_ttl` minus up to one `ha_loop_wait`), plus etcd's expiry
//! check (every 0.5 s), one standby cycle to race, the promotion, and one
//! or two cycles for the other standby to follow and be confirmed
//! synchronous (no write is acknowledged before). With `ha_ttl = 3s` and
//! `ha_loop_wait = 500ms` that is about 3–5 s; Patroni's defaults (`ttl`
//! 30 s, `loop_wait` 10 s) give 20–40 s by the same sum.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walrep::ha::dcs::{cluster_prefix, Dcs};
use walrep::ha::etcd::{EtcdClient, EtcdConfig, EtcdDcs};
use walrep::history::{History, Outcome, Write as HistoryWrite};
use walrep_states::ha::ClusterView;

use super::cluster::{self, Node};
use super::figures::{self, Better, Figure};
use super::procs::{free_port, Child};
use super::soak::{self, clock_seed, final_state, splitmix64, Client, Clients, PrivateNet};
use super::{BenchArgs, BenchError};

/// The lease: the failover time is mostly this (see the module docs).
const TTL_S: u64 = 3;
/// One HA cycle: renew, read, decide, act.
const LOOP_WAIT_MS: u64 = 500;
/// Bound of each etcd request: `loop_wait + 2 * retry <= ttl` holds.
const RETRY_TIMEOUT_MS: u64 = 1000;
/// The primary fences itself this long before its lease can expire:
/// `ttl - margin > loop_wait + retry` holds, so a healthy primary renews
/// well before its gate closes.
const FENCE_MARGIN_MS: u64 = 1000;
/// The walrep nodes.
const NODES: usize = 3;
/// The etcd members.
const MEMBERS: usize = 3;
/// `ha_cluster_name`.
const CLUSTER: &str = "bench";
/// Bound on the cluster reaching a state (a leader, a standby back).
const STATE_LIMIT: Duration = Duration::from_secs(120);
/// Requests of the clients that move on to the next primary.
const SHORT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Requests of the clients that wait on a stalled primary to see its
/// answer when it resumes.
const LONG_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the INFO a client asks a node it might write to.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// A client's pause before it looks for the primary again (every node
/// asked at most 20 times a second by each client).
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Acknowledgements by the primary before the fault may come.
const ACKS_BEFORE_FAULT: usize = 50;
/// The fault comes a seeded share of this after those.
const FAULT_SPREAD_MS: u64 = 1000;
/// Acknowledgements by the new primary before a round's load stops.
const ACKS_AFTER_FAILOVER: usize = 50;
/// How long a stalled primary stays stopped: longer than its lease.
const STALL: Duration = Duration::from_millis(TTL_S * 1000 + 2000);
/// A switchover after every this many fault rounds.
const SWITCHOVER_EVERY: u32 = 3;
/// The failover-time target of the benchmark, seconds (p99).
const TARGET_P99_S: f64 = 5.0;

/// What hit the primary in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL, then started again.
    Kill,
    /// Cut from etcd and the standbys, then healed.
    Partition,
    /// SIGSTOP longer than the lease, then SIGCONT.
    Stall,
    /// `walrep ha switchover` to the synchronous standby.
    Switchover,
}

impl Fault {
    fn words(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9",
            Fault::Partition => "partition",
            Fault::Stall => "stall",
            Fault::Switchover => "switchover",
        }
    }
}

/// One round's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HaRound {
    pub round: u32,
    pub fault: Fault,
    /// The primary hit, and the node that took over.
    pub old: String,
    pub new: String,
    /// The old primary's last acknowledgement to the new one's first, ms.
    pub unavailable_ms: f64,
    /// Writes acknowledged in this round.
    pub acknowledged: usize,
    /// Writes whose fate the clients could not know.
    pub indeterminate: usize,
    /// From the restart (kill), the heal (partition), the SIGCONT (stall)
    /// or the switchover to the old primary streaming from the new one.
    pub back_as_standby_ms: f64,
}

/// What the soak measured.
#[derive(Debug, Default, serde::Serialize)]
pub struct HaReport {
    pub seed: u64,
    /// Automatic failovers (kill, partition, stall rounds).
    pub rounds: u32,
    pub clients: u32,
    pub ha_ttl_s: u64,
    pub ha_loop_wait_ms: u64,
    pub ha_retry_timeout_ms: u64,
    pub ha_fence_margin_ms: u64,
    pub kills: u32,
    pub partitions: u32,
    pub stalls: u32,
    pub switchovers: u32,
    pub per_round: Vec<HaRound>,
    /// Writes acknowledged at `on` over the whole run (all must survive).
    pub acknowledged: usize,
    /// Acknowledged writes missing or older on a new primary.
    pub lost: usize,
    pub indeterminate: usize,
    /// Writes refused (`-READONLY`: a standby or a fenced primary).
    pub refused: usize,
    /// Rounds where two nodes acknowledged in overlapping time.
    pub overlaps: u32,
    /// Standbys that had replayed past the new leader's fork and were
    /// rejoined by the soak, as an operator would (the HA loop does not
    /// rewind standbys yet).
    pub standbys_rejoined_by_hand: u32,
    /// Everything the checks refused, with its round.
    pub violations: Vec<String>,
    pub figures: Vec<Figure>,
    /// 1-minute load average at the start and the end.
    pub load_avg: (f64, f64),
    pub elapsed_s: f64,
}

/// Run the soak.
pub fn run(args: &BenchArgs) -> Result<HaReport, BenchError> {
    let started = Instant::now();
    let etcd_bin = etcd_binary()?;
    let rounds = args.rounds.unwrap_or(50);
    let seed = args.seed.unwrap_or_else(clock_seed);
    let run_dir = super::RunDir::create(args, "walrep-bench-ha-")?;
    let exe = std::env::current_exe().map_err(|e| BenchError::io("find this binary", e))?;
    println!(
        "walrep bench --scenario ha: {rounds} automatic failovers and a switchover after every \
         {SWITCHOVER_EVERY}, {} clients at synchronous_commit=on, seed {seed} (replay with --seed {seed}); \
         ha_ttl={TTL_S}s ha_loop_wait={LOOP_WAIT_MS}ms ha_retry_timeout={RETRY_TIMEOUT_MS}ms \
         ha_fence_margin={FENCE_MARGIN_MS}ms; data in {}",
        args.failover_clients,
        run_dir.path().display()
    );
    let net = PrivateNet::enter();
    match &net {
        Ok(_) => println!("partitions: on (a private network namespace)"),
        Err(why) => println!("partitions: unavailable ({why}); kill -9 and stalls only"),
    }
    let load_start = cluster::load_average();
    let etcd = Etcd::start(&etcd_bin, &run_dir.path().join("etcd"))?;
    let result = soak_rounds(args, &exe, run_dir.path(), etcd, net, seed, rounds);
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            let kept = run_dir.keep();
            eprintln!("data directories and logs kept in {}", kept.display());
            return Err(e);
        }
    };
    report.load_avg = (load_start, cluster::load_average());
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.figures = figures_of(&report);
    print_report(&report);
    let (lost, violations) = (report.lost, report.violations.len());
    soak::verdict(args.keep, run_dir, "the HA soak", lost, violations, seed)?;
    Ok(report)
}

/// The rounds, on the cluster this builds.
fn soak_rounds(
    args: &BenchArgs,
    exe: &Path,
    dir: &Path,
    etcd: Etcd,
    net: Result<PrivateNet, String>,
    seed: u64,
    rounds: u32,
) -> Result<HaReport, BenchError> {
    let mut soak = Soak::new(exe, dir, etcd, args.failover_clients)?;
    soak.net = net.ok();
    soak.rng = seed;
    soak.report.seed = seed;
    let kinds: &[Fault] = if soak.net.is_some() {
        &[Fault::Kill, Fault::Partition, Fault::Stall]
    } else {
        &[Fault::Kill, Fault::Stall]
    };
    let mut switchovers = 0;
    for round in 0..rounds {
        let fault = kinds[round as usize % kinds.len()];
        soak.round(round + switchovers, fault)
            .map_err(|e| BenchError::Server(format!("round {round} (seed {seed}): {e}")))?;
        if (round + 1) % SWITCHOVER_EVERY == 0 {
            switchovers += 1;
            soak.round(round + switchovers, Fault::Switchover)
                .map_err(|e| {
                    BenchError::Server(format!("switchover after round {round} (seed {seed}): {e}"))
                })?;
        }
    }
    Ok(std::mem::take(&mut soak.report))
}

/// `etcd` from PATH or /usr/bin, or a clear error.
fn etcd_binary() -> Result<PathBuf, BenchError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| p.is_file())
        .ok_or_else(|| {
            BenchError::Usage(
                "the ha scenario needs etcd 3.4 or later: `etcd` is not in PATH nor /usr/bin \
                 (Debian: apt-get install etcd-server)"
                    .into(),
            )
        })
}

/// A three-member etcd on loopback: each member listens on an admin
/// client port (the soak's own reads, `walrep ha`) and on one client port
/// per walrep node, so a node can be cut from etcd alone.
struct Etcd {
    // Stopped (SIGTERM) when dropped.
    _members: Vec<Child>,
    admin_ports: Vec<u16>,
    /// `node_ports[node][member]`.
    node_ports: Vec<Vec<u16>>,
}

impl Etcd {
    fn start(binary: &Path, dir: &Path) -> Result<Etcd, BenchError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BenchError::io(format!("create {}", dir.display()), e))?;
        let ports = |n: usize| (0..n).map(|_| free_port()).collect::<Result<Vec<_>, _>>();
        let peer_ports = ports(MEMBERS)?;
        let admin_ports = ports(MEMBERS)?;
        let node_ports = (0..NODES)
            .map(|_| ports(MEMBERS))
            .collect::<Result<Vec<_>, _>>()?;
        let initial_cluster = peer_ports
            .iter()
            .enumerate()
            .map(|(k, p)| format!("e{}=http://127.0.0.1:{p}", k + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for k in 0..MEMBERS {
            let url = |p: u16| format!("http://127.0.0.1:{p}");
            let listen: Vec<String> = std::iter::once(admin_ports[k])
                .chain(node_ports.iter().map(|n| n[k]))
                .map(url)
                .collect();
            let log_path = dir.join(format!("e{}.log", k + 1));
            let log = std::fs::File::create(&log_path)
                .map_err(|e| BenchError::io(format!("create {}", log_path.display()), e))?;
            let mut cmd = Command::new(binary);
            cmd.arg(format!("--name=e{}", k + 1))
                .arg(format!(
                    "--data-dir={}",
                    dir.join(format!("e{}.etcd", k + 1)).display()
                ))
                .arg(format!("--listen-client-urls={}", listen.join(",")))
                .arg(format!("--advertise-client-urls={}", url(admin_ports[k])))
                .arg(format!("--listen-peer-urls={}", url(peer_ports[k])))
                .arg(format!(
                    "--initial-advertise-peer-urls={}",
                    url(peer_ports[k])
                ))
                .arg(format!("--initial-cluster={initial_cluster}"))
                .arg("--initial-cluster-state=new")
                .arg(format!(
                    "--initial-cluster-token=walrep-bench-{}",
                    std::process::id()
                ))
                // An isolated member does not run up the raft term.
                .arg("--pre-vote")
                .arg("--logger=zap")
                .arg("--log-outputs=stderr")
                .stdout(Stdio::null())
                .stderr(log);
            if cfg!(target_arch = "aarch64") {
                cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
            }
            members.push(Child::spawn("etcd", &mut cmd)?);
        }
        let etcd = Etcd {
            _members: members,
            admin_ports,
            node_ports,
        };
        let mut dcs = etcd.dcs()?;
        cluster::wait_for(
            "etcd to answer a linearizable read",
            STATE_LIMIT,
            Duration::from_millis(100),
            || Ok(dcs.load().ok().map(|_| ())),
        )?;
        Ok(etcd)
    }

    fn list(ports: &[u16]) -> String {
        ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn admin_endpoints(&self) -> String {
        Etcd::list(&self.admin_ports)
    }

    fn node_endpoints(&self, node: usize) -> String {
        Etcd::list(&self.node_ports[node])
    }

    /// A reader of the cluster's keys on the admin ports.
    fn dcs(&self) -> Result<EtcdDcs, BenchError> {
        let mut config = EtcdConfig::from_list(&self.admin_endpoints());
        config.timeout = Duration::from_secs(2);
        let client = EtcdClient::new(&config)
            .map_err(|e| BenchError::Server(format!("etcd client: {e}")))?;
        Ok(EtcdDcs::new(
            client,
            &cluster_prefix("/walrep", CLUSTER),
            "walrep-bench",
            Duration::from_secs(TTL_S),
        ))
    }
}

fn name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// The cluster, the clients' view of it, and the running totals.
struct Soak<'a> {
    exe: &'a Path,
    dir: &'a Path,
    etcd: Etcd,
    dcs: EtcdDcs,
    clients: u32,
    rng: u64,
    nodes: [Option<Node>; NODES],
    /// Each node's Redis port as the clients see it (`None` while down).
    ports: Arc<Mutex<[Option<u16>; NODES]>>,
    net: Option<PrivateNet>,
    /// Every round's writes.
    history: History,
    report: HaReport,
}

impl<'a> Soak<'a> {
    /// n1 alone, until it leads; n2 and n3 copied from it with `walrep
    /// basebackup -R --no-slot`; until one of them is its confirmed
    /// synchronous standby.
    fn new(exe: &'a Path, dir: &'a Path, etcd: Etcd, clients: u32) -> Result<Soak<'a>, BenchError> {
        let dcs = etcd.dcs()?;
        let mut soak = Soak {
            exe,
            dir,
            etcd,
            dcs,
            clients,
            rng: 0,
            nodes: [None, None, None],
            ports: Arc::default(),
            net: None,
            history: History::new(),
            report: HaReport {
                clients,
                ha_ttl_s: TTL_S,
                ha_loop_wait_ms: LOOP_WAIT_MS,
                ha_retry_timeout_ms: RETRY_TIMEOUT_MS,
                ha_fence_margin_ms: FENCE_MARGIN_MS,
                ..HaReport::default()
            },
        };
        cluster::init(exe, &soak.datadir(0))?;
        soak.start_node(0)?;
        cluster::wait_for("n1 to lead", STATE_LIMIT, Duration::from_millis(50), || {
            Ok((soak
                .info(0, "replication")?
                .get("ha_role")
                .map(String::as_str)
                == Some("leader"))
            .then_some(()))
        })?;
        let repl_port = soak.node(0)?.repl_port;
        for i in 1..NODES {
            cluster::basebackup_with(exe, repl_port, &soak.datadir(i), &name(i), &["--no-slot"])?;
            soak.start_node(i)?;
        }
        soak.wait_steady()?;
        Ok(soak)
    }

    fn datadir(&self, i: usize) -> PathBuf {
        self.dir.join(name(i))
    }

    fn settings(&self, i: usize) -> Vec<String> {
        vec![
            "ha_enabled=on".into(),
            format!("ha_endpoints={}", self.etcd.node_endpoints(i)),
            format!("ha_cluster_name={CLUSTER}"),
            format!("ha_name={}", name(i)),
            format!("ha_ttl={TTL_S}s"),
            format!("ha_loop_wait={LOOP_WAIT_MS}ms"),
            format!("ha_retry_timeout={RETRY_TIMEOUT_MS}ms"),
            format!("ha_fence_margin={FENCE_MARGIN_MS}ms"),
            "synchronous_standby_names=FIRST 1 (n1, n2, n3)".into(),
            "synchronous_commit=on".into(),
            "wal_retrieve_retry_interval=200ms".into(),
            "wal_receiver_timeout=5s".into(),
            "log_level=info".into(),
        ]
    }

    /// `walrep start` node `i` (new ports each time) and publish its Redis
    /// port to the clients.
    fn start_node(&mut self, i: usize) -> Result<(), BenchError> {
        let node = Node::start(self.exe, &self.datadir(i), &self.settings(i))?;
        self.ports.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(node.port);
        self.nodes[i] = Some(node);
        Ok(())
    }

    fn node(&self, i: usize) -> Result<&Node, BenchError> {
        self.nodes[i]
            .as_ref()
            .ok_or_else(|| BenchError::Server(format!("{} is not running", name(i))))
    }

    fn info(
        &self,
        i: usize,
        section: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, BenchError> {
        self.node(i)?.connect()?.info(section)
    }

    fn view(&mut self) -> Option<ClusterView> {
        self.dcs.load().ok()
    }

    /// Wait until one node leads with its gate open, `sync` names it and
    /// one standby, and both others stream from it; returns the leader.
    fn wait_steady(&mut self) -> Result<usize, BenchError> {
        let mut last = String::new();
        let found = cluster::wait_for(
            "a leader with a synchronous standby and both standbys streaming from it",
            STATE_LIMIT,
            Duration::from_millis(50),
            || {
                Ok(match self.steady() {
                    Ok(l) => Some(l),
                    Err(why) => {
                        last = why;
                        self.repair_diverged()?;
                        None
                    }
                })
            },
        );
        found.map_err(|e| BenchError::Server(format!("{e}; last seen: {last}; {}", self.cycles())))
    }

    /// Why the cluster is not steady yet, or its leader.
    fn steady(&mut self) -> Result<usize, String> {
        let view = self.view().ok_or("etcd did not answer")?;
        let leader = view.leader_name().ok_or("no leader key")?.to_string();
        let l = (0..NODES)
            .find(|&i| name(i) == leader)
            .ok_or_else(|| format!("unknown leader {leader}"))?;
        let sync = view.sync.as_ref().ok_or("no sync key")?;
        if sync.value.leader != leader || sync.value.sync_standbys.len() != 1 {
            return Err(format!("sync is {:?}", sync.value));
        }
        let info = self.info(l, "replication").map_err(|e| e.to_string())?;
        let field = |f: &str| info.get(f).map_or("", String::as_str).to_string();
        if field("ha_role") != "leader" || field("connected_slaves") != "2" {
            return Err(format!(
                "{leader}: ha_role {}, {} standbys connected",
                field("ha_role"),
                field("connected_slaves")
            ));
        }
        Ok(l)
    }

    /// A standby that replayed past the fork of the leader's timeline (an
    /// asynchronous standby can have received more than the synchronous
    /// one that won) cannot follow the new leader, and the HA loop does
    /// not rewind standbys yet: do what an operator does (stop it, `walrep
    /// rejoin` against the leader, start it) and count it.
    fn repair_diverged(&mut self) -> Result<(), BenchError> {
        let Some(view) = self.view() else {
            return Ok(());
        };
        let Some(l) = view
            .leader_name()
            .and_then(|leader| (0..NODES).find(|&i| name(i) == leader))
        else {
            return Ok(());
        };
        let history = view.history.map(|h| h.value).unwrap_or_default();
        for i in (0..NODES).filter(|&i| i != l) {
            let Ok(info) = self.info(i, "replication") else {
                continue;
            };
            let tli: Option<u32> = info.get("replay_tli").and_then(|t| t.parse().ok());
            let lsn: Option<walrep::Lsn> = info.get("replay_lsn").and_then(|v| v.parse().ok());
            let (Some(tli), Some(lsn)) = (tli, lsn) else {
                continue;
            };
            let fork = history
                .iter()
                .filter(|e| e.timeline.0 > tli)
                .min_by_key(|e| e.timeline.0);
            let Some(fork) = fork.filter(|f| lsn > f.switch_lsn) else {
                continue;
            };
            println!(
                "  note: {} replayed {lsn} on timeline {tli}, past {}'s fork at {}: it cannot \
                 follow; rejoining it by hand",
                name(i),
                fork.leader,
                fork.switch_lsn
            );
            self.rejoin_by_hand(i, l)?;
            self.report.standbys_rejoined_by_hand += 1;
        }
        Ok(())
    }

    /// Stop node `i`, `walrep rejoin` it against `leader` (a fresh base
    /// backup when rejoin refuses), start it again.
    fn rejoin_by_hand(&mut self, i: usize, leader: usize) -> Result<(), BenchError> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())[i] = None;
        if let Some(n) = self.nodes[i].take() {
            n.stop();
        }
        let repl_port = self.node(leader)?.repl_port;
        let dir = self.datadir(i);
        if let Err(why) = cluster::rejoin(self.exe, repl_port, &dir, &name(i))? {
            println!(
                "  note: walrep rejoin refused ({why}); copying {} afresh",
                name(i)
            );
            std::fs::remove_dir_all(&dir)
                .map_err(|e| BenchError::io(format!("remove {}", dir.display()), e))?;
            cluster::basebackup_with(self.exe, repl_port, &dir, &name(i), &["--no-slot"])?;
        }
        self.start_node(i)
    }

    /// Each node's last HA cycle, for an error message.
    fn cycles(&self) -> String {
        (0..NODES)
            .map(|i| {
                let why = self
                    .info(i, "replication")
                    .ok()
                    .and_then(|info| info.get("ha_last_cycle").cloned());
                format!("{}: {}", name(i), why.as_deref().unwrap_or("(no answer)"))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// One round: load, the fault, the new primary's first
    /// acknowledgements, the checks, the old primary back as a standby.
    fn round(&mut self, round: u32, fault: Fault) -> Result<(), BenchError> {
        let old = self.wait_steady()?;
        let load = Load::start(self.ports.clone(), self.clients, round);
        load.wait_acks(&name(old), Duration::ZERO, ACKS_BEFORE_FAULT)?;
        // The fault schedule: a seeded moment, not a condition.
        let delay_ms = splitmix64(&mut self.rng) % FAULT_SPREAD_MS;
        std::thread::sleep(Duration::from_millis(delay_ms));
        let fault_at = load.now();
        let mut stalled = None;
        match fault {
            Fault::Kill => self.kill(old),
            Fault::Partition => self.cut(old)?,
            Fault::Stall => {
                let stall = Stall::stop(self.node(old)?.child.pid())?;
                stalled = Some((stall, load.now()));
            }
            Fault::Switchover => self.switchover(old)?,
        }
        let mut resumed_at = None;
        if let Some((stall, stopped_at)) = stalled.take() {
            // The fault itself: a pause longer than the lease.
            std::thread::sleep(STALL);
            drop(stall);
            resumed_at = Some((stopped_at, load.now()));
        }
        let new = self.wait_new_primary(&load, old, fault_at)?;
        let healed_at = Instant::now();
        if fault == Fault::Partition {
            self.heal()?;
        }
        load.wait_acks(&new, fault_at, ACKS_AFTER_FAILOVER)?;
        if resumed_at.is_some() {
            // The clients waiting on the stalled node get its answers.
            load.wait_answered(&name(old))?;
        }
        let history = load.finish();
        let new_i = (0..NODES)
            .find(|&i| name(i) == new)
            .ok_or_else(|| BenchError::Server(format!("unknown node {new}")))?;
        let back_from = if fault == Fault::Kill {
            self.start_node(old)?;
            self.node(old)?.spawned_at
        } else {
            healed_at
        };
        let r = self.check(round, fault, (old, new_i), &history, resumed_at)?;
        let back_ms = self.wait_back(old, new_i, back_from)?;
        let line = HaRound {
            back_as_standby_ms: back_ms,
            ..r
        };
        self.print_round(&line);
        self.count(fault);
        self.report.per_round.push(line);
        Ok(())
    }

    /// Wait for the first acknowledgement by a node other than `old`;
    /// meanwhile rejoin by hand a standby that cannot follow the new
    /// leader (else no standby may confirm its writes).
    fn wait_new_primary(
        &mut self,
        load: &Load,
        old: usize,
        since: Duration,
    ) -> Result<String, BenchError> {
        let mut checked = Instant::now();
        cluster::wait_for(
            &format!("a node other than {} to acknowledge a write", name(old)),
            STATE_LIMIT,
            Duration::from_millis(5),
            || {
                if let Some(new) = load.first_ack_elsewhere(&name(old), since) {
                    return Ok(Some(new));
                }
                if checked.elapsed() > Duration::from_secs(1) {
                    self.repair_diverged()?;
                    checked = Instant::now();
                }
                Ok(None)
            },
        )
    }

    fn kill(&mut self, i: usize) {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())[i] = None;
        if let Some(mut n) = self.nodes[i].take() {
            n.child.kill();
        }
    }

    /// Cut node `i` from etcd (its own client ports on every member) and
    /// from the standbys (its replication port).
    fn cut(&self, i: usize) -> Result<(), BenchError> {
        let net = self
            .net
            .as_ref()
            .ok_or_else(|| BenchError::Server("no network namespace".into()))?;
        let mut ports = self.etcd.node_ports[i].clone();
        ports.push(self.node(i)?.repl_port);
        net.cut_ports(&ports)
    }

    fn heal(&self) -> Result<(), BenchError> {
        match &self.net {
            Some(net) => net.heal(),
            None => Ok(()),
        }
    }

    /// `walrep ha switchover --to` the synchronous standby, as an operator.
    fn switchover(&mut self, old: usize) -> Result<(), BenchError> {
        let view = self
            .view()
            .ok_or_else(|| BenchError::Server("etcd did not answer".into()))?;
        let to = view
            .sync
            .as_ref()
            .and_then(|s| s.value.sync_standbys.first().cloned())
            .ok_or_else(|| {
                BenchError::Server(format!("{} has no synchronous standby", name(old)))
            })?;
        let out = Command::new(self.exe)
            .args(["ha", "switchover", "--to", &to, "--wait-seconds", "60"])
            .args([
                "--endpoints",
                &self.etcd.admin_endpoints(),
                "--cluster",
                CLUSTER,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| BenchError::io("walrep ha switchover", e))?;
        if !out.status.success() {
            return Err(BenchError::Server(format!(
                "walrep ha switchover --to {to}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Wait until node `old` streams from `new` as its standby.
    fn wait_back(&mut self, old: usize, new: usize, from: Instant) -> Result<f64, BenchError> {
        let (o, n) = (name(old), name(new));
        cluster::wait_for(
            &format!("{o} to come back as a standby of {n}"),
            STATE_LIMIT,
            Duration::from_millis(50),
            || {
                let Ok(info) = self.info(old, "replication") else {
                    return Ok(None);
                };
                let follows = info.get("role").map(String::as_str) == Some("slave")
                    && info.get("ha_leader") == Some(&n)
                    && info.get("master_link_status").map(String::as_str) == Some("up");
                Ok(follows.then_some(()))
            },
        )?;
        Ok(from.elapsed().as_secs_f64() * 1000.0)
    }

    /// The history checker over every round so far against the new
    /// primary; this round's failover time and overlap.
    fn check(
        &mut self,
        round: u32,
        fault: Fault,
        (old, new): (usize, usize),
        h: &History,
        stall: Option<(Duration, Duration)>,
    ) -> Result<HaRound, BenchError> {
        let mine = h.check(&final_state(self.node(new)?.port, h)?);
        self.history.writes.extend(h.writes.iter().cloned());
        let all = self
            .history
            .check(&final_state(self.node(new)?.port, &self.history)?);
        let (o, n) = (name(old), name(new));
        let t = &mut self.report;
        t.acknowledged += mine.acknowledged;
        t.indeterminate += mine.indeterminate;
        t.refused += mine.failed;
        t.lost = all.lost.len();
        let mut bad: Vec<String> = all.violations.clone();
        bad.extend(all.lost.iter().cloned());
        let spans = spans(h);
        if let Some(overlap) = overlap(&spans) {
            t.overlaps += 1;
            bad.push(overlap);
        }
        if let Some((stopped, resumed)) = stall {
            // A write sent while the node was stopped was handled only
            // after SIGCONT, past its fence deadline: an "OK" for one is a
            // second primary. A write sent before the stop may still get
            // its "OK" after SIGCONT: its gate check ran before the stop
            // and only the reply's send waited (a delayed reply, the write
            // confirmed by the synchronous standby already).
            let ok_after = |w: &&HistoryWrite| {
                w.node == o && w.outcome == Outcome::Ok && w.completed.is_some_and(|c| c > resumed)
            };
            let (late, delayed): (Vec<_>, Vec<_>) = h
                .writes
                .iter()
                .filter(ok_after)
                .partition(|w| w.invoked > stopped);
            if !late.is_empty() {
                bad.push(format!(
                    "the resumed old primary {o} acknowledged {} writes sent while it was stopped",
                    late.len()
                ));
            }
            if !delayed.is_empty() {
                println!(
                    "  note: {} replies of the stalled {o} decided before the stop arrived after SIGCONT",
                    delayed.len()
                );
            }
        }
        for v in bad {
            let v = format!("round {round}: {v}");
            if !t.violations.contains(&v) {
                t.violations.push(v);
            }
        }
        if !mine.is_valid() {
            println!("{}", mine.explain());
        }
        let span = |node: &str| spans.iter().find(|s| s.node == node).cloned();
        let unavailable_ms = match (span(&o), span(&n)) {
            (Some(a), Some(b)) => {
                (b.first_completed.as_secs_f64() - a.last_completed.as_secs_f64()) * 1000.0
            }
            _ => {
                return Err(BenchError::Server(format!(
                    "no acknowledgement by {o} or {n}"
                )))
            }
        };
        Ok(HaRound {
            round,
            fault,
            old: o,
            new: n,
            unavailable_ms,
            acknowledged: mine.acknowledged,
            indeterminate: mine.indeterminate,
            back_as_standby_ms: 0.0,
        })
    }

    fn count(&mut self, fault: Fault) {
        let t = &mut self.report;
        match fault {
            Fault::Kill => t.kills += 1,
            Fault::Partition => t.partitions += 1,
            Fault::Stall => t.stalls += 1,
            Fault::Switchover => t.switchovers += 1,
        }
        if fault != Fault::Switchover {
            t.rounds += 1;
        }
    }

    fn print_round(&self, r: &HaRound) {
        println!(
            "  round {}: {} of {}: {} first ack {:.2} s after {}'s last; {} acknowledged, {} indeterminate; \
             {} back as a standby in {:.1} s",
            r.round,
            r.fault.words(),
            r.old,
            r.new,
            r.unavailable_ms / 1000.0,
            r.old,
            r.acknowledged,
            r.indeterminate,
            r.old,
            r.back_as_standby_ms / 1000.0
        );
    }
}

impl Drop for Soak<'_> {
    fn drop(&mut self) {
        // The nodes stop before etcd (fields drop in order, etcd first).
        for n in self.nodes.iter_mut() {
            if let Some(n) = n.take() {
                n.stop();
            }
        }
    }
}

/// A stopped process, continued when dropped (also on an error path).
struct Stall(libc::pid_t);

impl Stall {
    fn stop(pid: u32) -> Result<Stall, BenchError> {
        let pid = pid as libc::pid_t;
        // SAFETY: kill(2) on our own unreaped child.
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            return Err(BenchError::io("SIGSTOP", std::io::Error::last_os_error()));
        }
        Ok(Stall(pid))
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        // SAFETY: as in `stop`.
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

/// When a node acknowledged in a round, as the clients saw it.
#[derive(Debug, Clone)]
struct Span {
    node: String,
    first_completed: Duration,
    last_invoked: Duration,
    last_completed: Duration,
}

/// Each node's acknowledgements in `h`.
fn spans(h: &History) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    for w in h.writes.iter().filter(|w| w.outcome == Outcome::Ok) {
        let Some(done) = w.completed else { continue };
        match out.iter_mut().find(|s| s.node == w.node) {
            Some(s) => {
                s.first_completed = s.first_completed.min(done);
                s.last_invoked = s.last_invoked.max(w.invoked);
                s.last_completed = s.last_completed.max(done);
            }
            None => out.push(Span {
                node: w.node.clone(),
                first_completed: done,
                last_invoked: w.invoked,
                last_completed: done,
            }),
        }
    }
    out
}

/// Two nodes acknowledged in overlapping time: each sent an
/// acknowledgement to a write sent after the other's first
/// acknowledgement arrived (sound: the server acknowledged between
/// sending and arrival).
fn overlap(spans: &[Span]) -> Option<String> {
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            if a.first_completed < b.last_invoked && b.first_completed < a.last_invoked {
                return Some(format!(
                    "{} and {} both acknowledged writes in overlapping time ({:?}..{:?} and {:?}..{:?})",
                    a.node, b.node, a.first_completed, a.last_invoked, b.first_completed, b.last_invoked
                ));
            }
        }
    }
    None
}

/// Clients writing to whichever node is the primary, recording a history.
struct Load {
    clients: Clients,
}

impl Load {
    fn start(ports: Arc<Mutex<[Option<u16>; NODES]>>, clients: u32, round: u32) -> Load {
        let clients = Clients::start(clients, round, move |c| {
            // Odd clients wait on a stalled node to see its answer.
            let timeout = if c.id % 2 == 1 {
                LONG_TIMEOUT
            } else {
                SHORT_TIMEOUT
            };
            let w = Writer {
                ports: ports.clone(),
                timeout,
            };
            w.run(c)
        });
        Load { clients }
    }

    /// The history's clock now.
    fn now(&self) -> Duration {
        self.clients.now()
    }

    fn with<T>(&self, f: impl FnOnce(&History) -> T) -> T {
        self.clients.with(f)
    }

    /// Wait until `node` acknowledged `n` writes sent after `since`.
    fn wait_acks(&self, node: &str, since: Duration, n: usize) -> Result<(), BenchError> {
        cluster::wait_for(
            &format!("{n} writes acknowledged by {node}"),
            STATE_LIMIT,
            Duration::from_millis(10),
            || {
                let acks = self.with(|h| {
                    h.writes
                        .iter()
                        .filter(|w| {
                            w.node == node && w.outcome == Outcome::Ok && w.invoked >= since
                        })
                        .count()
                });
                Ok((acks >= n).then_some(()))
            },
        )
    }

    /// The node other than `old` that first acknowledged a write sent
    /// after `since`, if one did.
    fn first_ack_elsewhere(&self, old: &str, since: Duration) -> Option<String> {
        self.with(|h| {
            h.writes
                .iter()
                .find(|w| w.node != old && w.outcome == Outcome::Ok && w.invoked >= since)
                .map(|w| w.node.clone())
        })
    }

    /// Wait until no write sent to `node` is still unanswered.
    fn wait_answered(&self, node: &str) -> Result<(), BenchError> {
        cluster::wait_for(
            &format!("the writes waiting on {node} to be answered"),
            LONG_TIMEOUT + Duration::from_secs(5),
            Duration::from_millis(20),
            || {
                let pending = self.with(|h| {
                    h.writes
                        .iter()
                        .any(|w| w.node == node && w.outcome == Outcome::Pending)
                });
                Ok((!pending).then_some(()))
            },
        )
    }

    /// Stop the clients (requests in flight end as indeterminate).
    fn finish(self) -> History {
        self.clients.finish()
    }
}

/// One client's way to the primary: writes to the node it found to be the
/// primary until a write is not acknowledged, then looks again.
struct Writer {
    ports: Arc<Mutex<[Option<u16>; NODES]>>,
    /// Each request's bound on this client's connections.
    timeout: Duration,
}

/// A connection to a node that said it is the primary.
struct Primary {
    node: String,
    timeline: u32,
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Writer {
    fn run(&self, c: &mut Client) {
        let mut next = c.id % NODES;
        while !c.stopped() {
            let Some(mut p) = self.find_primary(&mut next, c) else {
                std::thread::sleep(RETRY_PAUSE);
                continue;
            };
            while !c.stopped() {
                let outcome = c.write_next(&p.node, p.timeline, &mut p.writer, &mut p.reader);
                if outcome != Outcome::Ok {
                    // A fenced or a dead primary: look again.
                    std::thread::sleep(RETRY_PAUSE);
                    break;
                }
            }
        }
    }

    /// The first node, from `next` on, that says it is a primary.
    fn find_primary(&self, next: &mut usize, c: &Client) -> Option<Primary> {
        let ports = *self.ports.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..NODES {
            let i = *next;
            *next = (*next + 1) % NODES;
            let Some(port) = ports[i] else { continue };
            if let Some(p) = self.probe(i, port, c) {
                return Some(p);
            }
        }
        None
    }

    /// Ask node `i` whether it is a primary, and on what timeline.
    fn probe(&self, i: usize, port: u16, c: &Client) -> Option<Primary> {
        let s = soak::connect(port, PROBE_TIMEOUT).ok()?;
        let mut reader = BufReader::new(s.try_clone().ok()?);
        let mut writer = s;
        let repl = info(&mut writer, &mut reader, "replication")?;
        if !repl.contains("role:master") {
            return None;
        }
        let pers = info(&mut writer, &mut reader, "persistence")?;
        let timeline = cluster::parse_info(&pers).get("timeline")?.parse().ok()?;
        writer.set_read_timeout(Some(self.timeout)).ok()?;
        writer.set_write_timeout(Some(self.timeout)).ok()?;
        // A client still probing when the load stops is not shut down
        // (the stop shuts down only the connections it finds).
        c.track(&writer);
        Some(Primary {
            node: name(i),
            timeline,
            writer,
            reader,
        })
    }
}

/// `INFO section` on a client connection, bounded by its timeouts.
fn info(w: &mut TcpStream, r: &mut BufReader<TcpStream>, section: &str) -> Option<String> {
    w.write_all(&cluster::encode(&[b"INFO", section.as_bytes()]))
        .ok()?;
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
    if len > 1 << 20 {
        return None;
    }
    let mut body = vec![0u8; len + 2];
    r.read_exact(&mut body).ok()?;
    body.truncate(len);
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// p50, p99 and max of each fault kind's failover times and overall, the
/// switchover's unavailability, the lost writes.
fn figures_of(r: &HaReport) -> Vec<Figure> {
    let secs = |f: &dyn Fn(Fault) -> bool| -> Vec<f64> {
        r.per_round
            .iter()
            .filter(|x| f(x.fault))
            .map(|x| x.unavailable_ms / 1000.0)
            .collect()
    };
    let mut out = Vec::new();
    let mut add = |what: &str, v: &[f64], goal: bool| {
        if v.is_empty() {
            return;
        }
        for (q, label) in [(0.5, "p50"), (0.99, "p99"), (1.0, "max")] {
            let mut f = Figure::new(
                "ha",
                &format!("{what} {label} ({} rounds)", v.len()),
                "s",
                Better::Lower,
            );
            if goal && label == "p99" {
                f = f.goal(&format!("< {TARGET_P99_S} s"), Some(TARGET_P99_S));
            }
            f.walrep = vec![figures::percentile(v, q)];
            out.push(f);
        }
    };
    add(
        "failover time, kill -9",
        &secs(&|f| f == Fault::Kill),
        false,
    );
    add(
        "failover time, partition",
        &secs(&|f| f == Fault::Partition),
        false,
    );
    add("failover time, stall", &secs(&|f| f == Fault::Stall), false);
    add(
        "failover time, all faults",
        &secs(&|f| f != Fault::Switchover),
        true,
    );
    add(
        "switchover unavailability",
        &secs(&|f| f == Fault::Switchover),
        false,
    );
    let mut lost =
        Figure::new("ha", "acknowledged writes lost", "writes", Better::Lower).goal("0", Some(0.0));
    lost.walrep = vec![r.lost as f64];
    out.push(lost);
    out
}

fn print_report(r: &HaReport) {
    println!(
        "\nHA soak: {} automatic failovers ({} kill -9, {} partitions, {} stalls) and {} switchovers, seed {}\n\
         acknowledged writes (on): {}\n\
         lost acknowledged writes: {}\n\
         indeterminate writes:     {}\n\
         refused writes:           {}\n\
         overlapping primaries:    {}\n\
         standbys rejoined by hand: {} (ahead of the new leader's fork and not rejoined by the HA loop in time)\n\
         violations:               {}\n\
         load average:             {:.2} at the start, {:.2} at the end (2 cores shared)\n\
         elapsed {:.0} s",
        r.rounds,
        r.kills,
        r.partitions,
        r.stalls,
        r.switchovers,
        r.seed,
        r.acknowledged,
        r.lost,
        r.indeterminate,
        r.refused,
        r.overlaps,
        r.standbys_rejoined_by_hand,
        r.violations.len(),
        r.load_avg.0,
        r.load_avg.1,
        r.elapsed_s
    );
    for v in r.violations.iter().take(20) {
        println!("  {v}");
    }
    println!("\n{}", figures::table(&r.figures));
    for line in r
        .figures
        .iter()
        .filter_map(|f| f.judge().summary_line("ha"))
    {
        println!("{line}");
    }
    println!(
        "Patroni is not run here: with its defaults (ttl 30 s, loop_wait 10 s) the same sum \
         (lease left + one loop + promotion) gives 20-40 s."
    );
    for v in &r.violations {
        println!("  violation: {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(node: &str, invoked_ms: u64, completed_ms: u64) -> HistoryWrite {
        HistoryWrite {
            client: 0,
            node: node.into(),
            timeline: 1,
            key: "k".into(),
            seq: 0,
            value: format!("{node}{invoked_ms}"),
            level: "on".into(),
            invoked: Duration::from_millis(invoked_ms),
            completed: Some(Duration::from_millis(completed_ms)),
            outcome: Outcome::Ok,
        }
    }

    #[test]
    fn overlapping_acknowledgements_are_found_and_a_clean_handover_is_not() {
        let mut h = History::new();
        h.writes = vec![w("n1", 0, 10), w("n1", 10, 20), w("n2", 3000, 3010)];
        let s = spans(&h);
        assert_eq!(overlap(&s), None);
        assert_eq!(s[0].last_completed, Duration::from_millis(20));
        // n1 acknowledged a write sent after n2's first acknowledgement
        // arrived: both were primaries at once.
        h.writes.push(w("n1", 3020, 3030));
        assert!(overlap(&spans(&h)).is_some());
        // A late arrival of an acknowledgement sent earlier is no overlap.
        let mut h = History::new();
        h.writes = vec![w("n1", 0, 3050), w("n2", 3000, 3010)];
        assert_eq!(overlap(&spans(&h)), None);
    }
}
