//! Base backups of a 200 MB primary under write load, through the real
//! binary: a `--jobs 4` copy and a `--two-phase` copy of the same data
//! each verify (the snapshot's chunk CRCs and the WAL to the backup-end
//! record, checked by `walrep basebackup` itself) and start as standbys
//! that hold every acknowledged write.
//!
//! The data size is `WALREP_BACKUP_LARGE_MB` (200 by default, the
//! acceptance size); the bulk is written as 1 MB values in pipelines, so
//! writing it takes seconds.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::backup::start_load;
use support::cluster::*;
use support::node::{init_datadir, walrep, walrep_bin, TestNode};
use support::process::ChildGuard;
use support::wait_for;
use walrep::standby::pending::PendingBackup;

/// Value size of the bulk keys.
const LARGE_VALUE: usize = 1024 * 1024;
/// SETs sent before their replies are read.
const PIPELINE: usize = 8;

fn large_mb() -> usize {
    std::env::var("WALREP_BACKUP_LARGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// `big:0..n`, each `{i}:` then 1 MB of padding, in pipelines.
fn write_large(node: &TestNode, n: usize) {
    let mut c = node.client();
    let pad = "z".repeat(LARGE_VALUE);
    for batch in (0..n).collect::<Vec<_>>().chunks(PIPELINE) {
        let mut p = redis::pipe();
        for i in batch {
            p.cmd("SET")
                .arg(format!("big:{i}"))
                .arg(format!("{i}:{pad}"))
                .ignore();
        }
        p.query::<()>(&mut c).unwrap();
    }
}

/// Every `big:0..n` is on `node`, whole.
fn check_large(node: &TestNode, n: usize) {
    let mut c = node.client();
    for i in 0..n {
        let v: Option<Vec<u8>> = redis::cmd("GET")
            .arg(format!("big:{i}"))
            .query(&mut c)
            .unwrap();
        let v = v.unwrap_or_else(|| panic!("big:{i} is missing on {}", node.datadir.display()));
        let head = format!("{i}:");
        assert!(v.starts_with(head.as_bytes()), "big:{i} has another value");
        assert_eq!(v.len(), head.len() + LARGE_VALUE, "big:{i} is cut short");
    }
}

fn from(node: &TestNode) -> String {
    format!("127.0.0.1:{}", node.replication_port)
}

/// `walrep basebackup --jobs 4 -R` into `dest` (a fresh checkpoint of
/// everything written so far).
fn jobs_backup(primary: &TestNode, dest: &Path) {
    let (ok, out, err) = walrep(&[
        "basebackup",
        "--from",
        &from(primary),
        "-D",
        dest.to_str().unwrap(),
        "-R",
        "--application-name",
        "large_jobs",
        "--jobs",
        "4",
    ]);
    assert!(ok, "walrep basebackup --jobs 4 failed: {out}{err}");
    assert!(out.contains("base backup of system"), "{out}");
}

/// `walrep basebackup --two-phase --jobs 4 -R` into `dest`; the standby
/// is started as soon as phase 1 is written, as an operator would.
fn two_phase_backup(primary: &TestNode, dest: &Path, tmp: &Path) -> TestNode {
    let out_path = tmp.join("two-phase.out");
    let mut backup = ChildGuard::spawn(
        std::process::Command::new(walrep_bin())
            .args(["basebackup", "--from", &from(primary), "-D"])
            .arg(dest)
            .args(["-R", "--application-name", "large_tp", "--two-phase"])
            .args(["--jobs", "4"])
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(tmp.join("two-phase.err")).unwrap()),
    );
    wait_for("phase 1", Duration::from_secs(120), || {
        PendingBackup::read(dest).ok()?.filter(|m| m.two_phase)
    });
    let standby = TestNode::start(dest, &[]);
    let status = backup
        .wait_exit()
        .expect("basebackup --two-phase did not exit");
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(tmp.join("two-phase.err")).unwrap_or_default();
    assert!(
        status.success(),
        "walrep basebackup --two-phase failed: {out}{err}"
    );
    assert!(out.contains("base backup of system"), "{out}");
    assert!(
        !dest
            .join(walrep::standby::pending::BACKUP_IN_PROGRESS_FILE)
            .exists(),
        "the complete copy still has its marker"
    );
    standby
}

#[test]
fn jobs_and_two_phase_copies_of_200_mb_hold_every_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "16MB"]);
    let primary = TestNode::start(&dir, &[]);
    let n = large_mb();
    write_large(&primary, n);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let load = start_load(&primary, stop.clone(), acked.clone());
    wait_for("the load to start", Duration::from_secs(30), || {
        (acked.load(Ordering::Relaxed) > 100).then_some(())
    });
    let jobs_dest = tmp.path().join("jobs");
    jobs_backup(&primary, &jobs_dest);
    let tp_dest = tmp.path().join("two-phase");
    let tp_standby = two_phase_backup(&primary, &tp_dest, tmp.path());
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let written = acked.load(Ordering::Relaxed) as usize;
    let jobs_standby = TestNode::start(&jobs_dest, &[]);
    for standby in [&jobs_standby, &tp_standby] {
        wait_state(standby, "Streaming");
        wait_caught_up(&primary, standby);
        check_large(standby, n);
        check_keys(standby, "w", written);
    }
}
