//! etcd outages under a running HA cluster (three etcd members and three
//! `walrep start` nodes on loopback, `FIRST 1 (n1, n2, n3)`, writes at
//! `synchronous_commit = on`): losing one etcd member (the raft leader,
//! then a follower) changes nothing; losing quorum fences the primary by
//! its deadline, promotes no one, and the same primary acknowledges again
//! once quorum is back; a stranger's `leader` key or a wrong cluster name
//! promotes nothing and says why.

mod support;

use std::time::{Duration, Instant};

use support::etcd::{EtcdCluster, ELECTION_MS};
use support::ha::{
    field, ha_settings, longest_gap, missing_on, set, start, timeline, HaCluster, Load,
    FENCE_MARGIN_S, LOOP_WAIT_S, TTL_S,
};
use support::node::init_datadir;
use support::wait_for;

/// Longer than any fence deadline: a write acknowledged this long after
/// an outage began was acknowledged under a renewed lease.
const PAST_A_LEASE: Duration = Duration::from_secs(TTL_S + LOOP_WAIT_S + 1);

/// Roles, timelines and the leader key as the test expects them to stay.
fn assert_unchanged(c: &HaCluster, timelines: &[String], key: &walrep::ha::etcd::KeyValue) {
    assert_eq!(c.leading(), Some("n1"), "n1 no longer the only leader");
    for name in ["n2", "n3"] {
        assert_eq!(
            field(c.node(name), "role").as_deref(),
            Some("slave"),
            "{name} was promoted"
        );
    }
    let now: Vec<String> = c.nodes.iter().map(timeline).collect();
    assert_eq!(&now, timelines, "a timeline changed");
    let after = c.leader_key().expect("the leader key");
    assert_eq!(after.value, b"n1");
    assert_eq!(
        (after.create_revision, after.lease),
        (key.create_revision, key.lease),
        "the leader key was re-created or moved to another lease"
    );
}

#[test]
fn losing_one_etcd_member_leader_or_follower_changes_nothing() {
    let Some(mut c) = HaCluster::start() else {
        return;
    };
    let key = c.leader_key().expect("the leader key");
    let timelines: Vec<String> = c.nodes.iter().map(timeline).collect();
    let load = Load::start(4, vec![c.node("n1").port]);
    load.wait_acks("writes under load", 100, Duration::from_secs(30));

    let mut gaps = Vec::new();
    for which in ["raft leader", "follower"] {
        let leader = c.etcd.leader().expect("an etcd leader");
        let member = match which {
            "raft leader" => leader,
            _ => (leader + 1) % 3,
        };
        c.etcd.kill(member);
        let lost = Instant::now();
        // Writes go on past a whole lease: the lease was renewed through
        // the other members.
        let ack = load.wait_ack_after(
            "a write acknowledged past a lease after the loss",
            lost + PAST_A_LEASE,
            PAST_A_LEASE + Duration::from_secs(20),
        );
        gaps.push((which, longest_gap(&load.acks_sorted(), lost, ack.at)));
        c.etcd.restart(member);
        c.etcd.wait_member_healthy(member);
    }
    let (acks, refusals) = load.stop();
    for (which, gap) in &gaps {
        println!(
            "one etcd member lost (the {which}): longest gap between acknowledgements {:.0} ms",
            gap.as_secs_f64() * 1000.0
        );
    }
    println!(
        "{} writes acknowledged, {} refused",
        acks.len(),
        refusals.len()
    );
    assert!(
        refusals.is_empty(),
        "writes refused while etcd had quorum: {:?}",
        &refusals[..refusals.len().min(5)]
    );
    for (which, gap) in gaps {
        // The gate would have closed after ha_ttl - ha_fence_margin.
        assert!(
            gap < Duration::from_secs(TTL_S - FENCE_MARGIN_S),
            "writes stalled {gap:?} after losing the etcd {which}"
        );
    }
    assert_unchanged(&c, &timelines, &key);
    let keys: Vec<String> = acks.into_iter().map(|a| a.key).collect();
    assert_eq!(missing_on(c.node("n1").port, &keys), Vec::<String>::new());
}

