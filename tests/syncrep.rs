//! Synchronous replication with real standbys: commits wait for the
//! standbys synchronous_standby_names selects (FIRST n / ANY n); a waiting
//! write is neither acknowledged nor readable before its level is met, even
//! when its client gives up; remote_apply makes the write readable on the
//! standby at once; a bounded wait degrades loudly; WAIT counts standbys;
//! WAITAOF waits for the local flush and counts standbys that flushed.

mod support;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use support::cluster::*;
use support::node::{init_datadir, walrep, TestNode};
use support::wait_for;

struct Cluster {
    tmp: tempfile::TempDir,
    archive: PathBuf,
    primary: TestNode,
}

fn cluster(sync_names: &str, extra: &[&str]) -> Cluster {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    fs::create_dir(&archive).unwrap();
    let dir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", SEG_1MB]);
    let mut settings = archive_settings(&archive);
    settings.push(format!("synchronous_standby_names={sync_names}"));
    settings.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = settings.iter().map(String::as_str).collect();
    let primary = TestNode::start(&dir, &refs);
    Cluster {
        tmp,
        archive,
        primary,
    }
}

impl Cluster {
    fn standby(&self, name: &str) -> TestNode {
        let dir = basebackup(&self.primary, self.tmp.path(), name, name);
        let s = TestNode::start(
            &dir,
            &[
                &restore_setting(&self.archive),
                "wal_retrieve_retry_interval=200ms",
            ],
        );
        wait_state(&s, "Streaming");
        s
    }
}

fn sync_state_of(primary: &TestNode, app: &str) -> Option<String> {
    primary
        .info("replication")
        .lines()
        .find(|l| l.contains(&format!("application_name={app},")))
        .and_then(|l| l.split("sync_state=").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_string())
}

/// Start a SET on its own connection; the handle yields the reply.
fn set_in_background(
    node: &TestNode,
    key: &str,
    value: &str,
) -> std::thread::JoinHandle<redis::RedisResult<String>> {
    let mut c = node.client();
    let (k, v) = (key.to_string(), value.to_string());
    std::thread::spawn(move || redis::cmd("SET").arg(k).arg(v).query::<String>(&mut c))
}

fn get(node: &TestNode, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut node.client())
        .unwrap()
}

#[test]
fn first_1_waits_for_its_standby_and_completes_when_it_returns() {
    let c = cluster("FIRST 1 (s1)", &[]);
    let mut s1 = c.standby("s1");
    wait_for("s1 sync", Duration::from_secs(30), || {
        (sync_state_of(&c.primary, "s1")? == "sync").then_some(())
    });
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v1")
        .query(&mut c.primary.client())
        .unwrap();
    assert!(s1.stop().success());
    let pending = set_in_background(&c.primary, "k", "v2");
    let waiters = || -> Option<u64> {
        c.primary
            .info_field("replication", "sync_waiters")?
            .parse()
            .ok()
    };
    wait_for(
        "INFO to show the commit waiting",
        Duration::from_secs(30),
        || waiters().filter(|w| *w >= 1),
    );
    assert!(
        !pending.is_finished(),
        "a synchronous commit completed with its standby stopped"
    );
    // Not readable either: another client still sees the confirmed value.
    assert_eq!(get(&c.primary, "k").as_deref(), Some("v1"));
    s1.restart();
    assert_eq!(pending.join().unwrap().unwrap(), "OK");
    assert_eq!(get(&c.primary, "k").as_deref(), Some("v2"));
    // `on` waits for the standby's flush, not its replay: the value is
    // readable there once replay follows.
    wait_for("s1 to replay v2", Duration::from_secs(30), || {
        (get(&s1, "k").as_deref() == Some("v2")).then_some(())
    });
}

#[test]
fn any_1_completes_with_only_s2_up() {
    let c = cluster("ANY 1 (s1, s2)", &[]);
    let s2 = c.standby("s2");
    wait_for("s2 quorum", Duration::from_secs(30), || {
        (sync_state_of(&c.primary, "s2")? == "quorum").then_some(())
    });
    let mut con = c.primary.client();
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("q{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
    }
    wait_caught_up(&c.primary, &s2);
    assert_eq!(get(&s2, "q49").as_deref(), Some("49"));
}

