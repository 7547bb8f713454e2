//! `walrep bench --scenario failover`: a soak any user can run. Two nodes
//! on loopback, a primary whose commits wait for its synchronous standby
//! (`synchronous_commit = on`, `FIRST 1`); per round, clients write unique
//! values and record every operation; at a seeded random moment the
//! primary is killed with SIGKILL or, every other round where the soak can
//! (root, `ip` and `nft`: it moves itself into a private network namespace
//! at start, so its rules touch nothing else), cut off from its standby
//! with nftables, the standby promoted while the old primary still runs
//! and then fenced (SIGKILL, as an HA tool fences); the history is
//! checked against the promoted node (walrep's history checker: every write
//! acknowledged at `on` must be there with its final value), and the old
//! primary comes back as the new primary's standby with `walrep rejoin`
//! (its writes past the fork quarantined), or, when rejoin refuses (no
//! local checkpoint before the fork), copied afresh with `walrep
//! basebackup`, which the report counts.
//! The roles swap every round. The report counts acknowledged, lost and
//! indeterminate writes, rebuilds and quarantined bytes; any lost write or
//! violation makes the run fail, with the round and seed to replay it.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use walrep::history::{History, Outcome, Report};

use super::cluster::{self, Node};
use super::soak::{
    self, clock_seed, connect, final_state, splitmix64, Client, Clients, PrivateNet,
};
use super::{BenchArgs, BenchError};

/// Bound on a node reaching a state (streaming, synchronous, promoted).
const STATE_LIMIT: Duration = Duration::from_secs(60);
/// A write unanswered for this long is indeterminate.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The fault comes this long after the load starts, plus a seeded share of
/// [`FAULT_SPREAD_MS`].
const FAULT_AFTER_MS: u64 = 100;
const FAULT_SPREAD_MS: u64 = 1400;

/// What the soak measured.
#[derive(Debug, Default, serde::Serialize)]
pub struct FailoverReport {
    pub seed: u64,
    pub rounds: u32,
    pub clients: u32,
    /// Writes acknowledged at `on` (all must survive).
    pub acknowledged: usize,
    /// Acknowledged writes missing or older on the promoted node.
    pub lost: usize,
    /// Writes whose connection died with the primary.
    pub indeterminate: usize,
    /// Of those, how many were on the promoted node.
    pub indeterminate_present: usize,
    /// Rounds whose fault was SIGKILL of the primary.
    pub kills: u32,
    /// Rounds whose fault was a partition between primary and standby
    /// (0 where partitions are unavailable).
    pub partitions: u32,
    /// Old primaries brought back as standbys.
    pub rejoins: u32,
    /// Of those, rebuilt from a fresh base backup.
    pub rebuilt_with_basebackup: u32,
    /// WAL the old primaries had past the fork, kept aside (a rebuild keeps
    /// nothing, so this counts only rejoins that rewind).
    pub quarantined_bytes: u64,
    /// Anything the checker refused, with its round.
    pub violations: Vec<String>,
    pub elapsed_s: f64,
}

/// Run the soak.
pub fn run(args: &BenchArgs) -> Result<FailoverReport, BenchError> {
    let rounds = args.rounds.unwrap_or(10);
    let started = Instant::now();
    let seed = args.seed.unwrap_or_else(clock_seed);
    let run_dir = super::RunDir::create(args, "walrep-bench-failover-")?;
    let exe = std::env::current_exe().map_err(|e| BenchError::io("find this binary", e))?;
    println!(
        "walrep bench --scenario failover: {} rounds, {} clients at synchronous_commit=on, seed {seed} \
         (replay with --seed {seed}); data in {}",
        rounds,
        args.failover_clients,
        run_dir.path().display()
    );
    let net = PrivateNet::enter();
    match &net {
        Ok(_) => println!("partitions: on every other round (a private network namespace)"),
        Err(why) => println!("partitions: unavailable ({why}); SIGKILL only"),
    }
    let mut soak = Soak::new(&exe, run_dir.path(), args.failover_clients, seed)?;
    soak.net = net.ok();
    for round in 0..rounds {
        soak.round(round)
            .map_err(|e| BenchError::Server(format!("round {round} (seed {seed}): {e}")))?;
    }
    let mut report = std::mem::take(&mut soak.report);
    // The nodes stop before their directories go.
    drop(soak);
    report.elapsed_s = started.elapsed().as_secs_f64();
    print_report(&report);
    let (lost, violations) = (report.lost, report.violations.len());
    soak::verdict(
        args.keep,
        run_dir,
        "the history checker",
        lost,
        violations,
        seed,
    )?;
    Ok(report)
}

/// The two nodes, which is primary, and the running totals.
struct Soak<'a> {
    exe: &'a Path,
    dir: &'a Path,
    clients: u32,
    rng: u64,
    /// `nodes[primary]` is the primary, the other its standby.
    nodes: [Option<Node>; 2],
    primary: usize,
    report: FailoverReport,
    /// Where partitions can be made.
    net: Option<PrivateNet>,
    /// Which node accepted writes on each timeline, over all rounds.
    histories: std::collections::BTreeMap<u32, String>,
}

