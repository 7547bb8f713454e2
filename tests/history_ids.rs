//! Histories that cannot collide: two standbys promoted independently from
//! timeline 1 both reach timeline 2, with different history ids; a third
//! standby that followed one of them refuses the other, printing both
//! histories and where they fork.

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use walrep::replication::client::{ConnInfo, ReplicationClient};
use walrep::replication::server::HISTORY_ID_PARAMETER;
use walrep::wal::timeline::{format_history_id, history_ids};
use walrep::TimelineId;

use support::cluster::{basebackup_with, wait_caught_up, wait_state, write_keys, SEG_1MB};
use support::node::{init_datadir, walrep, TestNode};
use support::wait_for;

fn history_text(dir: &Path, tli: u32) -> Option<String> {
    fs::read_to_string(dir.join("wal").join(TimelineId(tli).history_file_name())).ok()
}

fn promote(node: &TestNode) {
    let (ok, out, err) = walrep(&["promote", node.datadir.to_str().unwrap()]);
    assert!(ok, "walrep promote failed: {out}{err}\n{}", node.log_text());
    wait_for(
        "the promoted node to take writes",
        Duration::from_secs(60),
        || {
            let mut c = node.try_client()?;
            redis::cmd("SET")
                .arg("promoted")
                .arg(node.port)
                .query::<String>(&mut c)
                .ok()
        },
    );
}

fn follow(node: &mut TestNode, upstream: &TestNode) {
    node.stop();
    node.args.retain(|a| !a.starts_with("primary_conninfo="));
    node.args.push(format!(
        "primary_conninfo=host=127.0.0.1 port={} user=walrep application_name=c",
        upstream.replication_port
    ));
    node.restart();
}

#[test]
fn a_standby_refuses_an_upstream_whose_timeline_2_came_from_another_promotion() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "a", &["--wal-segment-size", SEG_1MB]);
    let mut a = TestNode::start(&dir, &[]);
    write_keys(&a, "k", 100, 20);
    let standby = |name: &str| {
        // No slot: these standbys are re-pointed at a promoted node, which
        // never had the slot a copy from `a` would make on `a`.
        let d = basebackup_with(&a, tmp.path(), name, name, &["--no-slot"]);
        let n = TestNode::start(&d, &[]);
        wait_state(&n, "Streaming");
        n
    };
    let b = standby("b");
    let mut c = standby("c");
    let d = standby("d");
    for n in [&b, &c, &d] {
        wait_caught_up(&a, n);
    }
    a.stop();

    promote(&b);
    promote(&d);
    let (hb, hd) = (
        history_text(&b.datadir, 2).unwrap(),
        history_text(&d.datadir, 2).unwrap(),
    );
    let (ib, id) = (history_ids(&hb), history_ids(&hd));
    let (ib2, id2) = (ib[&TimelineId(2)], id[&TimelineId(2)]);
    assert_ne!(ib2, id2, "two promotions gave timeline 2 the same id");
    // PostgreSQL's reading of the file is unchanged: the same one line.
    for h in [&hb, &hd] {
        let lines = walrep_states::history::parse_lines(h).unwrap();
        assert_eq!(lines.len(), 1, "{h}");
        assert_eq!(lines[0].parent, TimelineId(1));
    }

    // Each announces its timeline and id at connection.
    for (node, id) in [(&b, ib2), (&d, id2)] {
        let info = ConnInfo::parse(&format!(
            "host=127.0.0.1 port={} user=walrep",
            node.replication_port
        ))
        .unwrap();
        let client = ReplicationClient::connect(&info, Duration::from_secs(10)).unwrap();
        assert_eq!(
            client.parameter(HISTORY_ID_PARAMETER),
            Some(format!("2/{}", format_history_id(id)).as_str())
        );
    }

    // C follows B onto B's timeline 2.
    follow(&mut c, &b);
    wait_for("c to learn b's timeline 2", Duration::from_secs(60), || {
        history_text(&c.datadir, 2).filter(|t| *t == hb)
    });
    write_keys(&b, "after-b", 10, 20);
    wait_caught_up(&b, &c);

    // Pointed at D, it refuses, naming both ids and the fork.
    follow(&mut c, &d);
    let refusal = wait_for(
        "c to refuse d's timeline 2",
        Duration::from_secs(60),
        || {
            c.log_text()
                .lines()
                .find(|l| l.contains("is not the one this standby knows"))
                .map(str::to_string)
        },
    );
    let log = c.log_text();
    assert!(log.contains(&format_history_id(ib2)), "{log}");
    assert!(log.contains(&format_history_id(id2)), "{log}");
    assert!(refusal.contains("fork at"), "{refusal}");
    // It did not take D's WAL: B's history file is still the one it has,
    // and B's writes are still what it serves.
    assert_eq!(history_text(&c.datadir, 2).as_deref(), Some(hb.as_str()));
    let v: Option<String> = redis::cmd("GET")
        .arg("promoted")
        .query(&mut c.client())
        .unwrap();
    assert_eq!(v, Some(b.port.to_string()));
}

