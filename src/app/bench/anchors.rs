//! PostgreSQL 15 measured in the same run by the anchor scripts themselves
//! (`shared/anchors/0N_*.sh`): the same method as anchors.md, only with
//! this run's repetitions, durations, ports and scratch directory. As root
//! each script re-runs itself as the `postgres` user (its own `as_pg_user`);
//! the environment (REPS, DUR, ...) passes through `runuser`.
//!
//! A script runs in its own process group under a time bound; on timeout or
//! error the group is killed and `pg_ctl stop -m immediate` is run on the
//! script's clusters, so no PostgreSQL outlives the benchmark. The group is
//! registered with [`interrupt`], which does the same when SIGINT or
//! SIGTERM interrupts the run.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::interrupt;
use super::procs::free_port;
use super::BenchError;

/// Where Debian installs PostgreSQL 15's programs.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The OS user PostgreSQL runs as when we are root.
const PG_USER: &str = "postgres";

/// One finished anchor script: where its results are.
pub struct ScriptRun {
    /// `$BASE/results/<step>`.
    pub results: PathBuf,
    pub elapsed: Duration,
}

/// Run `dir/script` with `BASE=base` and `env`, bounded by `limit`; its
/// output goes to `base.log`. `step` names its results directory.
pub fn run_script(
    anchors_dir: &Path,
    script: &str,
    step: &str,
    base: &Path,
    env: &[(&str, String)],
    limit: Duration,
) -> Result<ScriptRun, BenchError> {
    let path = anchors_dir.join(script);
    if !path.is_file() {
        return Err(BenchError::Anchor(format!(
            "{} not found (--anchors must name shared/anchors)",
            path.display()
        )));
    }
    let log_path = base.with_extension("log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| BenchError::io(format!("create {}", log_path.display()), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| BenchError::io("clone a log handle", e))?;
    let mut cmd = Command::new("bash");
    cmd.arg(&path)
        .env("BASE", base)
        .env("PGBIN", PG_BIN)
        .env("PRIMARY_PORT", free_port()?.to_string())
        .env("STANDBY_PORT", free_port()?.to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    super::procs::die_with_bench(&mut cmd);
    let started = Instant::now();
    let (child, registered) = interrupt::start(
        || {
            cmd.spawn()
                .map_err(|e| BenchError::io(format!("run {}", path.display()), e))
        },
        // process_group(0): the group's id is the script's pid.
        |c| interrupt::Entry::Group(c.id() as libc::pid_t),
    )?;
    let mut guard = GroupGuard {
        child,
        base: base.to_path_buf(),
        done: false,
        _registered: registered,
    };
    let status = guard.wait(limit)?;
    guard.done = true;
    if !status.success() {
        return Err(BenchError::Anchor(format!(
            "{script} failed ({status}); see {}",
            log_path.display()
        )));
    }
    Ok(ScriptRun {
        results: base.join("results").join(step),
        elapsed: started.elapsed(),
    })
}

/// A script's process group; killed (with its clusters stopped) unless it
/// finished.
struct GroupGuard {
    child: std::process::Child,
    base: PathBuf,
    done: bool,
    /// The group in the interrupt registry while the guard lives.
    _registered: interrupt::Registered,
}

impl GroupGuard {
    fn wait(&mut self, limit: Duration) -> Result<std::process::ExitStatus, BenchError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self
                .child
                .try_wait()
                .map_err(|e| BenchError::io("wait for an anchor script", e))?
            {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Anchor(format!(
                    "anchor script did not finish within {limit:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: signals our own child's process group (created with
        // process_group(0), so its id is the child's pid, not yet reaped).
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
        std::thread::sleep(Duration::from_secs(2));
        // SAFETY: as above.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        for cluster in ["primary", "standby"] {
            stop_cluster(&self.base.join(cluster));
        }
    }
}

/// `pg_ctl stop -m immediate` on a cluster a killed script may have left.
fn stop_cluster(data: &Path) {
    if !data.join("postmaster.pid").exists() {
        return;
    }
    let pg_ctl = Path::new(PG_BIN).join("pg_ctl");
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_USER, "--"]).arg(pg_ctl);
        c
    } else {
        Command::new(pg_ctl)
    };
    let _ = cmd
        .arg("-D")
        .arg(data)
        .args(["-m", "immediate", "-w", "-t", "60", "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Rows of a CSV file with a header line, as `column -> value`.
pub fn read_csv(path: &Path) -> Result<Vec<BTreeMap<String, String>>, BenchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BenchError::io(format!("read {}", path.display()), e))?;
    Ok(parse_csv(&text))
}

pub fn parse_csv(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    lines
        .map(|l| {
            names
                .iter()
                .zip(l.split(','))
                .map(|(n, v)| (n.to_string(), v.trim().to_string()))
                .collect()
        })
        .collect()
}

/// The numbers of `column` in the rows where `filter` holds.
pub fn column(
    rows: &[BTreeMap<String, String>],
    column: &str,
    filter: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Vec<f64> {
    rows.iter()
        .filter(|r| filter(r))
        .filter_map(|r| r.get(column)?.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .collect()
}

/// 05_wal_bulk.sh: pg_receivewal (async, sync), catch-up and archive replay
/// MB/s per repetition (MB = 1e6 bytes, as the script).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PgBulk {
    pub receivewal_async_mbps: Vec<f64>,
    pub receivewal_sync_mbps: Vec<f64>,
    pub catchup_mbps: Vec<f64>,
    pub archive_replay_mbps: Vec<f64>,
    /// WAL bytes each replay covered.
    pub replay_bytes: f64,
}

pub fn pg_bulk(results: &Path) -> Result<PgBulk, BenchError> {
    let rw = read_csv(&results.join("receivewal.csv"))?;
    let replay = read_csv(&results.join("replay.csv"))?;
    let mode = |m: &'static str| move |r: &BTreeMap<String, String>| r["mode"] == m;
    Ok(PgBulk {
        receivewal_async_mbps: column(&rw, "MBps", mode("async")),
        receivewal_sync_mbps: column(&rw, "MBps", mode("sync")),
        catchup_mbps: column(&replay, "MBps", mode("stream_catchup")),
        archive_replay_mbps: column(&replay, "MBps", mode("archive_replay")),
        replay_bytes: column(&replay, "bytes", |_| true)
            .first()
            .copied()
            .unwrap_or(f64::NAN),
    })
}

/// 04_promote.sh: promote to first write, ms, per repetition.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PgPromote {
    /// Same, already-connected session retrying (method B).
    pub same_session_ms: Vec<f64>,
    /// A new psql connection per attempt (method A).
    pub new_connection_ms: Vec<f64>,
}

pub fn pg_promote(results: &Path) -> Result<PgPromote, BenchError> {
    let b = read_csv(&results.join("results_session.csv"))?;
    let a = read_csv(&results.join("results.csv"))?;
    Ok(PgPromote {
        same_session_ms: column(&b, "promote_to_first_write_ms_same_session", |_| true),
        new_connection_ms: column(&a, "promote_to_first_write_ms", |_| true),
    })
}

/// 03_lag.sh: replay_lag samples (ms, NULL counted as 0, as its summary)
/// and bytes behind replay, with the load's tps.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PgLag {
    pub replay_lag_ms: Vec<f64>,
    pub replay_bytes_behind: Vec<f64>,
    pub tps: Vec<f64>,
}

