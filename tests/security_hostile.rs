//! The real binary under hostile clients while an honest one keeps
//! writing: random and mutated RESP and PostgreSQL frames, huge counts and
//! lengths, deep glob patterns, replies built from one large value many
//! times, slow-loris clients and thousands of idle connections on both
//! ports. The node must never exit, every honest write must be
//! acknowledged, and every acknowledged write must be there afterwards,
//! before and after a kill -9.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use support::node::{init_datadir, TestNode};
use support::wait_until;

/// How long the storm lasts (`WALREP_HOSTILE_SECONDS` for longer runs).
fn storm() -> Duration {
    let secs = std::env::var("WALREP_HOSTILE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    Duration::from_secs(secs)
}

/// Open a connection, send `bytes`, read a little of whatever comes back,
/// close. Every error is the node refusing, which is fine.
fn poke(port: u16, bytes: &[u8]) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 4096];
    let _ = s.read(&mut buf);
}

fn valid_requests(rng: &mut impl Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.gen_range(1..10) {
        let words: Vec<String> = match rng.gen_range(0..6) {
            0 => vec![
                "SET".into(),
                format!("x{}", rng.gen::<u16>()),
                "v".repeat(rng.gen_range(0..300)),
            ],
            1 => vec!["GET".into(), format!("x{}", rng.gen::<u16>())],
            2 => vec![
                "KEYS".into(),
                "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b".into(),
            ],
            3 => vec![
                "SCAN".into(),
                "0".into(),
                "COUNT".into(),
                "100000".into(),
                "MATCH".into(),
                "[[[[[[[[*".into(),
            ],
            4 => vec!["CONFIG".into(), "GET".into(), "*".into()],
            _ => vec!["APPEND".into(), "grow".into(), "z".repeat(4096)],
        };
        out.extend_from_slice(format!("*{}\r\n", words.len()).as_bytes());
        for w in words {
            out.extend_from_slice(format!("${}\r\n{w}\r\n", w.len()).as_bytes());
        }
    }
    out
}

