//! `walrep demo`: the main job, on loopback in a temporary directory.
//!
//! A primary with WAL archiving and a synchronous standby made with
//! `walrep basebackup -R` serve a write load from several clients; the
//! primary is killed with SIGKILL in the middle of it; the standby is
//! promoted with its trigger file; every write acknowledged before the crash
//! is checked on the new primary, and the standby's recovery transitions are
//! printed from its trace.
//!
//! # Layout
//! - [`client`]: a small blocking RESP client.
//! - [`process`]: `walrep start` child processes.
//! - [`ha`]: `walrep demo --ha`, the same story with automatic failover on
//!   a three-member etcd (`etcd`: its members).
//! - `report`: `DIR/report.html`, the run as pictures.

pub mod client;
mod etcd;
pub mod ha;
pub mod process;
mod report;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use client::{Reply, RespClient};
use process::NodeProcess;

/// Options of `walrep demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where to put the data directories (a temporary directory if unset).
    pub dir: Option<PathBuf>,
    /// Concurrent writing clients.
    pub clients: usize,
    /// How long the load runs before the crash.
    pub load_seconds: f64,
    /// Keep the surviving node up this long at the end, for looking at
    /// its live page.
    pub linger_seconds: u64,
}

/// One point of the load's progress, for the report's charts.
#[derive(Debug, Clone, Copy)]
struct LoadPoint {
    /// Milliseconds since the load began.
    at_ms: u64,
    writes_per_s: f64,
    /// The standby's replay lag in bytes.
    lag_bytes: f64,
}

/// What one writer did.
#[derive(Debug, Default, Clone)]
struct WriterResult {
    /// Sequence numbers acknowledged with OK (keys `demo:<writer>:<seq>`).
    acked: Vec<u64>,
}

fn say(step: &str, text: impl AsRef<str>) {
    println!("[{step:>8}] {}", text.as_ref());
}

/// The demo's directories.
struct Dirs {
    root: PathBuf,
    archive: PathBuf,
    primary: PathBuf,
    standby: PathBuf,
    trigger: PathBuf,
}

pub fn run(opts: &DemoOptions) -> anyhow::Result<()> {
    let tmp;
    let root: PathBuf = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("walrep-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let dirs = Dirs {
        archive: root.join("archive"),
        primary: root.join("primary"),
        standby: root.join("standby"),
        trigger: root.join("promote.trigger"),
        root,
    };
    std::fs::create_dir_all(&dirs.archive)?;
    let started = Instant::now();

    let mut primary = start_primary(&dirs)?;
    let mut standby = start_standby(&dirs, &primary)?;
    let (results, load) = drive_load(&primary, &standby, opts)?;
    let acked: usize = results.iter().map(|r| r.acked.len()).sum();
    say(
        "crash",
        format!(
            "kill -9 the primary (pid {}) in the middle of the load",
            primary.pid().unwrap_or(0)
        ),
    );
    primary.kill9();
    if acked == 0 {
        bail!(
            "no write was acknowledged before the crash; see {}",
            primary.log.display()
        );
    }
    let promote_ms = promote(&dirs, &standby)?;
    let checked = verify(&standby, &results)?;
    say(
        "verify",
        format!("all {checked} writes acknowledged before the crash are on the new primary"),
    );
    let info = info(&standby, "persistence")?;
    if opts.dir.is_some() {
        let report = report::write(&report::Report {
            root: &dirs.root,
            title: "walrep demo: failover report",
            rows: vec![
                (
                    "outcome",
                    format!("OK: all {checked} acknowledged writes are on the promoted standby"),
                ),
                ("writes acknowledged before the crash", acked.to_string()),
                ("primary", "killed with SIGKILL under load".to_string()),
                (
                    "promotion",
                    format!("trigger file to first accepted write in {promote_ms:.0} ms"),
                ),
                ("new timeline", field(&info, "timeline")),
            ],
            lanes_heading: "The standby's recovery through the failover",
            nodes: vec![("standby".into(), dirs.standby.clone())],
            load: &load,
            lag: true,
        })?;
        say("report", format!("{}", report.display()));
    }
    if opts.linger_seconds > 0 {
        say(
            "linger",
            format!(
                "the new primary stays up for {}s: {}",
                opts.linger_seconds,
                page_url(&standby)
            ),
        );
        std::thread::sleep(Duration::from_secs(opts.linger_seconds));
    }
    standby.stop()?;
    summary(
        &dirs, opts, started, acked, promote_ms, &info, &primary, &standby,
    )?;
    Ok(())
}

/// The node's live page.
fn page_url(node: &NodeProcess) -> String {
    format!("http://127.0.0.1:{}/", node.status_port)
}

/// A loopback port for a node's status page, reserved for this process
/// (below the ephemeral range: no other connection or bind is handed it).
fn free_port() -> anyhow::Result<u16> {
    Ok(walrep::ports::reserve()?)
}

