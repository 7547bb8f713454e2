//! `walrep ha` through the real binary against a real etcd cluster: the
//! member table, switchover (with a node side played here by hand through
//! `EtcdDcs`), forced failover, pause and resume, and bad input.

mod support;

use std::process::Command;
use std::time::Duration;

use support::etcd::EtcdCluster;
use support::node::walrep_bin;
use walrep::ha::dcs::{cluster_prefix, Dcs};
use walrep::ha::etcd::{EtcdClient, EtcdConfig, EtcdDcs};
use walrep_states::ha::{FailoverKind, MemberRecord, MemberRole, SyncRecord};
use walrep_states::{Lsn, TimelineId};

/// Run `walrep ha ARGS`: success, stdout, stderr.
fn ha(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(walrep_bin())
        .arg("ha")
        .args(args)
        .output()
        .expect("run walrep ha");
    let code = out.status.code();
    assert!(matches!(code, Some(0) | Some(1)), "exit status {code:?}");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn node(cluster: &EtcdCluster, name: &str) -> EtcdDcs {
    let client = EtcdClient::new(&EtcdConfig::new(cluster.endpoints())).unwrap();
    let mut dcs = EtcdDcs::new(
        client,
        &cluster_prefix("/walrep", "main"),
        name,
        Duration::from_secs(30),
    );
    dcs.keepalive().unwrap();
    dcs
}

fn member(name: &str, role: MemberRole, flush: u64) -> MemberRecord {
    MemberRecord {
        name: name.into(),
        role,
        system_identifier: 7,
        timeline: TimelineId(2),
        flush_lsn: Lsn(flush),
        replay_lsn: Lsn(flush),
        repl_addr: "127.0.0.1:5433".into(),
        client_addr: "127.0.0.1:6380".into(),
        status_url: None,
        nofailover: false,
        healthy: true,
        ha_paused_seen: false,
        version: "test".into(),
    }
}

/// Three members: n1 leads, n2 is the synchronous standby, n3 lags.
fn populate(cluster: &EtcdCluster) -> Vec<EtcdDcs> {
    let mut n1 = node(cluster, "n1");
    let mut n2 = node(cluster, "n2");
    let mut n3 = node(cluster, "n3");
    n1.publish_member(&member("n1", MemberRole::Primary, 0x3000))
        .unwrap();
    n2.publish_member(&member("n2", MemberRole::Standby, 0x3000))
        .unwrap();
    n3.publish_member(&member("n3", MemberRole::Standby, 0x2800))
        .unwrap();
    assert!(n1.acquire_leader().unwrap());
    let sync = SyncRecord {
        leader: "n1".into(),
        sync_standbys: vec!["n2".into()],
    };
    assert!(n1.write_sync(&sync, 0).unwrap());
    vec![n1, n2, n3]
}

#[test]
fn list_and_bad_input() {
    let Some(cluster) = EtcdCluster::start3() else {
        return;
    };
    let eps = cluster.endpoint_list();
    let e = eps.as_str();

    // An empty namespace: no cluster, and none to suggest.
    let (ok, _, err) = ha(&["list", "--endpoints", e]);
    assert!(!ok);
    assert!(
        err.contains("no cluster 'main' under /walrep (no cluster is there"),
        "{err}"
    );

    let _nodes = populate(&cluster);
    let client = EtcdClient::new(&EtcdConfig::new(cluster.endpoints())).unwrap();
    client.put(b"/walrep/main/stranger", b"x", 0).unwrap();

    let (ok, out, err) = ha(&["list", "--endpoints", e]);
    assert!(ok, "{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{out}"))
            .split('|')
            .map(|c| c.trim().to_string())
            .collect::<Vec<_>>()
    };
    assert!(out.contains("leader: n1"), "{out}");
    assert_eq!(
        line("n1"),
        ["n1", "primary", "2", "0/3000", "0/3000", "0", "*", "", ""]
    );
    assert_eq!(
        line("n2")[1..8],
        ["standby", "2", "0/3000", "0/3000", "0", "", "sync"]
    );
    assert_eq!(line("n3")[5], (0x3000 - 0x2800).to_string());
    assert!(
        out.contains("warning: key 'stranger' not understood"),
        "{out}"
    );

    // The same through -D DATADIR's walrep.toml.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("walrep.toml"),
        format!("ha_endpoints = \"{e}\"\nha_cluster_name = \"main\"\nha_retry_timeout = \"2s\"\n"),
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, out2, err) = ha(&["list", "-D", d]);
    assert!(ok, "{err}");
    assert!(out2.contains("leader: n1"), "{out2}");

    // Bad input: exit status 1 and a clear message.
    let cases: &[(&[&str], &str)] = &[
        (
            &["list", "--endpoints", e, "--cluster", "x"],
            "no cluster 'x' under /walrep (clusters there: main",
        ),
        (
            &["switchover", "--to", "zz", "--endpoints", e],
            "unknown member 'zz' (members: n1, n2, n3)",
        ),
        (
            &["switchover", "--to", "n1", "--endpoints", e],
            "'n1' is already the leader",
        ),
        (&["failover", "--to", "n3", "--endpoints", e], "add --force"),
        (
            &["list", "--endpoints", "nonsense"],
            "bad etcd endpoint 'nonsense'",
        ),
        (&["list"], "no etcd endpoints"),
        (
            &["list", "--config", "/nonexistent/walrep.toml"],
            "cannot read /nonexistent/walrep.toml",
        ),
    ];
    for (args, want) in cases {
        let (ok, _, err) = ha(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Nothing was written by the refused requests.
    assert_eq!(client.get(b"/walrep/main/failover").unwrap(), None);
}

#[test]
fn switchover_failover_pause_resume() {
    let Some(cluster) = EtcdCluster::start3() else {
        return;
    };
    let eps = cluster.endpoint_list();
    let e = eps.as_str();
    let mut nodes = populate(&cluster);

    // No node acts on the request: a bounded wait and a clear error; the
    // request stays for the nodes.
    let (ok, out, err) = ha(&[
        "switchover",
        "--to",
        "n2",
        "--wait-seconds",
        "1",
        "--endpoints",
        e,
    ]);
    assert!(!ok);
    assert!(out.contains("switchover requested: n1 -> n2"), "{out}");
    assert!(
        err.contains("'n2' did not become the leader within 1 s (leader now: n1)"),
        "{err}"
    );
    let view = nodes[1].load().unwrap();
    let f = view.failover.clone().expect("the request is in etcd");
    assert_eq!(f.value.kind, FailoverKind::Switchover);
    assert_eq!(f.value.leader.as_deref(), Some("n1"));
    assert_eq!(f.value.candidate.as_deref(), Some("n2"));
    // A second request while one is pending is refused.
    let (ok, _, err) = ha(&["switchover", "--to", "n3", "--endpoints", e]);
    assert!(!ok);
    assert!(
        err.contains("a switchover request is already pending (to n2)"),
        "{err}"
    );
    assert!(nodes[0].write_failover(None, f.mod_revision).unwrap());

    // The node side, played by hand: n1 sees the request and releases,
    // n2 takes the key and clears the request.
    let mut n1 = nodes.remove(0);
    let mut n2 = nodes.remove(0);
    let handover = std::thread::spawn(move || {
        support::wait_for("the switchover request", Duration::from_secs(20), || {
            n1.load().unwrap().failover
        });
        assert!(n1.release_leader().unwrap());
        assert!(n2.acquire_leader().unwrap());
        let f = n2.load().unwrap().failover.unwrap();
        assert!(n2.write_failover(None, f.mod_revision).unwrap());
        (n1, n2)
    });
    let (ok, out, err) = ha(&[
        "switchover",
        "--to",
        "n2",
        "--wait-seconds",
        "30",
        "--endpoints",
        e,
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("'n2' is the leader"), "{out}");
    let (n1, mut n2) = handover.join().unwrap();
    drop(n1);

    // No leader: switchover refused, forced failover allowed and says so.
    assert!(n2.release_leader().unwrap());
    let (ok, _, err) = ha(&["switchover", "--to", "n3", "--endpoints", e]);
    assert!(!ok);
    assert!(
        err.contains("no leader: a switchover needs a running leader"),
        "{err}"
    );
    let (ok, out, err) = ha(&[
        "failover",
        "--to",
        "n3",
        "--force",
        "--wait-seconds",
        "0",
        "--endpoints",
        e,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("failover requested: -> n3"), "{out}");
    assert!(err.contains("may") || err.contains("lost"), "{err}");
    let f = n2.load().unwrap().failover.unwrap().value;
    assert_eq!(
        (f.kind, f.leader, f.candidate.as_deref()),
        (FailoverKind::Failover, None, Some("n3"))
    );

    // Pause and resume: the config record, by CAS.
    let (ok, out, _) = ha(&["pause", "--endpoints", e]);
    assert!(ok && out.contains("paused"), "{out}");
    assert!(n2.load().unwrap().paused());
    let (ok, out, _) = ha(&["list", "--endpoints", e]);
    assert!(ok && out.contains("PAUSED"), "{out}");
    let (ok, out, _) = ha(&["pause", "--endpoints", e]);
    assert!(ok && out.contains("already paused"), "{out}");
    let (ok, out, _) = ha(&["resume", "--endpoints", e]);
    assert!(ok && out.contains("resumed"), "{out}");
    assert!(!n2.load().unwrap().paused());
}