/// What one quorum loss showed: from the loss to the last acknowledgement
/// and to the first refusal, and from the restart to the first
/// acknowledgement again.
struct QuorumLoss {
    last_ack: Duration,
    to_fence: Duration,
    to_resume: Duration,
}

/// Kill etcd members `killed` (two of three) under `load`, check that n1
/// fences by its deadline and nobody promotes, restart them and wait for
/// n1 to acknowledge again.
fn lose_quorum(c: &mut HaCluster, load: &Load, killed: [usize; 2]) -> QuorumLoss {
    let n1 = c.node("n1").port;
    // A raft leader left alone stays leader until its check of quorum
    // fails, one election timeout later: a renewal it accepts meanwhile
    // legitimately moves n1's deadline on.
    let survivor_leads = c.etcd.leader().is_some_and(|l| !killed.contains(&l));
    let grace = if survivor_leads {
        Duration::from_millis(u64::from(ELECTION_MS))
    } else {
        Duration::ZERO
    };
    let deadline = Duration::from_secs(TTL_S - FENCE_MARGIN_S) + grace;
    for m in killed {
        c.etcd.kill(m);
    }
    let lost = Instant::now();
    let fenced = wait_for(
        "n1 to refuse writes",
        Duration::from_secs(TTL_S + 10),
        || {
            load.refusals()
                .into_iter()
                .find(|r| r.at > lost && r.code == "READONLY")
        },
    );
    let last_ack = load
        .acks_sorted()
        .last()
        .map(|a| a.at)
        .expect("acknowledgements");
    // The gate closes by the deadline of the last renewal accepted:
    // ha_ttl - ha_fence_margin after it was sent (a waiting write notices
    // within 100 ms; a refusal is seen by the next write of a client).
    let to_fence = fenced.at - lost;
    assert!(
        to_fence <= deadline + Duration::from_secs(1),
        "writes refused only {to_fence:?} after quorum was lost"
    );
    assert!(
        last_ack < lost + deadline,
        "a write acknowledged {:?} after quorum was lost",
        last_ack.saturating_duration_since(lost)
    );
    // Nobody can take the key: still refused (and no one promoted) well
    // past the lease's end.
    wait_for(
        "refusals past two leases",
        Duration::from_secs(2 * TTL_S + 10),
        || {
            load.refusals()
                .iter()
                .any(|r| r.at > lost + Duration::from_secs(2 * TTL_S))
                .then_some(())
        },
    );
    assert_eq!(field(c.node("n1"), "ha_gate").as_deref(), Some("closed"));
    // The operator asking meanwhile gets a bounded, clear answer, and
    // writes nothing.
    for args in [&["list"][..], &["switchover", "--to", "n2"]] {
        let asked = Instant::now();
        let (ok, _, err) = ha_cli(&c.etcd.endpoint_list(), args);
        assert!(!ok, "{args:?} succeeded without quorum");
        assert!(
            err.contains("the consensus store has no quorum")
                || err.contains("the consensus store is unreachable")
                || err.contains("did not confirm in time"),
            "{args:?}: {err}"
        );
        assert!(asked.elapsed() < Duration::from_secs(10), "{args:?}");
    }
    for name in ["n2", "n3"] {
        assert_eq!(field(c.node(name), "role").as_deref(), Some("slave"));
    }
    assert!(
        load.acks_sorted().last().map(|a| a.at) == Some(last_ack),
        "a write acknowledged without quorum"
    );

    for m in killed {
        c.etcd.restart(m);
    }
    let back = Instant::now();
    let ack = load.wait_ack_after(
        "n1 to acknowledge again",
        back,
        Duration::from_secs(3 * TTL_S),
    );
    assert_eq!(ack.port, n1);
    c.etcd.wait_healthy();
    QuorumLoss {
        last_ack: last_ack.saturating_duration_since(lost),
        to_fence,
        to_resume: ack.at - back,
    }
}

