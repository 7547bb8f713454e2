//! The automatic-failover soak as CI runs it: `walrep bench --scenario ha`
//! through the real binary with three rounds (kill -9 of the primary, a
//! partition of it from etcd and the standbys when root, a SIGSTOP longer
//! than the lease) and one planned switchover, on a three-member etcd the
//! soak starts itself. Every round must promote a standby, no
//! acknowledged write may be lost, no two nodes may acknowledge at once,
//! and the figures must be printed. Users run 50 rounds and more with
//! `--rounds`.

mod support;

use support::report_figure as figure;

use std::process::Command;
use std::time::{Duration, Instant};

use support::node::walrep_bin;

/// Bound on the whole soak (about 25 s on a quiet machine; a few rounds
/// take longer when other builds share the cores).
const SOAK_DEADLINE: Duration = Duration::from_secs(110);

/// Run `walrep ARGS` to its end within [`SOAK_DEADLINE`]: (success, stdout,
/// stderr), through files so a long report cannot block it.
fn walrep(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(walrep_bin())
        .args(args)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("run walrep");
    let end = Instant::now() + SOAK_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "walrep {args:?} did not finish within {SOAK_DEADLINE:?}:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |p| std::fs::read_to_string(p).unwrap_or_default();
    (status.success(), read(&out_path), read(&err_path))
}

#[test]
fn kill_partition_stall_and_switchover_lose_no_acknowledged_write() {
    if support::etcd::etcd_binary().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("soak");
    std::fs::create_dir(&dir).unwrap();
    let (ok, out, err) = walrep(
        &[
            "bench",
            "--scenario",
            "ha",
            "--rounds",
            "3",
            "--failover-clients",
            "8",
            "--seed",
            "11",
            "--dir",
            dir.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(ok, "the soak failed:\n{out}\n{err}");
    assert!(out.contains("seed 11"), "the seed is not printed:\n{out}");
    assert!(figure(&out, "acknowledged writes (on):") > 0, "{out}");
    assert_eq!(figure(&out, "lost acknowledged writes:"), 0, "{out}");
    assert_eq!(figure(&out, "overlapping primaries:"), 0, "{out}");
    assert_eq!(figure(&out, "violations:"), 0, "{out}");
    // Every round promoted another node, which acknowledged writes, and the
    // old primary came back as its standby.
    let rounds: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("round ") && l.contains(" first ack "))
        .collect();
    assert_eq!(rounds.len(), 4, "three faults and a switchover:\n{out}");
    for r in &rounds {
        assert!(r.contains("back as a standby"), "{r}");
    }
    assert!(out.contains("round 0: kill -9 of "), "{out}");
    assert!(out.contains("round 3: switchover of "), "{out}");
    let stall = if unsafe { libc::geteuid() } == 0 {
        assert!(out.contains("round 1: partition of "), "{out}");
        "round 2: stall of "
    } else {
        "round 1: stall of "
    };
    assert!(out.contains(stall), "{out}");
    // The figures: failover time per fault and overall, the switchover,
    // the lost writes, each against its target.
    for row in [
        "| ha | failover time, kill -9 p50 (1 rounds) | s",
        "| ha | failover time, stall p99 (1 rounds) | s",
        "| ha | failover time, all faults p99 (3 rounds) | s",
        "| ha | switchover unavailability p50 (1 rounds) | s",
        "| ha | acknowledged writes lost | writes (lower is better) | 0.00 |",
    ] {
        assert!(out.contains(row), "no {row:?} in the figures:\n{out}");
    }
    assert!(
        out.contains("target (ha): acknowledged writes lost 0: 0.00 -> met"),
        "{out}"
    );
}
