//! How cost grows with work (`--scenario scaling`): what one more standby,
//! one more million keys or one more gigabyte of data costs.
//!
//! - Standbys: commits/s, primary CPU per commit (utime + stime of the
//!   whole process from `/proc/PID/stat`) and walsender CPU per standby
//!   (the threads named `walsender`, from `/proc/PID/task/*/stat`) with 0,
//!   1, 2 and 4 standbys, asynchronous, `ANY 1 (...)` and `FIRST 2 (...)`,
//!   under 64 clients at `synchronous_commit = on`. With `--anchors`,
//!   PostgreSQL 15 with 0, 1 and 2 standbys under pgbench in the same run
//!   (its CPU: the postmaster, its live children and the children it
//!   reaped).
//! - Memory: RSS per million keys (16-byte values) and its growth under a
//!   64-client load.
//! - Data size: checkpoint time (the one a base backup requests), crash
//!   recovery time (start after `kill -9` to the first answered PING) and
//!   base backup time at 100 MB and 1 GB of values; 4 GB too with
//!   `WALREP_BENCH_SCALING_4GB=1` (about five times the data size of free
//!   disk is needed: the node's WAL and snapshot, and the copy).
//!
//! The load generator shares the machine's cores with the servers, as in
//! every other scenario: CPU per commit is the server's own, not the box's.

use std::path::Path;
use std::time::{Duration, Instant};

use super::cluster::{self, parse_slave_line, Node, Resp};
use super::ctx::Ctx;
use super::figures::{Better, Figure};
use super::loadgen::{self, Load};
use super::pg::PgAnchor;
use super::BenchError;

/// Clients of every throughput run.
const CLIENTS: u32 = 64;
/// Standby counts measured (PostgreSQL: up to [`PG_MAX_STANDBYS`]).
const STANDBY_COUNTS: [usize; 4] = [0, 1, 2, 4];
const PG_MAX_STANDBYS: usize = 2;
/// Data sizes of the checkpoint, restart and base backup figures (MiB).
const SIZES_MB: [u64; 2] = [100, 1024];
/// The large size, only with [`BIG_ENV`] set.
const BIG_MB: u64 = 4096;
const BIG_ENV: &str = "WALREP_BENCH_SCALING_4GB";
/// Free disk needed per MiB of data (WAL, snapshot, its copy, headroom).
const DISK_PER_MB: u64 = 5;
/// Values of the data-size loads.
const SIZE_VALUE_BYTES: usize = 1024;
/// Keys per million of the memory figure, and their value size.
const MILLION: u64 = 1_000_000;
const RSS_VALUE_BYTES: usize = 16;
/// Keys per MSET of the loader.
const LOAD_BATCH: u64 = 1000;
/// How often RSS is sampled under load.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Bound on a standby reaching streaming, a load, a base backup.
const WAIT_LIMIT: Duration = Duration::from_secs(600);

/// How the standbys are asked to confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    Async,
    /// `ANY 1 (...)`: a quorum of one.
    Any1,
    /// `FIRST 2 (...)`: the first two listed.
    First2,
}

impl Sync {
    fn label(self) -> &'static str {
        match self {
            Sync::Async => "async",
            Sync::Any1 => "ANY 1",
            Sync::First2 => "FIRST 2",
        }
    }

    /// `synchronous_standby_names` for standbys `s1..=sN`.
    fn names(self, n: usize) -> String {
        let list = (1..=n)
            .map(|i| format!("s{i}"))
            .collect::<Vec<_>>()
            .join(",");
        match self {
            Sync::Async => String::new(),
            Sync::Any1 => format!("ANY 1 ({list})"),
            Sync::First2 => format!("FIRST 2 ({list})"),
        }
    }
}

/// Standby count and how they confirm, in the order they are measured.
fn topologies(max: usize) -> Vec<(usize, Sync)> {
    let mut out = Vec::new();
    for n in STANDBY_COUNTS.into_iter().filter(|n| *n <= max) {
        out.push((n, Sync::Async));
        if n >= 1 {
            out.push((n, Sync::Any1));
        }
        if n >= 2 {
            out.push((n, Sync::First2));
        }
    }
    out
}

fn topology_label(n: usize, sync: Sync) -> String {
    match n {
        0 => "0 standbys".into(),
        _ => format!("{n} standby(s) {}", sync.label()),
    }
}

