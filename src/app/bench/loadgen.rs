//! The load generator: redis-benchmark (Debian's redis-tools), SET of
//! 16-byte values on random keys (or any of its tests, for the `redis`
//! scenario), its `--csv` summary parsed.
//!
//! redis-benchmark has no duration option, so each run is sized from a
//! short calibration run (which also warms the server up) to last about
//! the requested time, and killed if it runs far past it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::procs::Child;
use super::BenchError;

/// What one redis-benchmark run measured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LoadResult {
    /// Requests (commits) per second.
    pub rps: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub requests: u64,
}

/// One workload: clients, keyspace, value size.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub port: u16,
    pub clients: u32,
    /// Keys are random over this many (`-r`); 0 leaves `-r` out, so every
    /// request goes to redis-benchmark's one key.
    pub keyspace: u64,
    pub value_bytes: u32,
}

/// Fewest and most requests of one run.
const MIN_REQUESTS: u64 = 500;
const MAX_REQUESTS: u64 = 20_000_000;

/// Calibrate, then run for about `duration`.
pub fn run_for(load: &Load, duration: Duration, dir: &Path) -> Result<LoadResult, BenchError> {
    run_for_with(load, duration, dir, &[])
}

/// [`run_for`] with extra redis-benchmark arguments (`--tls ...`).
pub fn run_for_with(
    load: &Load,
    duration: Duration,
    dir: &Path,
    extra: &[&str],
) -> Result<LoadResult, BenchError> {
    let calib_requests = (200 * load.clients as u64).clamp(1000, 20_000);
    let calib = run_with(load, calib_requests, Duration::from_secs(60), dir, extra)?;
    let requests = ((calib.rps * duration.as_secs_f64()) as u64).clamp(MIN_REQUESTS, MAX_REQUESTS);
    // Allow for a disk that slows down 5x during the run, then give up.
    let limit = duration * 5 + Duration::from_secs(30);
    run_with(load, requests, limit, dir, extra)
}

/// One redis-benchmark run of `requests` SETs, killed after `limit`.
pub fn run(
    load: &Load,
    requests: u64,
    limit: Duration,
    dir: &Path,
) -> Result<LoadResult, BenchError> {
    run_with(load, requests, limit, dir, &[])
}

/// [`run`] with `pipeline` requests in flight per client (`-P`): a bulk
/// load, not a latency figure.
pub fn run_pipelined(
    load: &Load,
    requests: u64,
    pipeline: u32,
    limit: Duration,
    dir: &Path,
) -> Result<LoadResult, BenchError> {
    let p = pipeline.to_string();
    run_with(load, requests, limit, dir, &["-P", &p])
}

/// [`run`] with extra redis-benchmark arguments (`--tls ...`).
fn run_with(
    load: &Load,
    requests: u64,
    limit: Duration,
    dir: &Path,
    extra: &[&str],
) -> Result<LoadResult, BenchError> {
    run_test_with(load, "set", requests, limit, dir, extra)
}

/// One redis-benchmark run of its test `test` (`-t`, e.g. `lpush`,
/// `lrange_100`), `requests` requests, killed after `limit`.
pub fn run_test(
    load: &Load,
    test: &str,
    requests: u64,
    limit: Duration,
    dir: &Path,
) -> Result<LoadResult, BenchError> {
    run_test_with(load, test, requests, limit, dir, &[])
}

/// [`run_test`] with extra redis-benchmark arguments.
fn run_test_with(
    load: &Load,
    test: &str,
    requests: u64,
    limit: Duration,
    dir: &Path,
    extra: &[&str],
) -> Result<LoadResult, BenchError> {
    let out_path = dir.join(format!("redis-benchmark.{test}.c{}.csv", load.clients));
    let out = std::fs::File::create(&out_path)
        .map_err(|e| BenchError::io(format!("create {}", out_path.display()), e))?;
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", "127.0.0.1", "-p", &load.port.to_string()])
        .args(["-t", test, "--csv"])
        .args(["-c", &load.clients.to_string()])
        .args(["-n", &requests.to_string()])
        .args(["-d", &load.value_bytes.to_string()])
        .args(extra)
        .stdout(out)
        .stderr(Stdio::null());
    if load.keyspace > 0 {
        cmd.args(["-r", &load.keyspace.to_string()]);
    }
    let mut child = Child::spawn("redis-benchmark", &mut cmd)?;
    let deadline = Instant::now() + limit;
    while !child.exited()? {
        if Instant::now() >= deadline {
            child.stop();
            return Err(BenchError::Load(format!(
                "redis-benchmark ({} clients, {requests} requests) did not finish within {limit:?}",
                load.clients
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&out_path)
        .map_err(|e| BenchError::io(format!("read {}", out_path.display()), e))?;
    let mut r = parse_test_csv(&text, &test.to_ascii_uppercase())?;
    r.requests = requests;
    Ok(r)
}

/// Parse redis-benchmark's `--csv` output: a header line, then
/// `"SET","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`.
#[cfg(test)]
pub fn parse_csv(text: &str) -> Result<LoadResult, BenchError> {
    parse_test_csv(text, "SET")
}

/// The row of test `title` (`LRANGE_100` matches `"LRANGE_100 (first 100
/// elements)"`; the `LPUSH (needed to benchmark LRANGE)` row before it
/// does not match `LPUSH`'s own test, which runs alone).
pub fn parse_test_csv(text: &str, title: &str) -> Result<LoadResult, BenchError> {
    let bad = |why: &str| BenchError::Load(format!("redis-benchmark output: {why}: {text:?}"));
    let header = text
        .lines()
        .find(|l| l.starts_with("\"test\""))
        .ok_or_else(|| bad("no CSV header"))?;
    let names: Vec<String> = fields(header);
    let row = text
        .lines()
        .find(|l| {
            let name = l.trim_start_matches('"');
            name.strip_prefix(title)
                .is_some_and(|rest| rest.starts_with('"') || rest.starts_with(" (first"))
        })
        .ok_or_else(|| bad(&format!("no {title} line")))?;
    let values = fields(row);
    let get = |name: &str| -> Result<f64, BenchError> {
        let i = names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| bad(&format!("no column {name}")))?;
        values
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .ok_or_else(|| bad(&format!("column {name} is not a number")))
    };
    Ok(LoadResult {
        rps: get("rps")?,
        mean_ms: get("avg_latency_ms")?,
        p50_ms: get("p50_latency_ms")?,
        p99_ms: get("p99_latency_ms")?,
        max_ms: get("max_latency_ms")?,
        requests: 0,
    })
}

fn fields(line: &str) -> Vec<String> {
    line.split(',')
        .map(|f| f.trim().trim_matches('"').to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_benchmark_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"SET\",\"6996.27\",\"0.140\",\"0.104\",\"0.135\",\"0.191\",\"0.247\",\"5.031\"\n";
        let r = parse_csv(text).unwrap();
        assert_eq!(r.rps, 6996.27);
        assert_eq!(r.mean_ms, 0.140);
        assert_eq!(r.p50_ms, 0.135);
        assert_eq!(r.p99_ms, 0.247);
        assert_eq!(r.max_ms, 5.031);
    }

    #[test]
    fn refuses_output_without_figures() {
        assert!(parse_csv("").is_err());
        assert!(
            parse_csv("Could not connect to Redis at 127.0.0.1:1: Connection refused\n").is_err()
        );
        let nan = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"SET\",\"-nan\",\"0.1\",\"0\",\"0\",\"0\",\"0\",\"0\"\n";
        assert!(parse_csv(nan).is_err());
    }
}
