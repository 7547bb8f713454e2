//! KEYS, SCAN, TYPE, STRLEN and HELLO against a real node, through tools
//! no one here wrote: redis-cli (its `--scan` loop) and the redis crate.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use redis::Commands;
use support::node::{init_datadir, TestNode};
use support::tools::tool;

/// Keys written: `user:0000`..`user:3999` and `order:0`..`order:999`.
const USERS: usize = 4000;
const ORDERS: usize = 1000;

fn user(i: usize) -> String {
    format!("user:{i:04}")
}

/// Write every key in MSETs of 500, each value as long as its index's digits.
fn populate(c: &mut redis::Connection) -> BTreeSet<String> {
    let keys: Vec<String> = (0..USERS)
        .map(user)
        .chain((0..ORDERS).map(|i| format!("order:{i}")))
        .collect();
    for chunk in keys.chunks(500) {
        let mut mset = redis::cmd("MSET");
        for k in chunk {
            mset.arg(k).arg(format!("value-of-{k}"));
        }
        let _: () = mset.query(c).unwrap();
    }
    keys.into_iter().collect()
}

/// redis-cli's output lines, sorted, with a check that none came twice.
fn unique_lines(text: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let set: BTreeSet<String> = lines.iter().map(|l| l.to_string()).collect();
    assert_eq!(set.len(), lines.len(), "a key came twice");
    set
}

#[test]
fn redis_cli_scans_lists_and_inspects_keys() {
    let Some(redis_cli) = tool("redis-cli") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &[]);
    let mut node = TestNode::start(&datadir, &[]);
    let all = populate(&mut node.client());
    let port = node.port.to_string();
    let cli = |args: &[&str]| {
        let out = Command::new(&redis_cli)
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // `--scan` loops SCAN from cursor 0 until the node answers 0.
    assert_eq!(unique_lines(&cli(&["--scan"])), all);
    let users_1: BTreeSet<String> = all
        .iter()
        .filter(|k| k.starts_with("user:1"))
        .cloned()
        .collect();
    assert_eq!(users_1.len(), 1000);
    assert_eq!(
        unique_lines(&cli(&["--scan", "--pattern", "user:1*"])),
        users_1
    );
    let scanned = cli(&["--scan", "--pattern", "*:*9"]);
    let ends_9: BTreeSet<String> = all.iter().filter(|k| k.ends_with('9')).cloned().collect();
    assert_eq!(ends_9.len(), 500);
    assert_eq!(unique_lines(&scanned), ends_9);

    assert_eq!(unique_lines(&cli(&["KEYS", "order:?9"])), {
        (1..10)
            .map(|d| format!("order:{d}9"))
            .collect::<BTreeSet<_>>()
    });
    assert_eq!(unique_lines(&cli(&["KEYS", "*"])), all);
    assert_eq!(cli(&["KEYS", "nothing*"]).trim(), "");
    assert_eq!(cli(&["TYPE", "user:0042"]).trim(), "string");
    assert_eq!(cli(&["TYPE", "missing"]).trim(), "none");
    assert_eq!(
        cli(&["STRLEN", "user:0042"]).trim(),
        "value-of-user:0042".len().to_string()
    );
    assert_eq!(cli(&["STRLEN", "missing"]).trim(), "0");

    let hello: Vec<String> = cli(&["HELLO", "2"]).lines().map(str::to_string).collect();
    let fields: Vec<&str> = hello.iter().step_by(2).map(String::as_str).collect();
    assert_eq!(
        fields,
        ["server", "version", "proto", "id", "mode", "role", "modules"],
        "{hello:?}"
    );
    assert_eq!(&hello[1..=1], ["redis"]);
    assert_eq!(&hello[5..=5], ["2"]);
    assert_eq!(&hello[11..=11], ["master"]);
    assert!(cli(&["HELLO", "4"]).contains("NOPROTO unsupported protocol version"));
    let hello3 = cli(&["HELLO", "3"]);
    assert!(hello3.contains("proto") && hello3.contains('3'), "{hello3}");
    assert!(cli(&["SCAN", "999"]).contains("unknown SCAN cursor"));
    assert!(node.stop().success());
}

#[test]
fn the_redis_crate_scans_lists_and_inspects_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &[]);
    let mut node = TestNode::start(&datadir, &[]);
    let mut c = node.client();
    let all = populate(&mut c);

    let scanned: Vec<String> = c.scan::<String>().unwrap().collect();
    assert_eq!(scanned.len(), all.len(), "no key twice");
    assert_eq!(scanned.into_iter().collect::<BTreeSet<_>>(), all);
    let matched: BTreeSet<String> = c.scan_match::<_, String>("user:00*").unwrap().collect();
    assert_eq!(matched, (0..100).map(user).collect());

    let mut keys: Vec<String> = c.keys("order:99*").unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "order:99",
            "order:990",
            "order:991",
            "order:992",
            "order:993",
            "order:994",
            "order:995",
            "order:996",
            "order:997",
            "order:998",
            "order:999"
        ]
    );
    let t: String = redis::cmd("TYPE").arg("order:1").query(&mut c).unwrap();
    assert_eq!(t, "string");
    let n: usize = c.strlen("order:1").unwrap();
    assert_eq!(n, "value-of-order:1".len());

    let hello: Vec<redis::Value> = redis::cmd("HELLO").arg(2).query(&mut c).unwrap();
    assert_eq!(hello.len(), 14);
    assert_eq!(hello[5], redis::Value::Int(2));
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut c).unwrap();
    assert_eq!(hello[7], redis::Value::Int(id));
    let e = redis::cmd("HELLO")
        .arg(4)
        .query::<redis::Value>(&mut c)
        .unwrap_err();
    assert_eq!(e.code(), Some("NOPROTO"), "{e}");
    let hello3: redis::Value = redis::cmd("HELLO")
        .arg(3)
        .query(&mut node.client())
        .unwrap();
    assert!(matches!(hello3, redis::Value::Map(_)), "{hello3:?}");

    // A cursor stays valid across connections, as in Redis.
    let (cursor, first): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("COUNT")
        .arg(100)
        .query(&mut c)
        .unwrap();
    assert!(cursor != 0 && first.len() == 100);
    let (_, next): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(cursor)
        .arg("COUNT")
        .arg(100)
        .query(&mut node.client())
        .unwrap();
    assert!(next.iter().all(|k| k > first.last().unwrap()));
    assert!(node.stop().success());
}