fn start_primary(dirs: &Dirs) -> anyhow::Result<NodeProcess> {
    say(
        "init",
        format!(
            "walrep init {} --wal-segment-size 1MB",
            dirs.primary.display()
        ),
    );
    walrep::node::init::init(
        &dirs.primary,
        walrep::WalSegSize::new(1 << 20).expect("1MB is valid"),
    )?;
    let settings = vec![
        "archive_mode=on".to_string(),
        format!("archive_command=cp %p {}/%f", dirs.archive.display()),
        "synchronous_standby_names=FIRST 1 (standby1)".to_string(),
        "synchronous_commit=on".to_string(),
        "checkpoint_timeout=5s".to_string(),
        format!("status_port={}", free_port()?),
    ];
    let primary = NodeProcess::start("primary", &dirs.primary, &settings)?;
    say(
        "live",
        format!("the primary's page: {}", page_url(&primary)),
    );
    say(
        "primary",
        format!(
            "listening on {} (Redis protocol) and 127.0.0.1:{} (replication); archiving to {}; commits wait for standby1",
            primary.addr(),
            primary.replication_port,
            dirs.archive.display()
        ),
    );
    Ok(primary)
}

fn start_standby(dirs: &Dirs, primary: &NodeProcess) -> anyhow::Result<NodeProcess> {
    basebackup(primary, &dirs.standby, "standby1", "")?;
    let settings = vec![
        format!("restore_command=cp {}/%f %p", dirs.archive.display()),
        format!("promote_trigger_file={}", dirs.trigger.display()),
        "wal_retrieve_retry_interval=500ms".to_string(),
        format!("status_port={}", free_port()?),
    ];
    let standby = NodeProcess::start("standby", &dirs.standby, &settings)?;
    say(
        "live",
        format!(
            "the standby's page: {} (the cluster: {}cluster?peers=127.0.0.1:{})",
            page_url(&standby),
            page_url(&standby),
            primary.status_port
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = field(&info(&standby, "replication")?, "recovery_state");
        if state == "Streaming"
            && field(&info(primary, "replication")?, "slave0").contains("sync_state=sync")
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the standby did not start streaming (state {state}); see {}",
                standby.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    say(
        "standby",
        format!(
            "streaming from the primary as its synchronous standby; reads on {}",
            standby.addr()
        ),
    );
    Ok(standby)
}

/// `walrep basebackup -R` of `primary` into `datadir` (no slot), narrated;
/// `extra` is what the narration adds to the command line.
fn basebackup(
    primary: &NodeProcess,
    datadir: &Path,
    application_name: &str,
    extra: &str,
) -> anyhow::Result<()> {
    say(
        "backup",
        format!(
            "walrep basebackup --from 127.0.0.1:{} -D {} -R --application-name {application_name}{extra}",
            primary.replication_port,
            datadir.display()
        ),
    );
    let summary = walrep::backup::client::run(
        &walrep::backup::client::BasebackupOptions {
            host: "127.0.0.1".into(),
            port: primary.replication_port,
            datadir: datadir.to_path_buf(),
            user: "walrep".into(),
            password: None,
            application_name: Some(application_name.into()),
            write_standby_config: true,
            label: "walrep demo".into(),
            max_rate_kbps: 0,
            timeout: Duration::from_secs(60),
            storage: std::sync::Arc::new(walrep::storage::StdStorage),
            slot: None,
            jobs: 1,
            two_phase: false,
            resume: false,
        },
        &mut walrep::backup::client::NoProgress,
    )
    .context("base backup")?;
    say(
        "backup",
        format!(
            "consistent copy: WAL {} to {} on timeline {}",
            summary.start, summary.end, summary.tli.0
        ),
    );
    Ok(())
}

/// Run the writers for `opts.load_seconds`, printing throughput and lag.
fn drive_load(
    primary: &NodeProcess,
    standby: &NodeProcess,
    opts: &DemoOptions,
) -> anyhow::Result<(Vec<WriterResult>, Vec<LoadPoint>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let addr = primary.addr();
    let handles: Vec<_> = (0..opts.clients)
        .map(|w| {
            let (stop, total) = (stop.clone(), total.clone());
            std::thread::spawn(move || writer(addr, w, &stop, &total))
        })
        .collect();
    say(
        "load",
        format!(
            "{} clients writing SET demo:<client>:<n> with synchronous_commit = on",
            opts.clients
        ),
    );
    let t0 = Instant::now();
    let mut last = 0;
    let mut points = Vec::new();
    let load = Duration::from_secs_f64(opts.load_seconds.clamp(0.5, 300.0));
    while t0.elapsed() < load {
        std::thread::sleep(Duration::from_millis(500).min(load.saturating_sub(t0.elapsed())));
        let now = total.load(Ordering::Relaxed);
        let s = info(standby, "replication").unwrap_or_default();
        points.push(LoadPoint {
            at_ms: t0.elapsed().as_millis() as u64,
            writes_per_s: (now - last) as f64 * 2.0,
            lag_bytes: field(&s, "replay_lag_bytes").parse().unwrap_or(0.0),
        });
        say(
            "load",
            format!(
                "{:>5.1}s  {now:>7} acknowledged ({:>6.0}/s)  standby: {} replay {} lag {} bytes",
                t0.elapsed().as_secs_f64(),
                (now - last) as f64 * 2.0,
                field(&s, "recovery_state"),
                field(&s, "replay_lsn"),
                field(&s, "replay_lag_bytes"),
            ),
        );
        last = now;
    }
    // The crash comes while the writers are still running: collect what
    // they were told "OK" for up to the moment the primary dies.
    stop.store(true, Ordering::Relaxed);
    let results = handles
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .collect();
    Ok((results, points))
}

fn writer(
    addr: std::net::SocketAddr,
    w: usize,
    stop: &AtomicBool,
    total: &AtomicU64,
) -> WriterResult {
    let mut r = WriterResult::default();
    let Ok(mut c) = RespClient::connect(addr, Duration::from_secs(5)) else {
        return r;
    };
    // Bounded: at most this many writes per client.
    for seq in 0..1_000_000u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("demo:{w}:{seq}");
        match c.cmd(&["SET", &key, &seq.to_string()]) {
            Ok(reply) if reply.is_ok() => {
                r.acked.push(seq);
                total.fetch_add(1, Ordering::Relaxed);
            }
            _ => break,
        }
    }
    r
}

/// Touch the trigger file and time it until the first write is accepted.
fn promote(dirs: &Dirs, standby: &NodeProcess) -> anyhow::Result<f64> {
    say(
        "promote",
        format!("touch {} (promote_trigger_file)", dirs.trigger.display()),
    );
    let t0 = Instant::now();
    std::fs::write(&dirs.trigger, b"")?;
    let mut c = standby.client()?;
    let deadline = t0 + Duration::from_secs(30);
    loop {
        if c.cmd(&["SET", "demo:promoted", "yes"])?.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the standby did not promote; see {}", standby.log.display());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let s = info(standby, "persistence")?;
    say(
        "promote",
        format!("the standby is the new primary on timeline {} ({ms:.0} ms from trigger to first accepted write)", field(&s, "timeline")),
    );
    Ok(ms)
}

/// Check every acknowledged write on `node`; returns how many were checked.
fn verify(node: &NodeProcess, results: &[WriterResult]) -> anyhow::Result<usize> {
    let mut c = node.client()?;
    let mut checked = 0;
    for (w, r) in results.iter().enumerate() {
        for chunk in r.acked.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|s| format!("demo:{w}:{s}")).collect();
            let mut args: Vec<&str> = vec!["MGET"];
            args.extend(keys.iter().map(String::as_str));
            let Reply::Array(values) = c.cmd(&args)? else {
                bail!("MGET did not return an array")
            };
            for (seq, v) in chunk.iter().zip(values) {
                if v.as_text() != Some(seq.to_string()) {
                    bail!("acknowledged write demo:{w}:{seq} is missing or wrong after failover: {v:?}");
                }
                checked += 1;
            }
        }
    }
    Ok(checked)
}

