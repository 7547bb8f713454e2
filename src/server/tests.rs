//! The front end against a fake node: commands, limits, errors, and the rule
//! that no client sees or is told "OK" for a write before its level is met.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::config::Config;
use crate::store::{Level, Store};
use crate::Lsn;

/// A node whose "WAL" is a counter and whose durability is a gate the test opens.
struct FakeNode {
    store: Store,
    lsn: AtomicU64,
    role: Mutex<Role>,
    /// When false, waits block until it turns true (a slow fsync / absent standby).
    durable: Mutex<bool>,
    cv: Condvar,
    fail: AtomicBool,
    config: Arc<Config>,
    /// Records inserted.
    records: AtomicU64,
}

impl FakeNode {
    fn new() -> Arc<FakeNode> {
        Arc::new(FakeNode {
            store: Store::new(),
            lsn: AtomicU64::new(0),
            role: Mutex::new(Role::Primary),
            durable: Mutex::new(true),
            cv: Condvar::new(),
            fail: AtomicBool::new(false),
            config: Arc::new(Config::default()),
            records: AtomicU64::new(0),
        })
    }

    fn set_durable(&self, on: bool) {
        *self.durable.lock().unwrap() = on;
        self.cv.notify_all();
    }
}

/// What a poisoned WAL writer answers.
fn fsync_failed() -> crate::wal::WalError {
    crate::wal::WalError::Poisoned {
        cause: "fdatasync: Input/output error".into(),
    }
}

impl Backend for FakeNode {
    fn store(&self) -> &Store {
        &self.store
    }
    fn role(&self) -> Role {
        *self.role.lock().unwrap()
    }
    fn insert(&self, _info: u8, payload: &[u8]) -> Result<Lsn, WriteError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(WriteError::WalFailed(fsync_failed()));
        }
        self.records.fetch_add(1, Ordering::SeqCst);
        Ok(Lsn(self
            .lsn
            .fetch_add(payload.len() as u64, Ordering::SeqCst)
            + payload.len() as u64))
    }
    fn wait(&self, end: Lsn, _level: Level) -> Result<(), WriteError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut d = self.durable.lock().unwrap();
        while !*d {
            if self.fail.load(Ordering::SeqCst) {
                return Err(WriteError::WalFailed(fsync_failed()));
            }
            let (g, _) = self.cv.wait_timeout(d, Duration::from_millis(20)).unwrap();
            d = g;
            assert!(Instant::now() < deadline, "wait never released");
        }
        self.store.visibility().advance_all(end);
        Ok(())
    }
    fn sync_standbys_defined(&self) -> bool {
        false
    }
    fn config(&self) -> Arc<Config> {
        self.config.clone()
    }
    fn info_section(&self, name: &str) -> Option<String> {
        (name == "replication").then(|| "role:master\r\n".to_string())
    }
    fn wait_replicas(&self, _upto: Lsn, _wanted: usize, _timeout: Duration) -> usize {
        0
    }
    fn wait_flushed(&self, _upto: Lsn, timeout: Duration) -> bool {
        let d = self.durable.lock().unwrap();
        let (d, _) = self.cv.wait_timeout_while(d, timeout, |d| !*d).unwrap();
        *d
    }
}

fn start(node: &Arc<FakeNode>, max_connections: u32) -> Server {
    Server::start(
        "127.0.0.1:0".parse().unwrap(),
        node.clone(),
        ServerSettings::for_tests(max_connections, 1 << 20),
    )
    .unwrap()
}

