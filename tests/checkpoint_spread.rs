//! Spread checkpoints (`checkpoint_completion_target`): a checkpoint of
//! the timer paces its writes over the interval, and one that someone
//! waits for (a requested checkpoint, a base backup's) makes a spread one
//! still running finish at full speed instead of queueing behind it.

mod support;

use std::time::{Duration, Instant};

use support::node::InProcessNode;
use walrep::node::checkpoint::CheckpointCause;

/// Keys written: several steps of the checkpoint's scan (1024 keys each).
const KEYS: usize = 5000;

fn fill(node: &InProcessNode) {
    let mut c = redis::Client::open(node.redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
    }
    let _: () = pipe.query(&mut c).unwrap();
}

#[test]
fn a_timed_checkpoint_is_spread_over_the_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let node = InProcessNode::start(
        tmp.path(),
        &["checkpoint_timeout=2s", "checkpoint_completion_target=0.9"],
    );
    fill(&node);
    let started = Instant::now();
    let done = node.node().checkpoint(CheckpointCause::Time).unwrap();
    let took = started.elapsed();
    assert!(done.id > 1);
    // After 4 of its 5 steps it is 0.82 × 0.9 of the way: it waits until
    // that share of the 2 s has passed before the last step.
    assert!(took >= Duration::from_millis(1400), "took only {took:?}");
    // A requested one does not wait for anything.
    let started = Instant::now();
    node.node().checkpoint(CheckpointCause::Requested).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "an immediate checkpoint took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_requested_checkpoint_hurries_a_spread_one() {
    let tmp = tempfile::tempdir().unwrap();
    // Spread over 0.9 h unless something hurries it.
    let node = InProcessNode::start(
        tmp.path(),
        &["checkpoint_timeout=1h", "checkpoint_completion_target=0.9"],
    );
    fill(&node);
    let spread = {
        let n = node.node().clone();
        std::thread::spawn(move || n.checkpoint(CheckpointCause::Time))
    };
    // Wait for the spread checkpoint to be under way (its snapshot
    // directory exists) before asking for the immediate one.
    let base = tmp.path().join("base");
    support::wait_for(
        "the spread checkpoint to start writing",
        Duration::from_secs(30),
        || {
            std::fs::read_dir(&base)
                .ok()?
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                .then_some(())
        },
    );
    let started = Instant::now();
    let requested = node.node().checkpoint(CheckpointCause::Requested).unwrap();
    let spread = spread.join().unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the requested checkpoint waited {:?} for the spread one",
        started.elapsed()
    );
    assert!(requested.id > spread.id, "both completed, in order");
}

#[test]
fn shutdown_does_not_wait_for_a_spread_checkpoint_to_keep_its_pace() {
    let tmp = tempfile::tempdir().unwrap();
    let node = InProcessNode::start(
        tmp.path(),
        &["checkpoint_timeout=1h", "checkpoint_completion_target=0.9"],
    );
    fill(&node);
    // The checkpointer's own kind of checkpoint: spread over 0.9 h.
    node.node().request_checkpoint(CheckpointCause::Time);
    let base = tmp.path().join("base");
    support::wait_for(
        "the spread checkpoint to start writing",
        Duration::from_secs(30),
        || {
            std::fs::read_dir(&base)
                .ok()?
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                .then_some(())
        },
    );
    let started = Instant::now();
    drop(node);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "shutdown waited {:?} for the spread checkpoint",
        started.elapsed()
    );
}
