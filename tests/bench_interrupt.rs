//! `walrep bench` interrupted through the real binary: SIGINT while the
//! PostgreSQL it started for `--anchors` runs, SIGTERM while its walrep
//! node and redis-benchmark run, and SIGKILL of the bench itself. After
//! SIGINT and SIGTERM nothing whose command line names the run's directory
//! may be left and the directory must be gone, and the bench exits with
//! 128 + the signal as a shell expects (130, 143); after SIGKILL the node
//! it started must not outlive it.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use support::node::walrep_bin;
use support::process::{pids_running, processes_running, ChildGuard};
use support::tools::tool;
use support::wait_for;

/// Where Debian installs PostgreSQL 15's server.
const POSTGRES: &str = "/usr/lib/postgresql/15/bin/postgres";
/// Bound on the bench reaching the state the signal is sent in
/// (PostgreSQL starts after a measured walrep run and an initdb).
const START_DEADLINE: Duration = Duration::from_secs(180);
/// Bound on the bench stopping everything after the signal (its own
/// bounds: 10 s of grace, 5 s of SIGKILL).
const STOP_DEADLINE: Duration = Duration::from_secs(40);

/// A directory for `--dir` that PostgreSQL's own user can traverse (the
/// bench runs PostgreSQL as `postgres` when root), and the bench's output
/// files.
struct Scratch {
    tmp: tempfile::TempDir,
}

/// A test that failed half-way leaves no server behind: whatever still
/// names the runs directory is killed (the bench's own cleanup is what the
/// tests check; this is only the tests' own).
impl Drop for Scratch {
    fn drop(&mut self) {
        for pid in pids_running(&self.runs_str()) {
            // SAFETY: kill(2) of a process found naming this test's own
            // directory a moment ago.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

impl Scratch {
    fn new() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("runs")).unwrap();
        for dir in [tmp.path().to_path_buf(), tmp.path().join("runs")] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Scratch { tmp }
    }

    /// The bench's `--dir`: each run makes its own directory in it.
    fn runs(&self) -> PathBuf {
        self.tmp.path().join("runs")
    }

    fn runs_str(&self) -> String {
        self.runs().to_str().unwrap().to_string()
    }

    /// `walrep bench ARGS --dir RUNS`, output to files.
    fn bench(&self, args: &[&str]) -> ChildGuard {
        let mut cmd = Command::new(walrep_bin());
        cmd.arg("bench")
            .args(args)
            .args(["--dir", &self.runs_str()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.tmp.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(self.tmp.path().join("stderr")).unwrap());
        ChildGuard::spawn(&mut cmd)
    }

    fn output(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.tmp.path().join(f)).unwrap_or_default();
        format!("stdout:\n{}\nstderr:\n{}", read("stdout"), read("stderr"))
    }

    /// Wait until a process matching `is_it` names the runs directory,
    /// failing with the bench's output if the bench exits first; its
    /// command line.
    fn wait_process(
        &self,
        bench: &mut ChildGuard,
        what: &str,
        is_it: impl Fn(&str) -> bool,
    ) -> String {
        let runs = self.runs_str();
        wait_for(what, START_DEADLINE, || {
            if let Some(status) = bench.exited() {
                panic!(
                    "the bench exited ({status}) before {what}:\n{}",
                    self.output()
                );
            }
            processes_running(&runs)
                .into_iter()
                .find(|line| is_it(line))
        })
    }

    /// The bench's walrep node once it runs, and the measured
    /// redis-benchmark run loading it once that runs (after the short
    /// calibration run of 1000 requests); what identifies the load: its
    /// command line does not name the directory, the node's port does.
    fn wait_node_and_load(&self, bench: &mut ChildGuard) -> String {
        let node = self.wait_process(bench, "the bench's walrep node", |line| {
            line.contains(" start ")
        });
        let port = node
            .split_whitespace()
            .find_map(|arg| arg.strip_prefix("port="))
            .unwrap_or_else(|| panic!("no port= in {node}"));
        let load = format!("redis-benchmark -h 127.0.0.1 -p {port} ");
        wait_for("the measured redis-benchmark run", START_DEADLINE, || {
            if let Some(status) = bench.exited() {
                panic!(
                    "the bench exited ({status}) before its load:\n{}",
                    self.output()
                );
            }
            processes_running(&load)
                .iter()
                .any(|line| !line.contains(" -n 1000 "))
                .then_some(())
        });
        load
    }

    /// After the signal: the exit status, nothing left naming the runs
    /// directory, and the run's own directory gone.
    fn assert_cleaned_up(&self, bench: &mut ChildGuard, signal: libc::c_int) -> ExitStatus {
        let status = bench
            .signal_and_wait(signal)
            .unwrap_or_else(|| panic!("the bench did not exit after {signal}:\n{}", self.output()));
        let runs = self.runs_str();
        wait_for(
            "no process naming the bench's directory",
            STOP_DEADLINE,
            || processes_running(&runs).is_empty().then_some(()),
        );
        let left = support::file_names(&self.runs());
        assert!(
            left.is_empty(),
            "left in --dir: {left:?}\n{}",
            self.output()
        );
        status
    }
}

/// The anchor script the bench's PostgreSQL runs (as shared/anchors has it).
fn anchors_dir(scratch: &Scratch) -> PathBuf {
    let dir = scratch.tmp.path().join("anchors");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("kv_upsert.sql"),
        "\\set k random(1, 100000)\n\\set v random(1, 1000000000)\n\
         INSERT INTO kv (k, v) VALUES (:k, :v) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v;\n",
    )
    .unwrap();
    dir
}

