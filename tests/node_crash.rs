//! A durable primary: 32 concurrent clients, SIGKILL mid-load, restart; every
//! acknowledged write is there and no value that was never written appears.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::node::{init_datadir, TestNode};
use support::wait_for;

const CLIENTS: usize = 32;
const KEYS_PER_CLIENT: u64 = 20;
/// Bound on the load: each client stops after this many writes or when told.
const MAX_WRITES_PER_CLIENT: u64 = 20_000;

/// What one client did: per key, the highest acknowledged and attempted write.
#[derive(Default)]
struct Ledger {
    acked: HashMap<String, u64>,
    attempted: HashMap<String, u64>,
}

fn client_loop(url: String, id: usize, stop: Arc<AtomicBool>) -> Ledger {
    let mut ledger = Ledger::default();
    let Ok(client) = redis::Client::open(url) else {
        return ledger;
    };
    let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(5)) else {
        return ledger;
    };
    let _ = con.set_read_timeout(Some(Duration::from_secs(10)));
    for i in 1..=MAX_WRITES_PER_CLIENT {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("c{id}:k{}", i % KEYS_PER_CLIENT);
        ledger.attempted.insert(key.clone(), i);
        match redis::cmd("SET").arg(&key).arg(i).query::<String>(&mut con) {
            Ok(ok) if ok == "OK" => {
                ledger.acked.insert(key, i);
            }
            _ => break, // the node died: this write is unknown, not acknowledged
        }
    }
    ledger
}

#[test]
fn every_acknowledged_write_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    // A short checkpoint interval makes crashes land during checkpoints too.
    let mut node = TestNode::start(&datadir, &["checkpoint_timeout=1s"]);
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (url, stop) = (node.url(), stop.clone());
            std::thread::spawn(move || client_loop(url, id, stop))
        })
        .collect();
    // Let the load run, then crash the node in the middle of it.
    let started = Instant::now();
    wait_for(
        "some writes to be acknowledged",
        Duration::from_secs(30),
        || {
            let n: u64 = node
                .info_field("persistence", "wal_records")?
                .parse()
                .ok()?;
            (n > 3000 && started.elapsed() > Duration::from_millis(1500)).then_some(())
        },
    );
    node.kill9();
    stop.store(true, Ordering::Relaxed);
    let ledgers: Vec<Ledger> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let acked_total: usize = ledgers.iter().map(|l| l.acked.len()).sum();
    assert!(
        acked_total > 0,
        "no write was acknowledged before the crash"
    );

    node.restart();
    let mut con = node.client();
    for (id, ledger) in ledgers.iter().enumerate() {
        for k in 0..KEYS_PER_CLIENT {
            let key = format!("c{id}:k{k}");
            let value: Option<u64> = redis::cmd("GET").arg(&key).query(&mut con).unwrap();
            let acked = ledger.acked.get(&key).copied();
            let attempted = ledger.attempted.get(&key).copied();
            match (value, acked) {
                (None, None) => {}
                (None, Some(a)) => panic!("{key}: acknowledged write {a} is lost"),
                (Some(v), _) => {
                    assert_eq!(
                        v % KEYS_PER_CLIENT,
                        k,
                        "{key} holds {v}, a value never written to it"
                    );
                    assert!(
                        Some(v) <= attempted,
                        "{key} holds {v}, beyond anything written ({attempted:?})"
                    );
                    if let Some(a) = acked {
                        assert!(v >= a, "{key} holds {v}, older than the acknowledged {a}");
                    }
                }
            }
        }
    }
    let log = node.log_text();
    assert!(
        log.contains("not properly shut down"),
        "restart did not run crash recovery:\n{log}"
    );
    // A clean stop after recovery exits 0.
    assert!(node.stop().success());
}
