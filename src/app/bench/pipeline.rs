//! The `pipeline` scenario: pipelined SET (`redis-benchmark -t set -P 32
//! -c 16`) against walrep with `synchronous_commit = off` and Redis 7 with
//! `appendonly yes`, `appendfsync no`, both started by this run side by
//! side on the same filesystem: neither waits for a disk, so this measures
//! the store and the protocol path of each server.
//!
//! Three key patterns: redis-benchmark's default (every SET to its one
//! key, 3-byte values), and random keys (`-r 100000 -d 16`, and `-r
//! 1000000` as a larger keyspace), each keyspace preloaded on both servers
//! with the same pipelined SETs before its runs, so the measured SETs
//! overwrite keys of a store of that size. Per pattern, a calibration run
//! on each server (also its warm-up) sizes the measured runs to about
//! `--seconds` per server, and the measured runs alternate between the
//! servers in slices as the `redis` scenario's do (the disk and CPU of
//! these machines change within seconds). Fresh servers for every
//! repetition.
//!
//! Figures: requests/s of each server, walrep / Redis per repetition and
//! its median, and the CPU per SET of each server process (utime + stime
//! of `/proc/PID/stat` over its own slices, divided by their requests):
//! the load-independent figure on a shared machine. The target: walrep /
//! Redis ≥ 1.0 for the default pattern; the random-key ratios are figures.

use std::path::Path;
use std::time::{Duration, Instant};

use super::loadgen::{self, Load, LoadResult};
use super::procs::{self, Child};
use super::report::median;
use super::suite::{combine, ROUNDS};
use super::{cluster, memory, require_tool, BenchArgs, BenchError};

/// Requests in flight per connection (`-P`).
pub const PIPELINE: u32 = 32;
/// Connections (`-c`).
pub const CLIENTS: u32 = 16;
/// walrep / Redis requests/s the default pattern must reach.
pub const TARGET_RATIO: f64 = 1.0;

/// Requests of each calibration run (at least a few round trips of every
/// connection's pipeline).
const CALIBRATION_REQUESTS: u64 = 100_000;
/// Fewest and most requests of one measured slice.
const MIN_SLICE: u64 = 10_000;
const MAX_SLICE: u64 = 100_000_000;
/// Value size of the preloaded keys (the random patterns' `-d`).
const PRELOAD_VALUE_BYTES: u32 = 16;
/// walrep's threads whose CPU the report splits out, by name prefix: the
/// connection loops, their commit waiters, the WAL writer.
pub const WALREP_THREADS: [&str; 3] = ["redis-worker", "redis-commit", "walwriter"];

/// The keys and values of one pattern's SETs.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Pattern {
    /// Its name in the report.
    pub name: &'static str,
    /// redis-benchmark `-r`; 0: no `-r`, every SET to one key.
    pub keyspace: u64,
    /// redis-benchmark `-d`.
    pub value_bytes: u32,
    /// Whether [`TARGET_RATIO`] applies (the others are figures).
    pub judged: bool,
}

/// The patterns, in the order they run (growing stores).
pub const PATTERNS: &[Pattern] = &[
    Pattern {
        name: "one-key",
        keyspace: 0,
        value_bytes: 3,
        judged: true,
    },
    Pattern {
        name: "random-100k",
        keyspace: 100_000,
        value_bytes: 16,
        judged: false,
    },
    Pattern {
        name: "random-1m",
        keyspace: 1_000_000,
        value_bytes: 16,
        judged: false,
    },
];

impl Pattern {
    /// The redis-benchmark options that make this pattern.
    pub fn options(&self) -> String {
        let keys = if self.keyspace > 0 {
            format!(" -r {}", self.keyspace)
        } else {
            String::new()
        };
        format!(
            "-t set -P {PIPELINE} -c {CLIENTS}{keys} -d {}",
            self.value_bytes
        )
    }
}

/// One server's measured slices of one pattern.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerRun {
    /// redis-benchmark's figures, the slices combined.
    pub load: LoadResult,
    /// CPU seconds (user + system) of the server process over its slices.
    pub cpu_s: f64,
    /// `cpu_s` per request, in microseconds.
    pub cpu_per_set_us: f64,
    /// walrep: CPU per request of each group of [`WALREP_THREADS`], in
    /// microseconds (empty for Redis, one thread).
    pub threads_cpu_per_set_us: Vec<(&'static str, f64)>,
}

