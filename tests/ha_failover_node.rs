//! The HA loop's hands on a node, without etcd: a standby told to follow
//! another upstream switches by reload (no restart) and keeps streaming;
//! the state the loop reads of a standby is what the node shows.

mod support;

use std::time::Duration;

use support::node::{init_datadir, walrep, InProcessNode, TestNode};
use support::wait_for;
use walrep::ha::control::{process_clock, NodeSlot};
use walrep_states::ha::LocalRole;

fn basebackup(from_port: u16, dest: &std::path::Path, app: &str) {
    let from = format!("127.0.0.1:{from_port}");
    let (ok, out, err) = walrep(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        dest.to_str().unwrap(),
        "--write-standby-config",
        "--application-name",
        app,
        "--no-slot",
    ]);
    assert!(ok, "walrep basebackup failed: {out}{err}");
}

fn get(url: &str, key: &str) -> Option<String> {
    let mut c = redis::Client::open(url).ok()?.get_connection().ok()?;
    redis::cmd("GET").arg(key).query(&mut c).ok()?
}

#[test]
fn a_standby_follows_a_new_upstream_by_reload_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let a = TestNode::start(&init_datadir(tmp.path(), "a", &[]), &[]);
    let b_dir = tmp.path().join("b");
    basebackup(a.replication_port, &b_dir, "b");
    let b = TestNode::start(&b_dir, &["wal_retrieve_retry_interval=200ms"]);
    let c_dir = tmp.path().join("c");
    basebackup(a.replication_port, &c_dir, "c");
    let c = InProcessNode::start_existing(
        &c_dir,
        &[
            "ha_enabled=on",
            "ha_endpoints=http://127.0.0.1:9",
            "ha_name=n3",
            "ha_retry_timeout=1s",
            "wal_retrieve_retry_interval=200ms",
        ],
        None,
    );
    let url = c.redis_url();
    redis::cmd("SET")
        .arg("k1")
        .arg("v1")
        .query::<String>(&mut a.client())
        .unwrap();
    wait_for("k1 on c", Duration::from_secs(30), || {
        (get(&url, "k1").as_deref() == Some("v1")).then_some(())
    });

    let slot = NodeSlot::new(process_clock);
    slot.attach(c.node().clone());
    let before = slot.local_state();
    assert_eq!(before.role, LocalRole::Standby);
    assert_eq!(before.following, None);
    assert!(
        !before.gate_open,
        "a node under HA is fenced until it leads"
    );
    let instance = c.node().instance_id;

    slot.follow("b", &format!("127.0.0.1:{}", b.replication_port))
        .unwrap();
    let conninfo = c.node().settings().primary_conninfo.clone();
    assert!(
        conninfo.contains(&format!("port={}", b.replication_port))
            && conninfo.contains("application_name=n3"),
        "{conninfo}"
    );
    wait_for("c to stream from b", Duration::from_secs(30), || {
        let up = c.node().upstream_snapshot()?;
        (up.sender_port == b.replication_port && up.status == "streaming").then_some(())
    });
    redis::cmd("SET")
        .arg("k2")
        .arg("v2")
        .query::<String>(&mut a.client())
        .unwrap();
    wait_for("k2 on c through b", Duration::from_secs(30), || {
        (get(&url, "k2").as_deref() == Some("v2")).then_some(())
    });
    assert_eq!(c.node().instance_id, instance, "followed without a restart");
    let after = slot.local_state();
    assert_eq!(after.following.as_deref(), Some("b"));
    assert_eq!(after.role, LocalRole::Standby);
    assert!(after.healthy);
    assert!(after.flush_lsn >= before.flush_lsn);
}
