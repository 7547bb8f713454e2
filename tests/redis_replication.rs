//! Transactions and expiry as a standby and a failover see them: a reader
//! of a standby never sees half of a MULTI/EXEC, never reads a key whose
//! expiry time has passed, and after the primary dies and the standby is
//! promoted, no expired key comes back, no unexpired one is lost, and the
//! new primary takes over expiring.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::cluster::{basebackup, wait_caught_up, wait_state};
use support::keyspace::cmd;
use support::node::{init_datadir, walrep, TestNode};
use support::wait_for;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A primary and a streaming standby `s1` (synchronous when `sync`).
fn pair(tmp: &std::path::Path, sync: bool) -> (TestNode, TestNode) {
    let dir = init_datadir(tmp, "primary", &["--wal-segment-size", "1MB"]);
    let settings: &[&str] = match sync {
        true => &[
            "synchronous_standby_names=FIRST 1 (s1)",
            "synchronous_commit=on",
        ],
        false => &[],
    };
    let primary = TestNode::start(&dir, settings);
    let sdir = basebackup(&primary, tmp, "standby", "s1");
    let standby = TestNode::start(&sdir, &[]);
    wait_state(&standby, "Streaming");
    if sync {
        wait_for("s1 to be synchronous", Duration::from_secs(30), || {
            primary
                .info("replication")
                .contains("sync_state=sync")
                .then_some(())
        });
    }
    (primary, standby)
}

/// Thousands of transactions each move an amount between two strings
/// and between two fields of a hash; readers of the standby always find
/// the same totals: with a read-only MULTI/EXEC across both, with one
/// MGET, with one HMGET.
#[test]
fn a_standby_reader_never_sees_half_a_transaction() {
    const TOTAL: i64 = 1_000_000;
    const TRANSACTIONS: usize = 3000;
    let tmp = tempfile::tempdir().unwrap();
    let (primary, standby) = pair(tmp.path(), false);
    let mut c = primary.client();
    let _: () = cmd(&mut c, &format!("MSET a {TOTAL} b 0"));
    let _: () = cmd(&mut c, &format!("HSET h x {TOTAL} y 0"));
    wait_caught_up(&primary, &standby);

    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (done, reads) = (done.clone(), reads.clone());
            let mut s = standby.client();
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let sums: Vec<i64> = match r {
                        0 => {
                            let (a, b, x, y): (i64, i64, i64, i64) = redis::pipe()
                                .atomic()
                                .get("a")
                                .get("b")
                                .hget("h", "x")
                                .hget("h", "y")
                                .query(&mut s)
                                .unwrap();
                            vec![a + b, x + y]
                        }
                        1 => {
                            let v: Vec<i64> =
                                redis::cmd("MGET").arg("a").arg("b").query(&mut s).unwrap();
                            vec![v.iter().sum()]
                        }
                        _ => {
                            let v: Vec<i64> = redis::cmd("HMGET")
                                .arg("h")
                                .arg("x")
                                .arg("y")
                                .query(&mut s)
                                .unwrap();
                            vec![v.iter().sum()]
                        }
                    };
                    assert!(
                        sums.iter().all(|&t| t == TOTAL),
                        "half a transaction: {sums:?}"
                    );
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut moved = 0i64;
    for i in 0..TRANSACTIONS {
        let n = (i % 97) as i64 + 1;
        let n = if i % 3 == 2 && moved >= n { -n } else { n };
        moved += n;
        let _: () = redis::pipe()
            .atomic()
            .decr("a", n)
            .ignore()
            .incr("b", n)
            .ignore()
            .cmd("HINCRBY")
            .arg("h")
            .arg("x")
            .arg(-n)
            .ignore()
            .cmd("HINCRBY")
            .arg("h")
            .arg("y")
            .arg(n)
            .ignore()
            .query(&mut c)
            .unwrap();
    }
    wait_caught_up(&primary, &standby);
    done.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let mut s = standby.client();
    let v: Vec<i64> = redis::cmd("MGET").arg("a").arg("b").query(&mut s).unwrap();
    assert_eq!(v, [TOTAL - moved, moved]);
    assert!(reads.load(Ordering::Relaxed) > 300, "readers ran alongside");
}

