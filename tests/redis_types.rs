//! Hashes, lists, sets, expiry and transactions against a real node
//! through the `redis` crate: what each command answers, Redis's errors
//! for bad input (with nothing written), and every kind of record
//! surviving a crash, a restart from a checkpoint, a base backup and
//! archive recovery with the same keys, values and expiry times.

mod support;

use std::fs;
use std::time::Duration;

use redis::{Commands, Connection};
use support::cluster::{archive_settings, basebackup, restore_setting, wait_caught_up};
use support::keyspace::{cmd, dump, write_every_type};
use support::node::{init_datadir, TestNode};
use support::wait_for;

fn err(c: &mut Connection, line: &str) -> String {
    let mut parts = line.split(' ');
    let mut command = redis::cmd(parts.next().unwrap());
    for p in parts {
        command.arg(p);
    }
    match command.query::<redis::Value>(c) {
        Ok(v) => panic!("{line} succeeded: {v:?}"),
        Err(e) => e.detail().map_or_else(
            || e.to_string(),
            |d| format!("{} {d}", e.code().unwrap_or("")),
        ),
    }
}

/// Send `request` on a new connection and read `len` bytes of replies.
fn raw(node: &TestNode, request: &str, len: usize) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = vec![0; len];
    s.read_exact(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn every_type_answers_as_redis_does() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(&init_datadir(tmp.path(), "primary", &[]), &[]);
    let mut c = node.client();

    // Hashes.
    assert_eq!(cmd::<i64>(&mut c, "HSET h a 1 b 2 a 3"), 2);
    assert_eq!(
        cmd::<Option<String>>(&mut c, "HGET h a").as_deref(),
        Some("3")
    );
    assert_eq!(cmd::<i64>(&mut c, "HINCRBY h n -5"), -5);
    assert_eq!(cmd::<i64>(&mut c, "HSETNX h a 9"), 0);
    assert_eq!(cmd::<i64>(&mut c, "HLEN h"), 3);
    assert_eq!(
        cmd::<Vec<Option<String>>>(&mut c, "HMGET h a zz b"),
        [Some("3".into()), None, Some("2".into())]
    );
    assert_eq!(cmd::<i64>(&mut c, "HDEL h a a zz"), 1);
    assert_eq!(cmd::<i64>(&mut c, "HEXISTS h a"), 0);
    let mut keys: Vec<String> = c.hkeys("h").unwrap();
    keys.sort();
    assert_eq!(keys, ["b", "n"]);
    let all: std::collections::HashMap<String, String> = c.hgetall("h").unwrap();
    assert_eq!(all.len(), 2);
    let scanned: Vec<(String, String)> = c.hscan("h").unwrap().collect();
    assert_eq!(scanned.len(), 2);

    // Lists.
    assert_eq!(cmd::<i64>(&mut c, "RPUSH l a b c"), 3);
    assert_eq!(cmd::<i64>(&mut c, "LPUSH l z"), 4);
    assert_eq!(
        cmd::<Vec<String>>(&mut c, "LRANGE l 0 -1"),
        ["z", "a", "b", "c"]
    );
    assert_eq!(cmd::<Vec<String>>(&mut c, "LRANGE l -2 100"), ["b", "c"]);
    assert_eq!(
        cmd::<Option<String>>(&mut c, "LINDEX l -1").as_deref(),
        Some("c")
    );
    assert_eq!(cmd::<Option<String>>(&mut c, "LINDEX l 9"), None);
    let _: () = cmd(&mut c, "LSET l 0 Z");
    assert_eq!(cmd::<i64>(&mut c, "RPUSH l a"), 5);
    assert_eq!(cmd::<i64>(&mut c, "LREM l -1 a"), 1);
    assert_eq!(cmd::<Vec<String>>(&mut c, "LPOP l 2"), ["Z", "a"]);
    assert_eq!(
        cmd::<Option<String>>(&mut c, "RPOP l").as_deref(),
        Some("c")
    );
    let _: () = cmd(&mut c, "LTRIM l 0 0");
    assert_eq!(cmd::<i64>(&mut c, "LLEN l"), 1);
    assert_eq!(
        cmd::<Option<String>>(&mut c, "LPOP l").as_deref(),
        Some("b")
    );
    assert_eq!(cmd::<i64>(&mut c, "EXISTS l"), 0, "an emptied list is gone");
    assert_eq!(cmd::<Option<Vec<String>>>(&mut c, "LPOP l 3"), None);
    assert_eq!(cmd::<i64>(&mut c, "LPUSHX l a"), 0);

    // Sets.
    assert_eq!(cmd::<i64>(&mut c, "SADD s a b c a"), 3);
    assert_eq!(cmd::<i64>(&mut c, "SREM s c zz"), 1);
    assert_eq!(cmd::<i64>(&mut c, "SISMEMBER s a"), 1);
    assert_eq!(cmd::<Vec<i64>>(&mut c, "SMISMEMBER s a c"), [1, 0]);
    assert_eq!(cmd::<i64>(&mut c, "SCARD s"), 2);
    let mut m: Vec<String> = c.smembers("s").unwrap();
    m.sort();
    assert_eq!(m, ["a", "b"]);
    assert_eq!(cmd::<Vec<String>>(&mut c, "SRANDMEMBER s -5").len(), 5);
    assert_eq!(cmd::<Vec<String>>(&mut c, "SRANDMEMBER s 5").len(), 2);
    let popped: Vec<String> = cmd(&mut c, "SPOP s 5");
    assert_eq!(popped.len(), 2);
    assert_eq!(cmd::<i64>(&mut c, "EXISTS s"), 0);
    let _: () = cmd(&mut c, "SADD big 1 2 3 4 5 6 7 8 9 10 11 12");
    let scanned: Vec<String> = c.sscan("big").unwrap().collect();
    assert_eq!(scanned.len(), 12, "SSCAN returns every member once");

    // Expiry.
    let _: () = cmd(&mut c, "SET e v EX 100");
    let ttl: i64 = cmd(&mut c, "TTL e");
    assert!((99..=100).contains(&ttl), "{ttl}");
    assert!(cmd::<i64>(&mut c, "PTTL e") > 99_000);
    assert_eq!(cmd::<i64>(&mut c, "EXPIRE e 50 GT"), 0);
    assert_eq!(cmd::<i64>(&mut c, "EXPIRE e 50 LT"), 1);
    assert_eq!(cmd::<i64>(&mut c, "EXPIRE e 500 NX"), 0);
    assert_eq!(cmd::<i64>(&mut c, "PERSIST e"), 1);
    assert_eq!(cmd::<i64>(&mut c, "TTL e"), -1);
    assert_eq!(cmd::<i64>(&mut c, "TTL missing"), -2);
    assert_eq!(cmd::<i64>(&mut c, "EXPIRE e 100 XX"), 0);
    let _: () = cmd(&mut c, "SET e2 v PX 150");
    let _: () = cmd(&mut c, "SET e2 w KEEPTTL");
    assert!(cmd::<i64>(&mut c, "PTTL e2") > 0, "KEEPTTL kept it");
    assert_eq!(
        cmd::<Option<String>>(&mut c, "GETEX e2 PERSIST").as_deref(),
        Some("w")
    );
    assert_eq!(cmd::<i64>(&mut c, "TTL e2"), -1);
    let _: () = cmd(&mut c, "PSETEX short 50 v");
    wait_for("a 50 ms key to expire", Duration::from_secs(10), || {
        cmd::<Option<String>>(&mut c, "GET short")
            .is_none()
            .then_some(())
    });
    assert_eq!(
        cmd::<i64>(&mut c, "EXPIRE e 0"),
        1,
        "a time in the past deletes"
    );
    assert_eq!(cmd::<i64>(&mut c, "EXISTS e"), 0);
    let (at, _): (i64, i64) = cmd(&mut c, "TIME");
    let _: () = cmd(&mut c, &format!("SET e3 v EXAT {}", at + 1000));
    assert_eq!(cmd::<i64>(&mut c, "EXPIRETIME e3"), at + 1000);

    // Keyspace.
    let _: () = cmd(&mut c, "SET a 1");
    let _: () = cmd(&mut c, "RENAME a b2");
    assert_eq!(cmd::<i64>(&mut c, "RENAMENX b2 h"), 0);
    assert_eq!(cmd::<String>(&mut c, "TYPE h"), "hash");
    assert_eq!(cmd::<String>(&mut c, "TYPE b2"), "string");
    let hashes: Vec<String> = redis::cmd("SCAN")
        .arg(0)
        .arg("TYPE")
        .arg("hash")
        .arg("COUNT")
        .arg(1000)
        .query::<(String, Vec<String>)>(&mut c)
        .unwrap()
        .1;
    assert_eq!(hashes, ["h"]);
    let _: () = cmd(&mut c, "FLUSHDB");
    assert_eq!(cmd::<i64>(&mut c, "DBSIZE"), 0);
    assert!(node.stop().success());
}