#[test]
fn remote_apply_makes_the_write_readable_on_the_standby_at_once() {
    let c = cluster("s1", &["synchronous_commit=remote_apply"]);
    let s1 = c.standby("s1");
    wait_for("s1 sync", Duration::from_secs(30), || {
        (sync_state_of(&c.primary, "s1")? == "sync").then_some(())
    });
    let mut p = c.primary.client();
    let mut s = s1.client();
    for i in 0..100 {
        let _: () = redis::cmd("SET")
            .arg("counter")
            .arg(i)
            .query(&mut p)
            .unwrap();
        let v: Option<String> = redis::cmd("GET").arg("counter").query(&mut s).unwrap();
        assert_eq!(
            v,
            Some(i.to_string()),
            "the standby did not show an acknowledged remote_apply write"
        );
    }
    // Per connection: CONFIG SET changes only this session's level.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("synchronous_commit")
        .arg("local")
        .query(&mut p)
        .unwrap();
    let level: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("synchronous_commit")
        .query(&mut p)
        .unwrap();
    assert_eq!(level[1], "local");
    let other: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("synchronous_commit")
        .query(&mut c.primary.client())
        .unwrap();
    assert_eq!(other[1], "remote_apply");
    let e = redis::cmd("CONFIG")
        .arg("SET")
        .arg("synchronous_commit")
        .arg("maybe")
        .query::<()>(&mut p)
        .unwrap_err();
    assert!(e.to_string().contains("synchronous_commit"), "{e}");
    let level: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("synchronous_commit")
        .query(&mut p)
        .unwrap();
    assert_eq!(level[1], "local", "a bad CONFIG SET changed the setting");
}

/// The standby reports its replay only when the primary asks (a commit
/// waits at `remote_apply`): with its periodic status an hour apart, every
/// `remote_apply` commit still completes at once and is readable there,
/// interleaved with `on` commits, which need no apply report.
#[test]
fn remote_apply_commits_get_the_apply_reports_they_wait_for_on_request() {
    let c = cluster("s1", &[]);
    let dir = basebackup(&c.primary, c.tmp.path(), "s1", "s1");
    let s1 = TestNode::start(
        &dir,
        &[
            &restore_setting(&c.archive),
            "wal_retrieve_retry_interval=200ms",
            "wal_receiver_status_interval=1h",
        ],
    );
    wait_state(&s1, "Streaming");
    wait_for("s1 sync", Duration::from_secs(30), || {
        (sync_state_of(&c.primary, "s1")? == "sync").then_some(())
    });
    let bound = Some(Duration::from_secs(10));
    let mut apply = c.primary.client();
    apply.set_read_timeout(bound).unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("synchronous_commit")
        .arg("remote_apply")
        .query(&mut apply)
        .unwrap();
    let mut on = c.primary.client();
    on.set_read_timeout(bound).unwrap();
    let mut s = s1.client();
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg("on")
            .arg(i)
            .query(&mut on)
            .expect("an `on` commit did not complete");
        let _: () = redis::cmd("SET")
            .arg("applied")
            .arg(i)
            .query(&mut apply)
            .expect("a remote_apply commit waited for a report nobody asked for");
        let v: Option<String> = redis::cmd("GET").arg("applied").query(&mut s).unwrap();
        assert_eq!(v, Some(i.to_string()), "acknowledged before it was applied");
    }
}

#[test]
fn a_client_that_gives_up_never_exposes_an_unreplicated_write() {
    let c = cluster("FIRST 1 (s1)", &[]);
    let mut s1 = c.standby("s1");
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("old")
        .query(&mut c.primary.client())
        .unwrap();
    assert!(s1.stop().success());
    // The client sends a write and disconnects while it waits.
    {
        use std::io::Write;
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", c.primary.port)).unwrap();
        raw.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nnew\r\n")
            .unwrap();
        wait_for("the write to wait for s1", Duration::from_secs(30), || {
            let w: u64 = c
                .primary
                .info_field("replication", "sync_waiters")?
                .parse()
                .ok()?;
            (w >= 1).then_some(())
        });
    }
    assert_eq!(
        get(&c.primary, "k").as_deref(),
        Some("old"),
        "an unreplicated write became readable"
    );
    s1.restart();
    wait_for(
        "the write to be confirmed once s1 is back",
        Duration::from_secs(60),
        || (get(&c.primary, "k").as_deref() == Some("new")).then_some(()),
    );
}

