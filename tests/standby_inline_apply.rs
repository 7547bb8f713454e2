//! The walreceiver's inline apply, through the real binary: an
//! asynchronous standby of a primary at `synchronous_commit = off` under
//! load gets the recovery machine's leave while streaming; a promotion
//! (and a shutdown) during the load withdraws it before anything else
//! happens, the withdrawal says how far the walreceiver applied itself,
//! and that is never past where recovery ended; what the standby serves,
//! during the load and once promoted or restarted, is a prefix of each
//! client's writes (nothing applied twice, out of order or past the
//! primary's WAL).
//!
//! walrep has no recovery target (other than the timeline),
//! `recovery_min_apply_delay` or replay pause: the leave's other
//! withdrawals (timeline ends, lost streams, reloads, held WAL) are
//! driven by the recovery machine's simulator and scenarios.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use support::cluster::{basebackup, trace, wait_state, SEG_1MB};
use support::node::{init_datadir, walrep, TestNode};
use support::wait_for;
use walrep::states::recovery::{Action, Event, Transition};
use walrep::Lsn;

const DEADLINE: Duration = Duration::from_secs(60);
/// Keys per client: client `c` writes `c{c}:k{i % KEYS}` = `i`, in order.
const KEYS: u64 = 50;

/// An asynchronous standby `s1` streaming from a primary at `off`.
fn pair(tmp: &std::path::Path) -> (TestNode, TestNode) {
    let dir = init_datadir(tmp, "primary", &["--wal-segment-size", SEG_1MB]);
    let primary = TestNode::start(&dir, &["synchronous_commit=off"]);
    let sdir = basebackup(&primary, tmp, "standby", "s1");
    let standby = TestNode::start(&sdir, &["wal_retrieve_retry_interval=200ms"]);
    wait_state(&standby, "Streaming");
    (primary, standby)
}

/// Clients writing their keys in order until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<u64>>,
}

fn start_load(node: &TestNode, clients: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..clients)
        .map(|c| {
            let url = node.url();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut written = 0;
                let Ok(mut con) = redis::Client::open(url)
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
                else {
                    return written;
                };
                let _ = con.set_read_timeout(Some(Duration::from_secs(3)));
                for i in 0..1_000_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("c{c}:k{}", i % KEYS);
                    match redis::cmd("SET").arg(&key).arg(i).query::<String>(&mut con) {
                        Ok(_) => written = i + 1,
                        Err(_) => break,
                    }
                }
                written
            })
        })
        .collect();
    Load { stop, handles }
}

impl Load {
    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    }
}

/// What `node` serves of client `c`'s keys is a prefix of its writes:
/// with `m` the newest value seen, each of the last `KEYS` writes up to
/// `m` is there with its own value. Returns `m + 1` (0: nothing seen).
fn check_prefix(node: &TestNode, c: usize) -> u64 {
    let mut con = node.client();
    let keys: Vec<String> = (0..KEYS).map(|k| format!("c{c}:k{k}")).collect();
    let values: Vec<Option<u64>> = redis::cmd("MGET").arg(&keys).query(&mut con).unwrap();
    let Some(m) = values.iter().flatten().copied().max() else {
        return 0;
    };
    for i in m.saturating_sub(KEYS - 1)..=m {
        assert_eq!(
            values[(i % KEYS) as usize],
            Some(i),
            "client {c}: newest value {m}, but key k{} is {:?}: not a prefix of the writes",
            i % KEYS,
            values[(i % KEYS) as usize]
        );
    }
    m + 1
}

/// The standby's recovery transitions, in order.
fn transitions(node: &TestNode) -> Vec<Transition> {
    trace(node)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The transition on `event`, which must withdraw a leave given before
/// as its first action; its index.
fn withdrawn_first(ts: &[Transition], event: &str) -> usize {
    let at = ts
        .iter()
        .position(|t| t.event.kind().to_string() == event)
        .unwrap_or_else(|| panic!("no {event} in the trace"));
    assert!(
        ts[..at].iter().any(|t| t
            .actions
            .iter()
            .any(|a| matches!(a, Action::AllowInlineApply { .. }))),
        "no inline leave given before {event}"
    );
    assert!(
        matches!(
            ts[at].actions.first(),
            Some(Action::WithdrawInlineApply { .. })
        ),
        "{event} did not withdraw the leave first: {}",
        ts[at]
    );
    at
}

/// How far the walreceiver applied itself, per the answer to the
/// withdrawal on `event`, handled before anything else queued.
fn withdrawal_after(ts: &[Transition], event: &str) -> Lsn {
    let at = withdrawn_first(ts, event);
    match &ts[at + 1].event {
        Event::InlineApplyWithdrawn { applied, .. } => *applied,
        _ => panic!(
            "{event} was followed by {}, not the withdrawal's answer",
            ts[at + 1]
        ),
    }
}

#[test]
fn a_promotion_under_load_withdraws_the_leave_first_and_nothing_was_applied_past_its_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (primary, standby) = pair(tmp.path());
    let load = start_load(&primary, 8);
    // Under load, reads on the standby see a prefix of every client's writes.
    let mut seen = 0;
    wait_for(
        "the standby to apply a few thousand writes",
        DEADLINE,
        || {
            seen = (0..8).map(|c| check_prefix(&standby, c)).sum::<u64>();
            (seen >= 4_000).then_some(())
        },
    );
    let (ok, out, err) = walrep(&["promote", standby.datadir.to_str().unwrap()]);
    assert!(
        ok,
        "walrep promote failed: {out}{err}\n{}",
        standby.log_text()
    );
    wait_state(&standby, "Promoted");
    let written = load.finish();
    let ts = transitions(&standby);
    let applied = withdrawal_after(&ts, "PromoteRequested");
    let switch_point = ts
        .iter()
        .flat_map(|t| &t.actions)
        .find_map(|a| match a {
            Action::WriteHistoryFile { switch_point, .. } => Some(*switch_point),
            _ => None,
        })
        .expect("a history file written");
    assert!(
        applied <= switch_point,
        "the walreceiver applied up to {applied}, past where recovery ended ({switch_point})"
    );
    // Promoted: still a prefix of each client's writes, and no more than
    // was written.
    for (c, &n) in written.iter().enumerate() {
        let served = check_prefix(&standby, c);
        assert!(served <= n, "client {c}: {served} served, {n} written");
    }
    assert!(seen > 0);
}

#[test]
fn a_shutdown_under_load_withdraws_the_leave_and_the_restarted_standby_catches_up_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (primary, mut standby) = pair(tmp.path());
    let load = start_load(&primary, 8);
    wait_for(
        "the standby to apply a few thousand writes",
        DEADLINE,
        || {
            let seen: u64 = (0..8).map(|c| check_prefix(&standby, c)).sum();
            (seen >= 4_000).then_some(())
        },
    );
    standby.stop();
    // Stopped is final: the answer is not waited for.
    withdrawn_first(&transitions(&standby), "ShutdownRequested");
    standby.restart();
    wait_state(&standby, "Streaming");
    let written = load.finish();
    // Every write reaches the standby, each client's in order.
    let served: Vec<u64> = (0..written.len())
        .map(|c| check_prefix(&primary, c))
        .collect();
    wait_for("the standby to serve every write", DEADLINE, || {
        let now: Vec<u64> = (0..written.len())
            .map(|c| check_prefix(&standby, c))
            .collect();
        (now == served).then_some(())
    });
    for (c, &n) in written.iter().enumerate() {
        assert!(
            served[c] <= n,
            "client {c}: {} served, {n} written",
            served[c]
        );
    }
}