/// The redis crate's atomic pipeline is MULTI ... EXEC: one record, and
/// WATCH aborts it when another client changed a watched key.
#[test]
fn atomic_pipelines_and_watch_behave_as_in_redis() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(&init_datadir(tmp.path(), "primary", &[]), &[]);
    let mut c = node.client();
    let records_before: u64 = node
        .info_field("persistence", "wal_records")
        .unwrap()
        .parse()
        .unwrap();
    let (n, list): (i64, Vec<String>) = redis::pipe()
        .atomic()
        .set("k", 1)
        .ignore()
        .incr("k", 5)
        .rpush("l", &["a", "b"])
        .ignore()
        .lrange("l", 0, -1)
        .query(&mut c)
        .unwrap();
    assert_eq!((n, list), (6, vec!["a".to_string(), "b".to_string()]));
    let records_after: u64 = node
        .info_field("persistence", "wal_records")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(records_after - records_before, 1, "one EXEC, one record");

    // A runtime error inside EXEC fails that command only (raw, since
    // the crate turns an error inside the array into an error of all).
    let expected = "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n\
                    -WRONGTYPE Operation against a key holding the wrong kind of value\r\n:7\r\n";
    assert_eq!(
        raw(
            &node,
            "MULTI\r\nINCR l\r\nINCR k\r\nEXEC\r\n",
            expected.len()
        ),
        expected
    );

    // WATCH: another client's write aborts the transaction.
    let mut other = node.client();
    let _: () = cmd(&mut c, "WATCH k");
    let _: () = cmd(&mut other, "SET k 100");
    let _: () = cmd(&mut c, "MULTI");
    let _: () = cmd(&mut c, "SET k 0");
    let aborted: Option<Vec<String>> = redis::cmd("EXEC").query(&mut c).unwrap();
    assert_eq!(aborted, None);
    assert_eq!(cmd::<i64>(&mut c, "GET k"), 100);
    // Untouched, it commits.
    let _: () = cmd(&mut c, "WATCH k");
    let _: () = cmd(&mut c, "MULTI");
    let _: () = cmd(&mut c, "SET k 0");
    let done: Option<Vec<String>> = redis::cmd("EXEC").query(&mut c).unwrap();
    assert_eq!(done, Some(vec!["OK".to_string()]));
    // A watched key that expires aborts it too.
    let _: () = cmd(&mut c, "SET w 1 PX 100");
    let _: () = cmd(&mut c, "WATCH w");
    std::thread::sleep(Duration::from_millis(150));
    let _: () = cmd(&mut c, "MULTI");
    let _: () = cmd(&mut c, "SET x 1");
    let aborted: Option<Vec<String>> = redis::cmd("EXEC").query(&mut c).unwrap();
    assert_eq!(aborted, None);
    assert!(node.stop().success());
}