fn info(node: &NodeProcess, section: &str) -> anyhow::Result<String> {
    let mut c = node.client()?;
    match c.cmd(&["INFO", section])? {
        Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        other => bail!("unexpected INFO reply {other:?}"),
    }
}

fn field(info: &str, name: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The standby's state changes, from its trace (`from -> to  (event)`).
fn transitions(trace: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(trace).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["from"] != v["to"])
        .map(|v| {
            format!(
                "{} -> {}  ({})",
                v["from"].as_str().unwrap_or("?"),
                v["to"].as_str().unwrap_or("?"),
                v["event"]["event"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn summary(
    dirs: &Dirs,
    opts: &DemoOptions,
    started: Instant,
    acked: usize,
    promote_ms: f64,
    info: &str,
    primary: &NodeProcess,
    standby: &NodeProcess,
) -> anyhow::Result<()> {
    let trace = dirs
        .standby
        .join("log")
        .join(walrep::standby::tracelog::TRACE_FILE);
    let diagram = dirs.root.join("standby.svg");
    std::fs::write(
        &diagram,
        walrep::viz::standby_diagram(walrep::viz::Format::Svg),
    )?;
    println!();
    println!("walrep demo: OK in {:.1}s", started.elapsed().as_secs_f64());
    println!(
        "  writes acknowledged before the crash: {acked}, all present on the promoted standby"
    );
    println!(
        "  promotion: trigger file to first accepted write in {promote_ms:.0} ms, timeline {}",
        field(info, "timeline")
    );
    println!(
        "  the standby's recovery transitions (from {}):",
        trace.display()
    );
    for t in transitions(&trace) {
        println!("      {t}");
    }
    let archived = std::fs::read_dir(&dirs.archive)
        .map(|d| d.count())
        .unwrap_or(0);
    println!("  archive: {archived} files in {}", dirs.archive.display());
    if opts.dir.is_some() {
        println!("  render the trace:   walrep viz trace {}", trace.display());
        println!("  the state diagram:  {}", diagram.display());
        println!(
            "  logs: {} and {}",
            primary.log.display(),
            standby.log.display()
        );
    } else {
        println!("  (everything was in a temporary directory, now removed; run with --dir DIR to keep the trace, diagram and logs)");
    }
    Ok(())
}