fn client(server: &Server) -> redis::Connection {
    let url = format!("redis://{}/", server.local_addr());
    let c = redis::Client::open(url).unwrap().get_connection().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

fn raw(server: &Server, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `commands` in RESP, one after another (a pipeline), then QUIT.
fn pipeline(commands: &[&[&str]]) -> Vec<u8> {
    let mut out = Vec::new();
    for args in commands.iter().chain([&["QUIT"][..]].iter()) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in *args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
    }
    out
}

#[test]
fn pipelined_writes_share_a_record_and_keep_their_replies() {
    let node = FakeNode::new();
    let server = start(&node, 10);
    let keys: Vec<String> = (0..32).map(|i| format!("k{i}")).collect();
    let sets: Vec<[&str; 3]> = keys.iter().map(|k| ["SET", k.as_str(), "v"]).collect();
    let sets: Vec<&[&str]> = sets.iter().map(|c| &c[..]).collect();
    let out = raw(&server, &pipeline(&sets));
    assert_eq!(out, "+OK\r\n".repeat(33));
    // One write of 1 kB arrives in one read: one run, one record (two if
    // the kernel split it).
    let records = node.records.load(Ordering::SeqCst);
    assert!((1..=2).contains(&records), "{records} records for 32 SETs");
    let mut c = client(&server);
    let v: Vec<String> = redis::cmd("MGET").arg(&keys).query(&mut c).unwrap();
    assert_eq!(v, vec!["v".to_string(); 32]);
}

#[test]
fn a_refused_write_in_a_run_fails_alone_and_a_read_sees_the_run() {
    let node = FakeNode::new();
    let server = start(&node, 10);
    let out = raw(
        &server,
        &pipeline(&[
            &["SET", "a", "1"],
            &["SET", "s", "abc"],
            &["INCR", "s"],
            &["INCR", "a"],
            &["SET", "b", "2"],
            &["SET", "b", "3", "NX"],
            &["GET", "b"],
        ]),
    );
    assert_eq!(
        out,
        "+OK\r\n+OK\r\n-ERR value is not an integer or out of range\r\n:2\r\n\
         +OK\r\n$-1\r\n$1\r\n2\r\n+OK\r\n"
    );
    // Runs of one record type: SET SET | INCR INCR | SET SET, then GET.
    assert_eq!(node.records.load(Ordering::SeqCst), 3);
}

#[test]
fn a_run_the_wal_refuses_fails_every_write_that_logged() {
    let node = FakeNode::new();
    let server = start(&node, 10);
    let mut c = client(&server);
    let _: () = redis::cmd("SET").arg("x").arg("1").query(&mut c).unwrap();
    node.fail.store(true, Ordering::SeqCst);
    let out = raw(
        &server,
        &pipeline(&[
            &["SET", "a", "1"],
            &["SET", "x", "2", "NX"],
            &["SET", "c", "3"],
        ]),
    );
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert!(lines[0].starts_with("-ERR WAL write failed"), "{out}");
    assert_eq!(lines[1], "$-1", "{out}");
    assert!(lines[2].starts_with("-ERR WAL write failed"), "{out}");
    assert_eq!(lines[3], "+OK", "{out}");
    node.fail.store(false, Ordering::SeqCst);
    let v: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&["a", "x", "c"])
        .query(&mut c)
        .unwrap();
    assert_eq!(v, vec![None, Some("1".to_string()), None]);
}

#[test]
fn commands_behave_like_redis() {
    let node = FakeNode::new();
    let server = start(&node, 100);
    let mut c = client(&server);
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
    let _: () = redis::cmd("SET").arg("a").arg("1").query(&mut c).unwrap();
    let v: String = redis::cmd("GET").arg("a").query(&mut c).unwrap();
    assert_eq!(v, "1");
    let n: i64 = redis::cmd("INCR").arg("a").query(&mut c).unwrap();
    assert_eq!(n, 2);
    let n: i64 = redis::cmd("DECRBY").arg("a").arg(5).query(&mut c).unwrap();
    assert_eq!(n, -3);
    let _: () = redis::cmd("MSET")
        .arg("b")
        .arg("x")
        .arg("c")
        .arg("y")
        .query(&mut c)
        .unwrap();
    let vals: Vec<Option<String>> = redis::cmd("MGET")
        .arg("a")
        .arg("b")
        .arg("nope")
        .query(&mut c)
        .unwrap();
    assert_eq!(vals, vec![Some("-3".into()), Some("x".into()), None]);
    let n: i64 = redis::cmd("EXISTS")
        .arg("a")
        .arg("b")
        .arg("nope")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 2);
    let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 3);
    let n: i64 = redis::cmd("DEL")
        .arg("a")
        .arg("nope")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    let v: Option<String> = redis::cmd("GET").arg("a").query(&mut c).unwrap();
    assert_eq!(v, None);
    let r: Option<String> = redis::cmd("SET")
        .arg("b")
        .arg("z")
        .arg("NX")
        .query(&mut c)
        .unwrap();
    assert_eq!(r, None);
    let e = redis::cmd("INCR")
        .arg("b")
        .query::<i64>(&mut c)
        .unwrap_err();
    assert!(e.to_string().contains("not an integer"), "{e}");
    let e = redis::cmd("GET").query::<String>(&mut c).unwrap_err();
    assert!(e.to_string().contains("wrong number of arguments"), "{e}");
    let e = redis::cmd("FROB")
        .arg("x")
        .query::<String>(&mut c)
        .unwrap_err();
    assert!(e.to_string().contains("unknown command"), "{e}");
    let info: String = redis::cmd("INFO").query(&mut c).unwrap();
    assert!(info.contains("# Replication\r\nrole:master"), "{info}");
    assert!(info.contains("connected_clients:1"), "{info}");
    let cfg: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query(&mut c)
        .unwrap();
    assert_eq!(cfg, vec!["port".to_string(), "6380".to_string()]);
    let cfg: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query(&mut c)
        .unwrap();
    assert!(cfg.is_empty());
    let e = redis::cmd("CONFIG")
        .arg("SET")
        .arg("synchronous_commit")
        .arg("sometimes")
        .query::<String>(&mut c)
        .unwrap_err();
    assert!(e.to_string().contains("synchronous_commit"), "{e}");
}

