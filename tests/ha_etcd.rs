//! The etcd client against a real three-member etcd cluster on loopback:
//! every operation, the leader key's CAS writes as docs/ha.md describes
//! them, leases expiring and renewed, a member killed, quorum lost and
//! regained, and endpoints that are not etcd.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use support::etcd::EtcdCluster;
use support::wait_for;
use walrep::ha::etcd::leader::{self, LeaderWrite};
use walrep::ha::etcd::{
    Compare, CompareTarget, EtcdClient, EtcdConfig, EtcdError, Txn, TxnOp, TxnOpResponse,
};

/// The bound every call of these tests' clients gets.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

fn client_of(endpoints: Vec<String>) -> EtcdClient {
    let mut config = EtcdConfig::new(endpoints);
    config.timeout = CALL_TIMEOUT;
    EtcdClient::new(&config).expect("valid endpoints")
}

fn client(cluster: &EtcdCluster) -> EtcdClient {
    client_of(cluster.endpoints())
}

#[test]
fn key_value_operations_and_nested_txns() {
    let Some(cluster) = EtcdCluster::start3() else {
        return;
    };
    let c = client(&cluster);
    let h1 = c.put(b"/t/a", b"1", 0).unwrap();
    c.put(b"/t/b", b"2", 0).unwrap();
    c.put(b"/u", b"outside", 0).unwrap();
    let a = c.get(b"/t/a").unwrap().expect("/t/a exists");
    assert_eq!(a.value, b"1");
    assert_eq!(a.mod_revision, h1.revision);
    assert_eq!(c.get(b"/t/none").unwrap(), None);

    let all = c.range_prefix(b"/t/").unwrap();
    let keys: Vec<&[u8]> = all.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, vec![&b"/t/a"[..], b"/t/b"]);
    assert_eq!(all.count, 2);

    // CAS on mod_revision: a stale revision loses and runs the failure
    // branch, here a nested txn that reads the key.
    let stale = Txn {
        compare: vec![Compare::equal(
            b"/t/a",
            CompareTarget::Mod(a.mod_revision - 1),
        )],
        success: vec![TxnOp::put(b"/t/a", b"lost", 0)],
        failure: vec![TxnOp::Txn(Txn {
            compare: vec![Compare::absent(b"/t/a")],
            success: vec![],
            failure: vec![TxnOp::get(b"/t/a")],
        })],
    };
    let r = c.txn(&stale).unwrap();
    assert!(!r.succeeded);
    let TxnOpResponse::Txn(inner) = &r.responses[0] else {
        panic!("expected a nested txn response: {r:?}");
    };
    assert!(!inner.succeeded);
    let TxnOpResponse::Range(read) = &inner.responses[0] else {
        panic!("expected a range in the nested failure branch: {inner:?}");
    };
    assert_eq!(read.kvs[0].value, b"1");

    let fresh = Txn {
        compare: vec![Compare::equal(b"/t/a", CompareTarget::Mod(a.mod_revision))],
        success: vec![TxnOp::put(b"/t/a", b"won", 0)],
        failure: vec![],
    };
    assert!(c.txn(&fresh).unwrap().succeeded);
    assert_eq!(c.get(b"/t/a").unwrap().unwrap().value, b"won");

    assert_eq!(c.delete(b"/t/a", b"").unwrap(), 1);
    assert_eq!(c.delete(b"/t/a", b"").unwrap(), 0);
    let end = walrep::ha::etcd::prefix_range_end(b"/t/");
    assert_eq!(c.delete(b"/t/", &end).unwrap(), 1);
    assert_eq!(c.get(b"/u").unwrap().unwrap().value, b"outside");

    // etcd's own refusal comes back as Rejected, by its code.
    let dup = Txn {
        compare: vec![],
        success: vec![TxnOp::put(b"/d", b"1", 0), TxnOp::put(b"/d", b"2", 0)],
        failure: vec![],
    };
    match c.txn(&dup) {
        Err(EtcdError::Rejected { code: 3, message }) => {
            assert!(message.contains("duplicate key"), "{message}")
        }
        other => panic!("a txn putting one key twice: {other:?}"),
    }
}

