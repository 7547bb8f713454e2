//! Planned switchover and forced failover end to end through `walrep ha`,
//! with three `walrep start` nodes on a real three-member etcd and clients
//! writing at `synchronous_commit = on` throughout: the new leader holds
//! every acknowledged write, the old one follows it as a standby without
//! anyone restarting it, no two nodes acknowledge at the same time, and the
//! write unavailability the clients saw is measured. A switchover to a
//! member that is not a confirmed synchronous standby, or to an unknown
//! one, is refused with a clear error and changes nothing.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::ha::{field, get, missing_on, set, timeline, Ack, HaCluster, Load, CLUSTER, TTL_S};
use support::node::walrep_bin;
use support::wait_for;

/// `walrep ha ARGS --endpoints ... --cluster ...`: success, stdout, stderr.
fn ha(c: &HaCluster, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(walrep_bin())
        .arg("ha")
        .args(args)
        .args(["--endpoints", &c.etcd.endpoint_list(), "--cluster", CLUSTER])
        .output()
        .expect("run walrep ha");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The write unavailability the clients saw across a change of leader:
/// last acknowledgement by `from` to the first by `to`. Fails if `from`
/// acknowledged anything after `to` began to (two writable primaries).
fn unavailability(acks: &[Ack], from: u16, to: u16) -> Duration {
    let last_old = acks
        .iter()
        .filter(|a| a.port == from)
        .map(|a| a.at)
        .max()
        .expect("writes acknowledged by the old leader");
    let first_new = acks
        .iter()
        .filter(|a| a.port == to)
        .map(|a| a.at)
        .min()
        .expect("writes acknowledged by the new leader");
    assert!(
        last_old < first_new,
        "the old leader acknowledged a write after the new one began to"
    );
    first_new - last_old
}

/// Wait until `name` leads and its clients' writes are acknowledged there.
fn wait_led_by(c: &HaCluster, load: &Load, name: &str) {
    wait_for(&format!("{name} to lead"), Duration::from_secs(30), || {
        (c.leading()? == name).then_some(())
    });
    let port = c.node(name).port;
    wait_for(
        &format!("writes acknowledged by {name}"),
        Duration::from_secs(30),
        || load.acks().iter().any(|a| a.port == port).then_some(()),
    );
    load.wait_acks(
        &format!("more writes on {name}"),
        50,
        Duration::from_secs(30),
    );
}

/// Wait until the standby `name` replays what `leader` acknowledged last.
fn wait_follows(c: &HaCluster, name: &str, leader: &str) {
    let marker = format!("marker-{leader}-{name}");
    wait_for(
        &format!("a write on {leader}"),
        Duration::from_secs(30),
        || set(c.node(leader).port, &marker, "1").ok(),
    );
    wait_for(
        &format!("{name} to follow {leader} as a standby"),
        Duration::from_secs(60),
        || {
            (field(c.node(name), "role")? == "slave"
                && get(c.node(name).port, &marker).as_deref() == Some("1"))
            .then_some(())
        },
    );
}

/// The standbys named in the `sync` key.
fn sync_standbys(c: &HaCluster) -> Vec<String> {
    let key = format!("/walrep/{CLUSTER}/sync");
    c.etcd_client()
        .get(key.as_bytes())
        .unwrap()
        .and_then(|kv| serde_json::from_slice::<serde_json::Value>(&kv.value).ok())
        .and_then(|v| {
            v["sync_standbys"].as_array().map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[test]
fn switchover_and_forced_failover_under_load_lose_no_acknowledged_write() {
    let Some(c) = HaCluster::start() else {
        return;
    };
    let (p1, p2, p3) = (c.node("n1").port, c.node("n2").port, c.node("n3").port);
    let tl1: u64 = timeline(c.node("n1")).parse().unwrap();

    // Switchover to n2 (the synchronous standby) under load.
    let load = Load::start(4, vec![p1, p2, p3]);
    load.wait_acks("writes on n1", 100, Duration::from_secs(30));
    let asked = Instant::now();
    let (ok, out, err) = ha(&c, &["switchover", "--to", "n2", "--wait-seconds", "60"]);
    assert!(ok, "switchover failed: {out}{err}");
    assert!(out.contains("'n2' is the leader"), "{out}");
    let took = asked.elapsed();
    wait_led_by(&c, &load, "n2");
    let (acks, _) = load.stop();
    let gap = unavailability(&acks, p1, p2);
    println!(
        "switchover n1 -> n2: the command returned after {:.2}s; writes unavailable {:.0} ms \
         (last acknowledgement by n1 to first by n2), {} writes acknowledged",
        took.as_secs_f64(),
        gap.as_secs_f64() * 1000.0,
        acks.len()
    );
    assert!(
        gap < Duration::from_secs(TTL_S),
        "writes unavailable {gap:?} in a switchover"
    );
    let mut keys: Vec<String> = acks.into_iter().map(|a| a.key).collect();
    assert_eq!(missing_on(p2, &keys), Vec::<String>::new());
    let tl2: u64 = timeline(c.node("n2")).parse().unwrap();
    assert!(tl2 > tl1, "n2 leads on timeline {tl2}, not past {tl1}");
    // n1 follows n2 by itself (demoted, rejoined); so does n3.
    wait_follows(&c, "n1", "n2");
    wait_follows(&c, "n3", "n2");
    assert_eq!(
        set(p1, "k", "v").unwrap_err().code(),
        Some("READONLY"),
        "n1 still writable"
    );

    // A forced failover to n3 while n2 leads: n2 hands over too.
    let load = Load::start(4, vec![p2, p3, p1]);
    load.wait_acks("writes on n2", 100, Duration::from_secs(30));
    let (ok, out, err) = ha(
        &c,
        &["failover", "--to", "n3", "--force", "--wait-seconds", "60"],
    );
    assert!(ok, "failover failed: {out}{err}");
    assert!(err.contains("may") || err.contains("lost"), "{err}");
    wait_led_by(&c, &load, "n3");
    let (acks, _) = load.stop();
    let gap = unavailability(&acks, p2, p3);
    println!(
        "forced failover n2 -> n3 with n2 running: writes unavailable {:.0} ms, {} writes acknowledged",
        gap.as_secs_f64() * 1000.0,
        acks.len()
    );
    keys.extend(acks.into_iter().map(|a| a.key));
    assert_eq!(missing_on(p3, &keys), Vec::<String>::new());
    wait_follows(&c, "n2", "n3");

    // Refused: a member that is not a confirmed synchronous standby, and
    // an unknown one. Nothing changes.
    let listed = wait_for(
        "n3's sync record to name a standby",
        Duration::from_secs(30),
        || {
            let s = sync_standbys(&c);
            (!s.is_empty()).then_some(s)
        },
    );
    let not_sync = ["n1", "n2"]
        .into_iter()
        .find(|n| !listed.iter().any(|l| l == n))
        .unwrap();
    let (ok, _, err) = ha(&c, &["switchover", "--to", not_sync]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "'{not_sync}' is not a confirmed synchronous standby"
        )),
        "{err}"
    );
    let (ok, _, err) = ha(&c, &["switchover", "--to", "zz"]);
    assert!(!ok);
    assert!(
        err.contains("unknown member 'zz' (members: n1, n2, n3)"),
        "{err}"
    );
    let failover_key = format!("/walrep/{CLUSTER}/failover");
    assert_eq!(c.etcd_client().get(failover_key.as_bytes()).unwrap(), None);
    assert_eq!(c.leading(), Some("n3"));
    set(p3, "after", "refusals").unwrap();
}
