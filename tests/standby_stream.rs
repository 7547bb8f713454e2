//! Standbys with an archive and a stream, with real processes: catching up
//! from the archive then streaming, surviving a primary restart, fetching
//! removed WAL from the archive, refusing a corrupt archive segment in favour
//! of the stream, refusing a wrong upstream, following a new timeline.

mod support;

use std::fs;
use std::time::Duration;

use support::cluster::*;
use support::node::{init_datadir, walrep, TestNode};
use support::tools::tool;
use support::wait_for;
use support::wal::{segment_name, wal_file_names};

fn primary(tmp: &std::path::Path, archive: &std::path::Path, extra: &[&str]) -> TestNode {
    let dir = init_datadir(tmp, "primary", &["--wal-segment-size", SEG_1MB]);
    let mut settings = archive_settings(archive);
    settings.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = settings.iter().map(String::as_str).collect();
    TestNode::start(&dir, &refs)
}

fn standby(dir: &std::path::Path, archive: &std::path::Path, extra: &[&str]) -> TestNode {
    let mut settings = vec![
        restore_setting(archive),
        "wal_retrieve_retry_interval=200ms".to_string(),
    ];
    settings.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = settings.iter().map(String::as_str).collect();
    TestNode::start(dir, &refs)
}

fn archive_dir(tmp: &std::path::Path) -> std::path::PathBuf {
    let a = tmp.join("archive");
    fs::create_dir_all(&a).unwrap();
    a
}

#[test]
fn restores_from_the_archive_then_streams_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = archive_dir(tmp.path());
    let primary = primary(tmp.path(), &archive, &[]);
    let sdir = basebackup(&primary, tmp.path(), "standby", "s1");
    // Several segments reach the archive; the rest stays on the primary.
    write_keys(&primary, "a", 4000, 1000);
    wait_for("archived segments", Duration::from_secs(60), || {
        (fs::read_dir(&archive).ok()?.count() >= 4).then_some(())
    });
    write_keys(&primary, "b", 300, 100);
    let standby = standby(&sdir, &archive, &[]);
    wait_state(&standby, "Streaming");
    wait_caught_up(&primary, &standby);
    check_keys(&standby, "a", 4000);
    check_keys(&standby, "b", 300);
    assert_eq!(dump(&standby, "a", 4000), dump(&primary, "a", 4000));
    let t = trace(&standby);
    let restored = t
        .find("SegmentRestored")
        .expect("nothing was restored from the archive");
    let streamed = t.find("\"to\":\"Streaming\"").expect("never streamed");
    assert!(
        restored < streamed,
        "the archive was not used before the stream"
    );
    // Writes keep flowing to the standby.
    write_keys(&primary, "c", 100, 10);
    wait_caught_up(&primary, &standby);
    check_keys(&standby, "c", 100);
}

#[test]
fn a_primary_restart_is_streaming_then_retrying_then_streaming_without_a_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = archive_dir(tmp.path());
    let mut primary = primary(tmp.path(), &archive, &[]);
    let sdir = basebackup(&primary, tmp.path(), "standby", "s1");
    let standby = standby(&sdir, &archive, &[]);
    write_keys(&primary, "before", 500, 100);
    wait_state(&standby, "Streaming");
    wait_caught_up(&primary, &standby);
    assert!(primary.stop().success());
    wait_state(&standby, "RetryingArchive");
    primary.restart();
    write_keys(&primary, "after", 500, 100);
    wait_state(&standby, "Streaming");
    wait_caught_up(&primary, &standby);
    check_keys(&standby, "before", 500);
    check_keys(&standby, "after", 500);
    let t = trace(&standby);
    let lost = t.find("StreamLost").expect("the stream was never lost");
    let back = t[lost..].find("\"to\":\"Streaming\"");
    assert!(
        back.is_some(),
        "did not return to Streaming after the restart"
    );
    assert!(t[lost..].contains("\"to\":\"RetryingArchive\""), "{t}");
}

#[test]
fn wal_the_primary_removed_comes_from_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = archive_dir(tmp.path());
    // Frequent checkpoints remove what no one holds.
    let primary = primary(
        tmp.path(),
        &archive,
        &["checkpoint_timeout=1s", "min_wal_size=0"],
    );
    // Without a slot: nothing holds the WAL the standby has not received.
    let sdir = basebackup_with(&primary, tmp.path(), "standby", "s1", &["--no-slot"]);
    write_keys(&primary, "k", 6000, 1000);
    // Wait until the primary removed the first segments after the backup.
    let first_after_backup = segment_name(3);
    wait_for(
        "the primary to remove old WAL",
        Duration::from_secs(60),
        || {
            (!primary
                .datadir
                .join("wal")
                .join(&first_after_backup)
                .exists())
            .then_some(())
        },
    );
    let standby = standby(&sdir, &archive, &[]);
    wait_state(&standby, "Streaming");
    wait_caught_up(&primary, &standby);
    check_keys(&standby, "k", 6000);
    assert!(
        trace(&standby).contains("SegmentRestored"),
        "removed WAL was not restored from the archive"
    );
}

