//! Power-loss crash images (failure suite, level 2): a real workload runs on
//! a node whose storage records every call ([`CrashStorage`]); then, at
//! sync points and random points between them, the disk a power loss could
//! have left is rebuilt ([`CrashModel`]), a node is started on it, and the
//! harness checks that it starts, that every acknowledged write is there,
//! that nothing never written appears, and that each writer's writes
//! survive as a prefix (the WAL has no holes).
//!
//! `CRASH_SEED=n` replays one seed; `CRASH_IMAGES=n` sets how many images
//! (default [`CI_IMAGES`]); `CRASH_ROUNDS=n` repeats the workload with
//! seeds `n` apart. A failure prints the seed, the crash point and how the
//! image was chosen.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use walrep::node::checkpoint::CheckpointCause;
use walrep::storage::{image_rng, CrashLog, CrashModel, CrashStorage, Generator, Storage};

use support::crash::{crash_points, env_u64, redis_conn, scratch};
use support::node::InProcessNode;
use support::wal::seg;

/// Images per run in CI.
const CI_IMAGES: usize = 500;
/// Writer threads of the primary workload.
const WRITERS: usize = 3;
/// Writes per writer.
const WRITES_PER_WRITER: u64 = 1500;
/// Every this many writes a writer also overwrites its counter key.
const COUNTER_EVERY: u64 = 7;

/// One image in this many is also crashed during its own recovery.
const RECOVERY_CRASH_EVERY: usize = 8;

/// What a writer asked for and what it was told.
#[derive(Debug, Default, Clone)]
struct WriterHistory {
    /// Log position after each acknowledged `w{t}:{n}` (index n).
    acked_at: Vec<u64>,
    /// Counter values acknowledged, with the log position after the ack.
    counter_acked: Vec<(u64, u64)>,
}

/// Everything a check needs about the run.
struct Run {
    log: CrashLog,
    writers: Vec<WriterHistory>,
    /// Name of the data directory inside the log's root.
    datadir_name: String,
}

fn value(t: usize, n: u64) -> String {
    format!("v{t}:{n}:{}", "x".repeat(150 + (n as usize * 37) % 300))
}

/// The primary workload: writers over Redis, checkpoints requested
/// between them (small WAL settings make them remove and recycle
/// segments), then a clean stop (its shutdown checkpoint is recorded too).
fn primary_workload(parent: &Path, forget_wal_syncs: bool) -> Run {
    let dir = parent.join("n");
    walrep::node::init::init(&dir, seg()).unwrap();
    let mut storage = CrashStorage::new(parent).unwrap();
    if forget_wal_syncs {
        storage = storage.forgetting_syncs_of(|p| p.to_string_lossy().contains("/wal/0"));
    }
    let storage = Arc::new(storage);
    let node = InProcessNode::start_existing(
        &dir,
        &[
            "checkpoint_timeout=1h",
            "max_wal_size=2MB",
            "min_wal_size=2MB",
        ],
        Some(storage.clone() as Arc<dyn Storage>),
    );
    let url = node.redis_url();
    let stop = Arc::new(AtomicBool::new(false));
    let histories = Arc::new(Mutex::new(vec![WriterHistory::default(); WRITERS]));
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let url = url.clone();
            let storage = storage.clone();
            let histories = histories.clone();
            std::thread::spawn(move || {
                let mut c = redis_conn(&url);
                for n in 0..WRITES_PER_WRITER {
                    let _: String = redis::cmd("SET")
                        .arg(format!("w{t}:{n}"))
                        .arg(value(t, n))
                        .query(&mut c)
                        .unwrap();
                    let at = storage.position();
                    histories.lock().unwrap()[t].acked_at.push(at);
                    if n % COUNTER_EVERY == 0 {
                        let _: String = redis::cmd("SET")
                            .arg(format!("c{t}"))
                            .arg(n)
                            .query(&mut c)
                            .unwrap();
                        let at = storage.position();
                        histories.lock().unwrap()[t].counter_acked.push((n, at));
                    }
                }
            })
        })
        .collect();
    let checkpointer = {
        let node = node.node().clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                node.checkpoint(CheckpointCause::Requested).unwrap();
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    checkpointer.join().unwrap();
    drop(node);
    let writers = histories.lock().unwrap().clone();
    Run {
        log: storage.log(),
        writers,
        datadir_name: "n".into(),
    }
}

/// One image that broke an invariant.
#[derive(Debug)]
struct Violation {
    seed: u64,
    point: usize,
    choice: String,
    message: String,
}