/// What one throughput run measured.
#[derive(Debug, Clone, Copy)]
struct Cost {
    commits_per_s: f64,
    /// Server CPU µs per commit.
    cpu_us: f64,
    /// Walsender CPU µs per commit, per standby (NaN without standbys).
    walsender_us: f64,
}

/// The figures of one topology.
struct Row {
    n: usize,
    sync: Sync,
    rps: Figure,
    cpu: Figure,
    walsender: Figure,
}

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), BenchError> {
    println!(
        "\n== scaling: standbys 0/1/2/4 (async, ANY 1, FIRST 2) at {CLIENTS} clients, memory per million keys, checkpoint/restart/base backup per data size; {} s per run",
        ctx.args.seconds
    );
    let dir = ctx.subdir("scaling")?;
    let mut rows: Vec<Row> = topologies(4).into_iter().map(|(n, s)| row(n, s)).collect();
    for rep in 1..=ctx.args.reps {
        standbys_walrep(ctx, &dir.join(format!("standbys{rep}")), &mut rows)?;
    }
    if let Some(anchors_dir) = ctx.args.anchors.clone() {
        for rep in 1..=ctx.args.reps {
            let base = ctx.anchors_base(&format!("pg-scaling{rep}"))?;
            standbys_postgres(ctx.args.seconds, &base, &anchors_dir, &mut rows)?;
            let _ = std::fs::remove_dir_all(&base);
        }
    }
    for r in rows {
        ctx.figures.extend([r.rps, r.cpu, r.walsender]);
    }
    memory(ctx, &dir.join("memory"))?;
    data_sizes(ctx, &dir)?;
    Ok(())
}

fn row(n: usize, sync: Sync) -> Row {
    let t = topology_label(n, sync);
    Row {
        n,
        sync,
        rps: Figure::new(
            "scaling",
            &format!("commits/s, {t}"),
            "commits/s",
            Better::Higher,
        ),
        cpu: Figure::new(
            "scaling",
            &format!("primary CPU per commit, {t}"),
            "µs",
            Better::Lower,
        ),
        walsender: Figure::new(
            "scaling",
            &format!("walsender CPU per commit per standby, {t}"),
            "µs",
            Better::Lower,
        ),
    }
}

