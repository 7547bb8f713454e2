//! `walrep rejoin`: an old primary that took writes after its standby was
//! promoted comes back as a standby of the new primary. The writes past
//! the fork are named in the quarantine report, exactly, and then its data
//! equals the new primary's.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use walrep::store::control::CONTROL_FILE;

use support::cluster::{basebackup, dump, wait_caught_up, wait_state, write_keys, SEG_1MB};
use support::node::{init_datadir, walrep, TestNode};

/// The keys listed in a quarantine report.
fn report_keys(report: &str) -> BTreeSet<String> {
    report
        .lines()
        .skip_while(|l| !l.starts_with("keys written past the fork"))
        .skip(1)
        .map(|l| l.trim().to_string())
        .collect()
}

fn quarantine_report(datadir: &Path) -> String {
    let q = datadir.join("quarantine");
    let dirs: Vec<_> = fs::read_dir(&q)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    fs::read_to_string(dirs[0].join("report.txt")).unwrap()
}

/// Promote `node` and wait until it takes writes.
fn promote(node: &TestNode) {
    let (ok, out, err) = walrep(&["promote", node.datadir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    support::wait_for(
        "the promoted node to take writes",
        std::time::Duration::from_secs(60),
        || {
            let mut c = node.try_client()?;
            redis::cmd("SET")
                .arg("promoted")
                .arg("1")
                .query::<String>(&mut c)
                .ok()
        },
    );
}

#[test]
fn an_old_primary_rejoins_with_its_writes_past_the_fork_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "a", &["--wal-segment-size", SEG_1MB]);
    let mut a = TestNode::start(&dir, &["checkpoint_timeout=1h"]);
    write_keys(&a, "k", 200, 50);
    let bdir = basebackup(&a, tmp.path(), "b", "b");
    let b = TestNode::start(&bdir, &[]);
    wait_state(&b, "Streaming");
    write_keys(&a, "k2", 100, 50);
    wait_caught_up(&a, &b);

    // B is promoted while A still takes writes: those are past the fork.
    promote(&b);
    write_keys(&a, "lost", 30, 50);
    a.kill9();
    write_keys(&b, "after", 50, 50);

    let from = format!("127.0.0.1:{}", b.replication_port);
    let (ok, out, err) = walrep(&[
        "rejoin",
        a.datadir.to_str().unwrap(),
        "--from",
        &from,
        "-U",
        "walrep",
    ]);
    assert!(ok, "walrep rejoin failed: {out}{err}");
    assert!(out.contains("moved to"), "{out}");

    let report = quarantine_report(&a.datadir);
    let expected: BTreeSet<String> = (0..30).map(|i| format!("lost:{i}")).collect();
    assert_eq!(report_keys(&report), expected, "{report}");
    assert!(report.contains("records: 30"), "{report}");

    // Started again, A is a standby of B and ends up with B's data.
    a.args.push("checkpoint_timeout=1h".into());
    a.restart();
    wait_state(&a, "Streaming");
    write_keys(&b, "later", 20, 50);
    wait_caught_up(&b, &a);
    for (prefix, n) in [
        ("k", 200),
        ("k2", 100),
        ("lost", 30),
        ("after", 50),
        ("later", 20),
    ] {
        assert_eq!(dump(&a, prefix, n), dump(&b, prefix, n), "keys {prefix}:*");
    }
    assert!(dump(&a, "lost", 30).iter().all(Option::is_none));
}

#[test]
fn rejoin_refuses_when_the_last_checkpoint_is_past_the_fork() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "a", &["--wal-segment-size", SEG_1MB]);
    let mut a = TestNode::start(&dir, &[]);
    write_keys(&a, "k", 50, 50);
    let bdir = basebackup(&a, tmp.path(), "b", "b");
    let b = TestNode::start(&bdir, &[]);
    wait_state(&b, "Streaming");
    wait_caught_up(&a, &b);
    promote(&b);
    write_keys(&a, "lost", 10, 50);
    // A clean stop writes a shutdown checkpoint past the fork.
    a.stop();
    let from = format!("127.0.0.1:{}", b.replication_port);
    let before = fs::read(a.datadir.join(CONTROL_FILE)).ok();
    let (ok, out, err) = walrep(&[
        "rejoin",
        a.datadir.to_str().unwrap(),
        "--from",
        &from,
        "-U",
        "walrep",
    ]);
    assert!(!ok, "rejoin succeeded: {out}");
    assert!(err.contains("no local checkpoint is old enough"), "{err}");
    assert!(err.contains("walrep basebackup"), "{err}");
    assert!(!a.datadir.join("standby.signal").exists());
    assert!(!a.datadir.join("quarantine").exists());
    assert_eq!(fs::read(a.datadir.join(CONTROL_FILE)).ok(), before);
}
