//! `walrep demo --ha`: automatic failover on loopback, narrated.
//!
//! A three-member etcd and three walrep nodes with `ha_enabled`: n1 made by
//! `walrep init`, n2 and n3 by `walrep basebackup -R --no-slot`, commits
//! waiting for `FIRST 1 (n1, n2, n3)`. Clients write through whichever node
//! holds the leader key; n1 is killed with SIGKILL under that load; its
//! lease expires, a synchronous standby takes the key and promotes, and the
//! time from the kill to the first write the new primary acknowledges is
//! measured. n1 is started again and rejoins as a standby of the new
//! primary; every acknowledged write is then checked on the new primary.
//! Every process is stopped at the end, and on every error path (guards),
//! SIGINT and SIGTERM included.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use walrep::ha::dcs::{cluster_prefix, Dcs};
use walrep::ha::etcd::{EtcdClient, EtcdConfig, EtcdDcs};
use walrep_states::ha::ClusterView;

use super::client::{Reply, RespClient};
use super::etcd::{self, EtcdCluster};
use super::process::{catch_interrupts, check_interrupted, NodeProcess};
use super::{field, free_port, info, page_url, say, verify, DemoOptions, LoadPoint, WriterResult};

/// The members' lease (`ha_ttl`): short, so the failover is quick to watch.
const TTL_S: u64 = 6;
/// How often each member's HA loop runs (`ha_loop_wait`).
const LOOP_WAIT_S: u64 = 1;
/// `ha_cluster_name` of the demo's cluster.
const CLUSTER: &str = "demo";
/// The members, in start order: n1 is the first primary.
const NAMES: [&str; 3] = ["n1", "n2", "n3"];
/// Bound on each phase: the cluster forming, the failover, the rejoin.
const PHASE_DEADLINE: Duration = Duration::from_secs(120);
/// How often the demo reads the cluster's keys while it waits.
const POLL: Duration = Duration::from_millis(50);
/// Index of the sentinel "no node" in [`Load::killed`].
const NONE: usize = usize::MAX;

/// What the failover measured, from the kill (seconds).
struct Failover {
    new_leader: usize,
    lease_gone_s: f64,
    took_key_s: f64,
    first_ack_s: f64,
}

