//! A failed fsync of the control file, of a timeline history file and of a
//! replication slot file, each injected through the node's storage: the
//! node stops with a fatal error naming the file and the OS error, reports
//! success for nothing that was not made durable, never retries the fsync,
//! and leaves the previous durable state in place.

mod support;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use walrep::node::checkpoint::CheckpointCause;
use walrep::node::ExitRequest;
use walrep::replication::client::{ConnInfo, ReplicationClient};
use walrep::storage::{replace_temp_path, FaultyStorage, StdStorage};
use walrep::store::control::CONTROL_FILE;
use walrep::store::ControlFile;
use walrep::TimelineId;

use support::node::InProcessNode;
use support::wal::seg;
use support::{wait_until, DEADLINE};

/// A new node in `dir` on a `FaultyStorage` (no fault armed yet).
fn start_faulty(dir: &Path) -> (InProcessNode, Arc<FaultyStorage>) {
    walrep::node::init::init(dir, seg()).unwrap();
    let faulty = Arc::new(FaultyStorage::new());
    let node = InProcessNode::start_existing(
        dir,
        &["checkpoint_timeout=1h"],
        Some(faulty.clone() as Arc<dyn walrep::storage::Storage>),
    );
    (node, faulty)
}

/// The fatal error the node asked to stop with (waits for the injected
/// failure first, so an error that never comes fails instead of hanging).
fn fatal_exit(node: &InProcessNode, faulty: &FaultyStorage) -> String {
    wait_until("the injected fsync failure", || faulty.injected() > 0);
    match node.running().wait_for_exit().unwrap() {
        ExitRequest::Fatal(error) => error.to_string(),
        other => panic!("the node stopped for {other:?}, not a fatal error"),
    }
}

fn redis(node: &InProcessNode) -> redis::Connection {
    redis::Client::open(node.redis_url())
        .unwrap()
        .get_connection_with_timeout(DEADLINE)
        .unwrap()
}

fn set(c: &mut redis::Connection, key: &str) -> redis::RedisResult<String> {
    redis::cmd("SET").arg(key).arg("v").query(c)
}

#[test]
fn a_failed_fsync_of_the_control_file_stops_the_node_and_keeps_the_old_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let (node, faulty) = start_faulty(&dir);
    let mut c = redis(&node);
    assert_eq!(set(&mut c, "before").unwrap(), "OK");
    let control = dir.join(CONTROL_FILE);
    let old_bytes = fs::read(&control).unwrap();
    let old = ControlFile::read(&dir).unwrap();
    let replacement = replace_temp_path(&control);
    faulty.fail_syncs_of(move |p| p == replacement);

    let e = node
        .node()
        .checkpoint(CheckpointCause::Requested)
        .expect_err("a checkpoint whose control file was not made durable reported success");
    assert!(e.to_string().contains("control"), "{e}");

    let message = fatal_exit(&node, &faulty);
    assert!(message.contains("control.tmp"), "{message}");
    assert!(message.contains("injected fsync failure"), "{message}");
    // Nothing is written after it: no commit is acknowledged.
    assert!(set(&mut c, "after").is_err(), "a write was acknowledged");
    assert_eq!(faulty.injected(), 1, "the failed fsync was retried");
    assert_eq!(
        fs::read(&control).unwrap(),
        old_bytes,
        "the old control file changed"
    );
    assert_eq!(
        ControlFile::read(&dir).unwrap().checkpoint_lsn,
        old.checkpoint_lsn
    );
}

#[test]
fn a_failed_fsync_of_the_history_file_stops_the_promotion_before_any_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("standby");
    walrep::node::init::init(&dir, seg()).unwrap();
    fs::write(dir.join("standby.signal"), b"").unwrap();
    let faulty = Arc::new(FaultyStorage::new());
    faulty.fail_syncs_of(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().contains(".history"))
    });
    let node = InProcessNode::start_existing(
        &dir,
        &["checkpoint_timeout=1h"],
        Some(faulty.clone() as Arc<dyn walrep::storage::Storage>),
    );
    let mut c = redis(&node);
    walrep::standby::trigger::request_promotion(&StdStorage, &dir).unwrap();

    let message = fatal_exit(&node, &faulty);
    assert!(message.contains("00000002.history"), "{message}");
    assert!(message.contains("injected fsync failure"), "{message}");
    assert!(!node.node().is_primary(), "the standby was promoted");
    let e = set(&mut c, "k").expect_err("the standby accepted a write");
    assert_eq!(e.kind(), redis::ErrorKind::ReadOnly, "{e}");
    assert_eq!(faulty.injected(), 1, "the failed fsync was retried");
    assert!(!dir.join("wal/00000002.history").exists());
    assert_eq!(ControlFile::read(&dir).unwrap().timeline, TimelineId(1));
}

/// The fsync of `wal/` that makes the new timeline's history file and
/// first segment durable by name runs after the node accepts writes (under
/// the promotion's hold): when it fails the node stops, no write of the
/// new timeline is confirmed, and the control file never names it.
#[test]
fn a_failed_fsync_of_wal_after_writes_are_accepted_stops_the_promotion_unconfirmed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("standby");
    walrep::node::init::init(&dir, seg()).unwrap();
    fs::write(dir.join("standby.signal"), b"").unwrap();
    let faulty = Arc::new(FaultyStorage::new());
    let node = InProcessNode::start_existing(
        &dir,
        &["checkpoint_timeout=1h"],
        Some(faulty.clone() as Arc<dyn walrep::storage::Storage>),
    );
    let mut c = redis(&node);
    faulty.fail_syncs_of(|p| p.file_name().is_some_and(|n| n == "wal"));
    walrep::standby::trigger::request_promotion(&StdStorage, &dir).unwrap();

    let message = fatal_exit(&node, &faulty);
    assert!(message.contains("standby/wal"), "{message}");
    assert!(message.contains("injected fsync"), "{message}");
    // Whether or not it came in before the failure, no write is confirmed.
    assert!(set(&mut c, "k").is_err(), "a write was confirmed");
    assert_eq!(faulty.injected(), 1, "the failed fsync was retried");
    assert_eq!(ControlFile::read(&dir).unwrap().timeline, TimelineId(1));
}

#[test]
fn a_failed_fsync_of_a_slot_file_fails_create_replication_slot_and_stops_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let (node, faulty) = start_faulty(&dir);
    let slots = dir.join("slots");
    faulty.fail_syncs_of(move |p| p.starts_with(&slots));
    let port = node.replication_port();
    let info = ConnInfo::parse(&format!("host=127.0.0.1 port={port} user=walrep")).unwrap();
    let mut client = ReplicationClient::connect(&info, DEADLINE).unwrap();

    let e = client
        .simple_query("CREATE_REPLICATION_SLOT standby1 PHYSICAL")
        .expect_err("CREATE_REPLICATION_SLOT answered with a row");
    assert_eq!(e.sqlstate(), Some("58030"), "{e}");
    assert!(e.to_string().contains("slots/standby1.tmp"), "{e}");
    assert!(node.node().slots.get("standby1").is_none());

    let message = fatal_exit(&node, &faulty);
    assert!(
        message.contains("slots/standby1.tmp/state.tmp"),
        "{message}"
    );
    assert!(message.contains("injected fsync failure"), "{message}");
    assert_eq!(faulty.injected(), 1, "the failed fsync was retried");

    // After a restart the half-made slot is gone, not half there.
    drop(client);
    drop(node);
    let node = InProcessNode::start_existing(&dir, &[], None);
    assert!(node.node().slots.list().is_empty());
    assert!(!dir.join("slots/standby1.tmp").exists());
}