#[test]
fn leader_key_cas_acquire_update_release() {
    let Some(cluster) = EtcdCluster::start3() else {
        return;
    };
    let c = client(&cluster);
    let key = b"/walrep/main/leader";
    let l1 = c.lease_grant(10).unwrap();
    let l2 = c.lease_grant(10).unwrap();
    assert_ne!(l1.id, l2.id);
    assert_eq!(l1.ttl_s, 10);

    assert_eq!(
        leader::acquire(&c, key, b"n1", l1.id).unwrap(),
        LeaderWrite::Held
    );
    // The second comer loses and learns the owner in the same round trip.
    assert_eq!(
        leader::acquire(&c, key, b"n2", l2.id).unwrap(),
        LeaderWrite::Lost {
            owner: Some(b"n1".to_vec())
        }
    );
    let kv = c.get(key).unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.lease), (&b"n1"[..], l1.id));

    // Update on the same lease writes nothing.
    assert!(leader::update(&c, key, b"n1", l1.id).unwrap().held());
    assert_eq!(c.get(key).unwrap().unwrap().mod_revision, kv.mod_revision);
    // Update on a new lease re-attaches the key to it.
    let l1b = c.lease_grant(10).unwrap();
    assert!(leader::update(&c, key, b"n1", l1b.id).unwrap().held());
    assert_eq!(c.get(key).unwrap().unwrap().lease, l1b.id);
    // Another node's update never overwrites the key.
    assert_eq!(
        leader::update(&c, key, b"n2", l2.id).unwrap(),
        LeaderWrite::Lost {
            owner: Some(b"n1".to_vec())
        }
    );
    assert_eq!(c.get(key).unwrap().unwrap().value, b"n1");

    // Only the owner's step-down deletes the key.
    assert!(!leader::release(&c, key, b"n2").unwrap());
    assert!(c.get(key).unwrap().is_some());
    assert!(leader::release(&c, key, b"n1").unwrap());
    assert_eq!(c.get(key).unwrap(), None);
    assert!(!leader::release(&c, key, b"n1").unwrap());

    // An update after the key is gone takes it again (CREATE == 0).
    assert!(leader::update(&c, key, b"n2", l2.id).unwrap().held());
    assert_eq!(c.get(key).unwrap().unwrap().lease, l2.id);
}

#[test]
fn lease_expiry_deletes_the_key_and_keepalive_renews() {
    let Some(cluster) = EtcdCluster::start3() else {
        return;
    };
    let c = client(&cluster);
    // etcd raises a TTL under its least (2 s with a 1 s election timeout).
    let short = c.lease_grant(1).unwrap();
    assert_eq!(short.ttl_s, 2);
    let kept = c.lease_grant(2).unwrap();
    c.put(b"/l/short", b"x", short.id).unwrap();
    c.put(b"/l/kept", b"y", kept.id).unwrap();
    let ttl = c.lease_time_to_live(kept.id).unwrap();
    assert_eq!(ttl.granted_ttl_s, 2);
    assert_eq!(ttl.keys, vec![b"/l/kept".to_vec()]);

    // Renew `kept` every 500 ms while `short` runs out.
    let started = Instant::now();
    wait_for(
        "the short lease's key to go",
        Duration::from_secs(10),
        || {
            assert!(c.lease_keepalive(kept.id).unwrap() > 0);
            std::thread::sleep(Duration::from_millis(500));
            c.get(b"/l/short").unwrap().is_none().then_some(())
        },
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "expired too soon"
    );
    assert_eq!(c.lease_time_to_live(short.id).unwrap().ttl_s, -1);
    assert_eq!(
        c.lease_keepalive(short.id),
        Err(EtcdError::LeaseNotFound { id: short.id })
    );
    // The renewed lease outlived its TTL and kept its key.
    assert!(started.elapsed() > Duration::from_secs(2));
    assert_eq!(c.get(b"/l/kept").unwrap().unwrap().value, b"y");

    // Revoking deletes at once; a second revoke finds nothing.
    c.lease_revoke(kept.id).unwrap();
    assert_eq!(c.get(b"/l/kept").unwrap(), None);
    assert_eq!(
        c.lease_revoke(kept.id),
        Err(EtcdError::LeaseNotFound { id: kept.id })
    );
}