/// Start a node on the image and check it; `Err` names what is wrong.
/// With `storage`, the restarted node's own writes (its recovery, its
/// end-of-recovery checkpoint) go through it.
fn check_image(
    run: &Run,
    image_root: &Path,
    point: usize,
    storage: Option<Arc<dyn Storage>>,
) -> Result<(), String> {
    let dir = image_root.join(&run.datadir_name);
    let opts = walrep::node::StartOptions {
        overrides: vec![
            "port=0".into(),
            "replication_port=0".into(),
            "checkpoint_timeout=1h".into(),
        ],
        storage,
    };
    let node = walrep::node::RunningNode::start(&dir, &opts)
        .map_err(|e| format!("the node did not start on the image: {e}"))?;
    let port = node.node.ports.lock().unwrap().redis;
    let result = check_contents(run, &format!("redis://127.0.0.1:{port}/"), point);
    node.stop()
        .map_err(|e| format!("the node did not stop: {e}"))?;
    result
}

/// A crash during recovery: restart on the image with its writes
/// recorded, then crash that run at one of its own fsyncs (or just before
/// one) and recover again; the same acknowledged writes must be there.
fn check_image_twice(
    run: &Run,
    image_root: &Path,
    point: usize,
    rng: &mut rand::rngs::StdRng,
) -> Result<(), String> {
    let storage = Arc::new(CrashStorage::new(image_root).unwrap());
    check_image(
        run,
        image_root,
        point,
        Some(storage.clone() as Arc<dyn Storage>),
    )?;
    let log = storage.log();
    let syncs: Vec<usize> = (0..log.events.len())
        .filter(|&i| log.events[i].is_sync())
        .collect();
    let Some(&at) = syncs.get(rng.gen_range(0..syncs.len().max(1))) else {
        return Ok(());
    };
    let at = at + rng.gen_range(0..2);
    let mut model = CrashModel::new(&log);
    for e in &log.events[..at] {
        model.apply(e);
    }
    let generator = Generator::ALL[rng.gen_range(0..Generator::ALL.len())];
    let second = scratch();
    let choice = model.build_image(second.path(), generator, rng).unwrap();
    check_image(run, second.path(), point, None)
        .map_err(|e| format!("after a crash at event {at} of recovery ({choice:?}): {e}"))
}

fn check_contents(run: &Run, url: &str, point: usize) -> Result<(), String> {
    let mut c = redis_conn(url);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut c)
        .map_err(|e| e.to_string())?;
    let mut present: Vec<BTreeMap<u64, ()>> = vec![BTreeMap::new(); WRITERS];
    let mut counters: Vec<Option<u64>> = vec![None; WRITERS];
    let values: Vec<Option<String>> = if keys.is_empty() {
        Vec::new()
    } else {
        redis::cmd("MGET")
            .arg(&keys)
            .query(&mut c)
            .map_err(|e| e.to_string())?
    };
    for (k, v) in keys.iter().zip(values) {
        let v = v.ok_or_else(|| format!("key {k} listed but has no value"))?;
        if let Some((t, n)) = parse_key(k, 'w') {
            if t >= WRITERS || n >= WRITES_PER_WRITER || v != value(t, n) {
                return Err(format!("key {k} was never written with the value found"));
            }
            present[t].insert(n, ());
        } else if let Some((t, 0)) = parse_key(&format!("{k}:0"), 'c') {
            let n: u64 = v
                .parse()
                .map_err(|_| format!("counter {k} holds {v:?}, never written"))?;
            if t >= WRITERS || n % COUNTER_EVERY != 0 || n >= WRITES_PER_WRITER {
                return Err(format!("counter {k} holds {n}, never written"));
            }
            counters[t] = Some(n);
        } else if k != "after-crash" {
            // ("after-crash" is the probe write of an earlier recovery,
            // when the image is a crash during recovery.)
            return Err(format!("key {k} was never written"));
        }
    }
    for (t, h) in run.writers.iter().enumerate() {
        let count = present[t].len() as u64;
        if let Some((&last, _)) = present[t].iter().next_back() {
            if last + 1 != count {
                return Err(format!(
                    "writer {t}: {count} keys survive but the last is w{t}:{last}: a hole in the WAL"
                ));
            }
        }
        let acked = h
            .acked_at
            .iter()
            .filter(|&&at| at as usize <= point)
            .count() as u64;
        if count < acked {
            return Err(format!(
                "writer {t}: w{t}:{count} was acknowledged before the crash and is missing \
                 ({acked} acknowledged, {count} present)"
            ));
        }
        let counter_acked = h
            .counter_acked
            .iter()
            .filter(|(_, at)| *at as usize <= point)
            .map(|(n, _)| *n)
            .max();
        match (counter_acked, counters[t]) {
            (Some(a), None) => {
                return Err(format!("counter c{t}={a} was acknowledged and is missing"))
            }
            (Some(a), Some(v)) if v < a => {
                return Err(format!(
                    "counter c{t} went back to {v} after {a} was acknowledged"
                ))
            }
            _ => {}
        }
        if let Some(v) = counters[t] {
            if !present[t].contains_key(&v) {
                return Err(format!(
                    "counter c{t}={v} survives but w{t}:{v}, written before it, does not"
                ));
            }
        }
    }
    // The recovered node takes new writes.
    let _: String = redis::cmd("SET")
        .arg("after-crash")
        .arg("1")
        .query(&mut c)
        .map_err(|e| format!("the recovered node refused a write: {e}"))?;
    Ok(())
}