#[test]
fn losing_etcd_quorum_fences_the_primary_and_it_resumes_when_quorum_returns() {
    let Some(mut c) = HaCluster::start() else {
        return;
    };
    let key = c.leader_key().expect("the leader key");
    let timelines: Vec<String> = c.nodes.iter().map(timeline).collect();
    let n1 = c.node("n1").port;
    let load = Load::start(4, vec![n1]);
    load.wait_acks("writes under load", 100, Duration::from_secs(30));

    let mut seen = Vec::new();
    for which in ["the raft leader and a follower", "both followers"] {
        let leader = c.etcd.leader().expect("an etcd leader");
        let killed = match which {
            "both followers" => [(leader + 1) % 3, (leader + 2) % 3],
            _ => [leader, (leader + 1) % 3],
        };
        seen.push((which, lose_quorum(&mut c, &load, killed)));
    }
    let (acks, refusals) = load.stop();
    for (which, q) in &seen {
        println!(
            "etcd quorum lost ({which} killed): last acknowledgement {:.2}s, first READONLY \
             {:.2}s after the loss (ha_ttl {TTL_S}s - ha_fence_margin {FENCE_MARGIN_S}s after the \
             last renewal); n1 acknowledged again {:.2}s after the members were restarted",
            q.last_ack.as_secs_f64(),
            q.to_fence.as_secs_f64(),
            q.to_resume.as_secs_f64()
        );
    }
    println!(
        "{} writes acknowledged, {} refused",
        acks.len(),
        refusals.len()
    );
    // The same leader on the same lease: etcd's new raft leader extended it.
    assert_unchanged(&c, &timelines, &key);
    let keys: Vec<String> = acks.into_iter().map(|a| a.key).collect();
    assert_eq!(missing_on(n1, &keys), Vec::<String>::new());
}

