//! `walrep basebackup --two-phase` against a real primary under write
//! load: the standby starts as soon as phase 1 is written, streams WAL
//! (its flush position advances upstream, the slot follows it, and it
//! counts as the synchronous standby for `on` writes) while phase 2 copies
//! the bulk; it refuses promotion and reads meanwhile, then starts redo
//! and holds every acknowledged write.
//!
//! The data size is `WALREP_BACKUP_TEST_MB` (default 32 MB so CI stays
//! quick; the acceptance run uses 200).

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::backup::{bytes_under, data_mb, start_load, BULK_VALUE};
use support::cluster::*;
use support::node::{init_datadir, walrep, walrep_bin, TestNode};
use support::process::ChildGuard;
use support::wait_for;
use walrep::replication::client::{ConnInfo, ReplicationClient};
use walrep::standby::pending::PendingBackup;
use walrep::Lsn;

/// The flush position the primary has from standby `app` (INFO).
fn standby_flush(primary: &TestNode, app: &str) -> Option<Lsn> {
    let info = primary.info("replication");
    // The copy's own connections carry the name too: the streaming one.
    let line = info.lines().find(|l| {
        l.contains(&format!("application_name={app},")) && l.contains("walsender_state=streaming")
    })?;
    line.split(',')
        .find_map(|f| f.strip_prefix("flush_lsn="))?
        .parse()
        .ok()
}

fn slot_restart(primary: &TestNode, slot: &str) -> Option<Lsn> {
    let info = ConnInfo {
        host: "127.0.0.1".into(),
        port: primary.replication_port,
        user: "walrep".into(),
        ..ConnInfo::default()
    };
    let mut c = ReplicationClient::connect(&info, Duration::from_secs(10)).ok()?;
    let pos = c.read_replication_slot(slot).ok()??;
    c.close();
    pos.restart_lsn
}

/// A checkpoint of everything written so far (a one-phase copy takes
/// one): a two-phase copy is of the last checkpoint, so its phase 2 then
/// has the data to copy.
fn checkpoint(primary: &TestNode, tmp: &Path) {
    let from = format!("127.0.0.1:{}", primary.replication_port);
    let dest = tmp.join("checkpointed");
    let (ok, out, err) = walrep(&["basebackup", "--from", &from, "-D", dest.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    std::fs::remove_dir_all(&dest).unwrap();
}

#[test]
fn two_phase_standby_streams_and_commits_sync_writes_before_the_copy_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    // Writes are local by default; one session asks for `on` below.
    let primary = TestNode::start(
        &dir,
        &["synchronous_standby_names=tp", "synchronous_commit=local"],
    );
    let bulk = data_mb() * 1024 * 1024 / BULK_VALUE;
    write_keys(&primary, "bulk", bulk, BULK_VALUE);
    checkpoint(&primary, tmp.path());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let load = start_load(&primary, stop.clone(), acked.clone());
    let dest = tmp.path().join("copy");
    let from = format!("127.0.0.1:{}", primary.replication_port);
    // MAX_RATE stretches phase 2 to about 16 s (two jobs).
    let rate = (data_mb() * 1024 / 32).max(512).to_string();
    let mut backup = ChildGuard::spawn(
        std::process::Command::new(walrep_bin())
            .args(["basebackup", "--from", &from, "-D"])
            .arg(&dest)
            .args(["-R", "--application-name", "tp", "--two-phase"])
            .args(["--jobs", "2", "--max-rate", &rate])
            .stdout(std::fs::File::create(tmp.path().join("backup.out")).unwrap())
            .stderr(std::process::Stdio::null()),
    );
    let marker = wait_for("phase 1", Duration::from_secs(60), || {
        PendingBackup::read(&dest).ok()?.filter(|m| m.two_phase)
    });
    // The operator is told too (the line follows the marker).
    wait_for("the phase 1 line", Duration::from_secs(30), || {
        std::fs::read_to_string(tmp.path().join("backup.out"))
            .ok()
            .filter(|s| s.contains("phase 1 complete: start the standby now"))
    });
    let standby = TestNode::start(&dest, &[]);
    wait_state(&standby, "AwaitingBaseBackup");
    // Streaming before half of the data is copied.
    let flushed = wait_for("a flush report upstream", Duration::from_secs(60), || {
        standby_flush(&primary, "tp").filter(|f| *f > marker.start)
    });
    let copied = bytes_under(&dest.join("base"));
    let total = (bulk * BULK_VALUE) as u64;
    assert!(
        copied < total / 2,
        "the standby reported {flushed} only after {copied} of {total} bytes were copied"
    );
    // The slot follows what the standby received: the primary does not
    // keep WAL from the backup's start for it.
    wait_for(
        "the slot to follow the standby",
        Duration::from_secs(30),
        || slot_restart(&primary, "walrep_tp").filter(|r| *r > marker.start),
    );
    // A synchronous (`on`) write commits during phase 2.
    let mut c = primary.client();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("synchronous_commit")
        .arg("on")
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("sync:1")
        .arg("v")
        .query(&mut c)
        .unwrap();
    assert!(
        backup.exited().is_none() && PendingBackup::read(&dest).unwrap().is_some(),
        "the sync write waited for the end of the copy"
    );
    // Meanwhile: no promotion, no reads.
    let (ok, _, err) = walrep(&["promote", dest.to_str().unwrap()]);
    assert!(!ok && err.contains("base backup not complete"), "{err}");
    let e = redis::cmd("GET")
        .arg("bulk:0")
        .query::<Option<String>>(&mut standby.client())
        .unwrap_err();
    assert_eq!(e.code(), Some("LOADING"), "{e}");
    let status = backup.wait_exit().expect("basebackup did not exit");
    assert!(status.success(), "two-phase basebackup failed");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let written = acked.load(Ordering::Relaxed) as usize;
    wait_state(&standby, "Streaming");
    wait_caught_up(&primary, &standby);
    // Reads open once the machine saw the consistent point (a drain after
    // the replay position the wait above looked at).
    wait_for("reads to open", Duration::from_secs(60), || {
        let c = standby.info_field("replication", "consistent")?;
        (c == "1" || c == "true" || c == "yes").then_some(())
    });
    check_keys(&standby, "bulk", bulk);
    check_keys(&standby, "w", written);
    let v: Option<String> = redis::cmd("GET")
        .arg("sync:1")
        .query(&mut standby.client())
        .unwrap();
    assert_eq!(v.as_deref(), Some("v"));
}

#[test]
fn two_phase_needs_a_standby_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "primary", &[]);
    let primary = TestNode::start(&dir, &[]);
    let dest = tmp.path().join("copy");
    let from = format!("127.0.0.1:{}", primary.replication_port);
    let (ok, _, err) = walrep(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        dest.to_str().unwrap(),
        "--two-phase",
    ]);
    assert!(!ok);
    assert!(
        err.contains("--two-phase needs --write-standby-config"),
        "{err}"
    );
    assert!(!dest.exists());
}