/// CLIENT LIST / INFO / KILL, INFO keyspace and COMMAND, as clients and
/// tools call them.
#[test]
fn clients_keyspace_and_commands_are_described() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(&init_datadir(tmp.path(), "primary", &[]), &[]);
    let mut c = node.client();
    let mut other = node.client();
    let _: () = cmd(&mut other, "CLIENT SETNAME victim");
    let _: () = cmd(&mut other, "CLIENT SETINFO LIB-NAME mylib");
    let list: String = cmd(&mut c, "CLIENT LIST");
    let line = list
        .lines()
        .find(|l| l.contains("name=victim"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("lib-name=mylib") && line.contains("cmd=client"),
        "{line}"
    );
    let id: u64 = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("id="))
        .unwrap()
        .parse()
        .unwrap();
    let me: String = cmd(&mut c, "CLIENT INFO");
    assert!(
        me.starts_with(&format!("id={} ", cmd::<u64>(&mut c, "CLIENT ID"))),
        "{me}"
    );
    assert_eq!(cmd::<i64>(&mut c, &format!("CLIENT KILL ID {id}")), 1);
    wait_for(
        "the killed connection to close",
        Duration::from_secs(10),
        || {
            redis::cmd("PING")
                .query::<String>(&mut other)
                .is_err()
                .then_some(())
        },
    );
    assert!(!cmd::<String>(&mut c, "CLIENT LIST").contains("name=victim"));
    assert_eq!(err(&mut c, "CLIENT KILL 1.2.3.4:5"), "ERR No such client");

    let _: () = cmd(&mut c, "SET a 1 EX 100");
    let _: () = cmd(&mut c, "SET b 1");
    let ks = node.info_field("keyspace", "db0").unwrap();
    assert_eq!(ks, "keys=2,expires=1,avg_ttl=0");
    assert_eq!(
        cmd::<Vec<String>>(&mut c, "COMMAND GETKEYS MSET x 1 y 2"),
        ["x", "y"]
    );
    let count: usize = cmd(&mut c, "COMMAND COUNT");
    let names: Vec<String> = cmd(&mut c, "COMMAND LIST");
    assert_eq!(names.len(), count);
    let info: redis::Value = cmd(&mut c, "COMMAND INFO get nosuch");
    let redis::Value::Array(info) = info else {
        panic!()
    };
    assert_eq!(info[1], redis::Value::Nil);
    let docs: redis::Value = cmd(&mut c, "COMMAND DOCS set");
    let text = format!("{docs:?}");
    assert!(text.contains("keepttl") && text.contains("oneof"), "{text}");
    assert!(node.stop().success());
}

