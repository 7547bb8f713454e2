//! Cascading replication with real processes: standbys streaming from
//! standbys (chains and fan-outs), `pg_receivewal` on a standby, re-pointing
//! a standby with `walrep reload`, and refused reloads.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::cluster::*;
use support::node::{init_datadir, set_config_line, walrep, TestNode};
use support::process::ChildGuard;
use support::tools::tool;
use support::wait_for;
use support::wal::segment_file_names;

/// `pg_receivewal` streaming from `node` into `dir`; `None` if the tool is
/// missing and the run skips external tools.
fn receivewal(node: &TestNode, dir: &Path) -> Option<ChildGuard> {
    let bin = tool("pg_receivewal")?;
    fs::create_dir_all(dir).unwrap();
    let mut c = Command::new(bin);
    c.args(["-h", "127.0.0.1", "-p"])
        .arg(node.replication_port.to_string())
        .args(["-U", "walrep", "-w", "-n", "-s", "1", "-D"])
        .arg(dir)
        .env_remove("PGPASSWORD")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Some(ChildGuard::spawn(&mut c))
}

/// Writes 2 kB values to keys `load:0..KEYS` from `clients` clients until
/// stopped (bounded); returns the writes acknowledged.
fn start_load(
    node: &TestNode,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<u64>> {
    (0..clients)
        .map(|c| {
            let mut conn = node.client();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 50_000 {
                    let key = format!("load:{}", (n as usize * clients + c) % LOAD_KEYS);
                    let value = format!("{n}:{}", "v".repeat(2048));
                    let _: () = redis::cmd("SET")
                        .arg(key)
                        .arg(value)
                        .query(&mut conn)
                        .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect()
}

const LOAD_KEYS: usize = 2000;

/// Let the load run until the primary wrote `bytes` of WAL, then stop it.
fn run_load(primary: &TestNode, clients: usize, bytes: u64) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let start = wal_flush(primary);
    let load = start_load(primary, clients, stop.clone());
    wait_for(
        "the load to write its WAL",
        Duration::from_secs(120),
        || (wal_flush(primary) >= start + bytes).then_some(()),
    );
    stop.store(true, Ordering::Relaxed);
    load.into_iter().map(|t| t.join().unwrap()).sum()
}

fn wal_flush(node: &TestNode) -> u64 {
    node.info_field("persistence", "wal_flush_lsn")
        .unwrap()
        .parse::<walrep::Lsn>()
        .unwrap()
        .0
}

/// Every standby holds exactly the primary's data.
fn assert_same_data(primary: &TestNode, standbys: &[&TestNode]) {
    let want = dump(primary, "load", LOAD_KEYS);
    let written = want.iter().filter(|v| v.is_some()).count();
    assert!(written > 100, "the load wrote only {written} keys");
    for s in standbys {
        wait_caught_up(primary, s);
        assert!(
            dump(s, "load", LOAD_KEYS) == want,
            "{} differs from the primary",
            s.datadir.display()
        );
    }
}

/// The completed segments in `received` equal the primary's.
fn assert_segments_identical(primary: &TestNode, received: &Path) -> usize {
    let segs = segment_file_names(received);
    for s in &segs {
        let ours = fs::read(primary.datadir.join("wal").join(s))
            .unwrap_or_else(|e| panic!("primary's {s}: {e}"));
        let theirs = fs::read(received.join(s)).unwrap();
        assert!(
            ours == theirs,
            "segment {s} from the cascade differs from the primary's"
        );
    }
    segs.len()
}

/// The line `primary_conninfo = "..."` of `dir`'s walrep.toml, pointing at
/// `port` as `app` (the rest of the file untouched).
fn set_upstream(dir: &Path, port: u16, app: &str) {
    let conninfo = format!(
        "primary_conninfo = \"host=127.0.0.1 port={port} user=walrep application_name={app}\""
    );
    set_config_line(dir, "primary_conninfo", &conninfo);
}

/// A parameter as the node runs with it (CONFIG GET).
fn config_get(node: &TestNode, name: &str) -> String {
    let v: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query(&mut node.client())
        .unwrap();
    v.get(1).cloned().unwrap_or_default()
}

/// A primary with an archive, under `tmp`.
fn primary(tmp: &Path, extra: &[&str]) -> (TestNode, PathBuf) {
    let archive = tmp.join("archive");
    fs::create_dir_all(&archive).unwrap();
    let dir = init_datadir(tmp, "primary", &["--wal-segment-size", SEG_1MB]);
    let mut settings = archive_settings(&archive);
    settings.push("wal_keep_size=64MB".into());
    settings.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = settings.iter().map(String::as_str).collect();
    (TestNode::start(&dir, &refs), archive)
}

/// A standby copied from `primary` as `app`, streaming from `upstream`
/// (set in its walrep.toml, so a reload can change it). Without a slot:
/// a slot made on the primary would not exist on another upstream, and
/// `wal_keep_size` keeps the WAL these tests need.
fn standby(primary: &TestNode, upstream: &TestNode, tmp: &Path, app: &str) -> TestNode {
    let dir = basebackup_with(primary, tmp, app, app, &["--no-slot"]);
    set_upstream(&dir, upstream.replication_port, app);
    TestNode::start(
        &dir,
        &["wal_retrieve_retry_interval=200ms", "wal_keep_size=64MB"],
    )
}

/// Whether `node`'s INFO replication lists a downstream named `app`.
fn serves(node: &TestNode, app: &str) -> bool {
    node.info("replication")
        .contains(&format!("application_name={app},"))
}

#[test]
fn a_chain_of_three_standbys_under_load_with_pg_receivewal_on_the_second() {
    let tmp = tempfile::tempdir().unwrap();
    let (primary, _archive) = primary(tmp.path(), &[]);
    let s1 = standby(&primary, &primary, tmp.path(), "s1");
    let s2 = standby(&primary, &s1, tmp.path(), "s2");
    let s3 = standby(&primary, &s2, tmp.path(), "s3");
    for (up, down) in [(&primary, "s1"), (&s1, "s2"), (&s2, "s3")] {
        wait_for(
            &format!("{down} to stream"),
            Duration::from_secs(60),
            || serves(up, down).then_some(()),
        );
    }
    // Every node shows its upstream and its downstreams.
    let (ok, out, err) = walrep(&["status", s2.datadir.to_str().unwrap()]);
    assert!(ok, "{err}");
    let upstream = format!(
        "upstream:  127.0.0.1:{} as s2 (instance {}, chain {} -> {})",
        s1.replication_port,
        instance_id(&s1),
        instance_id(&s1),
        instance_id(&primary)
    );
    assert!(out.contains(&upstream), "{out}");
    assert!(out.contains("standby:   s3 streaming"), "{out}");
    let received = tmp.path().join("received");
    let Some(mut receiver) = receivewal(&s2, &received) else {
        return;
    };
    let writes = run_load(&primary, 8, 6 << 20);
    assert!(writes > 0);
    assert_same_data(&primary, &[&s1, &s2, &s3]);
    let segs = wait_for(
        "pg_receivewal on s2 to complete segments",
        Duration::from_secs(60),
        || {
            let n = segment_file_names(&received).len();
            (n >= 4).then_some(n)
        },
    );
    assert!(
        receiver.interrupt().success(),
        "pg_receivewal exits cleanly"
    );
    assert!(assert_segments_identical(&primary, &received) >= segs);
}

#[test]
fn a_fan_out_under_load() {
    let tmp = tempfile::tempdir().unwrap();
    let (primary, _archive) = primary(tmp.path(), &[]);
    let s1 = standby(&primary, &primary, tmp.path(), "s1");
    let s2 = standby(&primary, &primary, tmp.path(), "s2");
    let s3 = standby(&primary, &s1, tmp.path(), "s3");
    let s4 = standby(&primary, &s1, tmp.path(), "s4");
    for (up, down) in [(&primary, "s1"), (&primary, "s2"), (&s1, "s3"), (&s1, "s4")] {
        wait_for(
            &format!("{down} to stream"),
            Duration::from_secs(60),
            || serves(up, down).then_some(()),
        );
    }
    run_load(&primary, 8, 4 << 20);
    assert_same_data(&primary, &[&s1, &s2, &s3, &s4]);
}

/// Re-point `node` at `upstream` with `walrep reload` and wait until its
/// log refuses the loop; returns the refusal line.
fn refused_loop(node: &TestNode, upstream: &TestNode, app: &str) -> String {
    let received_before = node.info_field("replication", "receive_lsn");
    set_upstream(&node.datadir, upstream.replication_port, app);
    let (ok, out, err) = walrep(&["reload", node.datadir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let line = wait_for("the loop to be refused", Duration::from_secs(60), || {
        node.log_text()
            .lines()
            .find(|l| l.contains("replication loop"))
            .map(str::to_string)
    });
    // The refusal comes right after startup, before START_REPLICATION, and
    // the node keeps retrying (backing off): the upstream may list `app` in
    // startup for a moment, but never further.
    assert!(
        !streams_to(upstream, app),
        "{app} must not stream from its downstream"
    );
    assert_eq!(
        node.info_field("replication", "receive_lsn"),
        received_before,
        "no WAL received through the loop"
    );
    line
}

/// Whether `node` has a walsender for `app` past startup (catching up or
/// streaming).
fn streams_to(node: &TestNode, app: &str) -> bool {
    node.info("replication").lines().any(|l| {
        l.contains(&format!("application_name={app},")) && !l.contains("walsender_state=startup,")
    })
}

fn instance_id(node: &TestNode) -> String {
    node.info_field("replication", "instance_id").unwrap()
}

#[test]
fn loops_of_two_and_three_nodes_are_refused_naming_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let (primary, _archive) = primary(tmp.path(), &[]);
    let s1 = standby(&primary, &primary, tmp.path(), "s1");
    let s2 = standby(&primary, &s1, tmp.path(), "s2");
    let s3 = standby(&primary, &s2, tmp.path(), "s3");
    write_keys(&primary, "a", 100, 8);
    wait_caught_up(&primary, &s3);
    assert_eq!(
        s3.info_field("replication", "upstream_chain").unwrap(),
        format!(
            "{},{},{}",
            instance_id(&s2),
            instance_id(&s1),
            instance_id(&primary)
        )
    );
    // primary is no longer written: nothing can arrive through any path.
    let (i1, i2, i3) = (instance_id(&s1), instance_id(&s2), instance_id(&s3));

    // s1 -> s3 -> s2 -> s1: three nodes.
    let line = refused_loop(&s1, &s3, "s1");
    assert!(
        line.contains(&format!("{i1} (this node) -> {i3} -> {i2} -> {i1}")),
        "{line}"
    );
    // s1 -> s2 -> s1: two nodes. s1 goes on retrying s3 (backing off) until
    // the reload takes: skip those later three-node refusals.
    let three_nodes = format!("{i1} (this node) -> {i3} -> {i2} -> {i1}");
    let before = s1.log_text().matches("replication loop").count();
    let line = wait_for("the two-node loop refused", Duration::from_secs(60), || {
        set_upstream(&s1.datadir, s2.replication_port, "s1");
        let (ok, _, _) = walrep(&["reload", s1.datadir.to_str().unwrap()]);
        assert!(ok);
        s1.log_text()
            .lines()
            .filter(|l| l.contains("replication loop"))
            .skip(before)
            .find(|l| !l.contains(&three_nodes))
            .map(str::to_string)
    });
    assert!(
        line.contains(&format!("{i1} (this node) -> {i2} -> {i1}")),
        "{line}"
    );
    // Refusals back off: a bounded number over a few seconds.
    let n0 = s1.log_text().matches("replication loop").count();
    std::thread::sleep(Duration::from_secs(3));
    let n1 = s1.log_text().matches("replication loop").count();
    assert!(n1 - n0 <= 20, "{} refusals in 3 s: an error loop", n1 - n0);

    // Back to the primary: streaming resumes, nothing lost.
    set_upstream(&s1.datadir, primary.replication_port, "s1");
    let (ok, out, err) = walrep(&["reload", s1.datadir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    write_keys(&primary, "b", 100, 8);
    wait_caught_up(&primary, &s3);
    check_keys(&s3, "b", 100);
}

/// Writes `SET ack:<c>:<n>` from `clients` clients until the node dies;
/// returns the keys each client was told "OK" for.
fn acked_writes(node: &TestNode, clients: usize) -> Vec<std::thread::JoinHandle<Vec<String>>> {
    (0..clients)
        .map(|c| {
            let mut conn = node.client();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for n in 0..100_000 {
                    let key = format!("ack:{c}:{n}");
                    match redis::cmd("SET").arg(&key).arg(n).query::<()>(&mut conn) {
                        Ok(()) => acked.push(key),
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect()
}

#[test]
fn promotion_in_the_middle_of_a_chain_is_followed_without_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut primary, _archive) = primary(
        tmp.path(),
        &[
            "synchronous_standby_names=FIRST 1 (s1)",
            "synchronous_commit=on",
        ],
    );
    let s1 = standby(&primary, &primary, tmp.path(), "s1");
    let s2 = standby(&primary, &s1, tmp.path(), "s2");
    let s3 = standby(&primary, &s2, tmp.path(), "s3");
    wait_for("s1 to be synchronous", Duration::from_secs(60), || {
        primary
            .info("replication")
            .contains("sync_state=sync")
            .then_some(())
    });
    for (up, down) in [(&s1, "s2"), (&s2, "s3")] {
        wait_for(
            &format!("{down} to stream"),
            Duration::from_secs(60),
            || serves(up, down).then_some(()),
        );
    }
    let received = tmp.path().join("received");
    let Some(mut receiver) = receivewal(&s2, &received) else {
        return;
    };
    let (p2, p3) = (s2.pid(), s3.pid());
    let before = wal_flush(&primary);
    let writers = acked_writes(&primary, 4);
    wait_for("writes to flow", Duration::from_secs(60), || {
        (wal_flush(&primary) > before + (512 << 10)).then_some(())
    });
    primary.kill9();
    let acked: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(!acked.is_empty());

    let (ok, out, err) = walrep(&["promote", s1.datadir.to_str().unwrap()]);
    assert!(ok, "promote failed: {out}{err}");
    assert!(out.contains("timeline 2"), "{out}");
    wait_for("s1 to accept writes", Duration::from_secs(30), || {
        (s1.info_field("replication", "role").as_deref() == Some("master")).then_some(())
    });
    write_keys(&s1, "after", 200, 16);
    for s in [&s2, &s3] {
        wait_for(
            &format!("{} to follow timeline 2", s.datadir.display()),
            Duration::from_secs(60),
            || (s.info_field("replication", "receive_tli").as_deref() == Some("2")).then_some(()),
        );
        wait_caught_up(&s1, s);
        check_keys(s, "after", 200);
    }
    assert_eq!((s2.pid(), s3.pid()), (p2, p3), "no restart");
    // s1's walsender ended timeline 1 with CopyDone and the next
    // timeline: s2 went on over the same connection.
    assert!(
        s2.log_text()
            .contains("walreceiver restarting on the same connection"),
        "s2 followed timeline 2 on its connection:\n{}",
        s2.log_text()
    );
    // Every acknowledged write survived, on the promoted node and below it.
    for s in [&s1, &s2, &s3] {
        let mut c = s.client();
        for chunk in acked.chunks(500) {
            let n: usize = redis::cmd("EXISTS").arg(chunk).query(&mut c).unwrap();
            assert_eq!(
                n,
                chunk.len(),
                "an acknowledged write is missing on {}",
                s.datadir.display()
            );
        }
    }
    // pg_receivewal on s2 followed too: the timeline 2 history file and
    // timeline 2 WAL arrive without restarting it.
    wait_for(
        "pg_receivewal to follow timeline 2",
        Duration::from_secs(60),
        || {
            let names = support::file_names(&received);
            (names.iter().any(|n| n == "00000002.history")
                && names
                    .iter()
                    .any(|n| n.starts_with("00000002") && !n.ends_with(".history")))
            .then_some(())
        },
    );
    assert!(receiver.exited().is_none(), "pg_receivewal kept running");
    assert!(receiver.interrupt().success());
}

/// Replay position of `node`.
fn replayed(node: &TestNode) -> walrep::Lsn {
    node.info_field("replication", "replay_lsn")
        .and_then(|v| v.parse().ok())
        .unwrap_or(walrep::Lsn(0))
}

/// Wait until `down` has replayed at least what `up` has.
fn wait_replayed_as_far(up: &TestNode, down: &TestNode) {
    let target = replayed(up);
    wait_for(
        &format!("{} to replay up to {target}", down.datadir.display()),
        Duration::from_secs(90),
        || (replayed(down) >= target).then_some(()),
    );
}

#[test]
fn a_standby_streams_from_an_archive_only_upstream_through_its_restarts_and_crashes() {
    let tmp = tempfile::tempdir().unwrap();
    let (primary, archive) = primary(tmp.path(), &[]);
    // s1: restore_command only.
    let s1dir = basebackup_with(&primary, tmp.path(), "s1", "s1", &["--no-slot"]);
    set_config_line(&s1dir, "primary_conninfo", "primary_conninfo = \"\"");
    let mut s1 = TestNode::start(
        &s1dir,
        &[
            &restore_setting(&archive),
            "wal_retrieve_retry_interval=100ms",
            "wal_keep_size=64MB",
        ],
    );
    let s2 = standby(&primary, &s1, tmp.path(), "s2");
    wait_for("s2 to stream from s1", Duration::from_secs(60), || {
        serves(&s1, "s2").then_some(())
    });
    let p2 = s2.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&primary, 4, stop.clone());
    let mut rounds = 0;
    for crash in [false, true, false] {
        let mark = wal_flush(&primary);
        wait_for("segments to be archived", Duration::from_secs(60), || {
            (wal_flush(&primary) > mark + (3 << 20)).then_some(())
        });
        wait_replayed_as_far(&s1, &s2);
        if crash {
            s1.kill9();
        } else {
            s1.stop();
        }
        s1.restart();
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let writes: u64 = load.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(writes > 0 && rounds == 3);
    // Fill past the load's last segment so the archive holds all of it.
    let mark = wal_flush(&primary);
    write_keys(&primary, "filler", 400, 8192);
    assert!(wal_flush(&primary) > mark + (2 << 20));
    let want = dump(&primary, "load", LOAD_KEYS);
    wait_for("s1 to restore the load", Duration::from_secs(90), || {
        (dump(&s1, "load", LOAD_KEYS) == want).then_some(())
    });
    wait_replayed_as_far(&s1, &s2);
    assert!(
        dump(&s2, "load", LOAD_KEYS) == want,
        "s2 holds the primary's data"
    );
    assert_eq!(s2.pid(), p2, "s2 was never restarted");
    // s2 waited for its upstream; it did not loop on errors.
    let log = s2.log_text();
    let errors = log.matches(" WARN ").count() + log.matches(" ERROR ").count();
    eprintln!(
        "s2 through 3 restarts of its upstream: {errors} warnings/errors; {}",
        log.lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(|l| l.get(l.len().saturating_sub(160)..).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        errors <= 60,
        "{errors} warnings and errors in s2's log:\n{log}"
    );
    assert!(!log.contains("FATAL"), "{log}");
}

#[test]
fn reload_repoints_a_standby_to_another_upstream_without_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (primary, _archive) = primary(tmp.path(), &[]);
    let s1 = standby(&primary, &primary, tmp.path(), "s1");
    let dir = basebackup_with(&primary, tmp.path(), "s2", "s2", &["--no-slot"]);
    set_upstream(&dir, s1.replication_port, "s2");
    let status_port = support::free_port();
    let s2 = TestNode::start(
        &dir,
        &[
            "wal_retrieve_retry_interval=200ms",
            "wal_keep_size=64MB",
            &format!("status_port={status_port}"),
        ],
    );
    write_keys(&primary, "a", 500, 32);
    wait_caught_up(&primary, &s2);
    check_keys(&s2, "a", 500);
    let upstream = status_upstream(status_port);
    assert_eq!(upstream["sender_port"], s1.replication_port);
    assert_eq!(upstream["application_name"], "s2");
    assert_eq!(upstream["instance_id"], instance_id(&s1));
    assert_eq!(
        upstream["upstream_chain"],
        format!("{},{}", instance_id(&s1), instance_id(&primary))
    );
    assert!(serves(&s1, "s2"), "{}", s1.info("replication"));
    assert_eq!(
        s2.info_field("replication", "master_port").as_deref(),
        Some(s1.replication_port.to_string().as_str())
    );

    let pid = s2.pid();
    // Writes go on through the switch: none may be missing on s2 (no gap).
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&primary, 4, stop.clone());
    set_upstream(&s2.datadir, primary.replication_port, "s2");
    let (ok, out, err) = walrep(&["reload", s2.datadir.to_str().unwrap()]);
    assert!(ok, "walrep reload failed: {out}{err}");
    assert!(out.contains("server signaled"), "{out}");
    wait_for(
        "s2 to stream from the primary",
        Duration::from_secs(60),
        || serves(&primary, "s2").then_some(()),
    );
    let mark = wal_flush(&primary);
    wait_for("writes after the switch", Duration::from_secs(60), || {
        (wal_flush(&primary) > mark + (1 << 20)).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    assert!(load.into_iter().map(|t| t.join().unwrap()).sum::<u64>() > 0);
    assert_same_data(&primary, &[&s2]);
    assert_eq!(
        s2.info_field("replication", "master_port").as_deref(),
        Some(primary.replication_port.to_string().as_str())
    );
    assert_eq!(s2.pid(), pid, "no restart");
    wait_for("s1 to lose s2", Duration::from_secs(30), || {
        (!serves(&s1, "s2")).then_some(())
    });
    wait_for(
        "/status to name the primary",
        Duration::from_secs(30),
        || {
            let u = status_upstream(status_port);
            (u["instance_id"] == instance_id(&primary)
                && u["sender_port"] == primary.replication_port)
                .then_some(())
        },
    );
    write_keys(&primary, "b", 500, 32);
    wait_caught_up(&primary, &s2);
    check_keys(&s2, "a", 500);
    check_keys(&s2, "b", 500);
    let trace = trace(&s2);
    assert!(
        trace.contains("changed by a reload"),
        "the reconnect is a traced transition:\n{trace}"
    );
}

/// The `upstream` object of a node's `/status`.
fn status_upstream(status_port: u16) -> serde_json::Value {
    let (code, body) = support::http_get(status_port, "/status");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["upstream"].clone()
}

#[test]
fn a_bad_reload_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "node", &[]);
    let primary = TestNode::start(&dir, &[]);
    let good = fs::read_to_string(dir.join("walrep.toml")).unwrap();
    assert_eq!(config_get(&primary, "wal_keep_size"), "0");

    // A reloadable parameter takes effect; a restart-only one is named.
    set_config_line(&dir, "wal_keep_size", "wal_keep_size = \"32MB\"");
    set_config_line(&dir, "max_connections", "max_connections = 7");
    let (ok, out, err) = walrep(&["reload", dir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    wait_for("wal_keep_size to be 32MB", Duration::from_secs(30), || {
        (config_get(&primary, "wal_keep_size") == "32MB").then_some(())
    });
    assert_eq!(config_get(&primary, "max_connections"), "1000");
    wait_for("the restart-only warning", Duration::from_secs(30), || {
        primary
            .log_text()
            .contains("parameter \"max_connections\" cannot be changed without restarting")
            .then_some(())
    });

    // A malformed value and an unknown parameter: refused by the command
    // and, signalled directly, by the node; nothing changes.
    for (bad, named) in [
        ("wal_keep_size = \"lots\"", "wal_keep_size"),
        ("wal_keep_sizes = \"64MB\"", "wal_keep_sizes"),
    ] {
        fs::write(dir.join("walrep.toml"), format!("{good}\n{bad}\n")).unwrap();
        let (ok, out, err) = walrep(&["reload", dir.to_str().unwrap()]);
        assert!(!ok, "a bad file must be refused: {out}");
        assert!(err.contains(named), "the error names {named}: {err}");
        assert!(err.contains("not reloaded"), "{err}");
        let before = primary
            .log_text()
            .matches("no changes were applied")
            .count();
        unsafe_sighup(primary.pid());
        wait_for(
            "the node to refuse the file",
            Duration::from_secs(30),
            || {
                (primary
                    .log_text()
                    .matches("no changes were applied")
                    .count()
                    > before)
                    .then_some(())
            },
        );
        assert_eq!(config_get(&primary, "wal_keep_size"), "32MB");
    }
    // Still serving writes with the running values.
    write_keys(&primary, "k", 10, 8);
}

/// SIGHUP to `pid`, as `kill -HUP` would.
fn unsafe_sighup(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP {pid}");
}

/// `backup_label`'s field `name` in `dir`.
fn label_field(dir: &Path, name: &str) -> String {
    let text = fs::read_to_string(dir.join("backup_label")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in backup_label:\n{text}"))
        .to_string()
}

/// Remove from `dir`'s wal/ every segment after the one holding `lsn`.
fn remove_segments_after(dir: &Path, lsn: walrep::Lsn) -> usize {
    let wal = dir.join("wal");
    let keep = lsn.0 >> 20; // 1 MB segments
    let mut removed = 0;
    for name in segment_file_names(&wal) {
        // 4096 segments of 1 MB per 4 GB "log" number.
        let segno = u64::from_str_radix(&name[8..16], 16).unwrap() * 4096
            + u64::from_str_radix(&name[16..24], 16).unwrap();
        if segno > keep {
            fs::remove_file(wal.join(&name)).unwrap();
            removed += 1;
        }
    }
    removed
}

#[test]
fn a_base_backup_from_a_standby_is_consistent_only_after_its_end() {
    backup_from_a_standby(&[]);
}

#[test]
fn a_parallel_base_backup_from_a_standby_is_consistent_only_after_its_end() {
    backup_from_a_standby(&["--jobs", "2"]);
}

/// `walrep basebackup --from s1` (a standby) with `extra` options, under
/// load: the copy says `BACKUP FROM: standby`, ends at a position s1
/// replayed, holds the WAL up to that end, is not consistent (reads
/// refused) before it has replayed that far, then streams from s1 and
/// holds the primary's data.
fn backup_from_a_standby(extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let (primary, _archive) = primary(tmp.path(), &[]);
    let mut s1 = standby(&primary, &primary, tmp.path(), "s1");
    write_keys(&primary, "pre", 300, 64);
    wait_caught_up(&primary, &s1);

    // Copy s1 while the primary writes, slowly enough that s1 replays
    // past several segments during the copy.
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&primary, 4, stop.clone());
    let mark = wal_flush(&primary);
    wait_for("the load to start", Duration::from_secs(60), || {
        (wal_flush(&primary) > mark + (1 << 20)).then_some(())
    });
    let mut args = vec!["--max-rate", "1024"];
    args.extend_from_slice(extra);
    let dest = basebackup_with(&s1, tmp.path(), "s5", "s5", &args);
    stop.store(true, Ordering::Relaxed);
    assert!(load.into_iter().map(|t| t.join().unwrap()).sum::<u64>() > 0);

    assert_eq!(label_field(&dest, "BACKUP FROM"), "standby");
    let start: walrep::Lsn = label_field(&dest, "START WAL LOCATION")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let control = walrep::store::ControlFile::read(&dest).unwrap();
    let end = control.min_recovery_point;
    assert!(
        end.0 >> 20 > start.0 >> 20,
        "the backup ends ({end}) segments after it starts ({start})"
    );
    assert!(end <= replayed(&s1), "the end is a position s1 replayed");
    // The copy holds the WAL from its start to its end (fetched with the
    // archive or, with jobs, by WAL_RANGE from s1).
    let segs = segment_file_names(&dest.join("wal"));
    for segno in (start.0 >> 20)..=((end.0 - 1) >> 20) {
        let name = format!("00000001{:08X}{:08X}", segno >> 12, segno & 0xFFF);
        assert!(
            segs.contains(&name),
            "{name} missing from the copy: {segs:?}"
        );
    }
    // No backup-end record from a standby: only WAL s1 received.
    // Without s1 and without the WAL past the start segment, s5 cannot
    // reach the end: it must refuse reads.
    s1.stop();
    assert!(remove_segments_after(&dest, start) > 0);
    let s5 = TestNode::start(&dest, &["wal_retrieve_retry_interval=200ms"]);
    // Every local segment replayed: it waits for a source.
    wait_state(&s5, "RetryingArchive");
    assert!(replayed(&s5) < end, "{}", s5.info("replication"));
    assert_eq!(
        s5.info_field("replication", "consistent").as_deref(),
        Some("0")
    );
    let refused = redis::cmd("GET")
        .arg("pre:1")
        .query::<Option<String>>(&mut s5.client())
        .unwrap_err();
    assert_eq!(
        refused.kind(),
        redis::ErrorKind::BusyLoadingError,
        "reads refused before the backup's end (LOADING): {refused}"
    );

    // s1 back: s5 streams from it, becomes consistent past the end and
    // holds the primary's data.
    s1.restart();
    wait_for("s5 to be consistent", Duration::from_secs(90), || {
        (s5.info_field("replication", "consistent").as_deref() == Some("1")).then_some(())
    });
    assert!(replayed(&s5) >= end);
    assert!(serves(&s1, "s5"), "{}", s1.info("replication"));
    write_keys(&primary, "post", 100, 16);
    assert_same_data(&primary, &[&s1, &s5]);
    check_keys(&s5, "pre", 300);
    check_keys(&s5, "post", 100);
}

/// `psql` on `node`'s replication port running `command`; `None` if psql
/// is missing and the run skips external tools.
fn psql_replication(node: &TestNode, command: &str) -> Option<std::process::Output> {
    let psql = tool("psql")?;
    let conninfo = format!(
        "host=127.0.0.1 port={} user=walrep replication=true",
        node.replication_port
    );
    let out = Command::new(psql)
        .args([
            "-X",
            "-w",
            "-v",
            "VERBOSITY=verbose",
            "-d",
            &conninfo,
            "-c",
            command,
        ])
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Some(out)
}

#[test]
fn a_downstream_asking_for_an_unknown_timeline_gets_postgresqls_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (primary, _archive) = primary(tmp.path(), &[]);
    let s1 = standby(&primary, &primary, tmp.path(), "s1");
    write_keys(&primary, "a", 50, 8);
    wait_caught_up(&primary, &s1);
    let at = replayed(&s1);
    for node in [&primary, &s1] {
        let Some(out) = psql_replication(node, &format!("START_REPLICATION {at} TIMELINE 7"))
        else {
            return;
        };
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("ERROR:  XX000: requested timeline 7 is not in this server's history"),
            "{err}"
        );
    }
    // The upstream still serves its downstream.
    write_keys(&primary, "b", 50, 8);
    wait_caught_up(&primary, &s1);
    check_keys(&s1, "b", 50);
}

#[test]
fn reload_gives_an_archive_only_standby_an_upstream_and_takes_it_away() {
    let tmp = tempfile::tempdir().unwrap();
    let (primary, archive) = primary(tmp.path(), &[]);
    let dir = basebackup_with(&primary, tmp.path(), "s1", "s1", &["--no-slot"]);
    set_config_line(&dir, "primary_conninfo", "primary_conninfo = \"\"");
    let s1 = TestNode::start(
        &dir,
        &[
            &restore_setting(&archive),
            "wal_retrieve_retry_interval=200ms",
        ],
    );
    let pid = s1.pid();
    // Only the archive: a key written now is not there before its
    // segment is archived (the primary does not switch segments).
    write_keys(&primary, "a", 50, 8);
    wait_for(
        "s1 to wait for the archive",
        Duration::from_secs(60),
        || {
            (s1.info_field("replication", "recovery_state").as_deref() == Some("RetryingArchive"))
                .then_some(())
        },
    );
    assert!(!serves(&primary, "s1"));

    set_upstream(&dir, primary.replication_port, "s1");
    let (ok, out, err) = walrep(&["reload", dir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    wait_for("s1 to stream", Duration::from_secs(60), || {
        serves(&primary, "s1").then_some(())
    });
    wait_caught_up(&primary, &s1);
    check_keys(&s1, "a", 50);
    assert!(
        trace(&s1).contains("primary_conninfo changed by a reload"),
        "a traced transition:\n{}",
        trace(&s1)
    );

    set_config_line(&dir, "primary_conninfo", "primary_conninfo = \"\"");
    let (ok, out, err) = walrep(&["reload", dir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    wait_for("the primary to lose s1", Duration::from_secs(60), || {
        (!serves(&primary, "s1")).then_some(())
    });
    assert!(trace(&s1).contains("primary_conninfo removed by a reload"));
    // Back to the archive alone: what is archived still arrives.
    write_keys(&primary, "b", 400, 8192);
    wait_for(
        "s1 to restore b from the archive",
        Duration::from_secs(90),
        || (dump(&s1, "b", 400).iter().filter(|v| v.is_some()).count() > 100).then_some(()),
    );
    assert!(!serves(&primary, "s1"), "the stream stays off");
    assert_eq!(s1.pid(), pid, "no restart");
}

/// The segment numbers in `node`'s wal/ (1 MB segments).
fn segnos(node: &TestNode) -> Vec<u64> {
    segment_file_names(&node.datadir.join("wal"))
        .iter()
        .map(|n| {
            u64::from_str_radix(&n[8..16], 16).unwrap() * 4096
                + u64::from_str_radix(&n[16..24], 16).unwrap()
        })
        .collect()
}

#[test]
fn a_standbys_restartpoints_cap_its_slots_and_let_restored_wal_go() {
    let tmp = tempfile::tempdir().unwrap();
    let (primary, archive) = primary(tmp.path(), &[]);
    // s1 streams, with a slot for a downstream that never comes, capped
    // at 2 MB; s2 is fed by the archive alone and keeps no WAL.
    let s1dir = basebackup_with(&primary, tmp.path(), "s1", "s1", &["--no-slot"]);
    set_upstream(&s1dir, primary.replication_port, "s1");
    let s1 = TestNode::start(
        &s1dir,
        &["checkpoint_timeout=1s", "max_slot_wal_keep_size=2MB"],
    );
    let s2dir = basebackup_with(&primary, tmp.path(), "s2", "s2", &["--no-slot"]);
    set_config_line(&s2dir, "primary_conninfo", "primary_conninfo = \"\"");
    let s2 = TestNode::start(
        &s2dir,
        &[
            &restore_setting(&archive),
            "wal_retrieve_retry_interval=100ms",
            "checkpoint_timeout=1s",
        ],
    );
    wait_caught_up(&primary, &s1);
    let Some(out) = psql_replication(&s1, "CREATE_REPLICATION_SLOT lost PHYSICAL RESERVE_WAL")
    else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reserved = replayed(&s1).0 >> 20;

    write_keys(&primary, "k", 800, 10_000);
    assert!(wal_flush(&primary) >> 20 > reserved + 4);
    wait_for("s1 to invalidate the slot", Duration::from_secs(90), || {
        s1.log_text()
            .contains("invalidating slot \"lost\"")
            .then_some(())
    });
    // A restartpoint keeps the WAL from the previous one's redo point (the
    // fallback when the last snapshot is damaged): a trickle of writes lets
    // restartpoints go on until the horizon passes the slot's WAL.
    let mut client = primary.client();
    let mut n = 0;
    let mut nudge = move || {
        n += 1;
        let _: () = redis::cmd("SET")
            .arg("nudge")
            .arg(n)
            .query(&mut client)
            .unwrap();
    };
    wait_for(
        "s1's restartpoints to remove the WAL the slot held",
        Duration::from_secs(90),
        || {
            nudge();
            (segnos(&s1).into_iter().min()? > reserved).then_some(())
        },
    );
    // s2 restored every segment it replayed; its restartpoints remove them.
    // Filler past the keys' last segment, so the archive holds all of them.
    let mark = wal_flush(&primary);
    write_keys(&primary, "filler", 400, 8192);
    assert!(wal_flush(&primary) > mark + (2 << 20));
    let want = dump(&primary, "k", 800);
    wait_for("s2 to restore the keys", Duration::from_secs(90), || {
        (dump(&s2, "k", 800) == want).then_some(())
    });
    let last = replayed(&s2).0 >> 20;
    wait_for(
        "s2's restartpoints to remove restored segments",
        Duration::from_secs(90),
        || {
            nudge();
            (segnos(&s2).into_iter().min()? + 2 >= last).then_some(())
        },
    );
    check_keys(&s1, "k", 800);
}

#[test]
fn the_parameters_changed_in_a_hurry_are_reloadable_and_documented_so() {
    let doc = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    for p in [
        "primary_conninfo",
        "primary_slot_name",
        "restore_command",
        "archive_command",
        "synchronous_standby_names",
        "synchronous_commit",
        "wal_keep_size",
        "log_level",
    ] {
        assert!(walrep::config::is_reloadable(p), "{p} is restart-only");
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{p}` |")))
            .unwrap_or_else(|| panic!("{p} missing from docs/configuration.md"));
        assert!(row.contains("| reload |"), "{row}");
    }
    assert!(!walrep::config::is_reloadable("port"));
}