/// walrep: one primary, four standby copies made once, each topology
/// started with its `synchronous_standby_names`.
fn standbys_walrep(ctx: &Ctx<'_>, dir: &Path, rows: &mut [Row]) -> Result<(), BenchError> {
    let pdir = dir.join("primary");
    cluster::init(&ctx.exe, &pdir)?;
    let primary = Node::start(&ctx.exe, &pdir, &[])?;
    let max = rows.iter().map(|r| r.n).max().unwrap_or(0);
    for i in 1..=max {
        cluster::basebackup(
            &ctx.exe,
            primary.repl_port,
            &dir.join(format!("s{i}")),
            &format!("s{i}"),
        )?;
    }
    primary.stop();
    for r in rows.iter_mut() {
        let names = format!("synchronous_standby_names={}", r.sync.names(r.n));
        let primary = Node::start(&ctx.exe, &pdir, &[names, "synchronous_commit=on".into()])?;
        let mut standbys = Vec::new();
        for i in 1..=r.n {
            let conninfo = format!("primary_conninfo={}", primary.conninfo(&format!("s{i}")));
            let overrides = [conninfo, "wal_retrieve_retry_interval=100ms".into()];
            standbys.push(Node::start(
                &ctx.exe,
                &dir.join(format!("s{i}")),
                &overrides,
            )?);
        }
        wait_streaming(&primary, r.n)?;
        let cost = measure_walrep(ctx, dir, &primary, r.n);
        for s in standbys {
            s.stop();
        }
        primary.stop();
        let cost = cost?;
        print_cost("walrep", &topology_label(r.n, r.sync), &cost);
        r.rps.walrep.push(cost.commits_per_s);
        r.cpu.walrep.push(cost.cpu_us);
        r.walsender.walrep.push(cost.walsender_us);
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn print_cost(who: &str, what: &str, c: &Cost) {
    println!(
        "  {who} {what}: {:.0} commits/s, {:.1} µs CPU per commit, walsender {:.1} µs per commit per standby",
        c.commits_per_s, c.cpu_us, c.walsender_us
    );
}

/// Until `n` standbys stream from `primary`.
fn wait_streaming(primary: &Node, n: usize) -> Result<(), BenchError> {
    let mut c = primary.connect()?;
    cluster::wait_for(
        "the standbys to stream",
        WAIT_LIMIT,
        Duration::from_millis(50),
        || {
            let info = c.info("replication")?;
            let streaming = info
                .iter()
                .filter(|(k, _)| k.starts_with("slave"))
                .filter(|(_, v)| {
                    parse_slave_line(v)
                        .get("walsender_state")
                        .map(String::as_str)
                        == Some("streaming")
                })
                .count();
            Ok((streaming >= n).then_some(()))
        },
    )
}

/// A calibration run, then one run of about `--seconds` with the CPU of
/// the primary and of its walsender threads read around it.
fn measure_walrep(ctx: &Ctx<'_>, dir: &Path, primary: &Node, n: usize) -> Result<Cost, BenchError> {
    let load = Load {
        port: primary.port,
        clients: CLIENTS,
        keyspace: 100_000,
        value_bytes: 16,
    };
    let calib = loadgen::run(&load, 20_000, WAIT_LIMIT, dir)?;
    let secs = ctx.args.seconds as f64;
    let requests = ((calib.rps * secs) as u64).max(1000);
    let pid = primary.child.pid();
    let cpu = || cluster::process_cpu_s(pid).unwrap_or(f64::NAN);
    let walsenders = || cluster::thread_cpu_s(pid, "walsender").unwrap_or(0.0);
    let (c0, w0) = (cpu(), walsenders());
    let r = loadgen::run(
        &load,
        requests,
        Duration::from_secs_f64(secs * 5.0 + 30.0),
        dir,
    )?;
    let (c1, w1) = (cpu(), walsenders());
    Ok(cost(r.rps, r.requests, c1 - c0, w1 - w0, n))
}

/// Per-commit CPU from CPU seconds spent over `commits`.
fn cost(rps: f64, commits: u64, cpu_s: f64, walsender_s: f64, standbys: usize) -> Cost {
    let per_commit_us = |s: f64| s * 1e6 / commits.max(1) as f64;
    Cost {
        commits_per_s: rps,
        cpu_us: per_commit_us(cpu_s),
        walsender_us: if standbys == 0 {
            f64::NAN
        } else {
            per_commit_us(walsender_s) / standbys as f64
        },
    }
}

/// PostgreSQL 15: the same topologies up to two standbys, pgbench's
/// upsert at `CLIENTS`, standbys added as the topologies need them.
fn standbys_postgres(
    secs: u64,
    base: &Path,
    anchors_dir: &Path,
    rows: &mut [Row],
) -> Result<(), BenchError> {
    let primary = PgAnchor::start(&base.join("primary"), anchors_dir)?;
    let mut standbys: Vec<PgAnchor> = Vec::new();
    for r in rows.iter_mut().filter(|r| r.n <= PG_MAX_STANDBYS) {
        while standbys.len() < r.n {
            let i = standbys.len() + 1;
            standbys.push(primary.standby_of(primary.port(), &base.join(format!("s{i}")))?);
        }
        let names = match r.sync {
            Sync::Async => String::new(),
            Sync::Any1 => "ANY 1 (*)".into(),
            Sync::First2 => "FIRST 2 (*)".into(),
        };
        primary.psql(&[
            &format!("ALTER SYSTEM SET synchronous_standby_names = '{names}'"),
            "SELECT pg_reload_conf()",
        ])?;
        pg_wait_streaming(&primary, r.n, r.sync != Sync::Async)?;
        let pm = postmaster_pid(&base.join("primary").join("data"))?;
        let (c0, w0) = (pg_cpu_s(pm), pg_walsender_cpu_s(pm));
        let res = primary.pgbench(CLIENTS, secs)?;
        let (c1, w1) = (pg_cpu_s(pm), pg_walsender_cpu_s(pm));
        let c = cost(res.rps, res.requests, c1 - c0, w1 - w0, r.n);
        print_cost("PostgreSQL", &topology_label(r.n, r.sync), &c);
        r.rps.pg_same_run.push(c.commits_per_s);
        r.cpu.pg_same_run.push(c.cpu_us);
        if r.n > 0 {
            r.walsender.pg_same_run.push(c.walsender_us);
        }
    }
    drop(standbys);
    drop(primary);
    Ok(())
}

/// Until `n` standbys stream (and, for a synchronous setting, are
/// `sync` or `quorum`).
fn pg_wait_streaming(pg: &PgAnchor, n: usize, sync: bool) -> Result<(), BenchError> {
    let states = if sync {
        "('sync','quorum')"
    } else {
        "('async','potential','sync','quorum')"
    };
    let sql = format!(
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state IN {states}"
    );
    cluster::wait_for(
        "PostgreSQL's standbys to stream",
        WAIT_LIMIT,
        Duration::from_millis(100),
        || {
            let got: usize = pg.psql(&[&sql])?.trim().parse().unwrap_or(0);
            Ok((got >= n).then_some(()))
        },
    )
}

fn postmaster_pid(data: &Path) -> Result<u32, BenchError> {
    let text = std::fs::read_to_string(data.join("postmaster.pid"))
        .map_err(|e| BenchError::io("read postmaster.pid", e))?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| BenchError::Anchor("postmaster.pid has no pid".into()))
}

/// The processes whose parent is `parent`, with their `/proc` stat line.
fn children(parent: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            Some((
                pid,
                std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
            ))
        })
        .filter(|(_, stat)| stat_field(stat, 1) == Some(parent as f64))
        .collect()
}