#[test]
fn bad_input_gets_redis_errors_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(&init_datadir(tmp.path(), "primary", &[]), &[]);
    let mut c = node.client();
    write_every_type(&mut c, "x");
    let before = dump(&mut c);
    let insert_before = node.info_field("persistence", "wal_insert_lsn").unwrap();
    let wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value";
    let cases: &[(&str, &str)] = &[
        ("HSET x:h f", "ERR wrong number of arguments for 'hset' command"),
        ("LPUSH x:l", "ERR wrong number of arguments for 'lpush' command"),
        ("SADD", "ERR wrong number of arguments for 'sadd' command"),
        ("GET x:h", wrongtype),
        ("INCR x:l", wrongtype),
        ("LPUSH x:h a", wrongtype),
        ("HSET x:l f v", wrongtype),
        ("SADD x:s:nope a", ""),
        ("SPOP x:h", wrongtype),
        ("SET x:h v GET", wrongtype),
        ("HINCRBY x:h f1 1", "ERR hash value is not an integer"),
        ("HINCRBY x:h count 9223372036854775807", "ERR increment or decrement would overflow"),
        ("INCRBY x:n 9223372036854775807", "ERR increment or decrement would overflow"),
        ("SET k v EX -1", "ERR invalid expire time in 'set' command"),
        ("SET k v PX 0", "ERR invalid expire time in 'set' command"),
        ("SET k v EX 9223372036854775807", "ERR invalid expire time in 'set' command"),
        ("SETEX k -5 v", "ERR invalid expire time in 'setex' command"),
        ("GETEX x:s EX 0", "ERR invalid expire time in 'getex' command"),
        ("EXPIRE x:s 9223372036854775807", "ERR invalid expire time in 'expire' command"),
        ("EXPIRE x:s abc", "ERR value is not an integer or out of range"),
        ("EXPIRE x:s 10 NX XX", "ERR NX and XX, GT or LT options at the same time are not compatible"),
        ("EXPIRE x:s 10 GT LT", "ERR GT and LT options at the same time are not compatible"),
        ("LPOP x:l -1", "ERR value is out of range, must be positive"),
        ("SPOP x:set -1", "ERR value is out of range, must be positive"),
        ("SRANDMEMBER x:set -9223372036854775808", "ERR value is out of range"),
        ("SRANDMEMBER x:set -99999999999", "ERR value is out of range"),
        ("LSET x:l 99 v", "ERR index out of range"),
        ("LSET nope 0 v", "ERR no such key"),
        ("RENAME nope x", "ERR no such key"),
        ("LRANGE x:l a 1", "ERR value is not an integer or out of range"),
        ("HSCAN x:h -1", "ERR invalid cursor"),
        ("ZADD z 1 m", "ERR walrep does not support sorted sets ('zadd'); it supports strings, hashes, lists, sets, key expiry and MULTI/EXEC transactions (see docs/redis-commands.md)"),
        ("EXEC", "ERR EXEC without MULTI"),
        ("DISCARD", "ERR DISCARD without MULTI"),
    ];
    for (line, expected) in cases {
        if expected.is_empty() {
            continue;
        }
        assert_eq!(&err(&mut c, line), expected, "{line}");
    }
    // A queuing error aborts the whole transaction; nested MULTI and
    // WATCH inside MULTI are refused without aborting it.
    let _: () = cmd(&mut c, "MULTI");
    assert_eq!(err(&mut c, "MULTI"), "ERR MULTI calls can not be nested");
    assert_eq!(
        err(&mut c, "WATCH x:s"),
        "ERR WATCH inside MULTI is not allowed"
    );
    let _: String = cmd(&mut c, "SET x:s changed");
    assert!(err(&mut c, "HSET x:h").starts_with("ERR wrong number of arguments"));
    let _: String = cmd(&mut c, "DEL x:h");
    assert_eq!(
        err(&mut c, "EXEC"),
        "EXECABORT Transaction discarded because of previous errors."
    );
    // Huge counts are bounded by the collection.
    assert_eq!(
        cmd::<Vec<String>>(&mut c, "SRANDMEMBER x:set 9223372036854775807").len(),
        2
    );
    assert_eq!(
        cmd::<Vec<String>>(&mut c, "LRANGE x:l 0 9223372036854775807").len(),
        2
    );
    assert_eq!(dump(&mut c), before, "nothing changed");
    assert_eq!(
        node.info_field("persistence", "wal_insert_lsn").unwrap(),
        insert_before,
        "nothing written"
    );
    assert!(node.stop().success());
}

