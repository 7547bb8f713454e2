//! Crash recovery at scale: more than a million records of WAL since the
//! last checkpoint, `kill -9` while pipelined writers are still going, a
//! restart, and every acknowledged key read back with its value (keys of
//! the pipelines cut off by the kill may or may not be there, but never
//! with a value nobody wrote). Half the writers send `SET ... GET`, one
//! record per command; the other half plain SETs, which a pipeline packs
//! many to a record: redo goes through both kinds. How long the restart took is printed: a
//! benchmark figure (`walrep bench --scenario restart`), not an assertion.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::node::{init_datadir, TestNode};
use support::wait_for;

const WRITERS: u64 = 4;
/// Records of WAL the crash leaves behind at least (from the writers of
/// one record per command alone).
const RECORDS: u64 = 1_000_000;
/// Commands per pipeline.
const BATCH: u64 = 2000;
/// Bound on each writer's load.
const MAX_PER_WRITER: u64 = 800_000;

/// Whether writer `w` sends `SET key value GET` (a command whose reply
/// depends on the key, so it is one record of its own) or a plain SET.
fn one_record_each(w: u64) -> bool {
    w % 2 == 0
}

fn key(writer: u64, i: u64) -> String {
    format!("w{writer}:{i}")
}

fn value(writer: u64, i: u64) -> String {
    format!("v{writer}.{i}")
}

/// Pipelines of SETs until told to stop or the node dies; returns how many
/// of this writer's keys (0..n) were acknowledged. `acked_records` counts
/// the acknowledged commands that were a record each.
fn writer(url: String, w: u64, acked_records: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> u64 {
    let mut con = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    con.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut acked = 0;
    while acked < MAX_PER_WRITER && !stop.load(Ordering::Relaxed) {
        let mut pipe = redis::pipe();
        for i in acked..acked + BATCH {
            pipe.cmd("SET").arg(key(w, i)).arg(value(w, i));
            if one_record_each(w) {
                pipe.arg("GET");
            }
        }
        // Each key is new: a plain SET says OK, SET ... GET the old value,
        // none.
        let ok = |r: &Option<String>| match one_record_each(w) {
            true => r.is_none(),
            false => r.as_deref() == Some("OK"),
        };
        match pipe.query::<Vec<Option<String>>>(&mut con) {
            Ok(replies) if replies.len() as u64 == BATCH && replies.iter().all(ok) => {
                acked += BATCH;
                if one_record_each(w) {
                    acked_records.fetch_add(BATCH, Ordering::Relaxed);
                }
            }
            // The node died: this pipeline is unknown, not acknowledged.
            _ => break,
        }
    }
    acked
}

#[test]
fn every_acknowledged_key_survives_kill_9_with_a_million_records_to_redo() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &[]);
    // No checkpoint before the crash: all of it is redone.
    let mut node = TestNode::start(
        &datadir,
        &[
            "synchronous_commit=local",
            "checkpoint_timeout=1h",
            "max_wal_size=8GB",
        ],
    );
    let acked_records = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (url, acked, stop) = (node.url(), acked_records.clone(), stop.clone());
            std::thread::spawn(move || writer(url, w, acked, stop))
        })
        .collect();
    wait_for(
        "a million acknowledged writes of one record each",
        Duration::from_secs(180),
        || (acked_records.load(Ordering::Relaxed) > RECORDS).then_some(()),
    );
    // The writers are still sending: the kill cuts pipelines off.
    node.kill9();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let one_each: u64 = (0..WRITERS)
        .filter(|&w| one_record_each(w))
        .map(|w| acked[w as usize])
        .sum();
    assert!(one_each > RECORDS, "acknowledged: {acked:?}");

    let started = Instant::now();
    node.restart();
    let restart = started.elapsed();
    let log = node.log_text();
    let redo = log
        .lines()
        .rev()
        .find(|l| l.contains("redo done at"))
        .unwrap_or_else(|| panic!("no \"redo done\" line in the log:\n{log}"));
    // "redo done at X; N records, ... ; C key changes (...)"
    let count = |part: usize| -> u64 {
        redo.split("; ")
            .nth(part)
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in part {part} of {redo:?}"))
    };
    let (records, changes) = (count(1), count(2));
    assert!(
        records >= RECORDS,
        "only {records} records redone: a checkpoint ran before the crash?\n{redo}"
    );
    let total: u64 = acked.iter().sum();
    assert!(
        changes >= total,
        "{changes} key changes redone, {total} acknowledged\n{redo}"
    );
    eprintln!("restart (spawn to PING) took {restart:?}; {redo}");

    let mut con = node.client();
    let mut checked = 0u64;
    for (w, &n) in acked.iter().enumerate() {
        let w = w as u64;
        // Every acknowledged key, plus the pipeline the kill cut off.
        for start in (0..n + BATCH).step_by(BATCH as usize) {
            let keys: Vec<String> = (start..start + BATCH).map(|i| key(w, i)).collect();
            let values: Vec<Option<String>> =
                redis::cmd("MGET").arg(&keys).query(&mut con).unwrap();
            for (i, v) in (start..).zip(values) {
                match v {
                    Some(v) => {
                        assert_eq!(v, value(w, i), "{} holds a value never written", key(w, i))
                    }
                    None => assert!(
                        i >= n,
                        "acknowledged {} is missing after the restart",
                        key(w, i)
                    ),
                }
                checked += u64::from(i < n);
            }
        }
    }
    assert_eq!(checked, acked.iter().sum::<u64>());
    node.stop();
}
