//! `walrep basebackup -R` makes a replication slot for the new standby
//! before the copy starts: three copies in a row from an idle primary with
//! 1 MB segments, then the first copy started, streams (without the slot
//! its WAL is gone, and the walsender's error names the oldest position it
//! still has); `--no-slot` opts out; a failed backup drops the slot it made.

mod support;

use std::time::Duration;

use support::cluster::*;
use support::node::{init_datadir, walrep, TestNode};
use support::wait_for;
use walrep::replication::client::{ConnInfo, ReplicationClient};

fn client(node: &TestNode) -> ReplicationClient {
    let info = ConnInfo {
        host: "127.0.0.1".into(),
        port: node.replication_port,
        user: "walrep".into(),
        ..ConnInfo::default()
    };
    ReplicationClient::connect(&info, Duration::from_secs(10)).unwrap()
}

/// An idle primary with 1 MB segments that keeps no WAL for anyone
/// (`min_wal_size=0`: removed, not recycled under old names).
fn idle_primary(tmp: &std::path::Path) -> TestNode {
    let dir = init_datadir(tmp, "primary", &["--wal-segment-size", SEG_1MB]);
    TestNode::start(&dir, &["min_wal_size=0"])
}

/// Three backups in a row, as a new user tries it; returns the first.
fn three_copies(primary: &TestNode, tmp: &std::path::Path, extra: &[&str]) -> std::path::PathBuf {
    let first = basebackup_with(primary, tmp, "copy1", "copy1", extra);
    basebackup_with(primary, tmp, "copy2", "copy2", extra);
    basebackup_with(primary, tmp, "copy3", "copy3", extra);
    first
}

#[test]
fn three_copies_in_a_row_then_the_first_streams_thanks_to_its_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let primary = idle_primary(tmp.path());
    let first = three_copies(&primary, tmp.path(), &[]);
    let config = std::fs::read_to_string(first.join("walrep.toml")).unwrap();
    assert!(
        config.contains("primary_slot_name = \"walrep_copy1\""),
        "{config}"
    );
    // The slot holds WAL from before the copy's start.
    let mut c = client(&primary);
    for name in ["walrep_copy1", "walrep_copy2", "walrep_copy3"] {
        let slot = c.read_replication_slot(name).unwrap();
        assert!(
            slot.and_then(|s| s.restart_lsn).is_some(),
            "{name}: {slot:?}"
        );
    }
    c.close();
    write_keys(&primary, "after", 200, 100);
    let standby = TestNode::start(&first, &[]);
    wait_state(&standby, "Streaming");
    wait_caught_up(&primary, &standby);
    check_keys(&standby, "after", 200);
}

#[test]
fn without_a_slot_the_wal_is_gone_and_the_error_names_the_oldest_position() {
    let tmp = tempfile::tempdir().unwrap();
    let primary = idle_primary(tmp.path());
    let first = three_copies(&primary, tmp.path(), &["--no-slot"]);
    // The primary keeps the WAL of its last two checkpoints (the previous
    // one is recovery's fallback). A copy of an idle primary reuses its
    // last checkpoint, so a write before each of two more copies makes
    // each take a new one: both then lie past the first copy's WAL.
    for copy in ["copy4", "copy5"] {
        write_keys(&primary, copy, 1, 10);
        basebackup_with(&primary, tmp.path(), copy, copy, &["--no-slot"]);
    }
    let config = std::fs::read_to_string(first.join("walrep.toml")).unwrap();
    assert!(!config.contains("primary_slot_name = \"walrep"), "{config}");
    let mut c = client(&primary);
    assert_eq!(c.read_replication_slot("walrep_copy1").unwrap(), None);
    c.close();
    let standby = TestNode::start(&first, &["wal_retrieve_retry_interval=200ms"]);
    let line = wait_for(
        "the standby to report the removed WAL",
        Duration::from_secs(60),
        || {
            standby
                .log_text()
                .lines()
                .find(|l| l.contains("has already been removed"))
                .map(str::to_string)
        },
    );
    assert!(
        line.contains("The oldest WAL this server still has starts at"),
        "{line}"
    );
}

#[test]
fn a_slot_name_in_use_fails_the_backup_and_leaves_the_slot_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let primary = idle_primary(tmp.path());
    let mut c = client(&primary);
    c.create_physical_slot("taken", false, true).unwrap();
    let before = c.read_replication_slot("taken").unwrap();
    c.close();
    let dest = tmp.path().join("copy");
    let from = format!("127.0.0.1:{}", primary.replication_port);
    let (ok, _, err) = walrep(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        dest.to_str().unwrap(),
        "-R",
        "--slot",
        "taken",
    ]);
    assert!(!ok);
    assert!(
        err.contains("could not create replication slot \"taken\""),
        "{err}"
    );
    assert!(!dest.exists(), "the failed copy was left behind");
    let mut c = client(&primary);
    assert_eq!(c.read_replication_slot("taken").unwrap(), before);
    c.close();
    // --slot without -R is refused before anything is made.
    let (ok, _, err) = walrep(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        dest.to_str().unwrap(),
        "--slot",
        "other",
    ]);
    assert!(!ok);
    assert!(err.contains("--slot needs --write-standby-config"), "{err}");
}