/// Field `i` after the command name of a `/proc/.../stat` line (0 is the
/// state, 1 the parent pid, 11/12 utime/stime, 13/14 cutime/cstime).
fn stat_field(stat: &str, i: usize) -> Option<f64> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(i)?
        .parse()
        .ok()
}

/// CPU seconds of a stat line: its own, and with `reaped` its waited-for
/// children's too (USER_HZ = 100).
fn stat_cpu_s(stat: &str, reaped: bool) -> f64 {
    let f = |i| stat_field(stat, i).unwrap_or(0.0);
    let own = f(11) + f(12);
    (if reaped { own + f(13) + f(14) } else { own }) / 100.0
}

/// PostgreSQL's CPU: the postmaster with every backend it reaped (pgbench's
/// backends end before the second reading) plus its live children.
fn pg_cpu_s(postmaster: u32) -> f64 {
    let own = std::fs::read_to_string(format!("/proc/{postmaster}/stat"))
        .map_or(0.0, |s| stat_cpu_s(&s, true));
    own + children(postmaster)
        .iter()
        .map(|(_, s)| stat_cpu_s(s, false))
        .sum::<f64>()
}

/// CPU seconds of PostgreSQL's walsender processes.
fn pg_walsender_cpu_s(postmaster: u32) -> f64 {
    children(postmaster)
        .iter()
        .filter(|(pid, _)| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"postgres: walsender"))
        })
        .map(|(_, s)| stat_cpu_s(s, false))
        .sum()
}

/// Resident set size of `pid` in bytes (`VmRSS` of /proc/PID/status).
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// SET keys `prefix:first..first+count` with `value_len`-byte values, in
/// MSETs of [`LOAD_BATCH`], at `synchronous_commit = off` (the load is
/// setup, not a measurement).
fn load_keys(
    port: u16,
    prefix: &str,
    first: u64,
    count: u64,
    value_len: usize,
) -> Result<(), BenchError> {
    let mut c = Resp::connect(port)?;
    c.call(&[b"CONFIG", b"SET", b"synchronous_commit", b"off"])?;
    let value = vec![b'v'; value_len];
    let mut i = first;
    while i < first + count {
        let end = (i + LOAD_BATCH).min(first + count);
        let keys: Vec<Vec<u8>> = (i..end)
            .map(|k| format!("{prefix}:{k:010}").into_bytes())
            .collect();
        let mut args: Vec<&[u8]> = vec![b"MSET"];
        for k in &keys {
            args.push(k);
            args.push(&value);
        }
        if let cluster::Reply::Error(e) = c.call(&args)? {
            return Err(BenchError::Server(format!("MSET refused: {e}")));
        }
        i = end;
    }
    // One write at `on`: everything before it is flushed too.
    c.call(&[b"CONFIG", b"SET", b"synchronous_commit", b"on"])?;
    c.call(&[b"SET", format!("{prefix}:done").as_bytes(), b"1"])?;
    Ok(())
}

