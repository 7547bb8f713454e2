//! The HA write gate (fence), without etcd: a node started with HA on and
//! no reachable etcd admits no write (`-READONLY`, reads still served); a
//! gate opened until a deadline closes by itself at that deadline with
//! nothing renewing it; a write waiting for its synchronous standby when
//! the gate closes gets an error reply, never "OK".

mod support;

use std::time::{Duration, Instant};

use support::node::{init_datadir, InProcessNode, TestNode};
use support::wait_for;

fn set(url: &str, key: &str, value: &str) -> redis::RedisResult<String> {
    let mut c = redis::Client::open(url)?.get_connection()?;
    redis::cmd("SET").arg(key).arg(value).query(&mut c)
}

/// Settings of a node under HA whose etcd is nowhere: nothing ever opens
/// its gate but the test.
const HA_NOWHERE: &[&str] = &[
    "ha_enabled=on",
    "ha_endpoints=http://127.0.0.1:9",
    "ha_name=n1",
    "ha_retry_timeout=1s",
];

#[test]
fn a_primary_started_under_ha_without_the_leader_key_refuses_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "n1", &[]);
    let node = TestNode::start(&dir, HA_NOWHERE);
    let mut c = node.client();
    let e = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<String>(&mut c)
        .unwrap_err();
    assert_eq!(e.code(), Some("READONLY"), "{e}");
    assert!(e.to_string().contains("fenced"), "{e}");
    // Reads are still served (Patroni's read split brain, documented).
    let got: Option<String> = redis::cmd("GET").arg("k").query(&mut c).unwrap();
    assert_eq!(got, None);
    // INFO (and so `walrep status`) says why.
    assert_eq!(
        node.info_field("replication", "ha_enabled").as_deref(),
        Some("1")
    );
    assert_eq!(
        node.info_field("replication", "ha_gate").as_deref(),
        Some("closed")
    );
    assert_eq!(
        node.info_field("replication", "ha_role").as_deref(),
        Some("fenced")
    );
    assert_eq!(
        node.info_field("replication", "ha_member").as_deref(),
        Some("n1")
    );
}

#[test]
fn the_gate_closes_at_its_deadline_with_nothing_renewing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let node = InProcessNode::start(
        &tmp.path().join("n1"),
        &[HA_NOWHERE, &["synchronous_commit=local"]].concat(),
    );
    let url = node.redis_url();
    let gate = node.node().write_gate().clone();
    let e = set(&url, "k", "v").unwrap_err();
    assert_eq!(e.code(), Some("READONLY"), "{e}");

    let lease = Duration::from_millis(1500);
    let deadline = Instant::now() + lease;
    gate.open_until(deadline);
    assert_eq!(set(&url, "k", "v").unwrap(), "OK");
    // Nobody renews: writes keep being acknowledged until the deadline,
    // and refused from then on.
    let refused = wait_for("the gate to close", Duration::from_secs(10), || {
        match set(&url, "k", "v") {
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "a write acknowledged after the deadline"
                );
                None
            }
            Err(e) => Some((e, Instant::now())),
        }
    });
    assert_eq!(refused.0.code(), Some("READONLY"), "{}", refused.0);
    assert!(refused.1 >= deadline, "refused before the deadline");
}

#[test]
fn a_write_waiting_for_its_standby_is_not_acknowledged_when_the_gate_closes() {
    let tmp = tempfile::tempdir().unwrap();
    // "s1" never connects: a synchronous write waits for it.
    let node = InProcessNode::start(
        &tmp.path().join("n1"),
        &[
            HA_NOWHERE,
            &["synchronous_commit=on", "synchronous_standby_names=s1"],
        ]
        .concat(),
    );
    let url = node.redis_url();
    let gate = node.node().write_gate().clone();
    gate.open_until(Instant::now() + Duration::from_secs(120));
    let waiting = {
        let url = url.clone();
        std::thread::spawn(move || set(&url, "k", "v"))
    };
    wait_for("the write to wait for s1", Duration::from_secs(10), || {
        let mut c = redis::Client::open(url.as_str())
            .ok()?
            .get_connection()
            .ok()?;
        let info: String = redis::cmd("INFO").arg("replication").query(&mut c).ok()?;
        let waiting = info
            .lines()
            .find_map(|l| l.strip_prefix("sync_waiters:"))
            .and_then(|v| v.trim().parse::<u64>().ok());
        (waiting? > 0).then_some(())
    });
    gate.close();
    let e = waiting.join().unwrap().unwrap_err();
    assert_eq!(e.code(), Some("READONLY"), "{e}");
    assert!(e.to_string().contains("not acknowledged"), "{e}");
}