/// Run the demo; `etcd_binary` overrides where etcd is looked for.
pub fn run(opts: &DemoOptions, etcd_binary: Option<&Path>) -> anyhow::Result<()> {
    let binary = etcd::find_binary(etcd_binary)?;
    catch_interrupts()?;
    let tmp;
    let root: PathBuf = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("walrep-demo-ha-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let started = Instant::now();
    // Declared first, dropped (killed) last: the nodes go before etcd.
    let mut etcd = start_etcd(&binary, &root)?;
    let endpoints = etcd.endpoint_list();
    let mut keys = Keys::connect(&endpoints)?;
    let mut nodes = start_cluster(&root, &endpoints, &mut keys)?;
    ha_list(&endpoints)?;

    let mut load = Load::start(opts.clients, &nodes[0], 0);
    progress(&load, &nodes, &mut keys, opts.load_seconds)?;
    let before_kill = load.shared.acked_total.load(Ordering::Relaxed);
    if before_kill == 0 {
        bail!(
            "no write was acknowledged before the crash; see {}",
            nodes[0].log.display()
        );
    }
    let failover = kill_and_fail_over(&mut nodes, &mut keys, &load)?;
    let leader = failover.new_leader;
    ha_list(&endpoints)?;
    let rejoin_s = rejoin(&mut nodes, leader)?;
    ha_list(&endpoints)?;

    let (results, points) = load.stop();
    let acked: usize = results.iter().map(|r| r.acked.len()).sum();
    let by_node = load.acked_by_node();
    say(
        "verify",
        format!(
            "load stopped: {acked} writes acknowledged ({} by n1 before the kill, {} by {} after), {} not acknowledged (errors while no node led)",
            by_node[0],
            by_node[leader],
            NAMES[leader],
            load.shared.refused.load(Ordering::Relaxed)
        ),
    );
    let checked = verify(&nodes[leader], &results)?;
    say(
        "verify",
        format!(
            "all {checked} acknowledged writes are on the new primary {}: 0 lost",
            NAMES[leader]
        ),
    );
    everyone_has_the_last_write(&nodes, leader)?;
    if opts.linger_seconds > 0 {
        say(
            "linger",
            format!(
                "the cluster stays up for {}s: {} (the new primary's page)",
                opts.linger_seconds,
                page_url(&nodes[leader])
            ),
        );
        sleep_checked(Duration::from_secs(opts.linger_seconds))?;
    }
    let outcome = Outcome {
        acked,
        checked,
        by_node,
        leader,
        failover,
        timeline: field(&info(&nodes[leader], "persistence")?, "timeline"),
        rejoin_s,
    };
    stop_all(&mut nodes, leader, &mut etcd)?;
    if opts.dir.is_some() {
        let report = write_report(&root, &outcome, &points)?;
        say("report", format!("{}", report.display()));
    }
    summary(opts, started, &outcome);
    Ok(())
}

/// What the run showed, for the summary and the report.
struct Outcome {
    acked: usize,
    checked: usize,
    by_node: [u64; 3],
    leader: usize,
    failover: Failover,
    timeline: String,
    rejoin_s: f64,
}

/// DIR/report.html: the outcome, the three nodes' lanes, the write rate.
fn write_report(root: &Path, o: &Outcome, points: &[LoadPoint]) -> anyhow::Result<PathBuf> {
    let (leader, failover, by_node) = (o.leader, &o.failover, &o.by_node);
    let (acked, checked, rejoin_s) = (o.acked, o.checked, o.rejoin_s);
    let timeline = &o.timeline;
    super::report::write(&super::report::Report {
        root,
        title: "walrep demo --ha: automatic failover report",
        rows: vec![
            (
                "outcome",
                format!(
                    "OK: all {checked} acknowledged writes are on the new primary {}, 0 lost",
                    NAMES[leader]
                ),
            ),
            (
                "writes acknowledged",
                format!(
                    "{acked} ({} by n1 before the kill, {} by {} after)",
                    by_node[0], by_node[leader], NAMES[leader]
                ),
            ),
            ("primary", "n1, killed with SIGKILL under load".to_string()),
            (
                "lease expired",
                format!(
                    "{:.1} s after the kill (ha_ttl {TTL_S} s)",
                    failover.lease_gone_s
                ),
            ),
            (
                "leader key taken",
                format!(
                    "by {}, {:.1} s after the kill",
                    NAMES[leader], failover.took_key_s
                ),
            ),
            (
                "first write acknowledged by the new primary",
                format!("{:.1} s after the kill", failover.first_ack_s),
            ),
            ("new timeline", timeline.clone()),
            (
                "old primary",
                format!(
                    "rejoined as a standby of {} in {rejoin_s:.1} s",
                    NAMES[leader]
                ),
            ),
        ],
        lanes_heading:
            "The nodes' recovery: n2 and n3 as standbys, the winner promoting, n1 after it rejoined",
        nodes: NAMES
            .iter()
            .map(|n| (n.to_string(), root.join(n)))
            .collect(),
        load: points,
        lag: false,
    })
}

/// The verdict, printed last.
fn summary(opts: &DemoOptions, started: Instant, o: &Outcome) {
    let (leader, failover, by_node) = (o.leader, &o.failover, &o.by_node);
    let (acked, checked, rejoin_s) = (o.acked, o.checked, o.rejoin_s);
    let timeline = &o.timeline;
    println!();
    println!(
        "walrep demo --ha: OK in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  writes acknowledged: {acked} ({} by n1 before the kill, {} by {} after), all {checked} present on the new primary {}, 0 lost",
        by_node[0],
        by_node[leader],
        NAMES[leader],
        NAMES[leader]
    );
    println!(
        "  failover: n1 killed with SIGKILL; its leader key was gone after {:.1}s, {} took it after {:.1}s and acknowledged its first write {:.1}s after the kill (ha_ttl {TTL_S}s, ha_loop_wait {LOOP_WAIT_S}s)",
        failover.lease_gone_s,
        NAMES[leader],
        failover.took_key_s,
        failover.first_ack_s
    );
    println!(
        "  the old primary n1 rejoined as a standby of {} on timeline {timeline}, {rejoin_s:.1}s after it was started again",
        NAMES[leader]
    );
    println!("  stopped: 3 walrep nodes and 3 etcd members");
    match &opts.dir {
        Some(d) => println!(
            "  data, node logs (n1.log ...) and etcd's logs (etcd/e1.log ...) are in {}",
            d.display()
        ),
        None => println!("  (everything was in a temporary directory, now removed; run with --dir DIR to keep the data and logs)"),
    }
}

/// Starts of the etcd cluster when a port reserved for a member was
/// bound by another process before the member could bind it.
const ETCD_START_ATTEMPTS: u32 = 3;

fn start_etcd(binary: &Path, root: &Path) -> anyhow::Result<EtcdCluster> {
    let dir = root.join("etcd");
    say(
        "etcd",
        format!(
            "{} --name e1|e2|e3 --initial-cluster ... --pre-vote, on 127.0.0.1 (data in {})",
            binary.display(),
            dir.display()
        ),
    );
    let mut attempt = 1;
    let etcd = loop {
        match EtcdCluster::start(binary, &dir, 3) {
            Err(e)
                if attempt < ETCD_START_ATTEMPTS
                    && e.downcast_ref::<etcd::PortTaken>().is_some() =>
            {
                attempt += 1;
                say(
                    "etcd",
                    format!("{e}; starting again on other ports (attempt {attempt} of {ETCD_START_ATTEMPTS})"),
                );
                std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
            }
            started => break started?,
        }
    };
    say(
        "etcd",
        format!(
            "three members healthy (pids {:?}): {}",
            etcd.pids(),
            etcd.endpoint_list()
        ),
    );
    Ok(etcd)
}

/// The cluster's keys in etcd, read as `walrep ha list` reads them.
struct Keys {
    dcs: EtcdDcs,
}

impl Keys {
    fn connect(endpoints: &str) -> anyhow::Result<Keys> {
        let mut config = EtcdConfig::from_list(endpoints);
        config.timeout = Duration::from_secs(2);
        let client = EtcdClient::new(&config)?;
        let prefix = cluster_prefix("/walrep", CLUSTER);
        let dcs = EtcdDcs::new(client, &prefix, "walrep-demo", Duration::from_secs(TTL_S));
        Ok(Keys { dcs })
    }

    /// A linearizable read of every key (a failed read is `None`: the
    /// caller polls again).
    fn view(&mut self) -> Option<ClusterView> {
        self.dcs.load().ok()
    }

    fn leader(&mut self) -> Option<String> {
        Some(self.view()?.leader_name()?.to_string())
    }
}

/// The `-c` settings of member `name`.
fn ha_settings(endpoints: &str, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(vec![
        "ha_enabled=on".into(),
        format!("ha_endpoints={endpoints}"),
        format!("ha_cluster_name={CLUSTER}"),
        format!("ha_name={name}"),
        format!("ha_ttl={TTL_S}s"),
        format!("ha_loop_wait={LOOP_WAIT_S}s"),
        "ha_retry_timeout=1s".into(),
        "ha_fence_margin=2s".into(),
        "synchronous_standby_names=FIRST 1 (n1, n2, n3)".into(),
        "synchronous_commit=on".into(),
        "wal_retrieve_retry_interval=200ms".into(),
        "wal_receiver_timeout=5s".into(),
        format!("status_port={}", free_port()?),
    ])
}

/// n1 leading, n2 and n3 its standbys, a synchronous write through.
fn start_cluster(
    root: &Path,
    endpoints: &str,
    keys: &mut Keys,
) -> anyhow::Result<Vec<NodeProcess>> {
    let d1 = root.join("n1");
    say(
        "init",
        format!("walrep init {} --wal-segment-size 1MB", d1.display()),
    );
    walrep::node::init::init(&d1, walrep::WalSegSize::new(1 << 20).expect("1MB is valid"))?;
    say(
        "start",
        format!("walrep start {} -c ha_enabled=on -c ha_endpoints={endpoints} -c ha_cluster_name={CLUSTER} -c ha_name=n1 -c ha_ttl={TTL_S}s -c ha_loop_wait={LOOP_WAIT_S}s -c \"synchronous_standby_names=FIRST 1 (n1, n2, n3)\" -c synchronous_commit=on", d1.display()),
    );
    let n1 = NodeProcess::start("n1", &d1, &ha_settings(endpoints, "n1")?)?;
    wait("n1 to hold the leader key", || {
        (keys.leader().as_deref() == Some("n1")).then_some(())
    })
    .with_context(|| format!("see {}", n1.log.display()))?;
    say(
        "leader",
        format!(
            "n1 holds the leader key /walrep/{CLUSTER}/leader under its {TTL_S}s lease and opened its write gate; clients on {}",
            n1.addr()
        ),
    );
    let mut nodes = vec![n1];
    for name in &NAMES[1..] {
        let dir = root.join(name);
        super::basebackup(&nodes[0], &dir, name, " --no-slot")?;
        let node = NodeProcess::start(name, &dir, &ha_settings(endpoints, name)?)?;
        say(
            "standby",
            format!(
                "{name} started on {} with the same ha_* settings",
                node.addr()
            ),
        );
        nodes.push(node);
    }
    let sync = wait("a standby confirmed synchronous", || {
        let view = keys.view()?;
        let sync = view.sync?.value;
        (sync.leader == "n1" && !sync.sync_standbys.is_empty()).then_some(sync.sync_standbys)
    })?;
    let mut c = nodes[0].client()?;
    if !c.cmd(&["SET", "demo:first", "1"])?.is_ok() {
        bail!("the first synchronous write failed on n1");
    }
    say(
        "sync",
        format!(
            "n1's sync key names {}: only a standby named there may take over, and every acknowledged write waited for it",
            sync.join(", ")
        ),
    );
    for n in &nodes {
        say("live", format!("{}'s page: {}", n.name, page_url(n)));
    }
    Ok(nodes)
}

/// Run `walrep ha list` and print what it says.
fn ha_list(endpoints: &str) -> anyhow::Result<()> {
    say(
        "ha list",
        format!("walrep ha list --endpoints {endpoints} --cluster {CLUSTER}"),
    );
    let mut child = Command::new(std::env::current_exe().context("locate the walrep binary")?)
        .args(["ha", "list", "--endpoints", endpoints, "--cluster", CLUSTER])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run walrep ha list")?;
    let end = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            bail!("walrep ha list did not answer within 30s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "walrep ha list failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("           {line}");
    }
    Ok(())
}

/// Writers that follow the leader: each writes `demo:<client>:<n>` through
/// the node the demo last saw holding the leader key, and on an error
/// (connection lost, `READONLY` from a standby or a fenced node) counts the
/// write as not acknowledged and goes to the current leader.
struct Load {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<WriterResult>>,
    /// Writes per second, every [`SAMPLE`], for the report.
    sampler: Option<JoinHandle<Vec<LoadPoint>>>,
}

/// What the writers share with the demo.
struct Shared {
    stop: AtomicBool,
    /// Where writes go: the leader's index and client address.
    target: Mutex<(usize, SocketAddr)>,
    acked_total: AtomicU64,
    /// Acknowledgements by node index.
    acked: [AtomicU64; 3],
    /// Writes answered with an error or not answered.
    refused: AtomicU64,
    /// The node killed (its index), once it is.
    killed: AtomicUsize,
    /// The first acknowledgement by another node after the kill.
    first_after_kill: OnceLock<(Instant, usize)>,
}

impl Load {
    fn start(clients: usize, leader: &NodeProcess, index: usize) -> Load {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            target: Mutex::new((index, leader.addr())),
            acked_total: AtomicU64::new(0),
            acked: Default::default(),
            refused: AtomicU64::new(0),
            killed: AtomicUsize::new(NONE),
            first_after_kill: OnceLock::new(),
        });
        say(
            "load",
            format!(
                "{clients} clients writing SET demo:<client>:<n> through the leader with synchronous_commit = on"
            ),
        );
        let handles = (0..clients)
            .map(|w| {
                let s = shared.clone();
                std::thread::spawn(move || ha_writer(w, &s))
            })
            .collect();
        let s = shared.clone();
        let sampler = Some(std::thread::spawn(move || sample(&s)));
        Load {
            shared,
            handles,
            sampler,
        }
    }

    fn point_at(&self, index: usize, node: &NodeProcess) {
        *self.shared.target.lock().unwrap_or_else(|e| e.into_inner()) = (index, node.addr());
    }

    fn acked_by_node(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.shared.acked[i].load(Ordering::Relaxed))
    }

    /// Stop the writers; what each was told "OK" for, and the samples.
    fn stop(&mut self) -> (Vec<WriterResult>, Vec<LoadPoint>) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let results = self
            .handles
            .drain(..)
            .map(|h| h.join().unwrap_or_default())
            .collect();
        let points = self
            .sampler
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (results, points)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        if let Some(h) = self.sampler.take() {
            let _ = h.join();
        }
    }
}