/// The keys listed in a quarantine report.
fn report_keys(report: &str) -> std::collections::BTreeSet<String> {
    report
        .lines()
        .skip_while(|l| !l.starts_with("keys written past the fork"))
        .skip(1)
        .map(|l| l.trim().to_string())
        .collect()
}

/// The whole story in one run: B and D are promoted independently from A's
/// timeline 1 while A still takes writes; C, which followed B, refuses D
/// with both ids, both histories and the fork position; A, killed, comes
/// back with `walrep rejoin` as B's standby, its report naming exactly the
/// writes it took past the fork, and its data then equals B's.
#[test]
fn two_promotions_a_refused_fork_and_the_old_primary_rejoins_the_right_one() {
    use support::cluster::dump;
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "a", &["--wal-segment-size", SEG_1MB]);
    // No timed checkpoint: rejoin needs one from before the fork.
    let mut a = TestNode::start(&dir, &["checkpoint_timeout=1h"]);
    write_keys(&a, "k", 100, 20);
    let standby = |name: &str| {
        let d = basebackup_with(&a, tmp.path(), name, name, &["--no-slot"]);
        let n = TestNode::start(&d, &[]);
        wait_state(&n, "Streaming");
        n
    };
    let b = standby("b");
    let mut c = standby("c");
    let d = standby("d");
    for n in [&b, &c, &d] {
        wait_caught_up(&a, n);
    }
    // C stops at the fork (it must not take A's writes past it).
    c.stop();
    promote(&b);
    promote(&d);
    write_keys(&a, "lost", 30, 20);
    a.kill9();
    write_keys(&b, "after", 40, 20);

    let (hb, hd) = (
        history_text(&b.datadir, 2).unwrap(),
        history_text(&d.datadir, 2).unwrap(),
    );
    let (ib2, id2) = (
        history_ids(&hb)[&TimelineId(2)],
        history_ids(&hd)[&TimelineId(2)],
    );
    assert_ne!(ib2, id2, "two promotions gave timeline 2 the same id");
    let fork = walrep_states::history::parse_lines(&hb).unwrap()[0].switch_point;

    // C follows B, then refuses D: both ids, the fork, both histories.
    c.args.retain(|a| !a.starts_with("primary_conninfo="));
    c.args.push(format!(
        "primary_conninfo=host=127.0.0.1 port={} user=walrep application_name=c",
        b.replication_port
    ));
    c.restart();
    wait_caught_up(&b, &c);
    follow(&mut c, &d);
    let log = wait_for("c to refuse d", Duration::from_secs(60), || {
        let log = c.log_text();
        log.contains("is not the one this standby knows")
            .then_some(log)
    });
    let refusal = &log[log.find("is not the one this standby knows").unwrap()..];
    for needed in [
        format_history_id(ib2),
        format_history_id(id2),
        format!("fork at {fork}"),
        "this standby's history".to_string(),
        "the primary's history".to_string(),
    ] {
        assert!(refusal.contains(&needed), "{needed:?} not in: {refusal}");
    }
    assert_eq!(history_text(&c.datadir, 2).as_deref(), Some(hb.as_str()));

    // A rejoins B: exactly its 30 writes past the fork are quarantined.
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
    let q: Vec<_> = fs::read_dir(a.datadir.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(q.len(), 1, "{q:?}");
    let report = fs::read_to_string(q[0].join("report.txt")).unwrap();
    let expected: std::collections::BTreeSet<String> =
        (0..30).map(|i| format!("lost:{i}")).collect();
    assert_eq!(report_keys(&report), expected, "{report}");
    assert!(report.contains(&format!("fork: {fork}")), "{report}");

    // Started again it follows B's timeline 2 and ends with B's data.
    a.restart();
    wait_state(&a, "Streaming");
    write_keys(&b, "later", 20, 20);
    wait_caught_up(&b, &a);
    for (prefix, n) in [("k", 100), ("lost", 30), ("after", 40), ("later", 20)] {
        assert_eq!(dump(&a, prefix, n), dump(&b, prefix, n), "keys {prefix}:*");
    }
    assert!(dump(&a, "lost", 30).iter().all(Option::is_none));
    let digest = |n: &TestNode| -> String {
        redis::cmd("DEBUG")
            .arg("DIGEST")
            .query(&mut n.client())
            .unwrap()
    };
    assert_eq!(
        digest(&a),
        digest(&b),
        "A's data differs from the new primary's"
    );
}