#[test]
fn writes_are_invisible_and_unacknowledged_until_durable() {
    let node = FakeNode::new();
    let server = start(&node, 100);
    let mut reader = client(&server);
    node.set_durable(false);
    let addr = server.local_addr();
    let writer = std::thread::spawn(move || {
        let mut c = redis::Client::open(format!("redis://{addr}/"))
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query::<String>(&mut c)
            .unwrap()
    });
    // The write is applied (its LSN assigned) but not durable.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.lsn.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let v: Option<String> = redis::cmd("GET").arg("k").query(&mut reader).unwrap();
    assert_eq!(v, None, "a write was readable before it was durable");
    assert!(
        !writer.is_finished(),
        "a write was acknowledged before it was durable"
    );
    node.set_durable(true);
    assert_eq!(writer.join().unwrap(), "OK");
    let v: Option<String> = redis::cmd("GET").arg("k").query(&mut reader).unwrap();
    assert_eq!(v.as_deref(), Some("v"));
}

#[test]
fn a_failed_flush_is_never_acknowledged() {
    let node = FakeNode::new();
    let server = start(&node, 100);
    node.set_durable(false);
    let addr = server.local_addr();
    let writer = std::thread::spawn(move || {
        let mut c = redis::Client::open(format!("redis://{addr}/"))
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("SET").arg("k").arg("v").query::<String>(&mut c)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.lsn.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    node.fail.store(true, Ordering::SeqCst);
    let e = writer.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("WAL write failed"), "{e}");
    // Later writes are refused with the same clear error.
    let mut c = client(&server);
    let e = redis::cmd("SET")
        .arg("x")
        .arg("y")
        .query::<String>(&mut c)
        .unwrap_err();
    assert!(e.to_string().contains("refuses writes"), "{e}");
    // Reads still work.
    let v: Option<String> = redis::cmd("GET").arg("k").query(&mut c).unwrap();
    assert_eq!(v, None);
}

#[test]
fn standby_refuses_writes_like_a_redis_replica() {
    let node = FakeNode::new();
    *node.role.lock().unwrap() = Role::Standby;
    let server = start(&node, 100);
    let mut c = client(&server);
    let e = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<String>(&mut c)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("You can't write against a read only replica"),
        "{e}"
    );
    assert_eq!(
        raw(&server, b"SET k v\r\nQUIT\r\n"),
        "-READONLY You can't write against a read only replica.\r\n+OK\r\n"
    );
}

#[test]
fn bad_input_gets_an_error_and_others_keep_being_served() {
    let node = FakeNode::new();
    let server = start(&node, 100);
    let mut good = client(&server);
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut good)
        .unwrap();
    assert_eq!(
        raw(&server, b"*1\r\n$99999999999\r\n"),
        "-ERR Protocol error: invalid bulk length\r\n"
    );
    assert_eq!(
        raw(&server, b"*2\r\n:1\r\n"),
        "-ERR Protocol error: expected '$', got ':'\r\n"
    );
    assert!(raw(&server, b"*1\r\n$1\r\nabc\r\n").starts_with("-ERR Protocol error"));
    // Inline commands and pipelines work; a pipeline's replies keep their order.
    assert_eq!(
        raw(&server, b"PING\r\nECHO hi\r\nGET k\r\nQUIT\r\n"),
        "+PONG\r\n$2\r\nhi\r\n$1\r\nv\r\n+OK\r\n"
    );
    let v: String = redis::cmd("GET").arg("k").query(&mut good).unwrap();
    assert_eq!(v, "v");
}