/// Every kind of record through the four ways a node gets its keys back:
/// crash recovery, a restart from its shutdown checkpoint, a base backup
/// streaming from the primary, and archive recovery alone. Each node's
/// keyspace, expiry times included, is the primary's.
#[test]
fn every_record_type_survives_crash_checkpoint_backup_and_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    fs::create_dir(&archive).unwrap();
    let dir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let mut settings = archive_settings(&archive);
    settings.push("archive_timeout=1s".into());
    let refs: Vec<&str> = settings.iter().map(String::as_str).collect();
    let mut primary = TestNode::start(&dir, &refs);
    // A base backup taken before any write: everything reaches it as WAL.
    let cold = basebackup(&primary, tmp.path(), "cold", "cold");
    let mut c = primary.client();
    for i in 0..20 {
        write_every_type(&mut c, &format!("k{i}"));
    }
    let expected = dump(&mut c);
    assert!(expected.len() > 200, "{}", expected.len());

    // Crash: kill -9, restart, replay from the last checkpoint.
    primary.kill9();
    primary.restart();
    assert_eq!(
        dump(&mut primary.client()),
        expected,
        "after crash recovery"
    );
    // Restart from the shutdown checkpoint: the snapshot alone.
    assert!(primary.stop().success());
    primary.restart();
    assert_eq!(
        dump(&mut primary.client()),
        expected,
        "after a clean restart"
    );

    // A base backup taken now (its snapshot holds every type) streams on.
    let sdir = basebackup(&primary, tmp.path(), "standby", "s1");
    let standby = TestNode::start(&sdir, &[]);
    let mut c = primary.client();
    write_every_type(&mut c, "after");
    let expected = dump(&mut c);
    wait_caught_up(&primary, &standby);
    assert_eq!(
        dump(&mut standby.client()),
        expected,
        "on the streaming standby"
    );

    // The first backup, recovering from the archive only.
    let _ = fs::remove_file(cold.join("standby.signal"));
    let conf = fs::read_to_string(cold.join("walrep.toml")).unwrap();
    let conf: String = conf
        .lines()
        .filter(|l| !l.starts_with("primary_conninfo"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(cold.join("walrep.toml"), conf).unwrap();
    fs::write(cold.join("standby.signal"), b"").unwrap();
    let flushed: walrep::Lsn = primary
        .info_field("persistence", "wal_flush_lsn")
        .unwrap()
        .parse()
        .unwrap();
    let archived = TestNode::start(
        &cold,
        &[
            &restore_setting(&archive),
            "wal_retrieve_retry_interval=200ms",
        ],
    );
    wait_for(
        "archive recovery to replay everything",
        Duration::from_secs(90),
        || {
            let replay: walrep::Lsn = archived
                .info_field("replication", "replay_lsn")?
                .parse()
                .ok()?;
            (replay >= flushed).then_some(())
        },
    );
    assert_eq!(
        dump(&mut archived.client()),
        expected,
        "after archive recovery"
    );
}
