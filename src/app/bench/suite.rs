//! The `redis` scenario: redis-benchmark's own test set (`-t set,get,incr,
//! lpush,rpush,lpop,rpop,sadd,hset,spop,lrange_100`) against walrep with
//! `synchronous_commit = local` and Redis 7 with `appendfsync always`,
//! both started by this run and measured in the same minutes.
//!
//! Both servers run side by side; for each client count and each test,
//! a short calibration run on walrep sizes the measured runs to last about
//! `--seconds` in all, and both servers get the same calibration run (as
//! warm-up) and the same measured runs, so their keyspaces (the list LPOP
//! drains, the set SPOP empties) evolve alike. The measured runs alternate
//! between the servers in four slices, so a change of the disk's speed
//! (frequent on these machines) hits both alike. Ratios are
//! walrep / Redis; the targets: every write at 64 clients ≥ 1.0, reads
//! ≥ 0.8.

use std::time::{Duration, Instant};

use super::fsync::FsyncProber;
use super::loadgen::{self, Load, LoadResult};
use super::report::median;
use super::{procs, require_tool, BenchArgs, BenchError};

/// redis-benchmark's tests, in its own order, and whether each writes.
pub const TESTS: &[(&str, bool)] = &[
    ("set", true),
    ("get", false),
    ("incr", true),
    ("lpush", true),
    ("rpush", true),
    ("lpop", true),
    ("rpop", true),
    ("sadd", true),
    ("hset", true),
    ("spop", true),
    ("lrange_100", false),
];

/// At 64 clients every write reaches this share of Redis's rate...
pub const TARGET_WRITE_RATIO: f64 = 1.0;
/// ...and every read this share.
pub const TARGET_READ_RATIO: f64 = 0.8;

/// Requests of a calibration run per client (bounded below and above).
const CALIBRATION_PER_CLIENT: u64 = 100;

/// One test at one client count, on both servers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SuiteCell {
    pub test: &'static str,
    pub write: bool,
    pub clients: u32,
    pub rep: u32,
    pub walrep: LoadResult,
    pub redis: LoadResult,
    /// walrep / Redis requests per second.
    pub ratio: f64,
}

/// The median ratio of a test at a client count, and its target.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SuiteSummary {
    pub test: &'static str,
    pub clients: u32,
    pub walrep_rps: f64,
    pub redis_rps: f64,
    pub ratio: f64,
    pub walrep_p99_ms: f64,
    pub redis_p99_ms: f64,
    /// The target at 64 clients (`None` at other counts).
    pub target: Option<f64>,
    pub met: Option<bool>,
}

/// What the scenario measured.
#[derive(Debug, serde::Serialize)]
pub struct SuiteReport {
    pub cells: Vec<SuiteCell>,
    pub summaries: Vec<SuiteSummary>,
    /// fdatasync rate before and after the whole run.
    pub fsync_per_s: (f64, f64),
    pub elapsed_s: f64,
}

