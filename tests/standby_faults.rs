//! A fault proxy between the standby's walreceiver and the primary's
//! walsender: the link is cut, delayed and black-holed at random (seeded,
//! bounded) while the primary writes; once the link heals the standby
//! converges to the primary's data, having never applied anything twice or
//! out of order (the values are checked key by key).

mod support;

use std::fs;
use std::time::Duration;

use support::cluster::*;
use support::node::{init_datadir, TestNode};
use support::proxy::{Fault, FaultProxy};

#[test]
fn the_standby_converges_through_cuts_delays_and_black_holes() {
    let seed: u64 = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    eprintln!("FAULT_SEED={seed}");
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    fs::create_dir(&archive).unwrap();
    let pdir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", SEG_1MB]);
    let mut ps = archive_settings(&archive);
    ps.push("wal_sender_timeout=2s".into());
    let refs: Vec<&str> = ps.iter().map(String::as_str).collect();
    let primary = TestNode::start(&pdir, &refs);
    let sdir = basebackup(&primary, tmp.path(), "standby", "s1");
    let proxy = FaultProxy::start(primary.replication_port);
    let conninfo = format!(
        "primary_conninfo=host=127.0.0.1 port={} user=walrep application_name=s1",
        proxy.port
    );
    let standby = TestNode::start(
        &sdir,
        &[
            &conninfo,
            &restore_setting(&archive),
            "wal_retrieve_retry_interval=200ms",
            "wal_receiver_timeout=2s",
        ],
    );
    wait_state(&standby, "Streaming");

    let mut rng = seed;
    let mut next = || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        rng >> 33
    };
    let faults = [Fault::Cut, Fault::Delay, Fault::BlackHole, Fault::Pass];
    let mut c = primary.client();
    let mut written = 0usize;
    for round in 0..12 {
        let fault = faults[(next() % 4) as usize];
        proxy.set(fault);
        // Bounded load in each round: 300 writes, each key overwritten often.
        for i in 0..300 {
            let n = written + i;
            let _: () = redis::cmd("SET")
                .arg(format!("k:{}", n % 700))
                .arg(n)
                .query(&mut c)
                .unwrap();
        }
        written += 300;
        std::thread::sleep(Duration::from_millis(200 + next() % 800));
        eprintln!(
            "round {round}: {fault:?}, state {:?}",
            standby.info_field("replication", "recovery_state")
        );
    }
    proxy.set(Fault::Pass);
    wait_state(&standby, "Streaming");
    wait_caught_up(&primary, &standby);
    let keys: Vec<String> = (0..700).map(|k| format!("k:{k}")).collect();
    let on_primary: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut c).unwrap();
    let on_standby: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query(&mut standby.client())
        .unwrap();
    assert_eq!(
        on_standby, on_primary,
        "the standby did not converge to the primary's data"
    );
    let t = trace(&standby);
    assert!(
        t.matches("StreamLost").count() >= 1,
        "the faults never broke the stream:\n{t}"
    );
}