/// CPU seconds a server used during one slice: the process, and walrep's
/// thread groups.
#[derive(Debug, Clone, Default)]
struct CpuUsed {
    process_s: f64,
    threads_s: Vec<(&'static str, f64)>,
}

/// One pattern in one repetition, on both servers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipelineCell {
    pub pattern: &'static str,
    pub rep: u32,
    pub walrep: ServerRun,
    pub redis: ServerRun,
    /// walrep / Redis requests per second.
    pub ratio: f64,
    /// walrep / Redis CPU per SET.
    pub cpu_ratio: f64,
    /// 1-minute load average after the slices.
    pub load_avg: f64,
}

/// One pattern over the repetitions: medians, and the target.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipelineSummary {
    pub pattern: &'static str,
    /// The redis-benchmark options.
    pub options: String,
    pub walrep_rps: f64,
    pub redis_rps: f64,
    /// walrep / Redis of each repetition, in order.
    pub ratios: Vec<f64>,
    /// Their median.
    pub ratio: f64,
    pub walrep_cpu_per_set_us: f64,
    /// Of which each of [`WALREP_THREADS`] (medians).
    pub walrep_threads_cpu_per_set_us: Vec<(&'static str, f64)>,
    pub redis_cpu_per_set_us: f64,
    /// walrep / Redis CPU per SET, median over the repetitions.
    pub cpu_ratio: f64,
    /// [`TARGET_RATIO`] for the judged pattern, `None` for the figures.
    pub target: Option<f64>,
    pub met: Option<bool>,
}

/// What the scenario measured.
#[derive(Debug, serde::Serialize)]
pub struct PipelineReport {
    pub cells: Vec<PipelineCell>,
    pub summaries: Vec<PipelineSummary>,
    /// 1-minute load average before and after the run.
    pub load_avg: (f64, f64),
    pub elapsed_s: f64,
}

/// A server under measurement.
struct Server {
    child: Child,
    port: u16,
    /// Thread groups to split the CPU into ([`WALREP_THREADS`] or none).
    threads: &'static [&'static str],
}

