//! redis-py, the most used Redis client, against a primary and its standby:
//! the calls applications make (the default pipeline, `set(ex=)`,
//! `expire`, `ttl`, hashes, lists, sets, `scan_iter`, `flushdb`), in RESP2
//! and with `protocol=3`. The script is tests/redis_py.py.
//!
//! Debian's python3-redis (4.3) predates RESP3, so `.ci/run` installs
//! redis-py into a virtual environment, `target/pyenv`; the test uses its
//! python (or `WALREP_PYTHON`).

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::cluster::{basebackup, wait_state};
use support::node::{init_datadir, TestNode};

/// The python with redis-py ≥ 5, or `None` (skip) when it is missing and
/// WALREP_SKIP_EXTERNAL=1.
fn python() -> Option<PathBuf> {
    let path = std::env::var_os("WALREP_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python"),
        PathBuf::from,
    );
    let ok = Command::new(&path)
        .args([
            "-c",
            "import redis, sys; sys.exit(int(redis.__version__.split('.')[0]) < 5)",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(path);
    }
    let how = "python3 -m venv target/pyenv && target/pyenv/bin/pip install 'redis>=5,<8' (what .ci/run does)";
    if std::env::var("WALREP_SKIP_EXTERNAL").as_deref() == Ok("1") {
        eprintln!("skipping: no redis-py >= 5 at {} ({how})", path.display());
        return None;
    }
    panic!("this test needs redis-py >= 5 at {}: {how}", path.display());
}

#[test]
fn redis_py_runs_against_a_primary_and_reads_back_from_its_standby() {
    let Some(python) = python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let primary = TestNode::start(&init_datadir(tmp.path(), "primary", &[]), &[]);
    let sdir = basebackup(&primary, tmp.path(), "standby", "s1");
    let standby = TestNode::start(&sdir, &[]);
    wait_state(&standby, "Streaming");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/redis_py.py");
    let out = Command::new(python)
        .arg(script)
        .arg(primary.port.to_string())
        .arg(standby.port.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "redis-py script failed:\n{stdout}{stderr}\n--- primary log ---\n{}",
        primary.log_text()
    );
    assert!(stdout.contains(": ok"), "{stdout}");
}
