//! `walrep basebackup --jobs N` against a real primary under write load:
//! the snapshot is copied over N connections into one verified copy that
//! starts as a standby with every acknowledged write; bad `--jobs`, an
//! unknown JOIN and an upstream that dies mid-copy are clear errors that
//! leave nothing behind.
//!
//! The data size is `WALREP_BACKUP_TEST_MB` (default 32 MB so CI stays
//! quick; the acceptance run uses 200).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::backup::{data_mb, start_load, BULK_VALUE};
use support::cluster::*;
use support::node::{init_datadir, walrep, walrep_bin, TestNode};
use support::process::ChildGuard;
use support::wait_for;
use walrep::backup::verify::{verify_files, Expected};
use walrep::replication::client::{BaseBackupRequest, ConnInfo, ReplicationClient};
use walrep::store::checkpoint::snapshot_dir;
use walrep::store::ControlFile;

fn primary(tmp: &std::path::Path, extra: &[&str]) -> TestNode {
    let dir = init_datadir(tmp, "primary", &["--wal-segment-size", "16MB"]);
    TestNode::start(&dir, extra)
}

fn cli_backup(node: &TestNode, dest: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let from = format!("127.0.0.1:{}", node.replication_port);
    let mut args = vec!["basebackup", "--from", &from, "-D", dest.to_str().unwrap()];
    args.extend_from_slice(extra);
    walrep(&args)
}

#[test]
fn four_jobs_copy_a_primary_under_load_into_a_standby_with_every_write() {
    let tmp = tempfile::tempdir().unwrap();
    let primary = primary(tmp.path(), &[]);
    let bulk = data_mb() * 1024 * 1024 / BULK_VALUE;
    write_keys(&primary, "bulk", bulk, BULK_VALUE);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let load = start_load(&primary, stop.clone(), acked.clone());
    wait_for("the load to start", Duration::from_secs(30), || {
        (acked.load(Ordering::Relaxed) > 100).then_some(())
    });
    let dest = tmp.path().join("copy");
    let (ok, out, err) = cli_backup(
        &primary,
        &dest,
        &[
            "-R",
            "--application-name",
            "par",
            "--jobs",
            "4",
            "--progress",
        ],
    );
    assert!(ok, "walrep basebackup --jobs 4 failed: {out}{err}");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let written = acked.load(Ordering::Relaxed) as usize;
    // The snapshot's chunks came over several connections: more than one
    // holds data, and progress saw the whole backup.
    assert!(out.contains("base backup of system"), "{out}");
    assert!(
        err.lines().any(|l| l.contains("kB")),
        "no progress lines: {err}"
    );
    let log = primary.log_text();
    assert_eq!(
        log.matches("parallel base backup part sent").count(),
        3,
        "three jobs besides the leader: {log}"
    );
    // The last line has every job's bytes: the leader, three parts, the WAL.
    let last = err.lines().rev().find(|l| l.contains("MB/s")).unwrap_or("");
    for job in ["leader", "part 1", "part 2", "part 3", "wal"] {
        assert!(last.contains(&format!("{job} ")), "no {job} in {last:?}");
    }
    missing_chunk_fails_the_check(&dest);
    let standby = TestNode::start(&dest, &[]);
    wait_state(&standby, "Streaming");
    wait_caught_up(&primary, &standby);
    check_keys(&standby, "bulk", bulk);
    check_keys(&standby, "w", written);
}

/// The parts take their chunks from one queue on the server, so no part
/// knows in advance which chunks it sends: the copy's check names a chunk
/// that no stream sent. Shown on the finished copy `dest` with one chunk
/// moved away (and put back).
fn missing_chunk_fails_the_check(dest: &std::path::Path) {
    let control = ControlFile::read(dest).unwrap();
    let expected = Expected {
        system_id: control.system_identifier,
        start: control.redo_lsn,
        end: control.min_recovery_point,
        tli: control.checkpoint_timeline,
    };
    verify_files(dest, &expected).expect("the copy verifies");
    let last = control.checkpoint_chunks - 1;
    let chunk = snapshot_dir(dest, control.checkpoint_id).join(format!("chunk_{last:04}"));
    let aside = dest.join("chunk.aside");
    std::fs::rename(&chunk, &aside).unwrap();
    let e = verify_files(dest, &expected).unwrap_err().to_string();
    assert!(
        e.contains(&format!("no stream of the backup sent chunk {last} of")),
        "{e}"
    );
    std::fs::rename(&aside, &chunk).unwrap();
}

#[test]
fn bad_jobs_and_a_non_empty_target_are_refused_and_nothing_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let primary = primary(tmp.path(), &[]);
    let dest = tmp.path().join("copy");
    for jobs in ["0", "1000"] {
        let (ok, _, err) = cli_backup(&primary, &dest, &["--jobs", jobs]);
        assert!(!ok, "--jobs {jobs} was accepted");
        assert!(
            err.contains(&format!("invalid number of jobs {jobs}")),
            "--jobs {jobs}: {err}"
        );
        assert!(!dest.exists(), "--jobs {jobs} left {}", dest.display());
    }
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("keep"), b"mine").unwrap();
    let (ok, _, err) = cli_backup(&primary, &dest, &["--jobs", "4"]);
    assert!(!ok);
    assert!(err.contains("exists but is not empty"), "{err}");
    assert_eq!(std::fs::read(dest.join("keep")).unwrap(), b"mine");
    // A JOIN of no backup is a clear server error.
    let info = ConnInfo {
        host: "127.0.0.1".into(),
        port: primary.replication_port,
        user: "walrep".into(),
        ..ConnInfo::default()
    };
    let mut c = ReplicationClient::connect(&info, Duration::from_secs(10)).unwrap();
    let e = c
        .base_backup(&BaseBackupRequest {
            join: Some(("nosuch".into(), 1)),
            ..BaseBackupRequest::default()
        })
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no parallel base backup \"nosuch\" is in progress"),
        "{e}"
    );
}

#[test]
fn an_upstream_that_dies_mid_copy_fails_the_backup_and_removes_the_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let mut primary = primary(tmp.path(), &[]);
    write_keys(&primary, "bulk", 256, BULK_VALUE);
    let dest = tmp.path().join("copy");
    let from = format!("127.0.0.1:{}", primary.replication_port);
    // MAX_RATE stretches the 16 MB copy over seconds.
    let mut backup = ChildGuard::spawn(
        std::process::Command::new(walrep_bin())
            .args(["basebackup", "--from", &from, "-D"])
            .arg(&dest)
            .args(["--jobs", "4", "--max-rate", "512", "--timeout", "5"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    wait_for("the copy to start writing", Duration::from_secs(30), || {
        dest.join("base").exists().then_some(())
    });
    primary.kill9();
    let status = backup.wait_exit().expect("basebackup did not exit");
    assert!(!status.success());
    assert!(
        !dest.exists(),
        "a partial copy was left in {}",
        dest.display()
    );
}
