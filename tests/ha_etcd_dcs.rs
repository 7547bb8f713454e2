//! `EtcdDcs`, the HA loop's store on etcd, against a real three-member
//! cluster: the leader key's lifecycle on two nodes' leases, the member
//! keys, every compare-and-swap key, strangers under the prefix, and a
//! bounded error without quorum.

mod support;

use std::time::{Duration, Instant};

use support::etcd::EtcdCluster;
use support::wait_for;
use walrep::ha::dcs::{cluster_prefix, Dcs, DcsError};
use walrep::ha::etcd::{EtcdClient, EtcdConfig, EtcdDcs};
use walrep_states::ha::{
    ClusterConfigRecord, FailoverKind, FailoverRecord, HistoryEntry, MemberRecord, MemberRole,
    SyncRecord,
};
use walrep_states::{Lsn, TimelineId};

fn client(cluster: &EtcdCluster) -> EtcdClient {
    EtcdClient::new(&EtcdConfig::new(cluster.endpoints())).unwrap()
}

fn node(cluster: &EtcdCluster, name: &str, ttl_s: u64) -> EtcdDcs {
    let prefix = cluster_prefix("/walrep", "main");
    EtcdDcs::new(client(cluster), &prefix, name, Duration::from_secs(ttl_s))
}

fn member(name: &str, role: MemberRole) -> MemberRecord {
    MemberRecord {
        name: name.into(),
        role,
        system_identifier: 7,
        timeline: TimelineId(1),
        flush_lsn: Lsn(0x3000),
        replay_lsn: Lsn(0x2000),
        repl_addr: "127.0.0.1:5433".into(),
        client_addr: "127.0.0.1:6380".into(),
        status_url: None,
        nofailover: false,
        healthy: true,
        ha_paused_seen: false,
        version: "test".into(),
    }
}

#[test]
fn the_leader_key_follows_the_leases_of_two_nodes() {
    let Some(cluster) = EtcdCluster::start3() else {
        return;
    };
    let mut n1 = node(&cluster, "n1", 2);
    let mut n2 = node(&cluster, "n2", 2);
    assert!(matches!(n1.acquire_leader(), Err(DcsError::LeaseLost(_))));
    let before = walrep::ha::etcd::monotonic_now();
    let l1 = n1.keepalive().unwrap();
    assert!(l1.sent_at >= before);
    assert_eq!(l1.ttl_ms, 2000);
    n2.keepalive().unwrap();
    n1.publish_member(&member("n1", MemberRole::Primary))
        .unwrap();
    n2.publish_member(&member("n2", MemberRole::Standby))
        .unwrap();

    assert!(n1.acquire_leader().unwrap());
    assert!(!n2.acquire_leader().unwrap());
    assert!(!n2.update_leader().unwrap());
    assert!(!n2.release_leader().unwrap());
    let view = n2.load().unwrap();
    assert_eq!(view.leader_name(), Some("n1"));
    assert_eq!(view.leader.as_ref().unwrap().lease, l1.id);
    let names: Vec<&str> = view.members.iter().map(|m| m.value.name.as_str()).collect();
    assert_eq!(names, vec!["n1", "n2"]);
    assert!(view.unparsed.is_empty(), "{:?}", view.unparsed);

    // n1 renews for longer than its TTL and keeps the key.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let renewed = n1.keepalive().unwrap();
        assert_eq!(renewed.id, l1.id);
        assert!(n1.update_leader().unwrap());
        n2.keepalive().unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(n2.load().unwrap().leader_name(), Some("n1"));

    // n1 stops renewing: its leader and member keys go with its lease.
    let view = wait_for("n1's lease to expire", Duration::from_secs(15), || {
        n2.keepalive().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let view = n2.load().unwrap();
        view.leader.is_none().then_some(view)
    });
    assert!(view.member("n1").is_none());
    assert!(view.member("n2").is_some());
    assert!(n2.acquire_leader().unwrap());
    // n1 comes back: a new lease, and the key is not its any more.
    let l1b = n1.keepalive().unwrap();
    assert_ne!(l1b.id, l1.id);
    assert!(!n1.update_leader().unwrap());
    assert_eq!(n1.load().unwrap().leader_name(), Some("n2"));
    // n2 steps down; n1's update takes the free key.
    assert!(n2.release_leader().unwrap());
    assert!(n1.update_leader().unwrap());
    assert_eq!(n2.load().unwrap().leader_name(), Some("n1"));
    // A clean stop revokes the lease: the key goes at once.
    n1.revoke_lease().unwrap();
    assert_eq!(n2.load().unwrap().leader, None);
}

