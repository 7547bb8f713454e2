//! Member replication slots under automatic failover, end to end with a
//! real three-member etcd and three `walrep start` processes (standbys made
//! with `walrep basebackup -R --no-slot`: the HA layer makes the slots).
//! The leader keeps one physical slot per other member, named after it,
//! and each standby streams on its own; after the primary is killed and a
//! standby takes over, the new leader has slots for the two others (the
//! old primary rejoined) and both stream on them. A member that stops is
//! dropped from the leader's slots only `ha_member_slots_ttl` after its
//! key went, not before.

mod support;

use std::time::{Duration, Instant};

use support::cluster::basebackup_with;
use support::etcd::EtcdCluster;
use support::node::{init_datadir, TestNode};
use support::wait_for;

const TTL_S: u64 = 6;
const SLOTS_TTL_S: u64 = 10;

fn ha_settings(etcd: &EtcdCluster, name: &str) -> Vec<String> {
    vec![
        "ha_enabled=on".into(),
        format!("ha_endpoints={}", etcd.endpoint_list()),
        "ha_cluster_name=slots".into(),
        format!("ha_name={name}"),
        format!("ha_ttl={TTL_S}s"),
        "ha_loop_wait=1s".into(),
        "ha_retry_timeout=1s".into(),
        "ha_fence_margin=2s".into(),
        "ha_use_slots=on".into(),
        format!("ha_member_slots_ttl={SLOTS_TTL_S}s"),
        "synchronous_standby_names=FIRST 1 (n1, n2, n3)".into(),
        "synchronous_commit=on".into(),
        "wal_retrieve_retry_interval=200ms".into(),
        "wal_receiver_timeout=5s".into(),
    ]
}

fn start(dir: &std::path::Path, settings: &[String]) -> TestNode {
    let refs: Vec<&str> = settings.iter().map(String::as_str).collect();
    TestNode::start(dir, &refs)
}

/// INFO replication, or None while the node does not answer.
fn info(node: &TestNode) -> Option<String> {
    let mut c = node.try_client()?;
    redis::cmd("INFO").arg("replication").query(&mut c).ok()
}

fn field(node: &TestNode, name: &str) -> Option<String> {
    info(node)?
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")).map(str::to_string))
}

/// `key=value` of one `slotN:`/`slaveN:` line.
fn kv<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_once(':')
        .map_or("", |(_, rest)| rest)
        .split(',')
        .find_map(|p| p.strip_prefix(&format!("{key}=")))
        .unwrap_or("")
}

/// The node's slots as (name, active, restart_lsn), from INFO's `slotN:`
/// lines (pg_replication_slots).
fn slots(node: &TestNode) -> Option<Vec<(String, bool, String)>> {
    let text = info(node)?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("slot"))
            .map(|l| {
                (
                    kv(l, "name").to_string(),
                    kv(l, "active") == "1",
                    kv(l, "restart_lsn").to_string(),
                )
            })
            .collect(),
    )
}

/// (application_name, slot) of every walsender streaming from the node.
fn streams(node: &TestNode) -> Option<Vec<(String, String)>> {
    let text = info(node)?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("slave"))
            .filter(|l| kv(l, "walsender_state") == "streaming")
            .map(|l| (kv(l, "application_name").into(), kv(l, "slot").into()))
            .collect(),
    )
}

/// The leader has an active slot for each of `members`, with WAL reserved,
/// and each of them streams on the slot of its own name.
fn streaming_on_own_slots(leader: &TestNode, members: &[&str]) -> bool {
    let (Some(slots), Some(streams)) = (slots(leader), streams(leader)) else {
        return false;
    };
    members.iter().all(|m| {
        slots
            .iter()
            .any(|(n, active, restart)| n == m && *active && !restart.is_empty())
            && streams.iter().any(|(app, slot)| app == m && slot == m)
    })
}

