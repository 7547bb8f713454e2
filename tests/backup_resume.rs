//! `walrep basebackup --resume` against a real primary under write load:
//! a two-phase copy whose phase 2 is killed with SIGKILL leaves a standby
//! that streams but never starts redo and refuses promotion; `--resume`
//! finishes the copy from the same pinned checkpoint, receiving fewer
//! bytes than a fresh backup (the totals the tool prints), and the
//! standby then starts redo, catches up and holds every acknowledged
//! write. The same for a one-phase parallel copy killed mid-copy.
//!
//! The data size is `WALREP_BACKUP_TEST_MB` (default 32 MB so CI stays
//! quick; the acceptance run uses 200).

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::backup::{bulk_primary, bytes_under, data_mb, start_load, BulkPrimary};
use support::cluster::*;
use support::node::{init_datadir, walrep, walrep_bin, TestNode};
use support::process::ChildGuard;
use support::wait_for;
use walrep::standby::pending::PendingBackup;

/// `walrep basebackup --from <primary> -D dest <extra>` in the background.
fn spawn_backup(primary: &TestNode, dest: &Path, extra: &[&str]) -> ChildGuard {
    let from = format!("127.0.0.1:{}", primary.replication_port);
    ChildGuard::spawn(
        std::process::Command::new(walrep_bin())
            .args(["basebackup", "--from", &from, "-D"])
            .arg(dest)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
}

/// `walrep basebackup` to the end; its output, or the test fails.
fn run_backup(primary: &TestNode, dest: &Path, extra: &[&str]) -> String {
    let from = format!("127.0.0.1:{}", primary.replication_port);
    let mut args = vec!["basebackup", "--from", &from, "-D", dest.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (ok, out, err) = walrep(&args);
    assert!(ok, "walrep basebackup {extra:?} failed: {out}{err}");
    out
}

/// The "N bytes received" total the tool prints.
fn received(out: &str) -> u64 {
    out.lines()
        .find_map(|l| {
            l.strip_prefix("walrep: ")?
                .strip_suffix(" bytes received from the node")
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no received total in {out:?}"))
}

/// The intact chunk files `--resume` kept, as it prints them.
fn resumed_chunks(out: &str) -> u64 {
    out.lines()
        .find_map(|l| {
            l.strip_prefix("walrep: resumed: ")?
                .split_once(' ')?
                .0
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no resumed line in {out:?}"))
}

/// Kill `backup` once it has copied between 25% and 75% of `total` bytes
/// of snapshot into `dest`.
fn kill_mid_copy(backup: &mut ChildGuard, dest: &Path, total: u64) {
    let copied = wait_for("a quarter of the copy", Duration::from_secs(120), || {
        let n = bytes_under(&dest.join("base"));
        (n > total / 4).then_some(n)
    });
    backup.kill();
    assert!(
        copied < total * 3 / 4,
        "the copy ran too fast to interrupt ({copied} of {total} bytes)"
    );
    assert!(PendingBackup::read(dest).unwrap().is_some());
}

#[test]
fn a_two_phase_copy_killed_in_phase_two_is_resumed_and_the_standby_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let BulkPrimary {
        node: primary,
        keys: bulk,
        bytes: total,
        ..
    } = bulk_primary(tmp.path());
    // A two-phase copy is of the last checkpoint: a one-phase copy takes
    // one, so the snapshot holds the bulk.
    run_backup(&primary, &tmp.path().join("first"), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let load = start_load(&primary, stop.clone(), acked.clone());
    let dest = tmp.path().join("copy");
    // MAX_RATE stretches phase 2 to about 8 s.
    let rate = (data_mb() * 1024 / 8).max(512).to_string();
    let args = [
        "-R",
        "--application-name",
        "rs",
        "--two-phase",
        "--max-rate",
        &rate,
    ];
    let mut backup = spawn_backup(&primary, &dest, &args);
    let marker = wait_for("phase 1", Duration::from_secs(60), || {
        PendingBackup::read(&dest).ok()?.filter(|m| m.two_phase)
    });
    assert!(marker.backup_id.is_some() && marker.slot.is_some());
    let standby = TestNode::start(&dest, &[]);
    wait_state(&standby, "AwaitingBaseBackup");
    kill_mid_copy(&mut backup, &dest, total);

    // The standby streams on, never starts redo, refuses promotion.
    let received_before = wait_for("WAL received", Duration::from_secs(30), || {
        let r: walrep::Lsn = standby
            .info_field("replication", "receive_lsn")?
            .parse()
            .ok()?;
        (r > marker.start).then_some(r)
    });
    let (ok, _, err) = walrep(&["promote", dest.to_str().unwrap()]);
    assert!(!ok && err.contains("base backup not complete"), "{err}");
    assert_eq!(
        standby.info_field("replication", "replay_lsn").unwrap(),
        marker.start.to_string(),
        "redo started on a partial copy"
    );

    // The same command with --resume finishes it, copying less than a
    // fresh two-phase copy of the same primary.
    let resumed_args: Vec<&str> = args.iter().copied().chain(["--resume"]).collect();
    let out = run_backup(&primary, &dest, &resumed_args);
    assert!(resumed_chunks(&out) > 0, "{out}");
    let fresh = run_backup(
        &primary,
        &tmp.path().join("fresh"),
        &["-R", "--no-slot", "--two-phase"],
    );
    assert!(
        received(&out) < received(&fresh),
        "resumed {} bytes, fresh {} bytes",
        received(&out),
        received(&fresh)
    );
    assert!(PendingBackup::read(&dest).unwrap().is_none());

    // Redo starts, catches up and holds every acknowledged write.
    wait_state(&standby, "Streaming");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let written = acked.load(Ordering::Relaxed) as usize;
    wait_caught_up(&primary, &standby);
    wait_for("reads to open", Duration::from_secs(60), || {
        let c = standby.info_field("replication", "consistent")?;
        (c == "1" || c == "true" || c == "yes").then_some(())
    });
    let replayed: walrep::Lsn = standby
        .info_field("replication", "replay_lsn")
        .unwrap()
        .parse()
        .unwrap();
    assert!(replayed >= received_before);
    check_keys(&standby, "bulk", bulk);
    check_keys(&standby, "w", written);
}

#[test]
fn a_one_phase_parallel_copy_killed_mid_copy_is_resumed_into_a_working_standby() {
    let tmp = tempfile::tempdir().unwrap();
    let BulkPrimary {
        node: primary,
        keys: bulk,
        bytes: total,
        ..
    } = bulk_primary(tmp.path());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let load = start_load(&primary, stop.clone(), acked.clone());
    let dest = tmp.path().join("copy");
    let args = throttled_jobs_copy("one");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut backup = spawn_backup(&primary, &dest, &args);
    kill_mid_copy(&mut backup, &dest, total);
    // Not startable as it is.
    let (ok, _, err) = walrep(&[
        "start",
        dest.to_str().unwrap(),
        "-c",
        "port=0",
        "-c",
        "replication_port=0",
    ]);
    assert!(!ok && err.contains("base backup not complete"), "{err}");

    // Without --resume: refused, and the copy is left as it is.
    let from = format!("127.0.0.1:{}", primary.replication_port);
    let mut again = vec!["basebackup", "--from", &from, "-D", dest.to_str().unwrap()];
    again.extend_from_slice(&args);
    let (ok, _, err) = walrep(&again);
    assert!(!ok && err.contains("finish it with --resume"), "{err}");
    assert!(PendingBackup::read(&dest).unwrap().is_some());

    let resumed_args: Vec<&str> = args.iter().copied().chain(["--resume"]).collect();
    let out = run_backup(&primary, &dest, &resumed_args);
    assert!(resumed_chunks(&out) > 0, "{out}");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let written = acked.load(Ordering::Relaxed) as usize;
    let fresh = run_backup(
        &primary,
        &tmp.path().join("fresh"),
        // The same copy without -R: `--jobs 2 --max-rate …`.
        &args[3..],
    );
    assert!(
        received(&out) < received(&fresh),
        "resumed {} bytes, fresh {} bytes",
        received(&out),
        received(&fresh)
    );
    // A second --resume has nothing to do.
    let (ok, _, err) = walrep(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        dest.to_str().unwrap(),
        "--resume",
    ]);
    assert!(
        !ok && err.contains("no interrupted base backup to resume"),
        "{err}"
    );

    let standby = TestNode::start(&dest, &[]);
    wait_state(&standby, "Streaming");
    wait_caught_up(&primary, &standby);
    check_keys(&standby, "bulk", bulk);
    check_keys(&standby, "w", written);
}

#[test]
fn resume_is_refused_without_an_interrupted_copy_and_an_unknown_backup_id() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "primary", &[]);
    let primary = TestNode::start(&dir, &[]);
    let from = format!("127.0.0.1:{}", primary.replication_port);
    let missing = tmp.path().join("missing");
    let (ok, _, err) = walrep(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        missing.to_str().unwrap(),
        "--resume",
    ]);
    assert!(
        !ok && err.contains("no interrupted base backup to resume"),
        "{err}"
    );
    assert!(!missing.exists());
    // A marker naming a backup the server does not keep: the server's
    // clear error, and the copy (and its marker) stay.
    let dest = tmp.path().join("copy");
    std::fs::create_dir(&dest).unwrap();
    PendingBackup {
        system_id: 1,
        start: walrep::Lsn(0x100_0028),
        tli: walrep::TimelineId::FIRST,
        wal_segment_size: walrep::WalSegSize::new(16 << 20).unwrap(),
        two_phase: false,
        backup_id: Some("00000000000000000000000000000bad".into()),
        slot: None,
    }
    .write(&walrep::storage::StdStorage, &dest)
    .unwrap();
    let (ok, _, err) = walrep(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        dest.to_str().unwrap(),
        "--resume",
    ]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("can be resumed") && err.contains("take a new base backup"),
        "{err}"
    );
    assert!(PendingBackup::read(&dest).unwrap().is_some());
}

#[test]
fn a_copy_interrupted_before_the_server_restarts_is_resumed_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let BulkPrimary {
        dir,
        node: mut primary,
        keys: bulk,
        bytes: total,
    } = bulk_primary(tmp.path());
    let dest = tmp.path().join("copy");
    let args = throttled_jobs_copy("restarted");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut backup = spawn_backup(&primary, &dest, &args);
    kill_mid_copy(&mut backup, &dest, total);
    // The server sees the copy's connections end and records the kept
    // checkpoint in the data directory.
    let kept = dir.join("backup_resumable");
    wait_for(
        "the kept checkpoint's record",
        Duration::from_secs(60),
        || kept.exists().then_some(()),
    );
    primary.stop();
    primary.restart();
    write_keys(&primary, "after", 50, 100);
    let resumed_args: Vec<&str> = args.iter().copied().chain(["--resume"]).collect();
    let out = run_backup(&primary, &dest, &resumed_args);
    assert!(resumed_chunks(&out) > 0, "{out}");
    assert!(
        !kept.exists(),
        "the resumed backup completed: nothing is kept"
    );
    let standby = TestNode::start(&dest, &[]);
    wait_state(&standby, "Streaming");
    wait_caught_up(&primary, &standby);
    check_keys(&standby, "bulk", bulk);
    check_keys(&standby, "after", 50);
}

/// The arguments of a `--jobs 2 -R` copy throttled so that it is still
/// running when a test kills it mid-way.
fn throttled_jobs_copy(application_name: &str) -> Vec<String> {
    let rate = (data_mb() * 1024 / 16).max(512).to_string();
    [
        "-R",
        "--application-name",
        application_name,
        "--jobs",
        "2",
        "--max-rate",
        &rate,
    ]
    .map(String::from)
    .to_vec()
}