#[test]
fn a_bounded_wait_degrades_to_local_commits_loudly_and_recovers() {
    let c = cluster("FIRST 1 (s1)", &["synchronous_standby_timeout=500ms"]);
    let mut s1 = c.standby("s1");
    assert!(s1.stop().success());
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut c.primary.client())
        .unwrap();
    assert_eq!(
        c.primary
            .info_field("replication", "sync_degraded")
            .as_deref(),
        Some("1")
    );
    assert!(
        c.primary.log_text().contains("degrading to local commits"),
        "not logged at warn"
    );
    s1.restart();
    let _: () = redis::cmd("SET")
        .arg("k2")
        .arg("v")
        .query(&mut c.primary.client())
        .unwrap();
    wait_for("leaving degraded mode", Duration::from_secs(30), || {
        (c.primary
            .info_field("replication", "sync_degraded")
            .as_deref()
            == Some("0"))
        .then_some(())
    });
    assert!(c.primary.log_text().contains("leaving degraded mode"));
}

#[test]
fn wait_counts_standbys_that_flushed_the_clients_writes() {
    let c = cluster("", &[]);
    let _s1 = c.standby("s1");
    let _s2 = c.standby("s2");
    let mut con = c.primary.client();
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
    let n: i64 = redis::cmd("WAIT")
        .arg(2)
        .arg(10_000)
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 2);
    // Asking for more standbys than exist returns what there is, after the timeout.
    let n: i64 = redis::cmd("WAIT").arg(3).arg(300).query(&mut con).unwrap();
    assert_eq!(n, 2);
}

#[test]
fn waitaof_waits_for_the_local_flush_and_counts_standbys_that_flushed() {
    // Commits at `off`, the WAL writer flushing every 2 s with no standby.
    let c = cluster("", &["synchronous_commit=off", "wal_writer_delay=2s"]);
    let mut con = c.primary.client();
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
    let inserted = lsn_field(&c.primary, "wal_insert_lsn");
    let waitaof = |con: &mut redis::Connection, local: i64, replicas: i64, ms: i64| {
        redis::cmd("WAITAOF")
            .arg(local)
            .arg(replicas)
            .arg(ms)
            .query::<(i64, i64)>(con)
    };
    // Answered once the WAL writer's flush covers the write, not before.
    assert_eq!(waitaof(&mut con, 1, 0, 10_000).unwrap(), (1, 0));
    assert!(lsn_field(&c.primary, "wal_flush_lsn") >= inserted);

    let s1 = c.standby("s1");
    let _s2 = c.standby("s2");
    let _: () = redis::cmd("SET")
        .arg("k2")
        .arg("v")
        .query(&mut con)
        .unwrap();
    assert_eq!(waitaof(&mut con, 1, 2, 10_000).unwrap(), (1, 2));
    // More standbys than exist: what there is, after the timeout.
    assert_eq!(waitaof(&mut con, 0, 3, 300).unwrap(), (1, 2));
    // Redis's answers to bad arguments and on a replica.
    let err = |con: &mut redis::Connection, args: &[&str]| {
        redis::cmd("WAITAOF")
            .arg(args)
            .query::<redis::Value>(con)
            .unwrap_err()
            .to_string()
    };
    assert!(
        err(&mut con, &["2", "0", "0"]).contains("value must between 0 and 1"),
        "{}",
        err(&mut con, &["2", "0", "0"])
    );
    assert!(err(&mut con, &["1", "-1", "0"]).contains("must be positive"));
    assert!(err(&mut con, &["1", "0", "-1"]).contains("timeout is negative"));
    let on_standby = err(&mut s1.client(), &["0", "0", "0"]);
    assert!(
        on_standby.contains("WAITAOF cannot be used with replica instances"),
        "{on_standby}"
    );
}

fn lsn_field(node: &TestNode, field: &str) -> walrep::Lsn {
    node.info_field("persistence", field)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn bad_settings_are_refused_at_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "d", &[]);
    let d = dir.to_str().unwrap();
    for (setting, needle) in [
        (
            "synchronous_standby_names=ANY 0 (s1)",
            "must be greater than zero",
        ),
        (
            "synchronous_standby_names=FIRST (s1)",
            "synchronous_standby_names",
        ),
        ("synchronous_commit=sometimes", "synchronous_commit"),
    ] {
        let (ok, _, err) = walrep(&[
            "start",
            d,
            "-c",
            setting,
            "-c",
            "port=0",
            "-c",
            "replication_port=0",
        ]);
        assert!(!ok, "{setting} was accepted");
        assert!(err.contains(needle), "{setting}: {err}");
    }
}