/// Run the scenario and print its table.
pub fn run(args: &BenchArgs) -> Result<SuiteReport, BenchError> {
    require_tool("redis-benchmark")?;
    require_tool("redis-server")?;
    let started = Instant::now();
    let run_dir = super::RunDir::create(args, "walrep-bench-redis-")?;
    let dir = run_dir.path().to_path_buf();
    let exe = std::env::current_exe().map_err(|e| BenchError::io("find this binary", e))?;
    let mut prober = FsyncProber::create(&dir)?;
    let probe_time = Duration::from_secs_f64(args.fsync_seconds);
    let f0 = prober.probe(probe_time)?.ops_per_s;
    println!(
        "walrep bench --scenario redis: redis-benchmark -t {} -d {} -r {}, about {} s per test; walrep synchronous_commit=local beside Redis appendfsync=always; data in {}",
        TESTS.iter().map(|t| t.0).collect::<Vec<_>>().join(","),
        args.value_bytes,
        args.keyspace,
        args.seconds,
        dir.display()
    );
    let mut cells = Vec::new();
    for rep in 1..=args.reps {
        let (mut walrep, wport) =
            procs::start_walrep(&exe, &dir.join(format!("walrep-r{rep}")), "local")?;
        let (mut redis, rport) = procs::start_redis(&dir.join(format!("redis-r{rep}")), "always")?;
        for &clients in &args.clients {
            for &(test, write) in TESTS {
                let cell = measure(args, &dir, (wport, rport), test, write, clients, rep)?;
                println!(
                    "  {test:<10} {clients:>3} clients rep {rep}: walrep {:>9.0}/s (p99 {:.3} ms)  redis {:>9.0}/s (p99 {:.3} ms)  ratio {:.2}",
                    cell.walrep.rps, cell.walrep.p99_ms, cell.redis.rps, cell.redis.p99_ms, cell.ratio
                );
                cells.push(cell);
            }
        }
        walrep.stop();
        redis.stop();
    }
    let f1 = prober.probe(probe_time)?.ops_per_s;
    let summaries = summarise(&cells, &args.clients);
    println!("\nfdatasync {f0:.0}/s before, {f1:.0}/s after\n");
    print!("{}", table(&summaries));
    println!("elapsed {:.0} s", started.elapsed().as_secs_f64());
    run_dir.finish(args.keep);
    Ok(SuiteReport {
        cells,
        summaries,
        fsync_per_s: (f0, f1),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// Alternations of walrep and Redis per measured test: the disk of these
/// machines changes speed within seconds, and short alternating slices
/// (walrep first in odd rounds, Redis first in even ones) give both
/// servers the same disk.
pub(crate) const ROUNDS: u64 = 4;

/// One test at one client count: calibrate on walrep, then the same runs
/// on both servers, in alternating slices.
fn measure(
    args: &BenchArgs,
    dir: &std::path::Path,
    (wport, rport): (u16, u16),
    test: &'static str,
    write: bool,
    clients: u32,
    rep: u32,
) -> Result<SuiteCell, BenchError> {
    let load = |port| Load {
        port,
        clients,
        keyspace: args.keyspace,
        value_bytes: args.value_bytes,
    };
    let calib_n = (CALIBRATION_PER_CLIENT * clients as u64).clamp(1000, 20_000);
    let calib_limit = Duration::from_secs(120);
    // Sized by the calibration's wall time, not its rate: `lrange_100`
    // first fills the list with as many LPUSHes (durable writes).
    let t0 = Instant::now();
    loadgen::run_test(&load(wport), test, calib_n, calib_limit, dir)?;
    let per_request_s = t0.elapsed().as_secs_f64() / calib_n as f64;
    loadgen::run_test(&load(rport), test, calib_n, calib_limit, dir)?;
    let n = ((args.seconds as f64 / per_request_s / ROUNDS as f64) as u64).clamp(500, 5_000_000);
    let limit = Duration::from_secs(args.seconds * 5 + 60);
    let (mut walrep, mut redis) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let one = |port, out: &mut Vec<LoadResult>| -> Result<(), BenchError> {
            out.push(loadgen::run_test(&load(port), test, n, limit, dir)?);
            Ok(())
        };
        if round % 2 == 0 {
            one(wport, &mut walrep)?;
            one(rport, &mut redis)?;
        } else {
            one(rport, &mut redis)?;
            one(wport, &mut walrep)?;
        }
    }
    let (walrep, redis) = (combine(&walrep), combine(&redis));
    Ok(SuiteCell {
        test,
        write,
        clients,
        rep,
        ratio: walrep.rps / redis.rps,
        walrep,
        redis,
    })
}

/// Runs of equal size as one: requests over total time, the median of
/// the latencies.
pub(crate) fn combine(runs: &[LoadResult]) -> LoadResult {
    let requests: u64 = runs.iter().map(|r| r.requests).sum();
    let secs: f64 = runs.iter().map(|r| r.requests as f64 / r.rps).sum();
    let med = |f: fn(&LoadResult) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    LoadResult {
        rps: requests as f64 / secs,
        mean_ms: med(|r| r.mean_ms),
        p50_ms: med(|r| r.p50_ms),
        p99_ms: med(|r| r.p99_ms),
        max_ms: runs.iter().map(|r| r.max_ms).fold(0.0, f64::max),
        requests,
    }
}

/// Medians over the repetitions, with the targets at 64 clients.
pub fn summarise(cells: &[SuiteCell], clients: &[u32]) -> Vec<SuiteSummary> {
    let mut out = Vec::new();
    for &c in clients {
        for &(test, write) in TESTS {
            let these: Vec<&SuiteCell> = cells
                .iter()
                .filter(|x| x.test == test && x.clients == c)
                .collect();
            if these.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&SuiteCell) -> f64| {
                median(&mut these.iter().map(|x| f(x)).collect::<Vec<_>>())
            };
            let ratio = med(&|x| x.ratio);
            let target = (c == 64).then_some(if write {
                TARGET_WRITE_RATIO
            } else {
                TARGET_READ_RATIO
            });
            out.push(SuiteSummary {
                test,
                clients: c,
                walrep_rps: med(&|x| x.walrep.rps),
                redis_rps: med(&|x| x.redis.rps),
                ratio,
                walrep_p99_ms: med(&|x| x.walrep.p99_ms),
                redis_p99_ms: med(&|x| x.redis.p99_ms),
                target,
                met: target.map(|t| ratio >= t),
            });
        }
    }
    out
}

/// The summary as a Markdown table.
pub fn table(summaries: &[SuiteSummary]) -> String {
    let mut t = String::from(
        "| test | clients | walrep req/s | Redis req/s | walrep / Redis | walrep p99 ms | Redis p99 ms | target |\n|---|---|---|---|---|---|---|---|\n",
    );
    for s in summaries {
        let target = match (s.target, s.met) {
            (Some(t), Some(met)) => format!("≥ {t:.1}: {}", if met { "met" } else { "NOT met" }),
            _ => "-".into(),
        };
        t.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.3} | {:.3} | {target} |\n",
            s.test, s.clients, s.walrep_rps, s.redis_rps, s.ratio, s.walrep_p99_ms, s.redis_p99_ms
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(rps: f64) -> LoadResult {
        LoadResult {
            rps,
            mean_ms: 1.0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            max_ms: 3.0,
            requests: 10,
        }
    }

    #[test]
    fn rounds_combine_into_requests_over_time() {
        let mut a = result(100.0);
        a.requests = 100;
        let mut b = result(50.0);
        b.requests = 100;
        let c = combine(&[a, b]);
        assert_eq!(c.requests, 200);
        assert!((c.rps - 200.0 / 3.0).abs() < 1e-9, "{}", c.rps);
    }

    #[test]
    fn summaries_take_medians_and_judge_64_clients() {
        let cell = |test, write, clients, rep, w: f64, r: f64| SuiteCell {
            test,
            write,
            clients,
            rep,
            walrep: result(w),
            redis: result(r),
            ratio: w / r,
        };
        let cells = vec![
            cell("set", true, 64, 1, 90.0, 100.0),
            cell("set", true, 64, 2, 110.0, 100.0),
            cell("set", true, 64, 3, 120.0, 100.0),
            cell("get", false, 64, 1, 85.0, 100.0),
            cell("get", false, 1, 1, 50.0, 100.0),
        ];
        let s = summarise(&cells, &[1, 64]);
        let find = |t, c| s.iter().find(|x| x.test == t && x.clients == c).unwrap();
        assert_eq!(find("set", 64).ratio, 1.1);
        assert_eq!(find("set", 64).met, Some(true));
        assert_eq!(find("get", 64).met, Some(true), "reads need 0.8");
        assert_eq!(find("get", 1).met, None, "no target at one client");
        assert!(table(&s).contains("| set | 64 | 110 | 100 | 1.10 |"));
    }
}
