//! Page clients cannot slow the node: connections that never send a
//! request, trickle one, or never read the answer hold a status worker for
//! a bounded time only; beyond the queue new connections get `503` at
//! once; and commits go on at full speed meanwhile.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::cluster::*;
use support::node::{init_datadir, TestNode};
use support::{free_port, wait_for};

/// `walrep::status::http::WORKERS + QUEUE`: more than this many idle
/// connections fill the server.
const CAPACITY: usize = walrep::status::http::WORKERS + walrep::status::http::QUEUE;

fn get(port: u16, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, text))
}

/// Time `n` SETs, one after the other.
fn time_writes(node: &TestNode, prefix: &str, n: usize) -> Duration {
    let mut c = node.client();
    let t0 = Instant::now();
    for i in 0..n {
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}{i}"))
            .arg(i)
            .query(&mut c)
            .unwrap();
    }
    t0.elapsed()
}

#[test]
fn hostile_page_clients_neither_block_the_page_for_long_nor_slow_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", SEG_1MB]);
    let port = free_port();
    let node = TestNode::start(&dir, &[&format!("status_port={port}")]);
    // The page's listener may come up a moment after the Redis port.
    wait_for("the status page", Duration::from_secs(30), || {
        matches!(get(port, "/", Duration::from_secs(10)), Ok((200, _))).then_some(())
    });
    let quiet = time_writes(&node, "quiet:", 2000);

    // Fill every worker and the queue with clients that send nothing,
    // plus some that trickle a request one byte at a time.
    let mut idle: Vec<TcpStream> = (0..CAPACITY + 8)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for s in idle.iter_mut().take(4) {
        s.write_all(b"GET / HT").unwrap();
    }
    // The ones beyond the capacity were told "busy" at once, and closed.
    let mut refused = 0;
    for s in idle.iter_mut().skip(CAPACITY) {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        refused += text.starts_with("HTTP/1.1 503") as usize;
    }
    assert!(
        refused >= 4,
        "only {refused} of 8 connections past the capacity got 503"
    );

    let busy = time_writes(&node, "busy:", 2000);
    eprintln!(
        "2000 writes: {quiet:?} with no page client, {busy:?} with {} hostile ones",
        idle.len()
    );
    // Commits do not wait on the page: the same work with the status
    // server swamped takes no more than a few times as long (the machine
    // is shared; the page's threads are only ever blocked on sockets).
    assert!(
        busy < quiet * 4 + Duration::from_secs(2),
        "writes slowed from {quiet:?} to {busy:?} by page clients"
    );

    // Within the request deadline the hostile connections are dropped and
    // an honest client is served again.
    let deadline = Instant::now()
        + walrep::status::http::REQUEST_DEADLINE
        + walrep::status::http::IO_TIMEOUT * 2
        + Duration::from_secs(10);
    loop {
        if let Ok((200, page)) = get(port, "/", Duration::from_secs(2)) {
            assert!(page.contains(">Primary</span>"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never recovered from idle clients"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The trickling and idle clients are closed by the server, each within
    // its own bound (a queued one may still be waiting for its turn when
    // the page is served again).
    let bound = walrep::status::http::REQUEST_DEADLINE + walrep::status::http::IO_TIMEOUT * 2;
    let mut closed = 0;
    for s in &mut idle {
        s.set_read_timeout(Some(bound)).unwrap();
        let mut buf = [0u8; 64];
        if s.read(&mut buf).is_ok() {
            closed += 1;
        }
    }
    assert_eq!(
        closed,
        idle.len(),
        "every hostile connection was ended by the server"
    );
}

#[test]
fn a_client_that_never_reads_its_answer_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", SEG_1MB]);
    let port = free_port();
    let node = TestNode::start(&dir, &[&format!("status_port={port}")]);
    // Many requests for the largest answer, never read: each worker's
    // write times out instead of waiting forever.
    let readers: Vec<TcpStream> = (0..walrep::status::http::WORKERS * 2)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            for _ in 0..50 {
                let _ = s.write_all(b"GET /machine.svg HTTP/1.1\r\nHost: x\r\n\r\n");
            }
            s
        })
        .collect();
    let t0 = Instant::now();
    let mut c = node.client();
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut c).unwrap();
    // Bounded by the node, not by the page's stuck writers (generous: the
    // machine is shared).
    assert!(t0.elapsed() < Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = get(port, "/status", Duration::from_secs(2)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page stayed blocked by non-readers"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(readers);
}