/// How often the load's rate is sampled for the report.
const SAMPLE: Duration = Duration::from_millis(250);
/// At most this many samples (an hour and more at [`SAMPLE`]).
const MAX_SAMPLES: usize = 16_384;

/// Sample the acknowledgement rate until the load stops.
fn sample(s: &Shared) -> Vec<LoadPoint> {
    let t0 = Instant::now();
    let mut points = Vec::new();
    let mut last = 0;
    while !s.stop.load(Ordering::Relaxed) && points.len() < MAX_SAMPLES {
        std::thread::sleep(SAMPLE);
        let now = s.acked_total.load(Ordering::Relaxed);
        points.push(LoadPoint {
            at_ms: t0.elapsed().as_millis() as u64,
            writes_per_s: (now - last) as f64 / SAMPLE.as_secs_f64(),
            lag_bytes: 0.0,
        });
        last = now;
    }
    points
}

/// One client: bounded to a million writes, backing off (10 ms doubling
/// to 200 ms) while no node accepts its writes.
fn ha_writer(w: usize, s: &Shared) -> WriterResult {
    let mut r = WriterResult::default();
    let mut conn: Option<(usize, RespClient)> = None;
    let mut backoff = Duration::from_millis(10);
    let mut seq = 0u64;
    while seq < 1_000_000 && !s.stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            let (index, addr) = *s.target.lock().unwrap_or_else(|e| e.into_inner());
            match RespClient::connect(addr, Duration::from_secs(10)) {
                Ok(c) => conn = Some((index, c)),
                Err(_) => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                    continue;
                }
            }
        }
        let Some((index, c)) = conn.as_mut() else {
            continue;
        };
        let index = *index;
        let key = format!("demo:{w}:{seq}");
        let reply = c.cmd(&["SET", &key, &seq.to_string()]);
        seq += 1;
        match reply {
            Ok(reply) if reply.is_ok() => {
                r.acked.push(seq - 1);
                s.acked_total.fetch_add(1, Ordering::Relaxed);
                s.acked[index].fetch_add(1, Ordering::Relaxed);
                let killed = s.killed.load(Ordering::Relaxed);
                if killed != NONE && killed != index {
                    let _ = s.first_after_kill.set((Instant::now(), index));
                }
                backoff = Duration::from_millis(10);
            }
            _ => {
                // Not acknowledged: it may or may not be there; never checked.
                s.refused.fetch_add(1, Ordering::Relaxed);
                conn = None;
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
        }
    }
    r
}