#[test]
fn connections_are_limited() {
    let node = FakeNode::new();
    let server = start(&node, 2);
    let _a = client(&server);
    let _b = client(&server);
    // Wait until both are counted, then the third is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats.connected_clients.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        raw(&server, b"PING\r\n"),
        "-ERR max number of clients reached\r\n"
    );
}

#[test]
fn shutdown_finishes_in_flight_commits() {
    let node = FakeNode::new();
    let mut server = start(&node, 100);
    node.set_durable(false);
    let addr = server.local_addr();
    let writer = std::thread::spawn(move || {
        let mut c = redis::Client::open(format!("redis://{addr}/"))
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("SET").arg("k").arg("v").query::<String>(&mut c)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.lsn.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let n2 = node.clone();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        n2.set_durable(true);
    });
    server.shutdown();
    release.join().unwrap();
    assert_eq!(writer.join().unwrap().unwrap(), "OK");
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() || raw_closed(addr));
}

/// After shutdown the port may still accept briefly on some kernels; if it
/// does, the connection must be closed without service.
fn raw_closed(addr: std::net::SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = s.write_all(b"PING\r\n");
    let mut b = [0u8; 16];
    !matches!(s.read(&mut b), Ok(n) if n > 0)
}

fn query<T: redis::FromRedisValue>(c: &mut redis::Connection, line: &str) -> redis::RedisResult<T> {
    let mut cmd = redis::Cmd::new();
    for w in line.split(' ') {
        cmd.arg(w);
    }
    cmd.query(c)
}

#[test]
fn keys_type_strlen_and_hello_behave_like_redis() {
    let node = FakeNode::new();
    let server = start(&node, 100);
    let mut c = client(&server);
    let _: () = query(&mut c, "MSET user:1 alice user:2 bob user:10 carol other x").unwrap();
    let mut keys: Vec<String> = query(&mut c, "KEYS user:?").unwrap();
    keys.sort();
    assert_eq!(keys, ["user:1", "user:2"]);
    let keys: Vec<String> = query(&mut c, "KEYS *").unwrap();
    assert_eq!(keys, ["other", "user:1", "user:10", "user:2"], "key order");
    let keys: Vec<String> = query(&mut c, "KEYS other").unwrap();
    assert_eq!(keys, ["other"]);
    let keys: Vec<String> = query(&mut c, "KEYS nope").unwrap();
    assert!(keys.is_empty());
    let t: String = query(&mut c, "TYPE user:1").unwrap();
    assert_eq!(t, "string");
    let t: String = query(&mut c, "TYPE nope").unwrap();
    assert_eq!(t, "none");
    assert_eq!(query::<i64>(&mut c, "STRLEN user:10").unwrap(), 5);
    assert_eq!(query::<i64>(&mut c, "STRLEN nope").unwrap(), 0);
    let hello: Vec<redis::Value> = query(&mut c, "HELLO 2 SETNAME app").unwrap();
    let fields: Vec<String> = hello
        .iter()
        .step_by(2)
        .map(|v| redis::from_redis_value(v).unwrap())
        .collect();
    assert_eq!(
        fields,
        ["server", "version", "proto", "id", "mode", "role", "modules"]
    );
    assert_eq!(hello[5], redis::Value::Int(2));
    assert_eq!(query::<String>(&mut c, "CLIENT GETNAME").unwrap(), "app");
    let e = query::<String>(&mut c, "HELLO 4").unwrap_err();
    assert_eq!(e.code(), Some("NOPROTO"), "{e}");
    let hello: redis::Value = query(&mut c, "HELLO 3").unwrap();
    let redis::Value::Map(pairs) = hello else {
        panic!("HELLO 3 answers a RESP3 map: {hello:?}")
    };
    assert_eq!(
        pairs[2],
        (
            redis::Value::BulkString(b"proto".to_vec()),
            redis::Value::Int(3)
        )
    );
    let e = query::<String>(&mut c, "HELLO 2 AUTH bob pw").unwrap_err();
    assert_eq!(e.code(), Some("WRONGPASS"), "{e}");
}