/// Run the scenario and print its table.
pub fn run(args: &BenchArgs) -> Result<PipelineReport, BenchError> {
    require_tool("redis-benchmark")?;
    require_tool("redis-server")?;
    let started = Instant::now();
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let run_dir = tempfile::Builder::new()
        .prefix("walrep-bench-pipeline-")
        .tempdir_in(&base)
        .map_err(|e| BenchError::io(format!("create a directory in {}", base.display()), e))?;
    let dir = run_dir.path();
    let exe = std::env::current_exe().map_err(|e| BenchError::io("find this binary", e))?;
    let load_before = cluster::load_average();
    println!(
        "walrep bench --scenario pipeline: redis-benchmark -t set -P {PIPELINE} -c {CLIENTS}, about {} s per pattern and server, {} rep(s); walrep synchronous_commit=off beside Redis appendfsync=no; data in {}; load average {load_before:.2}",
        args.seconds,
        args.reps,
        dir.display()
    );
    let mut cells = Vec::new();
    for rep in 1..=args.reps {
        let (child, port) = procs::start_walrep(&exe, &dir.join(format!("walrep-r{rep}")), "off")?;
        let mut walrep = Server {
            child,
            port,
            threads: &WALREP_THREADS,
        };
        let (child, port) = procs::start_redis(&dir.join(format!("redis-r{rep}")), "no")?;
        let mut redis = Server {
            child,
            port,
            threads: &[],
        };
        let mut loaded = 0;
        for pattern in PATTERNS {
            if pattern.keyspace > loaded {
                preload(&mut walrep, &mut redis, loaded..pattern.keyspace)?;
                loaded = pattern.keyspace;
            }
            let cell = measure(args, dir, (&mut walrep, &mut redis), pattern, rep)?;
            println!(
                "  {:<12} rep {rep}: walrep {:>9.0}/s {:.3} us CPU/SET ({})  redis {:>9.0}/s {:.3} us CPU/SET  ratio {:.2}  CPU ratio {:.2}  load {:.2}",
                pattern.name,
                cell.walrep.load.rps,
                cell.walrep.cpu_per_set_us,
                split(&cell.walrep.threads_cpu_per_set_us),
                cell.redis.load.rps,
                cell.redis.cpu_per_set_us,
                cell.ratio,
                cell.cpu_ratio,
                cell.load_avg
            );
            cells.push(cell);
        }
        walrep.child.stop();
        redis.child.stop();
    }
    let summaries = summarise(&cells);
    let load_after = cluster::load_average();
    println!("\nload average {load_before:.2} before, {load_after:.2} after\n");
    print!("{}", table(&summaries));
    for s in &summaries {
        println!("{}", verdict(s));
    }
    println!("elapsed {:.0} s", started.elapsed().as_secs_f64());
    if args.keep {
        let kept = run_dir.keep();
        println!("data directories and logs kept in {}", kept.display());
    }
    Ok(PipelineReport {
        cells,
        summaries,
        load_avg: (load_before, load_after),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// SET keys `keys` of redis-benchmark's `-r` names on both servers, the
/// same way.
fn preload(
    walrep: &mut Server,
    redis: &mut Server,
    keys: std::ops::Range<u64>,
) -> Result<(), BenchError> {
    let mut took_s = [0.0; 2];
    for (i, server) in [walrep, redis].into_iter().enumerate() {
        let t0 = Instant::now();
        memory::load_keys(server.port, keys.clone(), PRELOAD_VALUE_BYTES)?;
        server.child.check_alive()?;
        took_s[i] = t0.elapsed().as_secs_f64();
    }
    println!(
        "  preloaded keys {}..{} ({PRELOAD_VALUE_BYTES}-byte values): walrep {:.1} s, redis {:.1} s",
        keys.start, keys.end, took_s[0], took_s[1]
    );
    Ok(())
}

/// One pattern on both servers: a calibration run on each, then the same
/// number of requests on both in alternating slices.
fn measure(
    args: &BenchArgs,
    dir: &Path,
    (walrep, redis): (&mut Server, &mut Server),
    pattern: &Pattern,
    rep: u32,
) -> Result<PipelineCell, BenchError> {
    let calib_limit = Duration::from_secs(120);
    let t0 = Instant::now();
    slice(walrep, pattern, CALIBRATION_REQUESTS, calib_limit, dir)?;
    slice(redis, pattern, CALIBRATION_REQUESTS, calib_limit, dir)?;
    let per_request_s = t0.elapsed().as_secs_f64() / (2 * CALIBRATION_REQUESTS) as f64;
    let n =
        ((args.seconds as f64 / per_request_s / ROUNDS as f64) as u64).clamp(MIN_SLICE, MAX_SLICE);
    let limit = Duration::from_secs(args.seconds * 5 + 60);
    let (mut w, mut r) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            w.push(slice(walrep, pattern, n, limit, dir)?);
            r.push(slice(redis, pattern, n, limit, dir)?);
        } else {
            r.push(slice(redis, pattern, n, limit, dir)?);
            w.push(slice(walrep, pattern, n, limit, dir)?);
        }
    }
    let (walrep, redis) = (server_run(&w), server_run(&r));
    Ok(PipelineCell {
        pattern: pattern.name,
        rep,
        ratio: walrep.load.rps / redis.load.rps,
        cpu_ratio: walrep.cpu_per_set_us / redis.cpu_per_set_us,
        walrep,
        redis,
        load_avg: cluster::load_average(),
    })
}

/// One redis-benchmark run of `requests` pipelined SETs on `server`, with
/// the CPU seconds its process used meanwhile.
fn slice(
    server: &mut Server,
    pattern: &Pattern,
    requests: u64,
    limit: Duration,
    dir: &Path,
) -> Result<(LoadResult, CpuUsed), BenchError> {
    let load = Load {
        port: server.port,
        clients: CLIENTS,
        keyspace: pattern.keyspace,
        value_bytes: pattern.value_bytes,
    };
    let before = cpu_used(server)?;
    let result = loadgen::run_pipelined(&load, requests, PIPELINE, limit, dir)?;
    let after = cpu_used(server)?;
    server.child.check_alive()?;
    let used = CpuUsed {
        process_s: after.process_s - before.process_s,
        threads_s: after
            .threads_s
            .iter()
            .zip(&before.threads_s)
            .map(|(a, b)| (a.0, a.1 - b.1))
            .collect(),
    };
    Ok((result, used))
}

/// CPU seconds the server has used so far, in all and per thread group.
fn cpu_used(server: &Server) -> Result<CpuUsed, BenchError> {
    let pid = server.child.pid();
    let unreadable = || BenchError::Server(format!("cannot read /proc/{pid}/stat"));
    let mut used = CpuUsed {
        process_s: cluster::process_cpu_s(pid).ok_or_else(unreadable)?,
        threads_s: Vec::new(),
    };
    for &prefix in server.threads {
        let s = cluster::threads_cpu_s(pid, prefix).ok_or_else(unreadable)?;
        used.threads_s.push((prefix, s));
    }
    Ok(used)
}

/// walrep's CPU split, as `redis-worker 0.40, walwriter 0.03`.
fn split(threads: &[(&str, f64)]) -> String {
    let parts: Vec<String> = threads
        .iter()
        .map(|(name, us)| format!("{name} {us:.3}"))
        .collect();
    parts.join(", ")
}

/// Slices of one server as one run.
fn server_run(slices: &[(LoadResult, CpuUsed)]) -> ServerRun {
    let loads: Vec<LoadResult> = slices.iter().map(|s| s.0).collect();
    let load = combine(&loads);
    let per_set_us = |s: f64| s * 1e6 / load.requests as f64;
    let cpu_s: f64 = slices.iter().map(|s| s.1.process_s).sum();
    let groups = slices.first().map_or(&[][..], |s| &s.1.threads_s[..]);
    let threads_cpu_per_set_us = groups
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let s: f64 = slices.iter().map(|x| x.1.threads_s[i].1).sum();
            (*name, per_set_us(s))
        })
        .collect();
    ServerRun {
        load,
        cpu_s,
        cpu_per_set_us: per_set_us(cpu_s),
        threads_cpu_per_set_us,
    }
}

