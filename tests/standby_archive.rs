//! A standby fed from the archive alone (restore_command): it replays what
//! was archived, survives a crash in the middle of redo by resuming from its
//! restartpoint, outlives a hanging restore_command, and promotes to a new
//! timeline with every write acknowledged before the primary died.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::cluster::{check_keys, restore_setting, write_keys};
use support::node::{init_datadir, walrep, TestNode};
use support::process::processes_running;
use support::wait_for;

/// A primary archiving into `archive`, with archive_timeout so that every
/// acknowledged write reaches the archive within a second.
fn archiving_primary(tmp: &Path, archive: &Path) -> (PathBuf, TestNode) {
    let dir = init_datadir(tmp, "primary", &["--wal-segment-size", "1MB"]);
    let cmd = format!("archive_command=cp %p {}/%f", archive.display());
    let node = TestNode::start(&dir, &["archive_mode=on", &cmd, "archive_timeout=1s"]);
    (dir, node)
}

/// A standby made from a cold copy of the (cleanly stopped) primary.
fn cold_standby(primary: &mut TestNode, tmp: &Path, name: &str) -> PathBuf {
    let status = primary.stop();
    assert!(
        status.success(),
        "primary stopped with {status}:\n{}",
        primary.log_text()
    );
    let dest = tmp.join(name);
    let status = Command::new("cp")
        .arg("-a")
        .arg(&primary.datadir)
        .arg(&dest)
        .status()
        .unwrap();
    assert!(status.success());
    let _ = fs::remove_file(dest.join("walrep.pid"));
    fs::write(dest.join("standby.signal"), b"").unwrap();
    primary.restart();
    dest
}

/// Wait until the archive holds the segment containing the primary's flush position.
fn wait_archived(primary: &TestNode, archive: &Path) {
    let flushed: walrep::Lsn = primary
        .info_field("persistence", "wal_flush_lsn")
        .unwrap()
        .parse()
        .unwrap();
    let seg = flushed.segno(walrep::WalSegSize::new(1 << 20).unwrap());
    let name = seg.file_name(
        walrep::TimelineId(1),
        walrep::WalSegSize::new(1 << 20).unwrap(),
    );
    wait_for(
        &format!("{name} in the archive (archive_timeout)"),
        Duration::from_secs(60),
        || archive.join(&name).exists().then_some(()),
    );
}

fn replay_lsn(node: &TestNode) -> Option<walrep::Lsn> {
    node.info_field("replication", "replay_lsn")?.parse().ok()
}

#[test]
fn archive_recovery_then_promotion_keeps_every_archived_write() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    fs::create_dir(&archive).unwrap();
    let (_, mut primary) = archiving_primary(tmp.path(), &archive);
    write_keys(&primary, "early", 200, 100);
    let standby_dir = cold_standby(&mut primary, tmp.path(), "standby");
    write_keys(&primary, "late", 3000, 1000);
    wait_archived(&primary, &archive);
    primary.kill9();

    let standby = TestNode::start(
        &standby_dir,
        &[
            &restore_setting(&archive),
            "wal_retrieve_retry_interval=200ms",
        ],
    );
    // Writes are refused on a standby, as on a Redis replica.
    wait_for(
        "the standby to be consistent",
        Duration::from_secs(60),
        || (standby.info_field("replication", "consistent").as_deref() == Some("1")).then_some(()),
    );
    let e = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut standby.client())
        .unwrap_err();
    assert!(e.to_string().contains("read only replica"), "{e}");
    wait_for(
        "the standby to replay the whole archive",
        Duration::from_secs(60),
        || {
            let mut c = standby.try_client()?;
            let v: Option<String> = redis::cmd("GET").arg("late:2999").query(&mut c).ok()?;
            v.map(|_| ())
        },
    );
    assert_eq!(
        standby.info_field("replication", "wal_source").as_deref(),
        Some("archive")
    );
    // Each segment after the first was restored while its predecessor was
    // replayed, and the prefetched copy was the one used.
    assert!(
        standby.log_text().contains("how=\"prefetched\""),
        "no prefetched segment was used:\n{}",
        standby.log_text()
    );

    let (ok, out, err) = walrep(&["promote", standby.datadir.to_str().unwrap()]);
    assert!(ok, "walrep promote failed: {out}{err}");
    assert!(out.contains("server promoted (timeline 2)"), "{out}");
    check_keys(&standby, "early", 200);
    check_keys(&standby, "late", 3000);
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("promotion")
        .query(&mut standby.client())
        .unwrap();
    assert_eq!(
        standby.info_field("replication", "role").as_deref(),
        Some("master")
    );
    assert_eq!(
        standby
            .info_field("replication", "recovery_state")
            .as_deref(),
        Some("Promoted")
    );
    let history = fs::read_to_string(standby.datadir.join("wal/00000002.history")).unwrap();
    assert!(
        history.starts_with("1\t") && history.contains("no recovery target specified"),
        "{history}"
    );
    assert!(!standby.datadir.join("standby.signal").exists());
    // The trace recorded the promotion.
    let trace = fs::read_to_string(standby.datadir.join("log/transitions.jsonl")).unwrap();
    assert!(
        trace.contains("\"to\":\"Promoted\"") && trace.contains("PromoteRequested"),
        "trace lacks the promotion"
    );
    // `walrep viz trace` renders it.
    let (ok, out, _) = walrep(&[
        "viz",
        "trace",
        standby
            .datadir
            .join("log/transitions.jsonl")
            .to_str()
            .unwrap(),
    ]);
    assert!(ok && out.contains("Promoted"), "{out}");
}