/// `w3:17` -> (3, 17) for `prefix` 'w'.
fn parse_key(k: &str, prefix: char) -> Option<(usize, u64)> {
    let rest = k.strip_prefix(prefix)?;
    let (t, n) = rest.split_once(':')?;
    Some((t.parse().ok()?, n.parse().ok()?))
}

/// Build and check `images` images of `run` chosen by `seed`.
fn check_run(run: &Run, seed: u64, images: usize) -> Vec<Violation> {
    let mut rng = image_rng(seed);
    let points = crash_points(&run.log, images, &mut rng);
    let mut model = CrashModel::new(&run.log);
    let mut violations = Vec::new();
    for (k, &point) in points.iter().enumerate() {
        while model.position < point {
            model.apply(&run.log.events[model.position]);
        }
        let generator = if k % 7 == 0 {
            Generator::Lost
        } else {
            Generator::ALL[rng.gen_range(0..Generator::ALL.len())]
        };
        let image = scratch();
        let choice = model
            .build_image(image.path(), generator, &mut rng)
            .unwrap();
        let checked = if k % RECOVERY_CRASH_EVERY == 1 {
            check_image_twice(run, image.path(), point, &mut rng)
        } else {
            check_image(run, image.path(), point, None)
        };
        if let Err(message) = checked {
            violations.push(Violation {
                seed,
                point,
                choice: format!("{choice:?}"),
                message,
            });
        }
    }
    violations
}

#[test]
fn power_loss_images_of_a_primary_under_writes_and_checkpoints_recover_every_ack() {
    let seed = env_u64("CRASH_SEED").unwrap_or_else(|| rand::rngs::StdRng::from_entropy().gen());
    let images = env_u64("CRASH_IMAGES").map_or(CI_IMAGES, |n| n as usize);
    let rounds = env_u64("CRASH_ROUNDS").unwrap_or(1);
    let started = Instant::now();
    let mut checked = 0;
    let mut violations = Vec::new();
    for round in 0..rounds {
        let seed = seed.wrapping_add(round);
        let tmp = scratch();
        let run = primary_workload(tmp.path(), false);
        eprintln!(
            "CRASH_SEED={seed}: {} events recorded ({}), checking {images} images",
            run.log.events.len(),
            run.log.summary()
        );
        violations.extend(check_run(&run, seed, images));
        checked += images;
    }
    let recovery_crashes = (0..images)
        .filter(|k| k % RECOVERY_CRASH_EVERY == 1)
        .count() as u64
        * rounds;
    eprintln!(
        "{checked} crash images checked (and {recovery_crashes} of them crashed again during \
         their recovery) in {:.1?}, {} violations",
        started.elapsed(),
        violations.len()
    );
    for v in violations.iter().take(10) {
        eprintln!(
            "VIOLATION CRASH_SEED={} point {} {}: {}",
            v.seed, v.point, v.choice, v.message
        );
    }
    assert!(violations.is_empty(), "{} violations", violations.len());
}

/// The harness itself: with the WAL's fdatasyncs left out of the record
/// (as if the writer acknowledged commits without them), the images must
/// show acknowledged writes lost.
#[test]
fn the_harness_finds_the_lost_writes_of_a_missing_wal_fsync() {
    let tmp = scratch();
    let run = primary_workload(tmp.path(), true);
    let violations = check_run(&run, 1, 40);
    assert!(
        violations.iter().any(|v| v
            .message
            .contains("acknowledged before the crash and is missing")),
        "no lost acknowledged write found in {} violations: {:?}",
        violations.len(),
        violations.first()
    );
}
