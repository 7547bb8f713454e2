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