#[test]
fn a_standby_killed_during_redo_resumes_from_its_restartpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    fs::create_dir(&archive).unwrap();
    let (_, mut primary) = archiving_primary(tmp.path(), &archive);
    let standby_dir = cold_standby(&mut primary, tmp.path(), "standby");
    write_keys(&primary, "k", 12_000, 1000);
    wait_archived(&primary, &archive);
    assert!(primary.stop().success());

    // Frequent restartpoints; kill -9 once one was taken and replay is under way.
    let mut standby = TestNode::start(
        &standby_dir,
        &[&restore_setting(&archive), "checkpoint_timeout=1s"],
    );
    wait_for("a restartpoint", Duration::from_secs(60), || {
        standby
            .log_text()
            .contains("restartpoint complete")
            .then_some(())
    });
    let before = replay_lsn(&standby);
    standby.kill9();
    let log_before = standby.log_text().len();
    standby.restart();
    let resumed = standby.log_text()[log_before..].to_string();
    assert!(resumed.contains("entering standby mode"), "{resumed}");
    let redo: walrep::Lsn = resumed
        .split("redo=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .expect("the restart logs its redo point");
    // The base (a cold copy of a fresh primary) has its redo point in the
    // first 1 MB segment; the 12 MB of WAL replayed since then reach far
    // beyond the second one, however fast the primary wrote them (fewer
    // archive_timeout switches when it writes faster).
    assert!(
        redo > walrep::Lsn(0x20_0000),
        "restarted from the base, not a restartpoint: {resumed}"
    );
    assert!(
        Some(redo) <= before,
        "restartpoint {redo} is ahead of what was replayed ({before:?})"
    );
    wait_for(
        "the restarted standby to finish the archive",
        Duration::from_secs(90),
        || {
            let mut c = standby.try_client()?;
            redis::cmd("GET")
                .arg("k:11999")
                .query::<Option<String>>(&mut c)
                .ok()?
                .map(|_| ())
        },
    );
    check_keys(&standby, "k", 12_000);
    let keys: u64 = redis::cmd("DBSIZE").query(&mut standby.client()).unwrap();
    assert_eq!(keys, 12_000);
}

#[test]
fn a_hanging_restore_command_is_timed_out_and_recovery_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    fs::create_dir(&archive).unwrap();
    let (_, mut primary) = archiving_primary(tmp.path(), &archive);
    let standby_dir = cold_standby(&mut primary, tmp.path(), "standby");
    write_keys(&primary, "k", 2000, 1000);
    wait_archived(&primary, &archive);
    assert!(primary.stop().success());
    // restore_command hangs while the flag exists.
    let flag = tmp.path().join("HANG");
    fs::write(&flag, b"").unwrap();
    let script = tmp.path().join("restore.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -f {} ]; then sleep {HANG}; fi\nexec cp {}/$1 $2\n",
            flag.display(),
            archive.display()
        ),
    )
    .unwrap();
    let cmd = format!("restore_command=sh {} %f %p", script.display());
    let standby = TestNode::start(
        &standby_dir,
        &[
            &cmd,
            "restore_command_timeout=1s",
            "wal_retrieve_retry_interval=200ms",
        ],
    );
    wait_for(
        "restore_command to time out",
        Duration::from_secs(60),
        || {
            let trace = fs::read_to_string(standby.datadir.join("log/transitions.jsonl")).ok()?;
            trace.contains("RestoreCommandFailed").then_some(())
        },
    );
    assert!(
        standby.log_text().contains("timed out"),
        "{}",
        standby.log_text()
    );
    fs::remove_file(&flag).unwrap();
    wait_for(
        "recovery to go on once the archive answers",
        Duration::from_secs(120),
        || {
            let mut c = standby.try_client()?;
            redis::cmd("GET")
                .arg("k:1999")
                .query::<Option<String>>(&mut c)
                .ok()?
                .map(|_| ())
        },
    );
    check_keys(&standby, "k", 2000);
    // Every timed-out command was killed with its whole process group.
    let left = processes_running(&format!("sleep {HANG}"));
    assert!(
        left.is_empty(),
        "timed-out restore commands are still running: {left:?}"
    );
}

/// A sleep no other test uses, to find leftover hanging commands.
const HANG: &str = "613.37";