#[test]
fn operations_go_on_through_the_other_members_when_one_is_killed() {
    let Some(mut cluster) = EtcdCluster::start3() else {
        return;
    };
    let c = client(&cluster);
    c.put(b"/k", b"before", 0).unwrap();
    let lease = c.lease_grant(10).unwrap();
    // Kill the etcd leader: the hardest member to lose.
    let victim = wait_for("an etcd leader", support::DEADLINE, || cluster.leader());
    cluster.kill(victim);
    // A new leader is elected within about an election timeout; every
    // call is bounded and the client moves on to the live members.
    let started = Instant::now();
    wait_for(
        "a put through the survivors",
        Duration::from_secs(15),
        || c.put(b"/k", b"after", 0).ok(),
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    for _ in 0..10 {
        assert_eq!(c.get(b"/k").unwrap().unwrap().value, b"after");
        assert!(c.lease_keepalive(lease.id).unwrap() > 0);
    }
    // The member comes back and catches up.
    cluster.restart(victim);
    cluster.wait_member_healthy(victim);
    let only = client_of(vec![cluster.endpoint(victim)]);
    assert_eq!(only.get(b"/k").unwrap().unwrap().value, b"after");
}

#[test]
fn quorum_loss_gives_a_bounded_clear_error_and_quorum_back_works() {
    let Some(mut cluster) = EtcdCluster::start3() else {
        return;
    };
    let c = client(&cluster);
    c.put(b"/q", b"1", 0).unwrap();
    let lease = c.lease_grant(30).unwrap();
    cluster.stop(1);
    cluster.stop(2);
    // Every call fails within its bound (plus scheduling slack), with the
    // live member's answer (no leader), not "unreachable", whatever the
    // operation.
    let slack = Duration::from_secs(2);
    for op in ["range", "put", "txn", "keepalive", "grant"] {
        let started = Instant::now();
        let result = match op {
            "range" => c.get(b"/q").map(|_| ()),
            "put" => c.put(b"/q", b"2", 0).map(|_| ()),
            "txn" => leader::acquire(&c, b"/q/leader", b"n1", 0).map(|_| ()),
            "keepalive" => c.lease_keepalive(lease.id).map(|_| ()),
            _ => c.lease_grant(10).map(|_| ()),
        };
        let took = started.elapsed();
        let e = result.expect_err(op);
        assert!(
            took <= CALL_TIMEOUT + slack,
            "{op} took {took:?} to fail: {e}"
        );
        assert!(
            matches!(
                e,
                EtcdError::NoLeader { .. }
                    | EtcdError::Timeout { .. }
                    | EtcdError::Unavailable { .. }
            ),
            "{op}: {e:?}"
        );
        eprintln!("{op} without quorum: {e} (after {took:?})");
    }
    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_healthy();
    wait_for("a put with quorum back", Duration::from_secs(15), || {
        c.put(b"/q", b"3", 0).ok()
    });
    assert_eq!(c.get(b"/q").unwrap().unwrap().value, b"3");
    assert!(c.lease_keepalive(lease.id).unwrap() > 0);
}

/// A listener that answers every connection with `reply` (or, empty,
/// never answers), on a thread, until the test ends.
fn fake_server(reply: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(64) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.read(&mut buf);
            if reply.is_empty() {
                held.push(s);
            } else {
                let _ = s.write_all(reply);
            }
        }
    });
    format!("http://{addr}")
}

#[test]
fn endpoints_that_are_not_etcd_give_clear_errors() {
    for bad in [
        "",
        "localhost:2379",
        "http://host",
        "https://127.0.0.1:2379",
        "http://a b:1",
    ] {
        let config = EtcdConfig::from_list(bad);
        let e = EtcdClient::new(&config).expect_err(bad);
        assert!(
            matches!(e, EtcdError::BadEndpoint { .. } | EtcdError::NoEndpoints),
            "{bad:?}: {e:?}"
        );
        eprintln!("{bad:?}: {e}");
    }

    // Nothing listens: unreachable, quickly, and said so.
    let closed = format!("http://127.0.0.1:{}", support::ports::reserve_port());
    let started = Instant::now();
    let e = client_of(vec![closed.clone()]).get(b"/x").unwrap_err();
    assert!(matches!(e, EtcdError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains(&closed), "{e}");
    assert!(started.elapsed() <= CALL_TIMEOUT + Duration::from_secs(1));

    // An HTTP server that is not etcd: a bad response quoting the body.
    let web = fake_server(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world");
    let e = client_of(vec![web]).get(b"/x").unwrap_err();
    assert!(matches!(e, EtcdError::BadResponse { .. }), "{e:?}");
    assert!(e.to_string().contains("hello world"), "{e}");

    // Not HTTP at all.
    let garbage = fake_server(b"\x00\xff\x13garbage\r\n\r\n");
    let e = client_of(vec![garbage]).put(b"/x", b"1", 0).unwrap_err();
    assert!(!matches!(e, EtcdError::Rejected { .. }), "{e:?}");

    // A server that never answers: a timeout at the bound, "maybe applied".
    let silent = fake_server(b"");
    let started = Instant::now();
    let e = client_of(vec![silent]).put(b"/x", b"1", 0).unwrap_err();
    assert!(matches!(e, EtcdError::Timeout { .. }), "{e:?}");
    assert!(e.maybe_applied());
    let took = started.elapsed();
    assert!(
        took >= CALL_TIMEOUT - Duration::from_millis(100),
        "{took:?}"
    );
    assert!(took <= CALL_TIMEOUT + Duration::from_secs(1), "{took:?}");
}

#[test]
fn a_dead_endpoint_in_the_list_is_skipped() {
    let Some(cluster) = EtcdCluster::start3() else {
        return;
    };
    let dead = format!("http://127.0.0.1:{}", support::ports::reserve_port());
    let mut endpoints = vec![dead];
    endpoints.extend(cluster.endpoints());
    let c = client_of(endpoints);
    c.put(b"/s", b"1", 0).unwrap();
    assert_eq!(c.get(b"/s").unwrap().unwrap().value, b"1");
    assert!(
        c.retries_total() >= 1,
        "the dead endpoint was not tried first"
    );
}