fn set(node: &TestNode, key: &str, value: &str) -> redis::RedisResult<String> {
    let client = redis::Client::open(node.url())?;
    let mut c = client.get_connection_with_timeout(Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(3)))?;
    redis::cmd("SET").arg(key).arg(value).query(&mut c)
}

#[test]
fn the_leader_keeps_a_slot_per_member_and_standbys_stream_on_them_across_a_failover() {
    let Some(etcd) = EtcdCluster::start3() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d1 = init_datadir(tmp.path(), "n1", &[]);
    let mut n1 = start(&d1, &ha_settings(&etcd, "n1"));
    wait_for("n1 to lead", Duration::from_secs(30), || {
        (field(&n1, "ha_role")? == "leader").then_some(())
    });
    let standby = |name: &str, primary: &TestNode| {
        let dir = basebackup_with(primary, tmp.path(), name, name, &["--no-slot"]);
        start(&dir, &ha_settings(&etcd, name))
    };
    let mut nodes = [standby("n2", &n1), standby("n3", &n1)];
    wait_for(
        "n2 and n3 to stream from n1 on slots n2 and n3",
        Duration::from_secs(60),
        || streaming_on_own_slots(&n1, &["n2", "n3"]).then_some(()),
    );
    wait_for("a synchronous write", Duration::from_secs(60), || {
        set(&n1, "before", "1").ok()
    });

    // The primary dies; a standby takes over and makes the slot of the
    // other one.
    n1.kill9();
    let names = ["n2", "n3"];
    let lead = wait_for(
        "a standby to take over",
        Duration::from_secs(TTL_S + 40),
        || (0..2).find(|&i| field(&nodes[i], "ha_role").as_deref() == Some("leader")),
    );
    let (other, other_name) = (1 - lead, names[1 - lead]);
    wait_for(
        "the other standby to stream from the new leader on its slot",
        Duration::from_secs(60),
        || streaming_on_own_slots(&nodes[lead], &[other_name]).then_some(()),
    );

    // The old primary comes back, rejoins as a standby and streams on the
    // slot the new leader makes for it.
    n1.restart();
    wait_for(
        "n1 and the other standby to stream from the new leader on their slots",
        Duration::from_secs(120),
        || streaming_on_own_slots(&nodes[lead], &["n1", other_name]).then_some(()),
    );
    let on_leader: Vec<String> = slots(&nodes[lead])
        .unwrap()
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(
        on_leader.len(),
        2,
        "one slot per other member only: {on_leader:?}"
    );
    wait_for(
        "a synchronous write on the new leader",
        Duration::from_secs(60),
        || set(&nodes[lead], "after", "1").ok(),
    );

    // A member that stops keeps its slot while briefly away, and loses it
    // only ha_member_slots_ttl after its key went.
    nodes[other].kill9();
    let stopped = Instant::now();
    let leader = &nodes[lead];
    let has_slot = |name: &str| slots(leader).is_some_and(|s| s.iter().any(|(n, _, _)| n == name));
    // Its key lives up to ha_ttl after its last renewal; the slot stays at
    // least ha_member_slots_ttl past the last time the leader saw it.
    while stopped.elapsed() < Duration::from_secs(TTL_S + 2) {
        assert!(
            has_slot(other_name),
            "slot {other_name} dropped {:?} after its member stopped",
            stopped.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for(
        "the stopped member's slot to be dropped",
        Duration::from_secs(TTL_S + SLOTS_TTL_S + 30),
        || (!has_slot(other_name)).then_some(()),
    );
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_secs(SLOTS_TTL_S),
        "slot dropped {took:?} after its member stopped, before ha_member_slots_ttl"
    );
    println!("the stopped member's slot was dropped {took:?} after it stopped");
    assert!(has_slot("n1"), "the slot of a live member stays");
    wait_for(
        "a synchronous write with n1 left",
        Duration::from_secs(60),
        || set(leader, "still", "1").ok(),
    );
}
