//! The front end against a fake node: commands, limits, errors, and the rule
//! that no client sees or is told "OK" for a write before its level is met.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::*;

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
}

fn start(node: &Arc<FakeNode>, max_connections: u32) -> Server {
    Server::start(
        "127.0.0.1:0".parse().unwrap(),
        node.clone(),
        ServerSettings {
            max_connections,
            log_connections: true,
            log_disconnections: true,
            max_bulk_len: 1 << 20,
            default_synchronous_commit: SynchronousCommit::On,
        },
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