/// Medians over the repetitions, per pattern, with the target.
pub fn summarise(cells: &[PipelineCell]) -> Vec<PipelineSummary> {
    let mut out = Vec::new();
    for pattern in PATTERNS {
        let these: Vec<&PipelineCell> =
            cells.iter().filter(|c| c.pattern == pattern.name).collect();
        if these.is_empty() {
            continue;
        }
        let med = |f: &dyn Fn(&PipelineCell) -> f64| {
            median(&mut these.iter().map(|c| f(c)).collect::<Vec<_>>())
        };
        let ratio = med(&|c| c.ratio);
        let target = pattern.judged.then_some(TARGET_RATIO);
        out.push(PipelineSummary {
            pattern: pattern.name,
            options: pattern.options(),
            walrep_rps: med(&|c| c.walrep.load.rps),
            redis_rps: med(&|c| c.redis.load.rps),
            ratios: these.iter().map(|c| c.ratio).collect(),
            ratio,
            walrep_cpu_per_set_us: med(&|c| c.walrep.cpu_per_set_us),
            walrep_threads_cpu_per_set_us: WALREP_THREADS
                .iter()
                .map(|&name| (name, med(&|c| thread_cpu(&c.walrep, name))))
                .collect(),
            redis_cpu_per_set_us: med(&|c| c.redis.cpu_per_set_us),
            cpu_ratio: med(&|c| c.cpu_ratio),
            target,
            met: target.map(|t| ratio >= t),
        });
    }
    out
}

/// CPU per SET of one of walrep's thread groups in a run (NaN if unread).
fn thread_cpu(run: &ServerRun, name: &str) -> f64 {
    run.threads_cpu_per_set_us
        .iter()
        .find(|t| t.0 == name)
        .map_or(f64::NAN, |t| t.1)
}

/// The summaries as a Markdown table.
pub fn table(summaries: &[PipelineSummary]) -> String {
    let mut t = String::from(
        "| pattern | redis-benchmark | walrep req/s | Redis req/s | walrep / Redis per rep | median | walrep CPU µs/SET | of which | Redis CPU µs/SET | CPU walrep / Redis | target |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in summaries {
        let target = match (s.target, s.met) {
            (Some(t), Some(met)) => format!("≥ {t:.1}: {}", if met { "met" } else { "NOT met" }),
            _ => "-".into(),
        };
        let per_rep: Vec<String> = s.ratios.iter().map(|r| format!("{r:.2}")).collect();
        t.push_str(&format!(
            "| {} | `{}` | {:.0} | {:.0} | {} | {:.2} | {:.3} | {} | {:.3} | {:.2} | {target} |\n",
            s.pattern,
            s.options,
            s.walrep_rps,
            s.redis_rps,
            per_rep.join(" / "),
            s.ratio,
            s.walrep_cpu_per_set_us,
            split(&s.walrep_threads_cpu_per_set_us),
            s.redis_cpu_per_set_us,
            s.cpu_ratio
        ));
    }
    t
}