/// Start `walrep basebackup` into `dest` with `extra`, slowed down.
fn spawn_backup(primary: &TestNode, dest: &Path, extra: &[&str]) -> ChildGuard {
    let from = format!("127.0.0.1:{}", primary.replication_port);
    ChildGuard::spawn(
        std::process::Command::new(walrep_bin())
            .args(["basebackup", "--from", &from, "-D"])
            .arg(dest)
            .args(["--max-rate", "512"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
}

fn receive_lsn(standby: &TestNode) -> Option<Lsn> {
    standby
        .info_field("replication", "receive_lsn")?
        .parse()
        .ok()
}

#[test]
fn a_copy_killed_with_sigkill_never_starts_redo_promotion_or_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let primary = TestNode::start(&dir, &[]);
    write_keys(&primary, "bulk", 256, BULK_VALUE);
    checkpoint(&primary, tmp.path());
    // Phase 2 killed: the standby keeps streaming and waiting.
    let dest = tmp.path().join("copy");
    let mut backup = spawn_backup(
        &primary,
        &dest,
        &["-R", "--application-name", "k", "--two-phase"],
    );
    let marker = wait_for("phase 1", Duration::from_secs(60), || {
        PendingBackup::read(&dest).ok()?.filter(|m| m.two_phase)
    });
    let mut standby = TestNode::start(&dest, &[]);
    wait_state(&standby, "AwaitingBaseBackup");
    backup.kill();
    let before = wait_for("WAL received", Duration::from_secs(30), || {
        receive_lsn(&standby).filter(|r| *r > marker.start)
    });
    write_keys(&primary, "after", 50, 1024);
    wait_for("more WAL received", Duration::from_secs(30), || {
        receive_lsn(&standby).filter(|r| *r > before)
    });
    let (ok, _, err) = walrep(&["promote", dest.to_str().unwrap()]);
    assert!(!ok && err.contains("base backup not complete"), "{err}");
    let e = redis::cmd("GET")
        .arg("bulk:0")
        .query::<Option<String>>(&mut standby.client())
        .unwrap_err();
    assert_eq!(e.code(), Some("LOADING"), "{e}");
    assert_eq!(
        standby.info_field("replication", "replay_lsn").unwrap(),
        marker.start.to_string(),
        "redo started on a partial copy"
    );
    // A clean restart changes nothing: still waiting for the copy.
    assert!(standby.stop().success(), "{}", standby.log_text());
    standby.restart();
    wait_state(&standby, "AwaitingBaseBackup");
    standby.stop();

    // A one-phase copy killed mid-copy refuses to start at all.
    let plain = tmp.path().join("plain");
    let mut backup = spawn_backup(&primary, &plain, &["-R", "--no-slot"]);
    wait_for("the copy to start writing", Duration::from_secs(60), || {
        plain.join("base").exists().then_some(())
    });
    backup.kill();
    assert!(PendingBackup::read(&plain).unwrap().is_some());
    let log = tmp.path().join("plain-start.log");
    let mut start = ChildGuard::spawn(
        std::process::Command::new(walrep_bin())
            .arg("start")
            .arg(&plain)
            .args(["-c", "port=0", "-c", "replication_port=0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let status = start.wait_exit().expect("walrep start kept running");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("base backup not complete"), "{text}");
}