/// Poll `f` every [`POLL`] until it gives a value, at most
/// [`PHASE_DEADLINE`]; SIGINT/SIGTERM end the wait with an error.
fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let end = Instant::now() + PHASE_DEADLINE;
    loop {
        check_interrupted()?;
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {PHASE_DEADLINE:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Sleep, giving up at SIGINT/SIGTERM.
fn sleep_checked(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep((end - Instant::now()).min(POLL));
    }
    Ok(())
}

/// Print the load's progress each second for `seconds`.
fn progress(
    load: &Load,
    nodes: &[NodeProcess],
    keys: &mut Keys,
    seconds: f64,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let duration = Duration::from_secs_f64(seconds.clamp(0.5, 300.0));
    let mut last = 0;
    let mut last_at = t0;
    while t0.elapsed() < duration {
        sleep_checked(Duration::from_secs(1).min(duration.saturating_sub(t0.elapsed())))?;
        let now = load.shared.acked_total.load(Ordering::Relaxed);
        let rate = (now - last) as f64 / last_at.elapsed().as_secs_f64().max(0.001);
        let gate = info(&nodes[0], "replication").unwrap_or_default();
        let sync = keys
            .view()
            .and_then(|v| v.sync)
            .map(|s| s.value.sync_standbys.join(","))
            .unwrap_or_default();
        say(
            "load",
            format!(
                "{:>5.1}s  {now:>7} acknowledged ({rate:>6.0}/s)  n1: write gate {} (closes in {} ms without a renewal); sync standby {sync}",
                t0.elapsed().as_secs_f64(),
                field(&gate, "ha_gate"),
                field(&gate, "ha_gate_remaining_ms"),
            ),
        );
        last = now;
        last_at = Instant::now();
    }
    Ok(())
}

/// Kill n1 under the load and narrate the failover as the cluster's keys
/// show it, until the new leader acknowledges a write.
fn kill_and_fail_over(
    nodes: &mut [NodeProcess],
    keys: &mut Keys,
    load: &Load,
) -> anyhow::Result<Failover> {
    say(
        "crash",
        format!(
            "kill -9 n1 (pid {}) in the middle of the load: it sends no more keepalives, and its lease runs out within ha_ttl = {TTL_S}s",
            nodes[0].pid().unwrap_or(0)
        ),
    );
    let killed_at = Instant::now();
    nodes[0].kill9();
    load.shared.killed.store(0, Ordering::Relaxed);
    let secs = || killed_at.elapsed().as_secs_f64();
    let mut lease_gone_s = None;
    let mut took = None;
    let first_ack = wait("a standby to take over and acknowledge writes", || {
        if took.is_none() {
            let view = keys.view()?;
            match view.leader_name() {
                Some("n1") => {}
                None => {
                    if lease_gone_s.is_none() {
                        lease_gone_s = Some(secs());
                        say("lease", format!("{:>5.1}s  n1's lease expired: etcd deleted the leader key; the standbys race for it", secs()));
                    }
                }
                Some(name) => {
                    let index = NAMES.iter().position(|n| *n == name)?;
                    let at = secs();
                    if lease_gone_s.is_none() {
                        lease_gone_s = Some(at);
                        say(
                            "lease",
                            format!("{at:>5.1}s  n1's lease expired: etcd deleted the leader key"),
                        );
                    }
                    took = Some((index, at));
                    say("elect", format!("{at:>5.1}s  {name} took the leader key: it was named in the sync key and no eligible member had flushed more; it promotes"));
                    load.point_at(index, &nodes[index]);
                    say(
                        "clients",
                        format!(
                            "{at:>5.1}s  the clients now write to {name} on {}",
                            nodes[index].addr()
                        ),
                    );
                }
            }
        }
        load.shared.first_after_kill.get().copied()
    })?;
    let (at, index) = first_ack;
    let first_ack_s = at.duration_since(killed_at).as_secs_f64();
    let (new_leader, took_key_s) = took.unwrap_or((index, first_ack_s));
    let timeline = field(&info(&nodes[new_leader], "persistence")?, "timeline");
    say(
        "promote",
        format!(
            "{first_ack_s:>5.1}s  {} acknowledged its first write as the new primary on timeline {timeline}: {first_ack_s:.2}s from the kill (bound: ha_ttl {TTL_S}s + ha_loop_wait {LOOP_WAIT_S}s + promotion)",
            NAMES[new_leader]
        ),
    );
    Ok(Failover {
        new_leader,
        lease_gone_s: lease_gone_s.unwrap_or(took_key_s),
        took_key_s,
        first_ack_s,
    })
}

/// Start n1 again and wait until it streams from the new leader as a
/// standby; returns the seconds that took.
fn rejoin(nodes: &mut [NodeProcess], leader: usize) -> anyhow::Result<f64> {
    let name = NAMES[leader];
    let n1 = &mut nodes[0];
    // A new page port: the old one may have been taken meanwhile.
    for s in &mut n1.settings {
        if s.starts_with("status_port=") {
            *s = format!("status_port={}", free_port()?);
        }
    }
    say(
        "rejoin",
        format!("walrep start {} again (same settings): it starts fenced, finds {name} holding the leader key, stops, rewinds its unacknowledged tail (walrep rejoin) and starts as {name}'s standby", n1.datadir.display()),
    );
    let t0 = Instant::now();
    n1.restart()?;
    let n1 = &nodes[0];
    let mut c = nodes[leader].client()?;
    let mut n = 0u64;
    wait("n1 to rejoin as a standby of the new leader", || {
        let repl = info(n1, "replication").ok()?;
        if field(&repl, "role") != "slave" || field(&repl, "ha_leader") != name {
            return None;
        }
        // A fresh write on the leader, read back on n1: it streams.
        n += 1;
        let marker = format!("rejoined:{n}");
        c.cmd(&["SET", "demo:rejoin", &marker]).ok()?;
        let got = n1.client().ok()?.cmd(&["GET", "demo:rejoin"]).ok()?;
        (got.as_text().as_deref() == Some(marker.as_str())).then_some(())
    })
    .with_context(|| format!("see {}", n1.log.display()))?;
    let took = t0.elapsed().as_secs_f64();
    let repl = info(n1, "replication")?;
    let quarantine = n1.datadir.join(walrep::rejoin::QUARANTINE_DIR);
    let moved = std::fs::read_dir(&quarantine)
        .map(|d| d.count())
        .unwrap_or(0);
    say(
        "rejoin",
        format!(
            "n1 is a standby of {name} again ({took:.1}s): recovery {}, replayed to {}; {}",
            field(&repl, "recovery_state"),
            field(&repl, "replay_lsn"),
            if moved > 0 {
                format!(
                    "the WAL it wrote past the fork, never acknowledged, is in {}",
                    quarantine.display()
                )
            } else {
                "it had written nothing past the fork".to_string()
            }
        ),
    );
    let e = n1.client()?.cmd(&["SET", "demo:n1", "x"])?;
    if let Reply::Error(text) = &e {
        say("rejoin", format!("a write on n1 now: -{text}"));
    } else {
        bail!("n1 accepted a write after rejoining: {e:?}");
    }
    Ok(took)
}

/// A last write on the leader, read back on both standbys: the cluster is
/// whole again.
fn everyone_has_the_last_write(nodes: &[NodeProcess], leader: usize) -> anyhow::Result<()> {
    let mut c = nodes[leader].client()?;
    if !c.cmd(&["SET", "demo:last", "1"])?.is_ok() {
        bail!("the last write was not acknowledged by {}", NAMES[leader]);
    }
    for (i, n) in nodes.iter().enumerate().filter(|(i, _)| *i != leader) {
        wait(&format!("{} to have the last write", NAMES[i]), || {
            let got = n.client().ok()?.cmd(&["GET", "demo:last"]).ok()?;
            (got.as_text().as_deref() == Some("1")).then_some(())
        })?;
    }
    say(
        "verify",
        format!(
            "a last write on {} is on both standbys: the three nodes are one cluster again",
            NAMES[leader]
        ),
    );
    Ok(())
}

/// Stop the standbys, then the leader (it hands its key back), then etcd.
fn stop_all(
    nodes: &mut [NodeProcess],
    leader: usize,
    etcd: &mut EtcdCluster,
) -> anyhow::Result<()> {
    say(
        "stop",
        "SIGTERM to the standbys, then to the leader, then to etcd",
    );
    for (i, n) in nodes.iter_mut().enumerate() {
        if i != leader {
            n.stop()?;
        }
    }
    nodes[leader].stop()?;
    etcd.stop();
    Ok(())
}
