//! DEBUG DIGEST through a real client: the same data gives the same digest
//! whatever order it was written in, any change of a key or a value changes
//! it, an empty data set is 40 zeros (as Redis answers), and a standby that
//! replayed everything answers the primary's digest.

mod support;

use support::cluster::{basebackup, wait_caught_up, wait_state, SEG_1MB};
use support::node::{init_datadir, TestNode};

fn digest(node: &TestNode) -> String {
    redis::cmd("DEBUG")
        .arg("DIGEST")
        .query(&mut node.client())
        .unwrap()
}

fn set(node: &TestNode, k: &str, v: &str) {
    let _: () = redis::cmd("SET")
        .arg(k)
        .arg(v)
        .query(&mut node.client())
        .unwrap();
}

fn del(node: &TestNode, k: &str) {
    let _: i64 = redis::cmd("DEL").arg(k).query(&mut node.client()).unwrap();
}

#[test]
fn the_digest_depends_on_the_data_only() {
    let tmp = tempfile::tempdir().unwrap();
    let a = TestNode::start(
        &init_datadir(tmp.path(), "a", &["--wal-segment-size", SEG_1MB]),
        &[],
    );
    let b = TestNode::start(
        &init_datadir(tmp.path(), "b", &["--wal-segment-size", SEG_1MB]),
        &[],
    );
    assert_eq!(digest(&a), "0".repeat(40));
    for i in 0..100 {
        set(&a, &format!("k{i}"), &format!("v{i}"));
    }
    for i in (0..100).rev() {
        set(&b, &format!("k{i}"), "first");
        set(&b, &format!("k{i}"), &format!("v{i}"));
    }
    let d = digest(&a);
    assert_eq!(d.len(), 40);
    assert_eq!(d, digest(&b), "same data, different history");
    set(&b, "k7", "changed");
    assert_ne!(d, digest(&b), "a changed value");
    set(&b, "k7", "v7");
    assert_eq!(d, digest(&b));
    // Length prefixes: moving a byte from key to value is a change.
    set(&a, "xy", "z");
    set(&b, "x", "yz");
    assert_ne!(digest(&a), digest(&b));
    del(&a, "xy");
    del(&b, "x");
    assert_eq!(d, digest(&b));
    let err = redis::cmd("DEBUG")
        .arg("SLEEP")
        .query::<String>(&mut a.client())
        .unwrap_err();
    assert!(err.to_string().contains("unknown subcommand"), "{err}");
}

#[test]
fn a_caught_up_standby_has_the_primary_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let primary = TestNode::start(
        &init_datadir(tmp.path(), "p", &["--wal-segment-size", SEG_1MB]),
        &[],
    );
    for i in 0..500 {
        set(&primary, &format!("k{i}"), &format!("v{i}"));
    }
    let dir = basebackup(&primary, tmp.path(), "s", "s1");
    let standby = TestNode::start(&dir, &["wal_retrieve_retry_interval=200ms"]);
    wait_state(&standby, "Streaming");
    for i in 250..750 {
        set(&primary, &format!("k{i}"), &format!("w{i}"));
    }
    wait_caught_up(&primary, &standby);
    assert_eq!(digest(&primary), digest(&standby));
}
