//! The `walrep` command line and start-up: clear errors for bad input, a
//! locked data directory, clean shutdown, group commit at the node.

mod support;

use std::fs;
use std::time::Duration;

use support::node::{init_datadir, walrep, TestNode};

#[test]
fn init_refuses_non_empty_directory_and_bad_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("junk"), b"x").unwrap();
    let (ok, _, err) = walrep(&["init", tmp.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("exists but is not empty"), "{err}");
    let (ok, _, err) = walrep(&[
        "init",
        tmp.path().join("d").to_str().unwrap(),
        "--wal-segment-size",
        "3MB",
    ]);
    assert!(!ok);
    assert!(err.contains("power of two"), "{err}");
}

#[test]
fn bad_configuration_is_refused_with_the_parameter_named() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "d", &[]);
    let d = datadir.to_str().unwrap();
    let (ok, _, err) = walrep(&["start", d, "-c", "no_such_thing=1"]);
    assert!(!ok);
    assert!(
        err.contains("unrecognized configuration parameter \"no_such_thing\""),
        "{err}"
    );
    let (ok, _, err) = walrep(&["start", d, "-c", "synchronous_commit=sometimes"]);
    assert!(!ok);
    assert!(err.contains("synchronous_commit"), "{err}");
    let (ok, _, err) = walrep(&["start", d, "-c", "synchronous_standby_names=FIRST 1 s1"]);
    assert!(!ok);
    assert!(err.contains("synchronous_standby_names"), "{err}");
    let conf = datadir.join("walrep.toml");
    let good = fs::read_to_string(&conf).unwrap();
    // Top-level keys go before the file's tables ([[hba]], [passwords]).
    fs::write(&conf, format!("max_wall_size = \"1GB\"\n{good}")).unwrap();
    let (ok, _, err) = walrep(&["start", d, "-c", "port=0", "-c", "replication_port=0"]);
    assert!(!ok);
    assert!(err.contains("\"max_wall_size\""), "{err}");
    fs::write(&conf, "port = [\n").unwrap();
    let (ok, _, err) = walrep(&["start", d]);
    assert!(!ok);
    assert!(err.contains("invalid configuration"), "{err}");
    let (ok, _, err) = walrep(&["start", tmp.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("not a walrep data directory"), "{err}");
}

#[test]
fn a_second_node_on_the_same_directory_is_refused_and_shutdown_is_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "d", &[]);
    let mut node = TestNode::start(&datadir, &[]);
    let (ok, _, err) = walrep(&[
        "start",
        datadir.to_str().unwrap(),
        "-c",
        "port=0",
        "-c",
        "replication_port=0",
    ]);
    assert!(!ok);
    assert!(
        err.contains("is held by another walrep") && err.contains(&node.pid().to_string()),
        "{err}"
    );
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut node.client())
        .unwrap();
    assert!(
        node.stop().success(),
        "SIGTERM did not exit 0:\n{}",
        node.log_text()
    );
    assert!(node
        .log_text()
        .contains("checkpoint complete cause=\"shutdown\""));
    node.restart();
    assert_eq!(
        node.info_field("persistence", "cluster_state").as_deref(),
        Some("in_production")
    );
    assert!(!node
        .log_text()
        .rsplit("received shutdown request")
        .next()
        .unwrap()
        .contains("not properly shut down"));
    let v: String = redis::cmd("GET")
        .arg("k")
        .query(&mut node.client())
        .unwrap();
    assert_eq!(v, "v");
}

#[test]
fn group_commit_shares_fdatasyncs_between_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "d", &[]);
    let node = TestNode::start(&datadir, &[]);
    let fsyncs_before: u64 = node
        .info_field("persistence", "wal_fsyncs")
        .unwrap()
        .parse()
        .unwrap();
    let records_before: u64 = node
        .info_field("persistence", "wal_records")
        .unwrap()
        .parse()
        .unwrap();
    const WRITERS: usize = 32;
    const PER_WRITER: usize = 200;
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut c = node.client();
            std::thread::spawn(move || {
                for i in 0..PER_WRITER {
                    let _: () = redis::cmd("SET")
                        .arg(format!("w{w}:{i}"))
                        .arg(i)
                        .query(&mut c)
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let fsyncs = node
        .info_field("persistence", "wal_fsyncs")
        .unwrap()
        .parse::<u64>()
        .unwrap()
        - fsyncs_before;
    let records = node
        .info_field("persistence", "wal_records")
        .unwrap()
        .parse::<u64>()
        .unwrap()
        - records_before;
    assert!(records >= (WRITERS * PER_WRITER) as u64);
    assert!(
        fsyncs * 3 < records,
        "group commit is not working: {fsyncs} fdatasyncs for {records} commits from {WRITERS} concurrent writers"
    );
    let keys: u64 = redis::cmd("DBSIZE").query(&mut node.client()).unwrap();
    assert_eq!(keys, (WRITERS * PER_WRITER) as u64);
    let _ = Duration::ZERO;
}