/// RSS per million keys (two millions loaded, each measured), and the
/// peak growth under a 64-client load over 100k keys.
fn memory(ctx: &mut Ctx<'_>, dir: &Path) -> Result<(), BenchError> {
    cluster::init(&ctx.exe, dir)?;
    let node = Node::start(&ctx.exe, dir, &[])?;
    let pid = node.child.pid();
    let rss = || rss_bytes(pid).unwrap_or(0) as f64 / (1 << 20) as f64;
    let r0 = rss();
    load_keys(node.port, "m", 0, MILLION, RSS_VALUE_BYTES)?;
    let r1 = rss();
    load_keys(node.port, "m", MILLION, MILLION, RSS_VALUE_BYTES)?;
    let r2 = rss();
    println!("  RSS: empty {r0:.0} MB, 1M keys {r1:.0} MB, 2M keys {r2:.0} MB");
    let mut per_m = Figure::new(
        "scaling",
        "RSS per million keys (16-byte values)",
        "MB",
        Better::Lower,
    );
    per_m.walrep.push((r2 - r0) / 2.0);
    let mut second = Figure::new(
        "scaling",
        "RSS of the second million keys",
        "MB",
        Better::Lower,
    );
    second.walrep.push(r2 - r1);
    let idle = rss();
    let peak = rss_under_load(ctx, dir, &node, pid)?;
    println!("  RSS under {CLIENTS} clients: idle {idle:.0} MB, peak {peak:.0} MB");
    let mut load = Figure::new(
        "scaling",
        &format!("RSS growth under {CLIENTS} clients"),
        "MB",
        Better::Lower,
    );
    load.walrep.push(peak - idle);
    node.stop();
    let _ = std::fs::remove_dir_all(dir);
    ctx.figures.extend([per_m, second, load]);
    Ok(())
}

/// Peak RSS (MB) while 64 clients SET for `--seconds`.
fn rss_under_load(ctx: &Ctx<'_>, dir: &Path, node: &Node, pid: u32) -> Result<f64, BenchError> {
    let load = Load {
        port: node.port,
        clients: CLIENTS,
        keyspace: 100_000,
        value_bytes: 16,
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let secs = Duration::from_secs(ctx.args.seconds);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0u64;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                peak = peak.max(rss_bytes(pid).unwrap_or(0));
                std::thread::sleep(RSS_SAMPLE_EVERY);
            }
            peak as f64 / (1 << 20) as f64
        });
        let r = loadgen::run_for(&load, secs, dir);
        done.store(true, std::sync::atomic::Ordering::Release);
        let peak = sampler
            .join()
            .map_err(|_| BenchError::Load("the RSS sampler panicked".into()))?;
        r.map(|_| peak)
    })
}

/// The sizes measured in this run: 100 MB and 1 GB, 4 GB with the
/// environment variable set.
fn sizes() -> Vec<u64> {
    let mut s = SIZES_MB.to_vec();
    if std::env::var(BIG_ENV).is_ok_and(|v| v == "1") {
        s.push(BIG_MB);
    }
    s
}

/// Per data size: base backup time, the checkpoint it requested, and
/// crash recovery after `kill -9`.
fn data_sizes(ctx: &mut Ctx<'_>, dir: &Path) -> Result<(), BenchError> {
    for mb in sizes() {
        let free = walrep::node::disk::filesystem_space(dir)
            .map_err(|e| BenchError::io("statvfs the run directory", e))?
            .0;
        if free < (mb * DISK_PER_MB) << 20 {
            ctx.note(format!(
                "scaling: {mb} MB skipped: {} MB free, {} MB needed",
                free >> 20,
                mb * DISK_PER_MB
            ));
            continue;
        }
        let d = ctx.subdir(&format!("size{mb}"))?;
        let r = one_size(ctx, &d, mb);
        let _ = std::fs::remove_dir_all(&d);
        let (backup_s, checkpoint_ms, restart_s, rss_mb) = r?;
        println!(
            "  {mb} MB: base backup {backup_s:.2} s, checkpoint {checkpoint_ms:.0} ms, restart after kill -9 {restart_s:.2} s, RSS {rss_mb:.0} MB"
        );
        let fig = |what: &str, unit: &str, v: f64| {
            let mut f = Figure::new(
                "scaling",
                &format!("{what}, {mb} MB of data"),
                unit,
                Better::Lower,
            );
            f.walrep.push(v);
            f
        };
        ctx.figures.extend([
            fig("checkpoint time", "ms", checkpoint_ms),
            fig("restart (crash recovery) after kill -9", "s", restart_s),
            fig("base backup time", "s", backup_s),
            fig("RSS", "MB", rss_mb),
        ]);
    }
    Ok(())
}