/// `walrep ha ARGS` against `endpoints` and the test cluster: success,
/// stdout, stderr.
fn ha_cli(endpoints: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(support::node::walrep_bin())
        .arg("ha")
        .args(args)
        .args(["--endpoints", endpoints, "--cluster", support::ha::CLUSTER])
        .output()
        .expect("run walrep ha");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn walrep_ha_against_unreachable_endpoints_fails_fast_and_clearly() {
    let dead = format!(
        "http://127.0.0.1:{},http://127.0.0.1:{}",
        support::free_port(),
        support::free_port()
    );
    for args in [
        &["list"][..],
        &["switchover", "--to", "n2"],
        &["failover", "--to", "n2", "--force"],
        &["pause"],
    ] {
        let asked = Instant::now();
        let (ok, out, err) = ha_cli(&dead, args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(
            err.contains("the consensus store is unreachable: etcd is unreachable")
                && err.contains("Connection refused"),
            "{args:?}: {err}"
        );
        assert!(asked.elapsed() < Duration::from_secs(10), "{args:?}");
    }
}

#[test]
fn a_stranger_leader_key_or_a_wrong_cluster_name_promotes_nothing() {
    let Some(etcd) = EtcdCluster::start3() else {
        return;
    };
    let client =
        walrep::ha::etcd::EtcdClient::new(&walrep::ha::etcd::EtcdConfig::new(etcd.endpoints()))
            .unwrap();
    let leader_key = format!("/walrep/{}/leader", support::ha::CLUSTER);
    // Another system's value, not a member name (not even UTF-8).
    client
        .put(leader_key.as_bytes(), b"\xff\xfegarbage", 0)
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let n1 = start(
        &init_datadir(tmp.path(), "n1", &[]),
        &ha_settings(&etcd, "n1"),
    );
    wait_for(
        "n1 to say the leader key is not ours",
        Duration::from_secs(30),
        || {
            field(&n1, "ha_last_cycle")?
                .contains("key leader under our prefix is not ours or is corrupt")
                .then_some(())
        },
    );
    assert_eq!(field(&n1, "ha_role").as_deref(), Some("fenced"));
    let e = set(n1.port, "k", "v").unwrap_err();
    assert_eq!(e.code(), Some("READONLY"), "{e}");
    wait_for("the error in n1's log", Duration::from_secs(10), || {
        let log = n1.log_text();
        (log.contains("ERROR") && log.contains("key leader under our prefix is not ours"))
            .then_some(())
    });
    // Nothing of ours was written over the stranger's value.
    assert_eq!(
        client.get(leader_key.as_bytes()).unwrap().unwrap().value,
        b"\xff\xfegarbage"
    );

    // The operator removes it: n1 takes the key and leads.
    client.delete(leader_key.as_bytes(), b"").unwrap();
    wait_for("n1 to lead", Duration::from_secs(30), || {
        (field(&n1, "ha_role")? == "leader").then_some(())
    });
    assert_eq!(field(&n1, "ha_gate").as_deref(), Some("open"));

    // A standby configured with another cluster's name sees no cluster:
    // no leader, no sync naming it. It never promotes, and says why.
    let dir = support::cluster::basebackup_with(&n1, tmp.path(), "n2", "n2", &["--no-slot"]);
    let mut settings = ha_settings(&etcd, "n2");
    settings.retain(|s| !s.starts_with("ha_cluster_name="));
    settings.push("ha_cluster_name=elsewhere".into());
    let n2 = start(&dir, &settings);
    wait_for("n2 to refuse to promote", Duration::from_secs(30), || {
        field(&n2, "ha_last_cycle")?
            .contains("no leader key, but there is no sync record naming me: not promoting")
            .then_some(())
    });
    assert_eq!(field(&n2, "role").as_deref(), Some("slave"));
    assert_eq!(field(&n2, "ha_role").as_deref(), Some("replica"));
    assert_eq!(field(&n1, "ha_role").as_deref(), Some("leader"));
}

#[test]
fn a_stranger_sync_key_fences_the_leader_and_no_standby_promotes() {
    let Some(mut c) = HaCluster::start() else {
        return;
    };
    let client = c.etcd_client();
    let sync_key = format!("/walrep/{}/sync", support::ha::CLUSTER);
    client.put(sync_key.as_bytes(), b"{\"leader\":", 0).unwrap();

    // The leader cannot tell who holds its acknowledged writes any more:
    // it fences itself and says why.
    let said = "key sync under our prefix is not ours or is corrupt";
    wait_for("n1 to fence itself", Duration::from_secs(30), || {
        let n1 = c.node("n1");
        (field(n1, "ha_gate")? == "closed" && field(n1, "ha_last_cycle")?.contains(said))
            .then_some(())
    });
    let e = set(c.node("n1").port, "k", "v").unwrap_err();
    assert_eq!(e.code(), Some("READONLY"), "{e}");

    // Its lease runs out: the leader key goes, and still nobody promotes.
    c.node_mut("n1").kill9();
    wait_for(
        "n1's leader key to expire",
        Duration::from_secs(TTL_S + 10),
        || c.leader_key().is_none().then_some(()),
    );
    for name in ["n2", "n3"] {
        wait_for(
            &format!("{name} to refuse to promote"),
            Duration::from_secs(10),
            || {
                field(c.node(name), "ha_last_cycle")?
                    .contains("key sync is not ours: no promotion")
                    .then_some(())
            },
        );
        assert_eq!(field(c.node(name), "role").as_deref(), Some("slave"));
        assert!(
            c.node(name).log_text().contains(said),
            "{name} logged no error"
        );
    }
    assert_eq!(c.leader_key(), None);
    assert_eq!(
        client.get(sync_key.as_bytes()).unwrap().unwrap().value,
        b"{\"leader\":"
    );
}
