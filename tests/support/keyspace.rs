//! Every Redis type walrep has, written through the real client and read
//! back whole: a workload that produces every kind of key-value WAL record,
//! and a dump of a node's keyspace (type, value, absolute expiry) to
//! compare nodes with.

use std::collections::BTreeMap;

use redis::Connection;

/// One key as a node shows it: type, value (collections in a canonical
/// order) and absolute expiry in Unix ms (-1: none).
pub type Dump = BTreeMap<String, (String, String, i64)>;

/// Run one command.
pub fn cmd<T: redis::FromRedisValue>(c: &mut Connection, line: &str) -> T {
    let mut parts = line.split(' ');
    let mut command = redis::cmd(parts.next().unwrap());
    for p in parts {
        command.arg(p);
    }
    command.query(c).unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// Write keys of every type under `prefix`, with every kind of record:
/// strings with and without expiry, INCR, APPEND, hashes (HSET, HDEL,
/// HINCRBY), lists (pushes at both ends, pops, LSET, LREM, LTRIM, one
/// emptied), sets (SADD, SREM, SPOP), RENAME, EXPIRE / PERSIST and a
/// MULTI/EXEC of several types. Expiry times are a day away, so nothing
/// expires while a test runs.
pub fn write_every_type(c: &mut Connection, prefix: &str) {
    let p = prefix;
    let far = "86400";
    let lines = [
        format!("SET {p}:s plain"),
        format!("SET {p}:ttl v EX {far}"),
        format!("SETEX {p}:setex {far} v"),
        format!("SET {p}:n 41"),
        format!("INCR {p}:n"),
        format!("APPEND {p}:s -more"),
        format!("HSET {p}:h f1 v1 f2 v2 f3 v3"),
        format!("HDEL {p}:h f2"),
        format!("HINCRBY {p}:h count 7"),
        format!("RPUSH {p}:l b c d e"),
        format!("LPUSH {p}:l a"),
        format!("LSET {p}:l 1 B"),
        format!("LREM {p}:l 0 d"),
        format!("RPOP {p}:l"),
        format!("LTRIM {p}:l 0 1"),
        format!("RPUSH {p}:gone x y"),
        format!("LPOP {p}:gone 2"),
        format!("SADD {p}:set m1 m2 m3 m4"),
        format!("SREM {p}:set m4"),
        format!("SPOP {p}:set"),
        format!("SET {p}:old moved"),
        format!("EXPIRE {p}:old {far}"),
        format!("RENAME {p}:old {p}:new"),
        format!("SET {p}:p x EX {far}"),
        format!("PERSIST {p}:p"),
        format!("HSET {p}:hx f v"),
        format!("PEXPIRE {p}:hx 86400000"),
    ];
    for l in &lines {
        let _: redis::Value = cmd(c, l);
    }
    let _: () = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(format!("{p}:tx"))
        .arg("1")
        .ignore()
        .cmd("HSET")
        .arg(format!("{p}:txh"))
        .arg("f")
        .arg("v")
        .ignore()
        .cmd("SADD")
        .arg(format!("{p}:txs"))
        .arg("a")
        .ignore()
        .cmd("INCR")
        .arg(format!("{p}:tx"))
        .ignore()
        .query(c)
        .unwrap();
}

/// Every key of a node with its type, value and expiry.
pub fn dump(c: &mut Connection) -> Dump {
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(c).unwrap();
    keys.into_iter()
        .filter_map(|k| {
            let t: String = redis::cmd("TYPE").arg(&k).query(c).unwrap();
            let v = match t.as_str() {
                "string" => redis::cmd("GET")
                    .arg(&k)
                    .query::<Option<String>>(c)
                    .unwrap()?,
                "hash" => {
                    let h: BTreeMap<String, String> =
                        redis::cmd("HGETALL").arg(&k).query(c).unwrap();
                    format!("{h:?}")
                }
                "list" => {
                    let l: Vec<String> = redis::cmd("LRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .query(c)
                        .unwrap();
                    format!("{l:?}")
                }
                "set" => {
                    let mut s: Vec<String> = redis::cmd("SMEMBERS").arg(&k).query(c).unwrap();
                    s.sort();
                    format!("{s:?}")
                }
                "none" => return None,
                other => panic!("{k} has type {other}"),
            };
            let at: i64 = redis::cmd("PEXPIRETIME").arg(&k).query(c).unwrap();
            Some((k, (t, v, at)))
        })
        .collect()
}