/// The bench's PostgreSQL server itself: the postmaster `pg_ctl` starts
/// (`postgres -D DIR`), not initdb's bootstrap runs.
fn is_postmaster(line: &str) -> bool {
    line.starts_with(POSTGRES)
        && line.contains(" -D ")
        && !line.contains("--boot")
        && !line.contains("--single")
}

/// The commit scenario's arguments: one client, one level, short probes.
fn commit_args(seconds: &str) -> Vec<&str> {
    vec![
        "--scenario",
        "commit",
        "--clients",
        "1",
        "--synchronous-commit",
        "local",
        "--fsync-seconds",
        "0.1",
        "--seconds",
        seconds,
    ]
}

#[test]
fn sigint_stops_the_postgresql_it_started_and_removes_its_directory() {
    if !Path::new(POSTGRES).is_file() {
        eprintln!(
            "skipping: PostgreSQL 15 is not installed ({POSTGRES}; apt-get install postgresql-15)"
        );
        return;
    }
    if tool("redis-benchmark").is_none() {
        return;
    }
    let scratch = Scratch::new();
    let anchors = anchors_dir(&scratch);
    // Short runs: the walrep runs before PostgreSQL stay short on a busy
    // machine, and PostgreSQL still lives seconds (started, filled with
    // 100,000 rows, then pgbench) while the poll looks every 20 ms.
    let mut args = commit_args("2");
    args.extend(["--anchors", anchors.to_str().unwrap()]);
    let mut bench = scratch.bench(&args);
    scratch.wait_process(&mut bench, "the bench's PostgreSQL", is_postmaster);
    let status = scratch.assert_cleaned_up(&mut bench, libc::SIGINT);
    assert_eq!(status.code(), Some(130), "{}", scratch.output());
    assert!(
        scratch.output().contains("SIGINT: stopping"),
        "{}",
        scratch.output()
    );
}

/// A commit-scenario bench with its node up and its measured load
/// running: the bench, the scratch directory, what identifies the load;
/// `None` (skip) without redis-benchmark where WALREP_SKIP_EXTERNAL=1.
fn bench_under_load() -> Option<(ChildGuard, Scratch, String)> {
    tool("redis-benchmark")?;
    let scratch = Scratch::new();
    let mut bench = scratch.bench(&commit_args("60"));
    let load = scratch.wait_node_and_load(&mut bench);
    Some((bench, scratch, load))
}

#[test]
fn sigterm_stops_the_node_and_the_load_and_removes_the_directory() {
    let Some((mut bench, scratch, load)) = bench_under_load() else {
        return;
    };
    let status = scratch.assert_cleaned_up(&mut bench, libc::SIGTERM);
    assert_eq!(status.code(), Some(143), "{}", scratch.output());
    wait_for("redis-benchmark to be stopped", STOP_DEADLINE, || {
        processes_running(&load).is_empty().then_some(())
    });
}

#[test]
fn a_bench_killed_with_sigkill_takes_its_node_and_load_with_it() {
    let Some((mut bench, scratch, load)) = bench_under_load() else {
        return;
    };
    let status = bench
        .signal_and_wait(libc::SIGKILL)
        .expect("SIGKILL ends the bench");
    assert!(status.code().is_none(), "killed by a signal: {status}");
    let runs = scratch.runs_str();
    wait_for("the node to die with the bench", STOP_DEADLINE, || {
        processes_running(&runs).is_empty().then_some(())
    });
    wait_for(
        "redis-benchmark to die with the bench",
        STOP_DEADLINE,
        || processes_running(&load).is_empty().then_some(()),
    );
}