/// Scan with `count` from cursor 0 to the end, running `between` after
/// each call; returns every key returned, duplicates included.
fn scan_all(c: &mut redis::Connection, args: &str, mut between: impl FnMut()) -> Vec<String> {
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    let mut calls = 0;
    loop {
        let (next, page): (u64, Vec<String>) = query(c, &format!("SCAN {cursor} {args}")).unwrap();
        keys.extend(page);
        calls += 1;
        assert!(calls < 100_000, "the scan does not end");
        if next == 0 {
            return keys;
        }
        cursor = next;
        between();
    }
}

#[test]
fn scan_returns_every_key_present_throughout_while_others_come_and_go() {
    let node = FakeNode::new();
    let server = start(&node, 100);
    let mut c = client(&server);
    let mut other = client(&server);
    // Stable keys, interleaved in key order with keys that change.
    for chunk in (0..3000).collect::<Vec<_>>().chunks(500) {
        let mut cmd = redis::cmd("MSET");
        for i in chunk {
            cmd.arg(format!("k{i:05}"))
                .arg("v")
                .arg(format!("k{i:05}-gone"))
                .arg("v");
        }
        let _: () = cmd.query(&mut c).unwrap();
    }
    let mut step = 0;
    let seen = scan_all(&mut c, "COUNT 37", || {
        // Delete keys ahead of and behind the scan, add new ones anywhere.
        step += 1;
        let del = format!(
            "DEL k{:05}-gone k{:05}-gone",
            step * 7 % 3000,
            2999 - step % 3000
        );
        let _: i64 = query(&mut other, &del).unwrap();
        let _: () = query(&mut other, &format!("SET k{:05}-new v", step * 13 % 3000)).unwrap();
    });
    let mut unique: Vec<&String> = seen.iter().collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "a key came twice without a retry");
    for i in 0..3000 {
        let k = format!("k{i:05}");
        assert!(
            unique.binary_search(&&k).is_ok(),
            "{k} was present throughout and not returned"
        );
    }
    let matched = scan_all(&mut c, "MATCH k0012* COUNT 3", || {});
    assert!(
        matched.iter().all(|k| k.starts_with("k0012")),
        "{matched:?}"
    );
    assert!(
        (0..10).all(|i| matched.contains(&format!("k0012{i}"))),
        "{matched:?}"
    );
    assert!(scan_all(&mut c, "TYPE hash", || {}).is_empty());
    // Without changes, a scan returns exactly the keys KEYS lists.
    let mut all = scan_all(&mut c, "TYPE string COUNT 10000", || {});
    all.sort();
    let keys: Vec<String> = query(&mut c, "KEYS *").unwrap();
    assert_eq!(all, keys);
}

#[test]
fn an_unknown_scan_cursor_is_an_error_not_a_restart() {
    let node = FakeNode::new();
    let server = start(&node, 100);
    let mut c = client(&server);
    let e = query::<(u64, Vec<String>)>(&mut c, "SCAN 12345").unwrap_err();
    assert!(e.to_string().contains("unknown SCAN cursor 12345"), "{e}");
    let e = query::<(u64, Vec<String>)>(&mut c, "SCAN abc").unwrap_err();
    assert!(e.to_string().contains("invalid cursor"), "{e}");
}

#[test]
fn reads_are_loading_while_recovering() {
    let node = FakeNode::new();
    *node.role.lock().unwrap() = Role::Recovering;
    let server = start(&node, 100);
    let mut c = client(&server);
    for line in ["GET k", "KEYS *", "SCAN 0", "TYPE k", "STRLEN k", "DBSIZE"] {
        let e = query::<redis::Value>(&mut c, line).unwrap_err();
        assert_eq!(e.code(), Some("LOADING"), "{line}: {e}");
    }
    let pong: String = query(&mut c, "PING").unwrap();
    assert_eq!(pong, "PONG");
    let hello: Vec<redis::Value> = query(&mut c, "HELLO 2").unwrap();
    assert_eq!(hello[11], redis::Value::BulkString(b"replica".to_vec()));
    // Arity is checked first, as in Redis.
    let e = query::<redis::Value>(&mut c, "GET").unwrap_err();
    assert!(e.to_string().contains("wrong number of arguments"), "{e}");
}
