//! The promise of synchronous replication: under load from many clients with
//! synchronous_commit = on, the primary dies (kill -9) or the standby is
//! promoted, and every write a client was told "OK" for is on the promoted
//! node — whatever state its recovery machine was in when promoted.

mod support;

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::cluster::*;
use support::node::{init_datadir, walrep, TestNode};
use support::wait_for;

/// A primary whose commits wait for standby `s1`, and `s1` streaming.
struct Pair {
    _tmp: tempfile::TempDir,
    primary: TestNode,
    standby: TestNode,
}

fn pair(standby_extra: &[&str]) -> Pair {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    fs::create_dir(&archive).unwrap();
    let dir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", SEG_1MB]);
    let mut settings = archive_settings(&archive);
    settings.push("synchronous_standby_names=FIRST 1 (s1)".into());
    settings.push("synchronous_commit=on".into());
    let refs: Vec<&str> = settings.iter().map(String::as_str).collect();
    let primary = TestNode::start(&dir, &refs);
    let sdir = basebackup(&primary, tmp.path(), "standby", "s1");
    let mut s = vec![
        restore_setting(&archive),
        "wal_retrieve_retry_interval=200ms".to_string(),
    ];
    s.extend(standby_extra.iter().map(|x| x.to_string()));
    let refs: Vec<&str> = s.iter().map(String::as_str).collect();
    let standby = TestNode::start(&sdir, &refs);
    wait_state(&standby, "Streaming");
    wait_for(
        "s1 to be the synchronous standby",
        Duration::from_secs(30),
        || {
            primary
                .info("replication")
                .contains("sync_state=sync")
                .then_some(())
        },
    );
    Pair {
        _tmp: tmp,
        primary,
        standby,
    }
}

/// Writers that record what they were told "OK" for.
struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<HashMap<String, u64>>>,
}

fn start_load(node: &TestNode, clients: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..clients)
        .map(|c| {
            let url = node.url();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut acked = HashMap::new();
                let Ok(client) = redis::Client::open(url) else {
                    return acked;
                };
                let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(5)) else {
                    return acked;
                };
                // A write that does not complete within this is unknown, not acknowledged.
                let _ = con.set_read_timeout(Some(Duration::from_secs(3)));
                for i in 0..100_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("c{c}:k{}", i % 50);
                    match redis::cmd("SET").arg(&key).arg(i).query::<String>(&mut con) {
                        Ok(ok) if ok == "OK" => {
                            acked.insert(key, i);
                        }
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    Load { stop, handles }
}

impl Load {
    fn finish(self) -> Vec<HashMap<String, u64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    }
}

/// Every acknowledged write is on `node`, with a value at least as new.
fn check_acknowledged(node: &TestNode, acked: &[HashMap<String, u64>]) -> usize {
    let mut c = node.client();
    let mut n = 0;
    for per_client in acked {
        for (key, &i) in per_client {
            let v: Option<u64> = redis::cmd("GET").arg(key).query(&mut c).unwrap();
            let v = v.unwrap_or_else(|| {
                panic!("acknowledged write {key}={i} is missing after failover")
            });
            assert!(
                v >= i,
                "{key} = {v} on the promoted node, but {i} was acknowledged"
            );
            n += 1;
        }
    }
    n
}

fn promote(node: &TestNode) {
    let (ok, out, err) = walrep(&["promote", node.datadir.to_str().unwrap()]);
    assert!(ok, "walrep promote failed: {out}{err}\n{}", node.log_text());
}

fn wait_writes(node: &TestNode, at_least: u64) {
    let start: u64 = node
        .info_field("persistence", "wal_records")
        .unwrap()
        .parse()
        .unwrap();
    wait_for("writes under load", Duration::from_secs(60), || {
        let n: u64 = node
            .info_field("persistence", "wal_records")?
            .parse()
            .ok()?;
        (n >= start + at_least).then_some(())
    });
}

#[test]
fn promote_in_streaming_under_load_keeps_every_acknowledged_write() {
    let mut p = pair(&[]);
    let load = start_load(&p.primary, 16);
    wait_writes(&p.primary, 500);
    assert_eq!(
        p.standby
            .info_field("replication", "recovery_state")
            .as_deref(),
        Some("Streaming")
    );
    promote(&p.standby);
    // The old primary's commits can no longer be confirmed; its clients time out.
    let acked = load.finish();
    p.primary.kill9();
    let n = check_acknowledged(&p.standby, &acked);
    assert!(n > 0);
    assert!(
        trace(&p.standby).contains("\"from\":\"Streaming\",\"to\":\"Promoting\""),
        "not promoted from Streaming"
    );
}

#[test]
fn promote_in_retrying_archive_after_the_primary_died() {
    // A long retry wait keeps the machine in RetryingArchive between its
    // attempts, so the promotion lands there however slow the host is (with
    // the pair's 200 ms it could land in the next attempt); the promotion
    // must cut that wait short.
    let mut p = pair(&["wal_retrieve_retry_interval=30s"]);
    let load = start_load(&p.primary, 16);
    wait_writes(&p.primary, 500);
    p.primary.kill9();
    let acked = load.finish();
    wait_state(&p.standby, "RetryingArchive");
    promote(&p.standby);
    check_acknowledged(&p.standby, &acked);
    assert!(
        trace(&p.standby).contains("\"from\":\"RetryingArchive\",\"to\":\"Promoting\""),
        "not promoted from RetryingArchive"
    );
}

#[test]
fn promote_in_archive_recovery_after_the_primary_died() {
    // A slow archive keeps the machine in ArchiveRecovery most of the time.
    let slow = "restore_command=sleep 0.5; exit 1";
    let mut p = pair(&[slow]);
    let load = start_load(&p.primary, 16);
    wait_writes(&p.primary, 500);
    p.primary.kill9();
    let acked = load.finish();
    wait_state(&p.standby, "ArchiveRecovery");
    promote(&p.standby);
    check_acknowledged(&p.standby, &acked);
    assert!(
        trace(&p.standby).contains("\"from\":\"ArchiveRecovery\",\"to\":\"Promoting\""),
        "not promoted from ArchiveRecovery"
    );
}

/// 20 random moments (seeded, printed): 32 clients, kill -9, promote, check.
#[test]
fn every_acknowledged_write_survives_failover_at_random_moments() {
    let moments: u64 = std::env::var("FAILOVER_MOMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("FAILOVER_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ std::process::id() as u64
        });
    eprintln!("FAILOVER_SEED={seed}");
    let mut rng = seed;
    let mut total = 0;
    for round in 0..moments {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let after_ms = 100 + (rng >> 33) % 1400;
        let mut p = pair(&[]);
        let load = start_load(&p.primary, 32);
        std::thread::sleep(Duration::from_millis(after_ms));
        p.primary.kill9();
        let acked = load.finish();
        promote(&p.standby);
        let n = check_acknowledged(&p.standby, &acked);
        eprintln!("round {round}: killed after {after_ms} ms, {n} acknowledged keys all present");
        total += n;
    }
    assert!(total > 0, "no write was ever acknowledged");
}