pub fn pg_lag(results: &Path, key: &str) -> Result<PgLag, BenchError> {
    let mut out = PgLag::default();
    let entries = std::fs::read_dir(results)
        .map_err(|e| BenchError::io(format!("read {}", results.display()), e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(tag) = name.strip_suffix(".samples") else {
            continue;
        };
        if !tag.ends_with(key) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for l in text.lines() {
            let f: Vec<f64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if f.len() == 7 {
                out.replay_lag_ms.push(f[3].max(0.0));
                out.replay_bytes_behind.push(f[6].max(0.0));
            }
        }
        let pgb =
            std::fs::read_to_string(results.join(format!("{tag}.pgbench.out"))).unwrap_or_default();
        if let Some(tps) = pgb
            .lines()
            .find_map(|l| l.trim().strip_prefix("tps = "))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
        {
            out.tps.push(tps);
        }
    }
    Ok(out)
}

/// 02_pgbench.sh rows: (sync_commit, clients) -> tps, mean and p99 per rep.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PgCommits {
    pub rows: Vec<PgCommitRow>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PgCommitRow {
    /// `a_lone`, `b_lone` (no standby) or `c_sync`, `d_sync`, `e_sync`.
    pub config: String,
    pub synchronous_commit: String,
    pub clients: u32,
    pub tps: f64,
    pub mean_ms: f64,
    pub p99_ms: f64,
}

pub fn pg_commits(results: &Path) -> Result<PgCommits, BenchError> {
    let rows = read_csv(&results.join("results.csv"))?;
    let num = |r: &BTreeMap<String, String>, k: &str| {
        r.get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(PgCommits {
        rows: rows
            .iter()
            .map(|r| PgCommitRow {
                config: r["config"].clone(),
                synchronous_commit: r["sync_commit"].clone(),
                clients: r["clients"].parse().unwrap_or(0),
                tps: num(r, "tps"),
                mean_ms: num(r, "lat_avg_ms"),
                p99_ms: num(r, "p99_ms"),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_columns_are_filtered() {
        let rows = parse_csv("mode,rep,MBps\nasync,1,380.5\nsync,1,378\nasync,2,x\n\n");
        assert_eq!(rows.len(), 3);
        assert_eq!(column(&rows, "MBps", |r| r["mode"] == "async"), vec![380.5]);
        assert_eq!(column(&rows, "MBps", |_| true), vec![380.5, 378.0]);
        assert!(parse_csv("").is_empty());
    }

    #[test]
    fn lag_samples_and_tps_are_read() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("r1_c64_off.samples"),
            "1.0 -1 -1 -1 0 0 0\n2.0 1 2 120.5 10 20 3000\nbad line\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("r1_c64_off.pgbench.out"),
            "latency average = 1.3 ms\ntps = 48000.5 (without initial connection time)\n",
        )
        .unwrap();
        std::fs::write(d.path().join("r1_c16_on.samples"), "1 2 3 4 5 6 7\n").unwrap();
        let lag = pg_lag(d.path(), "c64_off").unwrap();
        assert_eq!(lag.replay_lag_ms, vec![0.0, 120.5]);
        assert_eq!(lag.replay_bytes_behind, vec![0.0, 3000.0]);
        assert_eq!(lag.tps, vec![48000.5]);
    }
}