#[test]
fn permanent_keys_are_compare_and_swap() {
    let Some(cluster) = EtcdCluster::start3() else {
        return;
    };
    let mut n1 = node(&cluster, "n1", 10);
    n1.keepalive().unwrap();
    let sync = SyncRecord {
        leader: "n1".into(),
        sync_standbys: vec!["n2".into()],
    };
    assert!(!n1.write_sync(&sync, 12345).unwrap());
    assert!(n1.write_sync(&sync, 0).unwrap());
    let seen = n1.load().unwrap().sync.unwrap();
    assert_eq!(seen.value, sync);
    assert_eq!(seen.lease, 0);
    assert!(!n1.write_sync(&sync, 0).unwrap());
    assert!(n1.write_sync(&sync, seen.mod_revision).unwrap());
    assert!(!n1.write_sync(&sync, seen.mod_revision).unwrap());

    let request = FailoverRecord {
        leader: Some("n1".into()),
        candidate: Some("n2".into()),
        kind: FailoverKind::Switchover,
        requested_at_ms: 1,
    };
    assert!(n1.write_failover(Some(&request), 0).unwrap());
    let f = n1.load().unwrap().failover.unwrap();
    assert_eq!(f.value, request);
    assert!(!n1.write_failover(None, f.mod_revision - 1).unwrap());
    assert!(n1.write_failover(None, f.mod_revision).unwrap());
    assert_eq!(n1.load().unwrap().failover, None);

    assert!(n1
        .write_config(&ClusterConfigRecord { paused: true }, 0)
        .unwrap());
    assert!(n1.load().unwrap().paused());

    let entry = |tl| HistoryEntry {
        timeline: TimelineId(tl),
        switch_lsn: Lsn(0x200),
        leader: "n1".into(),
        at_ms: 2,
    };
    assert!(n1.append_history(&entry(2), 0).unwrap());
    let h = n1.load().unwrap().history.unwrap();
    assert!(!n1.append_history(&entry(3), 0).unwrap());
    assert!(n1.append_history(&entry(3), h.mod_revision).unwrap());
    let h = n1.load().unwrap().history.unwrap();
    assert_eq!(h.value, vec![entry(2), entry(3)]);

    assert!(n1.initialize(42).unwrap());
    assert!(!n1.initialize(43).unwrap());
    assert_eq!(n1.load().unwrap().initialize.unwrap().value, 42);
}

#[test]
fn strangers_under_the_prefix_are_reported_not_used() {
    let Some(cluster) = EtcdCluster::start3() else {
        return;
    };
    let raw = client(&cluster);
    raw.put(b"/walrep/main/leader", b"", 0).unwrap();
    raw.put(b"/walrep/main/sync", b"{\"leader\":", 0).unwrap();
    raw.put(b"/walrep/main/members/n1", b"[]", 0).unwrap();
    raw.put(b"/walrep/main/unknown", b"x", 0).unwrap();
    raw.put(b"/walrep/mainly/leader", b"other", 0).unwrap();
    let mut n1 = node(&cluster, "n1", 10);
    let view = n1.load().unwrap();
    let keys: Vec<&str> = view.unparsed.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, vec!["leader", "members/n1", "sync", "unknown"]);
    assert_eq!(view.leader, None);
    assert!(view.members.is_empty());
    assert!(view.blocking_unparsed().is_some());
}

#[test]
fn without_quorum_every_call_fails_within_the_bound() {
    let Some(mut cluster) = EtcdCluster::start3() else {
        return;
    };
    let mut config = EtcdConfig::new(cluster.endpoints());
    config.timeout = Duration::from_secs(2);
    let c = EtcdClient::new(&config).unwrap();
    let mut n1 = EtcdDcs::new(
        c,
        &cluster_prefix("/walrep", "main"),
        "n1",
        Duration::from_secs(10),
    );
    n1.keepalive().unwrap();
    assert!(n1.acquire_leader().unwrap());
    cluster.kill(1);
    cluster.kill(2);
    for op in ["load", "keepalive", "update_leader", "write_sync"] {
        let started = Instant::now();
        let e = match op {
            "load" => n1.load().map(|_| ()),
            "keepalive" => n1.keepalive().map(|_| ()),
            "update_leader" => n1.update_leader().map(|_| ()),
            _ => n1.write_sync(&SyncRecord::default(), 0).map(|_| ()),
        }
        .expect_err(op);
        let took = started.elapsed();
        assert!(took <= Duration::from_secs(4), "{op} took {took:?}: {e}");
        assert!(
            matches!(e, DcsError::NoQuorum(_) | DcsError::MaybeApplied(_)),
            "{op}: {e:?}"
        );
    }
    cluster.restart(1);
    cluster.wait_healthy();
    wait_for(
        "the leader key readable again",
        Duration::from_secs(15),
        || n1.load().ok(),
    );
    assert!(n1.keepalive().is_ok());
    assert!(n1.update_leader().unwrap());
}