/// Hostile Redis clients: random bytes, mutated requests, oversized
/// counts and lengths.
fn resp_attacker(
    port: u16,
    seed: u64,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let fixed: Vec<Vec<u8>> = vec![
            b"*1048577\r\n".to_vec(),
            b"*2\r\n$3\r\nGET\r\n$99999999999999\r\n".to_vec(),
            b"*-5\r\n*0\r\n$-1\r\n".to_vec(),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$536870912\r\nshort".to_vec(),
            format!("*2\r\n$4\r\nECHO\r\n${}\r\n", u64::MAX).into_bytes(),
            vec![b'A'; 70_000],
            b"WAIT 1 9223372036854775807\r\n".to_vec(),
            b"*3\r\n$4\r\nWAIT\r\n$1\r\n5\r\n$19\r\n9223372036854775807\r\n".to_vec(),
            b"HELLO 3\r\nHELLO 2 AUTH default x SETNAME a\r\nAUTH a b c d\r\n".to_vec(),
            b"SET k v EX 99999999999999999999\r\nSET k v PXAT -1\r\nINCRBY n 9223372036854775807\r\nINCRBY n 1\r\n".to_vec(),
        ];
        while !stop.load(Ordering::Relaxed) {
            let bytes = match rng.gen_range(0..4) {
                0 => {
                    let mut b = vec![0u8; rng.gen_range(1..4096)];
                    rng.fill_bytes(&mut b);
                    b
                }
                1 => {
                    let mut b = valid_requests(&mut rng);
                    for _ in 0..rng.gen_range(0..4) {
                        let i = rng.gen_range(0..b.len());
                        b[i] ^= 1 << rng.gen_range(0..8);
                    }
                    b
                }
                2 => valid_requests(&mut rng),
                _ => fixed[rng.gen_range(0..fixed.len())].clone(),
            };
            poke(port, &bytes);
            sent.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Hostile replication clients: random bytes, a startup packet followed by
/// garbage, impossible lengths, an SSLRequest followed by plain text.
fn pg_attacker(
    port: u16,
    seed: u64,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let startup = |params: &str| {
            let mut b = ((params.len() + 9) as u32).to_be_bytes().to_vec();
            b.extend_from_slice(&196_608u32.to_be_bytes());
            b.extend_from_slice(params.as_bytes());
            b.push(0);
            b
        };
        while !stop.load(Ordering::Relaxed) {
            let bytes = match rng.gen_range(0..5) {
                0 => {
                    let mut b = vec![0u8; rng.gen_range(1..2048)];
                    rng.fill_bytes(&mut b);
                    b
                }
                1 => {
                    let mut b = startup("user\0walrep\0replication\0true\0");
                    let mut junk = vec![0u8; rng.gen_range(1..512)];
                    rng.fill_bytes(&mut junk);
                    b.extend(junk);
                    b
                }
                2 => {
                    let mut b = startup("user\0walrep\0replication\0true\0");
                    b.extend_from_slice(b"Q\xff\xff\xff\xf0IDENTIFY_SYSTEM\0");
                    b
                }
                3 => {
                    let mut b = 8u32.to_be_bytes().to_vec();
                    b.extend_from_slice(&80_877_103u32.to_be_bytes());
                    b.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
                    b
                }
                _ => {
                    let mut b = startup("user\0walrep\0replication\0true\0");
                    let cmds = [
                        "START_REPLICATION PHYSICAL FFFFFFFF/FFFFFFFF TIMELINE 4294967295",
                        "TIMELINE_HISTORY 0",
                        "BASE_BACKUP (MAX_RATE 1, LABEL '\u{e9}')",
                        "CREATE_REPLICATION_SLOT \"\" PHYSICAL",
                        "SHOW \"",
                    ];
                    let q = cmds[rng.gen_range(0..cmds.len())];
                    b.push(b'Q');
                    b.extend_from_slice(&((q.len() + 5) as u32).to_be_bytes());
                    b.extend_from_slice(q.as_bytes());
                    b.push(0);
                    b
                }
            };
            poke(port, &bytes);
            sent.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Clients that send one byte of a request now and then, forever.
fn slow_loris(port: u16, n: usize, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let req = b"*3\r\n$3\r\nSET\r\n$4\r\nslow\r\n$100\r\n";
        let mut conns: Vec<TcpStream> = (0..n)
            .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
            .collect();
        let mut at = 0;
        while !stop.load(Ordering::Relaxed) {
            for c in &mut conns {
                let _ = c.write_all(&[req[at % req.len()]]);
            }
            at += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

#[test]
fn hostile_clients_neither_stop_the_node_nor_lose_an_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let mut node = TestNode::start(
        &datadir,
        &[
            "max_connections=5000",
            "timeout=3",
            "proto_max_bulk_len=1MB",
            "client_query_buffer_limit=4MB",
            "client_output_buffer_limit=4MB",
            "maxmemory_clients=256MB",
            "authentication_timeout=2s",
        ],
    );
    let pid = node.pid();
    let (port, rport) = (node.port, node.replication_port);
    let stop = Arc::new(AtomicBool::new(false));

    // A large value for the MGET-many-times attack.
    let mut c = node.client();
    let big = vec![b'B'; 900 << 10];
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(&big)
        .query(&mut c)
        .unwrap();

    // The honest client: every write acknowledged, every value remembered.
    let honest = {
        let stop = stop.clone();
        let mut c = node.client();
        std::thread::spawn(move || {
            let mut acked: Vec<(String, String)> = Vec::new();
            let mut slowest = Duration::ZERO;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 1_000_000 {
                let (k, v) = (format!("honest{}", i % 5000), format!("value-{i}"));
                let t0 = Instant::now();
                let r: redis::RedisResult<()> = redis::cmd("SET").arg(&k).arg(&v).query(&mut c);
                r.unwrap_or_else(|e| panic!("honest write {i} failed: {e}"));
                slowest = slowest.max(t0.elapsed());
                acked.push((k, v));
                i += 1;
            }
            (acked, slowest)
        })
    };

    // Thousands of idle connections on both ports.
    let idle_redis: Vec<TcpStream> = (0..2000)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    let idle_repl: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", rport)).ok())
        .collect();
    assert!(idle_redis.len() >= 1900 && idle_repl.len() >= 250);

    let sent = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    for seed in 0..3 {
        attackers.push(resp_attacker(port, seed, stop.clone(), sent.clone()));
    }
    for seed in 0..2 {
        attackers.push(pg_attacker(rport, 100 + seed, stop.clone(), sent.clone()));
    }
    attackers.push(slow_loris(port, 50, stop.clone()));
    // MGET of the large value many times, over and over.
    attackers.push({
        let stop = stop.clone();
        let mut c = node.client();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut mget = redis::cmd("MGET");
                for _ in 0..10_000 {
                    mget.arg("big");
                }
                let r = mget.query::<redis::Value>(&mut c);
                assert!(r.is_err(), "a 9 GB reply was built");
            }
        })
    });

    let end = Instant::now() + storm();
    while Instant::now() < end {
        assert!(
            !support::process::process_gone(pid),
            "the node exited during the storm:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    let (acked, slowest) = honest.join().unwrap();
    drop(idle_redis);
    drop(idle_repl);
    assert!(!support::process::process_gone(pid), "{}", node.log_text());
    let log = node.log_text();
    assert!(
        !log.contains("panicked"),
        "a thread of the node panicked:\n{log}"
    );
    assert!(
        acked.len() > 100,
        "only {} honest writes in the storm",
        acked.len()
    );
    assert!(sent.load(Ordering::Relaxed) > 100);
    eprintln!(
        "{} honest writes acknowledged (slowest {slowest:?}) among {} hostile connections",
        acked.len(),
        sent.load(Ordering::Relaxed)
    );

    // Every acknowledged write is there, now and after a crash.
    let expected: std::collections::HashMap<String, String> = acked.into_iter().collect();
    let check = |node: &TestNode| {
        let mut c = node.client();
        for (k, v) in &expected {
            let got: Option<String> = redis::cmd("GET").arg(k).query(&mut c).unwrap();
            assert_eq!(got.as_deref(), Some(v.as_str()), "{k}");
        }
    };
    check(&node);
    node.kill9();
    node.restart();
    check(&node);
    wait_until("the restarted node to answer", || {
        redis::cmd("PING")
            .query::<String>(&mut node.client())
            .is_ok()
    });
}