/// Keys with short TTLs under load, a synchronous standby read all along,
/// then kill -9 of the primary and promotion.
#[test]
fn expiry_holds_on_the_standby_and_through_failover() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut primary, standby) = pair(tmp.path(), true);
    let acked: Arc<Mutex<Vec<(String, String, i64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (acked, stop) = (acked.clone(), stop.clone());
            let mut c = primary.client();
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}:{i}");
                    let value = format!("v{i}");
                    let at = now_ms() + 100 + (i as i64 * 37) % 2900;
                    let r: redis::RedisResult<String> = match i % 3 {
                        0 => redis::cmd("SET")
                            .arg(&key)
                            .arg(&value)
                            .arg("PXAT")
                            .arg(at)
                            .query(&mut c),
                        1 => redis::pipe()
                            .atomic()
                            .set(&key, &value)
                            .ignore()
                            .cmd("PEXPIREAT")
                            .arg(&key)
                            .arg(at)
                            .ignore()
                            .query::<()>(&mut c)
                            .map(|_| "OK".into()),
                        _ => redis::pipe()
                            .atomic()
                            .rpush(&key, &value)
                            .ignore()
                            .cmd("PEXPIREAT")
                            .arg(&key)
                            .arg(at)
                            .ignore()
                            .query::<()>(&mut c)
                            .map(|_| "OK".into()),
                    };
                    match r {
                        Ok(_) => acked.lock().unwrap().push((key, value, at)),
                        Err(_) => break,
                    }
                    i += 1;
                }
            })
        })
        .collect();
    // The standby, read all along: nothing after its time.
    let served_late = Arc::new(AtomicU64::new(0));
    let checked = Arc::new(AtomicU64::new(0));
    let reader = {
        let (acked, stop, served_late, checked) = (
            acked.clone(),
            stop.clone(),
            served_late.clone(),
            checked.clone(),
        );
        let mut s = standby.client();
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let pick = {
                    let a = acked.lock().unwrap();
                    (!a.is_empty()).then(|| a[(n * 7919) % a.len()].clone())
                };
                n += 1;
                let Some((key, _, at)) = pick else { continue };
                let t0 = now_ms();
                let exists: i64 = redis::cmd("EXISTS").arg(&key).query(&mut s).unwrap();
                checked.fetch_add(1, Ordering::Relaxed);
                if exists == 1 && t0 >= at {
                    served_late.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // Load until enough writes are acknowledged (the disk sets the pace).
    wait_for("300 acknowledged writes", Duration::from_secs(120), || {
        (acked.lock().unwrap().len() >= 300).then_some(())
    });
    // The primary dies under load.
    primary.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    reader.join().unwrap();
    assert_eq!(
        served_late.load(Ordering::Relaxed),
        0,
        "the standby served expired keys"
    );
    assert!(checked.load(Ordering::Relaxed) > 100);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300, "{} writes", acked.len());

    // Until promoted, the standby deletes nothing on its own: once it has
    // replayed all it received (the primary's last deletions included),
    // its keys stay while their times pass. "All it received" only once
    // its link is down: until then, WAL the dead primary sent may still
    // wait in the socket, and its deletions would land after the count.
    wait_for(
        "the standby to lose its upstream and replay what it received",
        Duration::from_secs(30),
        || {
            let f = |name| standby.info_field("replication", name);
            let link = f("master_link_status")?;
            let (received, replayed) = (f("receive_lsn")?, f("replay_lsn")?);
            (link == "down" && received == replayed).then_some(())
        },
    );
    let keys_before: i64 = cmd(&mut standby.client(), "DBSIZE");
    let latest = acked.iter().map(|a| a.2).max().unwrap();
    wait_for("every TTL to pass", Duration::from_secs(10), || {
        (now_ms() > latest - 1500).then_some(())
    });
    assert_eq!(
        cmd::<i64>(&mut standby.client(), "DBSIZE"),
        keys_before,
        "a standby deleted keys"
    );
    assert_eq!(
        standby.info_field("stats", "expired_keys").as_deref(),
        Some("0")
    );

    let (ok, out, err) = walrep(&["promote", standby.datadir.to_str().unwrap()]);
    assert!(ok, "walrep promote failed: {out}{err}");
    let mut c = standby.client();
    wait_for(
        "the promoted node to accept writes",
        Duration::from_secs(30),
        || {
            redis::cmd("SET")
                .arg("probe")
                .arg(1)
                .query::<String>(&mut c)
                .ok()
        },
    );
    let (mut gone, mut kept) = (0, 0);
    for (key, value, at) in &acked {
        let t0 = now_ms();
        let got: Option<String> = match key.split(':').nth(1).map(|i| i.parse::<u64>().unwrap() % 3)
        {
            Some(2) => redis::cmd("LINDEX").arg(key).arg(0).query(&mut c).unwrap(),
            _ => redis::cmd("GET").arg(key).query(&mut c).unwrap(),
        };
        if t0 >= *at {
            assert_eq!(got, None, "{key} expired at {at} and came back at {t0}");
            gone += 1;
        } else if *at > now_ms() + 50 {
            assert_eq!(
                got.as_deref(),
                Some(value.as_str()),
                "{key} (expires at {at}) was lost"
            );
            kept += 1;
        }
    }
    assert!(gone > 0, "some keys expired ({kept} kept)");
    // The new primary expires what is left, in its background cycle.
    wait_for(
        "the new primary to delete every expired key",
        Duration::from_secs(30),
        || {
            let n: i64 = cmd(&mut c, "DBSIZE");
            (n == 1).then_some(())
        },
    );
    let expired: u64 = standby
        .info_field("stats", "expired_keys")
        .unwrap()
        .parse()
        .unwrap();
    assert!(expired > 0);
}