/// Every node's settings: commits wait for the other node, whichever is
/// the standby.
fn settings() -> Vec<String> {
    vec![
        "synchronous_standby_names=FIRST 1 (n0, n1)".into(),
        "synchronous_commit=on".into(),
        "wal_retrieve_retry_interval=200ms".into(),
    ]
}

fn datadir(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("n{i}"))
}

impl<'a> Soak<'a> {
    fn new(exe: &'a Path, dir: &'a Path, clients: u32, seed: u64) -> Result<Soak<'a>, BenchError> {
        cluster::init(exe, &datadir(dir, 0))?;
        let primary = Node::start(exe, &datadir(dir, 0), &settings())?;
        let mut soak = Soak {
            exe,
            dir,
            clients,
            rng: seed,
            nodes: [Some(primary), None],
            primary: 0,
            report: FailoverReport {
                seed,
                clients,
                ..FailoverReport::default()
            },
            net: None,
            histories: Default::default(),
        };
        soak.rebuild_standby(1)?;
        Ok(soak)
    }

    fn node(&self, i: usize) -> Result<&Node, BenchError> {
        self.nodes[i]
            .as_ref()
            .ok_or_else(|| BenchError::Server(format!("n{i} is not running")))
    }

    /// Make node `i` a fresh standby of the primary (a new base backup)
    /// and wait until it is the synchronous standby.
    fn rebuild_standby(&mut self, i: usize) -> Result<(), BenchError> {
        let dir = datadir(self.dir, i);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| BenchError::io(format!("remove {}", dir.display()), e))?;
        }
        let repl_port = self.node(self.primary)?.repl_port;
        cluster::basebackup(self.exe, repl_port, &dir, &format!("n{i}"))?;
        self.nodes[i] = Some(Node::start(self.exe, &dir, &settings())?);
        self.wait_sync_standby(i)
    }

    /// Bring the old primary `i` back as the new primary's standby with
    /// `walrep rejoin`; only when rejoin refuses (no local checkpoint
    /// before the fork) copy it afresh with `walrep basebackup`.
    fn rejoin_or_rebuild(&mut self, i: usize) -> Result<(), BenchError> {
        let dir = datadir(self.dir, i);
        let repl_port = self.node(self.primary)?.repl_port;
        match cluster::rejoin(self.exe, repl_port, &dir, &format!("n{i}"))? {
            Ok(bytes) => self.report.quarantined_bytes += bytes,
            Err(why) => {
                eprintln!("n{i}: walrep rejoin refused ({why}); copying it afresh");
                self.report.rebuilt_with_basebackup += 1;
                // The copy makes its slot anew; the one the primary kept
                // for this node from an earlier round is dropped first.
                cluster::drop_slot(repl_port, &format!("walrep_n{i}"))?;
                return self.rebuild_standby(i);
            }
        }
        self.nodes[i] = Some(Node::start(self.exe, &dir, &settings())?);
        self.wait_sync_standby(i)
    }

    /// Wait until node `i` is the primary's synchronous standby.
    fn wait_sync_standby(&mut self, i: usize) -> Result<(), BenchError> {
        let mut p = self.node(self.primary)?.connect()?;
        let name = format!("application_name=n{i},");
        cluster::wait_for(
            &format!("n{i} to be the synchronous standby"),
            STATE_LIMIT,
            Duration::from_millis(20),
            || {
                let info = p.info("replication")?;
                Ok(info
                    .values()
                    .any(|v| v.contains(&name) && v.contains("sync_state=sync"))
                    .then_some(()))
            },
        )
    }

    /// Load, SIGKILL the primary, promote, check, bring the old primary
    /// back.
    fn round(&mut self, round: u32) -> Result<(), BenchError> {
        let old = self.primary;
        let new = 1 - old;
        let after_ms = FAULT_AFTER_MS + splitmix64(&mut self.rng) % FAULT_SPREAD_MS;
        let partition = self.net.is_some() && round % 2 == 1;
        let port = self.node(old)?.port;
        let timeline = cluster::Resp::connect(port)?
            .info("persistence")?
            .get("timeline")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| BenchError::Server("INFO persistence has no timeline".into()))?;
        let node = format!("n{old}");
        let load = Clients::start(self.clients, round, move |c| {
            write_to(port, (node.as_str(), timeline), c)
        });
        // The fault schedule: a seeded moment, not a condition.
        std::thread::sleep(Duration::from_millis(after_ms));
        let history = if partition {
            self.partition_and_promote(old, new, load)?
        } else {
            self.kill_and_promote(old, new, load)?
        };
        self.primary = new;
        let report = history.check(&final_state(self.node(new)?.port, &history)?);
        self.account(round, after_ms, partition, &report);
        self.rejoin_or_rebuild(old)?;
        self.report.rejoins += 1;
        self.report.rounds += 1;
        Ok(())
    }

    fn kill_and_promote(
        &mut self,
        old: usize,
        new: usize,
        load: Clients,
    ) -> Result<History, BenchError> {
        if let Some(mut n) = self.nodes[old].take() {
            n.child.kill();
        }
        self.report.kills += 1;
        let history = load.finish();
        self.promote(new)?;
        Ok(history)
    }

    /// Cut the primary's replication port off (both ways), wait until its
    /// commits wait, promote the standby while the old primary still runs,
    /// then fence the old primary and heal.
    fn partition_and_promote(
        &mut self,
        old: usize,
        new: usize,
        load: Clients,
    ) -> Result<History, BenchError> {
        let net = self
            .net
            .as_ref()
            .ok_or_else(|| BenchError::Server("no network namespace".into()))?;
        let (repl_port, port) = (self.node(old)?.repl_port, self.node(old)?.port);
        net.cut_ports(&[repl_port])?;
        let mut c = cluster::Resp::connect(port)?;
        cluster::wait_for(
            "the partitioned primary's commits to wait",
            STATE_LIMIT,
            Duration::from_millis(10),
            || {
                let waiters = c
                    .info("replication")?
                    .get("sync_waiters")
                    .and_then(|w| w.parse::<u64>().ok());
                Ok(waiters.filter(|w| *w > 0))
            },
        )?;
        self.promote(new)?;
        let history = load.finish();
        if let Some(mut n) = self.nodes[old].take() {
            n.child.kill();
        }
        net.heal()?;
        self.report.partitions += 1;
        Ok(history)
    }

    fn promote(&self, i: usize) -> Result<(), BenchError> {
        let node = self.node(i)?;
        let out = Command::new(self.exe)
            .args(["promote", "--wait-seconds", "60"])
            .arg(&node.datadir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| BenchError::io("walrep promote", e))?;
        if !out.status.success() {
            return Err(BenchError::Server(format!(
                "walrep promote n{i}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let mut c = node.connect()?;
        cluster::wait_for(
            &format!("n{i} to accept writes"),
            STATE_LIMIT,
            Duration::from_millis(10),
            || {
                Ok(
                    (c.info("replication")?.get("role").map(String::as_str) == Some("master"))
                        .then_some(()),
                )
            },
        )
    }

    fn account(&mut self, round: u32, after_ms: u64, partition: bool, r: &Report) {
        let t = &mut self.report;
        t.acknowledged += r.acknowledged;
        t.lost += r.lost.len();
        t.indeterminate += r.indeterminate;
        t.indeterminate_present += r.indeterminate_present;
        for v in r.lost.iter().chain(&r.violations) {
            t.violations.push(format!("round {round}: {v}"));
        }
        // Across rounds too: one node per timeline.
        for (tli, node) in &r.histories {
            match self.histories.insert(*tli, node.clone()) {
                Some(other) if other != *node => t.violations.push(format!(
                    "round {round}: timeline {tli} accepted writes on {other} and on {node}"
                )),
                _ => {}
            }
        }
        println!(
            "  round {round}: {} after {after_ms} ms, {} acknowledged, {} lost, {} indeterminate ({} present){}",
            if partition { "partition" } else { "SIGKILL" },
            r.acknowledged,
            r.lost.len(),
            r.indeterminate,
            r.indeterminate_present,
            if r.is_valid() { String::new() } else { format!("\n{}", r.explain()) }
        );
    }
}

fn print_report(r: &FailoverReport) {
    println!(
        "\nfailover soak: {} rounds ({} SIGKILLs, {} partitions), seed {}\n\
         acknowledged writes (on): {}\n\
         lost acknowledged writes: {}\n\
         indeterminate writes:     {} ({} of them on the promoted node)\n\
         rejoins:                  {} ({} rebuilt with walrep basebackup)\n\
         quarantined bytes:        {}\n\
         violations:               {}\n\
         elapsed {:.0} s",
        r.rounds,
        r.kills,
        r.partitions,
        r.seed,
        r.acknowledged,
        r.lost,
        r.indeterminate,
        r.indeterminate_present,
        r.rejoins,
        r.rebuilt_with_basebackup,
        r.quarantined_bytes,
        r.violations.len(),
        r.elapsed_s
    );
    for v in r.violations.iter().take(20) {
        println!("  {v}");
    }
}

/// One client of a round: one connection until it breaks (the dead
/// primary is not reconnected to), writing while each write is
/// acknowledged.
fn write_to(port: u16, (node, timeline): (&str, u32), c: &mut Client) {
    let Ok(stream) = connect(port, REQUEST_TIMEOUT) else {
        return;
    };
    c.track(&stream);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    while !c.stopped() {
        if c.write_next(node, timeline, &mut writer, &mut reader) != Outcome::Ok {
            return;
        }
    }
}