/// Load `mb` MiB of 1 kB values, copy it, crash it, restart it.
fn one_size(ctx: &Ctx<'_>, dir: &Path, mb: u64) -> Result<(f64, f64, f64, f64), BenchError> {
    let pdir = dir.join("primary");
    cluster::init(&ctx.exe, &pdir)?;
    let mut node = Node::start(&ctx.exe, &pdir, &[])?;
    let keys = (mb << 20) / SIZE_VALUE_BYTES as u64;
    load_keys(node.port, "d", 0, keys, SIZE_VALUE_BYTES)?;
    let t = Instant::now();
    let copy = dir.join("copy");
    base_backup(&ctx.exe, node.repl_port, &copy)?;
    let backup_s = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&copy);
    let mut c = node.connect()?;
    let p = c.info("persistence")?;
    let ckpt_keys: u64 = p
        .get("last_checkpoint_keys")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if ckpt_keys < keys {
        return Err(BenchError::Server(format!(
            "the base backup's checkpoint wrote {ckpt_keys} keys, not the {keys} loaded"
        )));
    }
    let checkpoint_ms: f64 = p
        .get("last_checkpoint_duration_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    drop(c);
    node.child.kill();
    let t = Instant::now();
    let node = Node::start(&ctx.exe, &pdir, &[])?;
    let restart_s = t.elapsed().as_secs_f64();
    let rss_mb = rss_bytes(node.child.pid()).unwrap_or(0) as f64 / (1 << 20) as f64;
    node.stop();
    Ok((backup_s, checkpoint_ms, restart_s, rss_mb))
}

/// `walrep basebackup --no-slot` of the node at `repl_port` into `dest`.
fn base_backup(exe: &Path, repl_port: u16, dest: &Path) -> Result<(), BenchError> {
    let out = std::process::Command::new(exe)
        .arg("basebackup")
        .args(["--from", &format!("127.0.0.1:{repl_port}"), "-D"])
        .arg(dest)
        .args(["--no-slot", "-U", "walrep"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| BenchError::io("walrep basebackup", e))?;
    if !out.status.success() {
        return Err(BenchError::Server(format!(
            "walrep basebackup failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topologies_cover_every_count_and_mode() {
        let t = topologies(4);
        assert_eq!(t[0], (0, Sync::Async));
        assert!(t.contains(&(1, Sync::Any1)));
        assert!(!t.contains(&(1, Sync::First2)));
        assert!(t.contains(&(4, Sync::First2)));
        assert_eq!(t.len(), 9);
        assert_eq!(topologies(2).len(), 6);
        assert_eq!(Sync::First2.names(2), "FIRST 2 (s1,s2)");
        assert_eq!(Sync::Any1.names(1), "ANY 1 (s1)");
        assert_eq!(Sync::Async.names(4), "");
    }

    #[test]
    fn proc_fields_and_costs() {
        let stat = "42 (postgres: walsender x) S 7 2 3 4 5 6 7 8 9 10 250 50 30 20";
        assert_eq!(stat_field(stat, 1), Some(7.0));
        assert_eq!(stat_cpu_s(stat, false), 3.0);
        assert_eq!(stat_cpu_s(stat, true), 3.5);
        assert_eq!(
            parse_vm_rss("Name:\twalrep\nVmRSS:\t  2048 kB\n"),
            Some(2 << 20)
        );
        assert_eq!(parse_vm_rss("Name:\twalrep\n"), None);
        let c = cost(1000.0, 10_000, 0.5, 0.2, 2);
        assert_eq!(c.cpu_us, 50.0);
        assert_eq!(c.walsender_us, 10.0);
        assert!(cost(1.0, 1, 0.0, 0.0, 0).walsender_us.is_nan());
        assert!(pg_cpu_s(std::process::id()) > 0.0 || rss_bytes(std::process::id()).is_some());
    }
}