#[test]
fn a_corrupt_archive_segment_is_not_applied_and_the_stream_replaces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = archive_dir(tmp.path());
    let primary = primary(tmp.path(), &archive, &[]);
    let sdir = basebackup(&primary, tmp.path(), "standby", "s1");
    write_keys(&primary, "k", 3000, 1000);
    let victim = archive.join(segment_name(4));
    // `cp` creates the file before it has copied it: wait until the
    // archiver saw the command succeed (it archives in order), or the bytes
    // flipped below would be read short or overwritten by the rest of the
    // copy.
    wait_for("segment 4 archived", Duration::from_secs(60), || {
        let last = primary.info_field("persistence", "last_archived_wal")?;
        (last.len() == 24 && last >= segment_name(4)).then_some(())
    });
    // Flip bytes in the middle of the segment: a record's CRC fails there.
    let mut bytes = fs::read(&victim).unwrap();
    for b in &mut bytes[500_000..500_064] {
        *b ^= 0x5A;
    }
    fs::write(&victim, &bytes).unwrap();
    let standby = standby(&sdir, &archive, &[]);
    wait_state(&standby, "Streaming");
    wait_caught_up(&primary, &standby);
    check_keys(&standby, "k", 3000);
    assert_eq!(dump(&standby, "k", 3000), dump(&primary, "k", 3000));
    let t = trace(&standby);
    assert!(
        t.contains("\"event\":\"InvalidRecord\""),
        "the corrupt record was not detected:\n{t}"
    );
    assert!(standby.log_text().contains("invalid record"), "not logged");
}

#[test]
fn a_standby_refuses_itself_and_another_system_as_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = archive_dir(tmp.path());
    let primary = primary(tmp.path(), &archive, &[]);
    let sdir = basebackup(&primary, tmp.path(), "standby", "s1");
    // Another system entirely.
    let other_dir = init_datadir(tmp.path(), "other", &[]);
    let other = TestNode::start(&other_dir, &[]);
    let wal_before = wal_file_names(&sdir.join("wal"));
    let conninfo = format!(
        "primary_conninfo=host=127.0.0.1 port={} user=walrep application_name=s1",
        other.replication_port
    );
    // wal_keep_size: the restartpoints (one at each stop) remove nothing,
    // so any change to wal/ below is WAL written from a refused upstream.
    let keep = "wal_keep_size=64MB";
    let mut s = TestNode::start(
        &sdir,
        &[&conninfo, "wal_retrieve_retry_interval=200ms", keep],
    );
    wait_for(
        "the other system to be refused",
        Duration::from_secs(30),
        || {
            s.log_text()
                .contains("database system identifier differs")
                .then_some(())
        },
    );
    assert_eq!(
        wal_file_names(&sdir.join("wal")),
        wal_before,
        "WAL was written from another system"
    );
    let status = s.stop();
    assert!(
        status.success(),
        "standby stopped with {status}:\n{}",
        s.log_text()
    );
    // Itself: its own replication port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let me = format!("primary_conninfo=host=127.0.0.1 port={port} user=walrep application_name=s1");
    let rport = format!("replication_port={port}");
    let s = TestNode::start(
        &sdir,
        &[&me, &rport, "wal_retrieve_retry_interval=200ms", keep],
    );
    wait_for("the node to refuse itself", Duration::from_secs(30), || {
        s.log_text()
            .contains("points at this node itself")
            .then_some(())
    });
    assert_eq!(
        wal_file_names(&sdir.join("wal")),
        wal_before,
        "WAL was written from itself"
    );
    assert_ne!(
        s.info_field("replication", "recovery_state").as_deref(),
        Some("Streaming")
    );
}

#[test]
fn after_promotion_a_second_standby_follows_timeline_2() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = archive_dir(tmp.path());
    let mut primary = primary(tmp.path(), &archive, &[]);
    let s1dir = basebackup(&primary, tmp.path(), "s1", "s1");
    // s2 is re-pointed at s1 below; a slot on the old primary would not
    // exist on s1 (slots are not copied), so s2 streams without one.
    let s2dir = basebackup_with(&primary, tmp.path(), "s2", "s2", &["--no-slot"]);
    let s1 = standby(&s1dir, &archive, &[]);
    let mut s2 = standby(&s2dir, &archive, &[]);
    write_keys(&primary, "tl1", 1000, 100);
    wait_caught_up(&primary, &s1);
    wait_caught_up(&primary, &s2);
    primary.kill9();
    let (ok, out, err) = walrep(&["promote", s1.datadir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    write_keys(&s1, "tl2", 500, 100);
    // Re-point s2 at the new primary.
    assert!(s2.stop().success());
    s2.args.push(format!(
        "primary_conninfo=host=127.0.0.1 port={} user=walrep application_name=s2",
        s1.replication_port
    ));
    s2.restart();
    wait_for("s2 to follow timeline 2", Duration::from_secs(90), || {
        (s2.info_field("replication", "replay_tli").as_deref() == Some("2")).then_some(())
    });
    wait_caught_up(&s1, &s2);
    check_keys(&s2, "tl1", 1000);
    check_keys(&s2, "tl2", 500);
    assert!(s2.datadir.join("wal/00000002.history").exists());
    // psql sees the new timeline's history on s1, as from PostgreSQL.
    if let Some(psql) = tool("psql") {
        let conninfo = format!(
            "host=127.0.0.1 port={} user=walrep replication=true",
            s1.replication_port
        );
        let out = std::process::Command::new(psql)
            .args([
                "-X",
                "-A",
                "-t",
                "-w",
                "-d",
                &conninfo,
                "-c",
                "TIMELINE_HISTORY 2",
            ])
            .env_remove("PGPASSWORD")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("00000002.history|1\t"), "{text}");
    }
}
