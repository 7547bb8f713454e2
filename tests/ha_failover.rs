//! Automatic failover end to end, with a real three-member etcd and three
//! `walrep start` processes: a primary and two standbys made by `walrep
//! basebackup -R`, `FIRST 1 (n1, n2, n3)` with `synchronous_commit = on`.
//! The primary is killed (-9) under a write load; a synchronous standby
//! takes the leader key and promotes within `ha_ttl + ha_loop_wait` (the
//! time is measured and printed), the other standby follows it, every
//! acknowledged write is on the new primary, and the old primary,
//! started again, rejoins as a standby of the new one.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::cluster::basebackup_with;
use support::etcd::EtcdCluster;
use support::ha::{field, get, ha_settings, set, start, LOOP_WAIT_S, TTL_S};
use support::node::{init_datadir, TestNode};
use support::wait_for;

#[test]
fn a_sync_standby_takes_over_from_a_killed_primary_and_the_old_primary_rejoins() {
    let Some(etcd) = EtcdCluster::start3() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d1 = init_datadir(tmp.path(), "n1", &[]);
    let mut n1 = start(&d1, &ha_settings(&etcd, "n1"));
    wait_for(
        "n1 to lead (ha_role leader)",
        Duration::from_secs(30),
        || (field(&n1, "ha_role")? == "leader").then_some(()),
    );
    let standby = |name: &str, primary: &TestNode| {
        let dir = basebackup_with(primary, tmp.path(), name, name, &["--no-slot"]);
        start(&dir, &ha_settings(&etcd, name))
    };
    let n2 = standby("n2", &n1);
    let n3 = standby("n3", &n1);
    // Writes go through once a standby is confirmed and named in `sync`.
    wait_for("a first synchronous write", Duration::from_secs(60), || {
        set(n1.port, "first", "1").ok()
    });

    // A write load: each writer records what was acknowledged.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (acked, stop, port) = (acked.clone(), stop.clone(), n1.port);
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("w{w}:{i}");
                    if set(port, &key, &key).is_ok() {
                        acked.lock().unwrap().push(key);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    wait_for(
        "writes acknowledged under load",
        Duration::from_secs(30),
        || (acked.lock().unwrap().len() >= 200).then_some(()),
    );
    n1.kill9();
    let killed_at = Instant::now();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    // A synchronous standby takes over.
    let bound = Duration::from_secs(TTL_S + LOOP_WAIT_S);
    let (new_primary, other) = wait_for(
        "a standby to take over",
        bound + Duration::from_secs(30),
        || {
            for (a, b) in [(&n2, &n3), (&n3, &n2)] {
                if field(a, "ha_role").as_deref() == Some("leader") {
                    return Some((a, b));
                }
            }
            None
        },
    );
    let took = killed_at.elapsed();
    println!(
        "failover: {} leads {:.2}s after the primary was killed (ha_ttl {TTL_S}s + ha_loop_wait {LOOP_WAIT_S}s = {:.0}s)",
        new_primary.datadir.display(),
        took.as_secs_f64(),
        bound.as_secs_f64()
    );
    // Promotion itself and the first cycles run on a loaded machine: the
    // lease expiry is the bound, with a few seconds for the promotion.
    assert!(
        took <= bound + Duration::from_secs(5),
        "failover took {took:?}, more than ha_ttl + ha_loop_wait (+5s)"
    );

    // The other standby follows the new leader: a new write reaches it.
    wait_for(
        "a write on the new primary",
        Duration::from_secs(60),
        || set(new_primary.port, "after", "failover").ok(),
    );
    wait_for(
        "the other standby to follow",
        Duration::from_secs(60),
        || (get(other.port, "after").as_deref() == Some("failover")).then_some(()),
    );

    // Every acknowledged write is on the new primary.
    let missing: Vec<&String> = acked
        .iter()
        .filter(|k| get(new_primary.port, k).as_deref() != Some(k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    println!(
        "{} acknowledged writes, all on the new primary",
        acked.len()
    );

    // The old primary comes back: fenced, demoted, rejoined as a standby.
    n1.restart();
    wait_for("n1 to rejoin as a standby", Duration::from_secs(90), || {
        let role = field(&n1, "role")?;
        (role == "slave" && get(n1.port, "after").as_deref() == Some("failover")).then_some(())
    });
    let e = set(n1.port, "k", "v").unwrap_err();
    assert_eq!(e.code(), Some("READONLY"), "{e}");
    set(new_primary.port, "later", "1").unwrap();
    wait_for(
        "n1 to stream from the new primary",
        Duration::from_secs(60),
        || (get(n1.port, "later").as_deref() == Some("1")).then_some(()),
    );
}