/// The closing line of a pattern: the target's verdict, or the figure.
fn verdict(s: &PipelineSummary) -> String {
    let head = format!(
        "pipelined SET ({}) walrep / Redis: {:.2}, CPU per SET {:.3} / {:.3} us",
        s.pattern, s.ratio, s.walrep_cpu_per_set_us, s.redis_cpu_per_set_us
    );
    match (s.target, s.met) {
        (Some(t), Some(met)) => format!(
            "target: {head} (≥ {t:.1}) -> {}",
            if met { "met" } else { "NOT met" }
        ),
        _ => format!("figure: {head}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(rps: f64, cpu_per_set_us: f64) -> ServerRun {
        ServerRun {
            load: LoadResult {
                rps,
                mean_ms: 1.0,
                p50_ms: 1.0,
                p99_ms: 2.0,
                max_ms: 3.0,
                requests: 1000,
            },
            cpu_s: cpu_per_set_us * 1000.0 / 1e6,
            cpu_per_set_us,
            threads_cpu_per_set_us: vec![("redis-worker", cpu_per_set_us / 2.0)],
        }
    }

    fn cell(pattern: &'static str, rep: u32, w: f64, r: f64) -> PipelineCell {
        PipelineCell {
            pattern,
            rep,
            walrep: server(w, 0.5),
            redis: server(r, 1.0),
            ratio: w / r,
            cpu_ratio: 0.5,
            load_avg: 1.0,
        }
    }

    #[test]
    fn only_the_one_key_pattern_is_judged() {
        let cells = vec![
            cell("one-key", 1, 90.0, 100.0),
            cell("one-key", 2, 120.0, 100.0),
            cell("one-key", 3, 110.0, 100.0),
            cell("random-100k", 1, 50.0, 100.0),
        ];
        let s = summarise(&cells);
        assert_eq!(s.len(), 2, "a pattern without cells has no summary");
        assert_eq!(s[0].ratios, vec![0.9, 1.2, 1.1], "per rep, in order");
        assert_eq!(s[0].ratio, 1.1);
        assert_eq!(s[0].met, Some(true));
        assert_eq!(s[1].met, None, "random keys are a figure");
        let t = table(&s);
        assert!(
            t.contains(
                "| one-key | `-t set -P 32 -c 16 -d 3` | 110 | 100 | 0.90 / 1.20 / 1.10 | 1.10 | 0.500 | redis-worker 0.250, redis-commit NaN, walwriter NaN | 1.000 |"
            ),
            "{t}"
        );
        assert!(t.contains("`-t set -P 32 -c 16 -r 100000 -d 16`"), "{t}");
        assert!(verdict(&s[0]).starts_with("target: "));
        assert!(verdict(&s[1]).starts_with("figure: "));
    }

    #[test]
    fn slices_combine_and_cpu_is_per_request() {
        let load = |rps| LoadResult {
            rps,
            mean_ms: 1.0,
            p50_ms: 1.0,
            p99_ms: 1.0,
            max_ms: 1.0,
            requests: 500_000,
        };
        let used = |process_s, worker_s| CpuUsed {
            process_s,
            threads_s: vec![("redis-worker", worker_s), ("walwriter", 0.05)],
        };
        let run = server_run(&[
            (load(500_000.0), used(0.4, 0.3)),
            (load(250_000.0), used(0.6, 0.5)),
        ]);
        assert_eq!(run.load.requests, 1_000_000);
        assert!((run.load.rps - 1_000_000.0 / 3.0).abs() < 1e-6);
        assert!(
            (run.cpu_per_set_us - 1.0).abs() < 1e-9,
            "{}",
            run.cpu_per_set_us
        );
        let t = &run.threads_cpu_per_set_us;
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].0, "redis-worker");
        assert!(
            (t[0].1 - 0.8).abs() < 1e-9 && (t[1].1 - 0.1).abs() < 1e-9,
            "{t:?}"
        );
        assert_eq!(split(t), "redis-worker 0.800, walwriter 0.100");
    }
}
