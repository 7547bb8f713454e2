//! Power-loss crash images (failure suite, level 2) of the workloads
//! beyond a primary's own writes: a standby receiving and replaying the
//! stream and then promoted, an archive-only standby replaying
//! restore_command's segments and then promoted, replication slots created,
//! advanced and dropped under checkpoints that remove WAL, and a base
//! backup written into its target. Each workload runs once on a
//! [`CrashStorage`]; then images a power loss could have left are rebuilt
//! at sync points and random points between ([`CrashModel`]), a node is
//! started on each and the workload's rules are checked.
//!
//! `CRASH_SEED=n` replays one seed; `CRASH_IMAGES=n` sets the images per
//! workload (default: each workload's CI count); `CRASH_ROUNDS=n` repeats
//! each workload with seeds `n` apart. A failure prints the seed, the
//! crash point and how the image was chosen.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use walrep::backup::client::{run as basebackup, BasebackupOptions, NoProgress};
use walrep::node::checkpoint::CheckpointCause;
use walrep::node::{RunningNode, StartOptions};
use walrep::replication::client::{ConnInfo, ReplicationClient};
use walrep::storage::{
    image_rng, CrashLog, CrashModel, CrashStorage, Generator, StdStorage, Storage,
};
use walrep::Lsn;

use support::crash::{crash_points, env_u64, redis_conn, scratch};
use support::node::InProcessNode;
use support::DEADLINE;

/// Images per workload in CI (550 in all, the two base-backup workloads
/// sharing theirs, beside the primary's 500 in crash_images.rs). A failure's
/// message carries the trace and `wal/` listing to explain it.
const CI_IMAGES_STANDBY: usize = 150;
const CI_IMAGES_ARCHIVE: usize = 100;
const CI_IMAGES_SLOTS: usize = 150;
const CI_IMAGES_BACKUP: usize = 150;

/// The value of write `n` of writer `prefix`: unique, and long enough that
/// a few hundred writes span several WAL pages.
fn value(prefix: &str, n: u64) -> String {
    format!("{prefix}:{n}:{}", "x".repeat(100 + (n as usize * 37) % 200))
}

fn url_of(node: &RunningNode) -> String {
    let port = node.node.ports.lock().unwrap().redis;
    format!("redis://127.0.0.1:{port}/")
}

/// One client writing `{prefix}:{n}` for n in 0..count, in order; each
/// acknowledgement stamped with the recording's position when it arrived
/// (`None` for writes whose ack no crash image is bound by).
#[derive(Debug, Clone, Default)]
struct Writer {
    prefix: String,
    count: u64,
    acked_at: Vec<u64>,
}

/// Run one writer per prefix against `url`, `count` writes each.
/// `stamp` is the recording whose images must hold the acknowledged
/// writes (`None`: no image is bound by these acks).
fn write_all(
    url: &str,
    prefixes: &[String],
    count: u64,
    stamp: Option<&Arc<CrashStorage>>,
) -> Vec<Writer> {
    let handles: Vec<_> = prefixes
        .iter()
        .map(|prefix| {
            let (url, prefix, stamp) = (url.to_string(), prefix.clone(), stamp.cloned());
            std::thread::spawn(move || {
                let mut c = redis_conn(&url);
                let mut w = Writer {
                    prefix: prefix.clone(),
                    count,
                    acked_at: Vec::new(),
                };
                for n in 0..count {
                    let _: String = redis::cmd("SET")
                        .arg(format!("{prefix}:{n}"))
                        .arg(value(&prefix, n))
                        .query(&mut c)
                        .unwrap();
                    if let Some(s) = &stamp {
                        w.acked_at.push(s.position());
                    }
                }
                w
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Every key on the node at `url`, with its value.
fn dump(url: &str) -> Result<Vec<(String, String)>, String> {
    let mut c = redis_conn(url);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut c)
        .map_err(|e| e.to_string())?;
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query(&mut c)
        .map_err(|e| e.to_string())?;
    keys.into_iter()
        .zip(values)
        .map(|(k, v)| {
            v.map(|v| (k.clone(), v))
                .ok_or(format!("key {k} listed without a value"))
        })
        .collect()
}

/// The writers' rules on a dump: nothing never written; each writer's
/// surviving writes a prefix (no hole in the WAL); every write acked at or
/// before `point` there; and at least `at_least[i]` of writer i's.
fn check_writers(
    data: &[(String, String)],
    writers: &[Writer],
    point: usize,
    at_least: &[u64],
    other_key: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let mut present = vec![Vec::new(); writers.len()];
    for (k, v) in data {
        let found = writers.iter().enumerate().find_map(|(i, w)| {
            let n = k
                .strip_prefix(&w.prefix)?
                .strip_prefix(':')?
                .parse::<u64>()
                .ok()?;
            Some((i, n))
        });
        match found {
            Some((i, n)) => {
                let w = &writers[i];
                if n >= w.count || *v != value(&w.prefix, n) {
                    return Err(format!("key {k} holds a value never written to it"));
                }
                present[i].push(n);
            }
            None if other_key(k) => {}
            None => return Err(format!("key {k} was never written")),
        }
    }
    for (i, w) in writers.iter().enumerate() {
        let mut ns = std::mem::take(&mut present[i]);
        ns.sort_unstable();
        let count = ns.len() as u64;
        if ns.last().is_some_and(|&last| last + 1 != count) {
            return Err(format!(
                "writer {}: {count} writes survive but the last is {}:{}: a hole in the WAL",
                w.prefix,
                w.prefix,
                ns.last().unwrap()
            ));
        }
        let acked = w
            .acked_at
            .iter()
            .filter(|&&at| at as usize <= point)
            .count() as u64;
        let need = acked.max(at_least.get(i).copied().unwrap_or(0));
        if count < need {
            return Err(format!(
                "writer {}: {}:{count} is missing ({need} must be there: {acked} acknowledged \
                 before the crash; {count} present)",
                w.prefix, w.prefix
            ));
        }
    }
    Ok(())
}

// Images whose node started, and those that refused to (with a clear
// error; a rule says when that is allowed), for the run's report; per test
// thread, as the workloads run in parallel.
thread_local! {
    static STARTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static REFUSED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One image that broke a rule.
#[derive(Debug)]
struct Violation {
    seed: u64,
    point: usize,
    choice: String,
    message: String,
}

/// Build `images` images of `log` chosen by `seed` and run `check` on each
/// (the image's root, the crash point).
fn check_images(
    log: &CrashLog,
    seed: u64,
    images: usize,
    mut check: impl FnMut(&Path, usize) -> Result<(), String>,
) -> Vec<Violation> {
    let mut rng = image_rng(seed);
    let points = crash_points(log, images, &mut rng);
    let mut model = CrashModel::new(log);
    let mut violations = Vec::new();
    for (k, &point) in points.iter().enumerate() {
        while model.position < point {
            model.apply(&log.events[model.position]);
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
        if let Err(message) = check(image.path(), point) {
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

/// Run `workload` `CRASH_ROUNDS` times and check `CRASH_IMAGES` (default
/// `ci_images`) images of each; fail on any violation.
fn run_workload<R>(
    name: &str,
    ci_images: usize,
    workload: impl Fn(&Path) -> (CrashLog, R),
    check: impl Fn(&R, &Path, usize) -> Result<(), String>,
) {
    let seed = env_u64("CRASH_SEED").unwrap_or_else(|| StdRng::from_entropy().gen());
    let images = env_u64("CRASH_IMAGES").map_or(ci_images, |n| n as usize);
    let rounds = env_u64("CRASH_ROUNDS").unwrap_or(1);
    let started = Instant::now();
    STARTED.set(0);
    REFUSED.take();
    let mut violations = Vec::new();
    for round in 0..rounds {
        let seed = seed.wrapping_add(round);
        let tmp = scratch();
        let (log, run) = workload(tmp.path());
        eprintln!(
            "{name}: CRASH_SEED={seed}: {} events recorded ({}), checking {images} images",
            log.events.len(),
            log.summary()
        );
        violations.extend(check_images(&log, seed, images, |root, point| {
            check(&run, root, point)
        }));
    }
    let refused = REFUSED.take();
    eprintln!(
        "{name}: {} crash images checked in {:.1?} ({} started, {} refused), {} violations",
        images as u64 * rounds,
        started.elapsed(),
        STARTED.get(),
        refused.len(),
        violations.len()
    );
    let mut reasons: Vec<&String> = refused.iter().collect();
    reasons.sort();
    reasons.dedup();
    for r in reasons.iter().take(5) {
        eprintln!("{name}: refused: {r}");
    }
    for v in violations.iter().take(10) {
        eprintln!(
            "VIOLATION {name} CRASH_SEED={} point {} {}: {}",
            v.seed, v.point, v.choice, v.message
        );
    }
    assert!(
        violations.is_empty(),
        "{name}: {} violations",
        violations.len()
    );
}

/// Start a node on the image's data directory `dir` with `settings`.
fn start_image(dir: &Path, settings: &[String]) -> Result<RunningNode, String> {
    let mut overrides = vec![
        "port=0".to_string(),
        "replication_port=0".to_string(),
        "checkpoint_timeout=1h".to_string(),
    ];
    overrides.extend(settings.iter().cloned());
    let opts = StartOptions {
        overrides,
        storage: None,
    };
    match RunningNode::start(dir, &opts) {
        Ok(node) => {
            STARTED.set(STARTED.get() + 1);
            Ok(node)
        }
        Err(e) => {
            let e = format!("the node did not start on the image: {e}");
            let root = dir.parent().unwrap_or(dir).display().to_string();
            REFUSED.with_borrow_mut(|r| r.push(e.replace(&root, "<image>")));
            Err(e)
        }
    }
}

/// Poll `f` until it holds or `DEADLINE` passes.
fn poll(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Ask the standby on `dir` to promote and wait until it is a primary.
fn promote(node: &RunningNode, dir: &Path) -> Result<(), String> {
    walrep::standby::trigger::request_promotion(&StdStorage, dir)
        .map_err(|e| format!("could not request promotion: {e}"))?;
    if poll(|| node.node.is_primary()) {
        Ok(())
    } else {
        let c = node.node.control();
        // The machine's last transitions say where the promotion stopped.
        let trace =
            std::fs::read_to_string(dir.join("log").join("transitions.jsonl")).unwrap_or_default();
        let tail: Vec<&str> = trace.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!(
            "the image's standby did not finish its promotion within {DEADLINE:?} (replayed to \
             {}, control file: timeline {}, {}, minimum recovery point {}); wal/: {:?}; last \
             transitions:\n{}",
            node.node.replay_end(),
            c.timeline.0,
            c.state,
            c.min_recovery_point,
            wal_listing(dir),
            tail.join("\n")
        ))
    }
}

/// The names in `dir/wal`, sorted: what a stuck promotion found there.
fn wal_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("wal"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A thread asking `node` for a restartpoint (or, once promoted, a
/// checkpoint) every 30 ms until `stop`.
fn restartpoints(
    node: Arc<walrep::node::Node>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            node.restartpoint(CheckpointCause::Requested).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
    })
}

fn copy_of(
    primary: &InProcessNode,
    datadir: &Path,
    app: &str,
    storage: Arc<dyn Storage>,
) -> BasebackupOptions {
    BasebackupOptions {
        host: "127.0.0.1".into(),
        port: primary.replication_port(),
        datadir: datadir.to_path_buf(),
        user: "walrep".into(),
        password: None,
        application_name: Some(app.into()),
        write_standby_config: true,
        label: "crash images".into(),
        max_rate_kbps: 0,
        timeout: DEADLINE,
        storage,
        slot: None,
        jobs: 1,
        two_phase: false,
        resume: false,
    }
}

// ---------------------------------------------------------------------
// A standby receiving, replaying, then promoted.

/// Writes per writer before and after the promotion.
const STANDBY_WRITES: u64 = 300;
const STANDBY_WRITERS: usize = 2;

struct StandbyRun {
    /// Writes to the primary (acknowledged once the standby flushed them)
    /// then to the promoted standby.
    writers: Vec<Writer>,
    /// Position at which the promotion was seen done (the node writes).
    promoted_at: u64,
    /// The standby's data directory, relative to the recording's root.
    datadir: PathBuf,
    /// Settings the image starts with (the archive of the archive workload).
    settings: Vec<String>,
    /// How many writes of each writer every image must hold once its
    /// recovery reaches the end of what it can reach (the archive workload:
    /// everything archived).
    at_least: Vec<u64>,
    /// The end of the archived history (the archive workload): a standby
    /// image must replay to it before it is promoted.
    archive_end: Option<Lsn>,
}

/// A primary with `synchronous_standby_names = '*'` and a standby copied
/// from it on a recording storage; writers on the primary (each ack means
/// the standby flushed the write), restartpoints every 30 ms; the primary
/// stops, the standby is promoted, writers go on on it; a clean stop.
fn standby_workload(parent: &Path) -> (CrashLog, StandbyRun) {
    let primary = InProcessNode::start(
        &parent.join("p"),
        &["checkpoint_timeout=1h", "synchronous_standby_names=*"],
    );
    let copy = parent.join("s").join("n");
    basebackup(
        &copy_of(&primary, &copy, "s1", Arc::new(StdStorage)),
        &mut NoProgress,
    )
    .unwrap();
    let storage = Arc::new(CrashStorage::new(&parent.join("s")).unwrap());
    let standby = InProcessNode::start_existing(
        &copy,
        &[
            "checkpoint_timeout=1h",
            "max_wal_size=2MB",
            "min_wal_size=2MB",
        ],
        Some(storage.clone() as Arc<dyn Storage>),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rp = restartpoints(standby.node().clone(), stop.clone());
    let before: Vec<String> = (0..STANDBY_WRITERS).map(|t| format!("a{t}")).collect();
    let mut writers = write_all(
        &primary.redis_url(),
        &before,
        STANDBY_WRITES,
        Some(&storage),
    );
    drop(primary);
    walrep::standby::trigger::request_promotion(&StdStorage, &copy).unwrap();
    assert!(
        poll(|| standby.node().is_primary()),
        "the standby did not promote"
    );
    let promoted_at = storage.position();
    let after: Vec<String> = (0..STANDBY_WRITERS).map(|t| format!("b{t}")).collect();
    writers.extend(write_all(
        &standby.redis_url(),
        &after,
        STANDBY_WRITES,
        Some(&storage),
    ));
    stop.store(true, Ordering::SeqCst);
    rp.join().unwrap();
    drop(standby);
    let run = StandbyRun {
        writers,
        promoted_at,
        datadir: "n".into(),
        settings: vec!["primary_conninfo=".into()],
        at_least: Vec::new(),
        archive_end: None,
    };
    (storage.log(), run)
}

/// Start the image: a node that came back as a standby (its upstream gone)
/// is promoted, unless its promotion was already announced (then coming
/// back as a standby of the old history is a violation); then every rule
/// of the writers, and a new write.
fn check_standby_image(run: &StandbyRun, root: &Path, point: usize) -> Result<(), String> {
    let dir = root.join(&run.datadir);
    let node = start_image(&dir, &run.settings)?;
    let result = check_started_standby(run, &node, &dir, point);
    node.stop()
        .map_err(|e| format!("the node did not stop: {e}"))?;
    result
}

fn check_started_standby(
    run: &StandbyRun,
    node: &RunningNode,
    dir: &Path,
    point: usize,
) -> Result<(), String> {
    if !node.node.is_primary() {
        if run.promoted_at as usize <= point {
            return Err(
                "the promotion was announced before the crash, yet the node came \
                        back as a standby"
                    .into(),
            );
        }
        if let Some(end) = run.archive_end {
            // The archive holds the whole old history: recovery reaches it.
            if !poll(|| node.node.replay_end() >= end) {
                return Err(format!(
                    "recovery from the archive stopped at {} before {end}",
                    node.node.replay_end()
                ));
            }
        }
        promote(node, dir)?;
    }
    let url = url_of(node);
    let data = dump(&url)?;
    check_writers(&data, &run.writers, point, &run.at_least, |k| {
        k == "after-crash"
    })?;
    let mut c = redis_conn(&url);
    let _: String = redis::cmd("SET")
        .arg("after-crash")
        .arg("1")
        .query(&mut c)
        .map_err(|e| format!("the recovered node refused a write: {e}"))?;
    Ok(())
}

#[test]
fn power_loss_images_of_a_streaming_standby_and_its_promotion_keep_every_flushed_write() {
    run_workload(
        "standby",
        CI_IMAGES_STANDBY,
        standby_workload,
        check_standby_image,
    );
}

// ---------------------------------------------------------------------
// Archive recovery: a standby replaying restore_command's segments, then
// promoted.

/// A primary archiving with `cp`, a copy of it taken first; writers on
/// the primary, the last segment switched out and archived, the primary
/// stopped. Then the copy runs as an archive-only standby on a recording
/// storage (restartpoints every 30 ms) until it has replayed the whole
/// archive, is promoted, and takes writes of its own; a clean stop.
fn archive_workload(parent: &Path) -> (CrashLog, StandbyRun) {
    let archive = parent.join("archive");
    std::fs::create_dir(&archive).unwrap();
    let archive_command = format!("archive_command=cp %p {}/%f", archive.display());
    let primary = InProcessNode::start(
        &parent.join("p"),
        &["checkpoint_timeout=1h", "archive_mode=on", &archive_command],
    );
    let copy = parent.join("s").join("n");
    let mut opts = copy_of(&primary, &copy, "s1", Arc::new(StdStorage));
    opts.write_standby_config = false;
    basebackup(&opts, &mut NoProgress).unwrap();
    std::fs::write(copy.join("standby.signal"), b"").unwrap();
    let before: Vec<String> = (0..STANDBY_WRITERS).map(|t| format!("a{t}")).collect();
    let mut writers = write_all(&primary.redis_url(), &before, STANDBY_WRITES, None);
    let wal = primary.node().wal().unwrap();
    let end = wal.inserted();
    wal.switch_segment().unwrap();
    let last = end
        .segno(wal.seg_size())
        .file_name(walrep::TimelineId(1), wal.seg_size());
    assert!(
        poll(|| archive.join(&last).is_file()),
        "segment {last} was not archived"
    );
    drop(primary);
    let restore = format!("restore_command=cp {}/%f %p", archive.display());
    let storage = Arc::new(CrashStorage::new(&parent.join("s")).unwrap());
    let standby = InProcessNode::start_existing(
        &copy,
        &["checkpoint_timeout=1h", &restore],
        Some(storage.clone() as Arc<dyn Storage>),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rp = restartpoints(standby.node().clone(), stop.clone());
    assert!(
        poll(|| standby.node().replay_end() >= end),
        "the standby did not replay the archive"
    );
    walrep::standby::trigger::request_promotion(&StdStorage, &copy).unwrap();
    assert!(
        poll(|| standby.node().is_primary()),
        "the standby did not promote"
    );
    let promoted_at = storage.position();
    let after: Vec<String> = (0..STANDBY_WRITERS).map(|t| format!("b{t}")).collect();
    writers.extend(write_all(
        &standby.redis_url(),
        &after,
        STANDBY_WRITES,
        Some(&storage),
    ));
    stop.store(true, Ordering::SeqCst);
    rp.join().unwrap();
    drop(standby);
    let mut at_least = vec![STANDBY_WRITES; STANDBY_WRITERS];
    at_least.extend([0; STANDBY_WRITERS]);
    let run = StandbyRun {
        writers,
        promoted_at,
        datadir: "n".into(),
        settings: vec![restore],
        at_least,
        archive_end: Some(end),
    };
    (storage.log(), run)
}

#[test]
fn power_loss_images_of_archive_recovery_and_its_promotion_replay_the_whole_archive() {
    run_workload(
        "archive",
        CI_IMAGES_ARCHIVE,
        archive_workload,
        check_standby_image,
    );
}

// ---------------------------------------------------------------------
// Replication slots.

/// Slots created one after another.
const SLOTS: usize = 12;
/// Writes per writer of the slot workload.
const SLOT_WRITES: u64 = 1200;

/// What happened to one slot, each step stamped with the recording's
/// position (before the call for a step whose effect a later sync may
/// carry, after it for an acknowledgement).
#[derive(Debug, Clone, Default)]
struct SlotHistory {
    name: String,
    create_started: u64,
    created: u64,
    /// Restart position the slot got at creation (RESERVE_WAL).
    reserved: Lsn,
    /// (position confirmed, recording position before the call).
    confirms: Vec<(Lsn, u64)>,
    drop_started: Option<u64>,
    dropped: Option<u64>,
}

struct SlotRun {
    writers: Vec<Writer>,
    slots: Vec<SlotHistory>,
}

/// A primary on a recording storage with small WAL settings, writers,
/// checkpoints every 40 ms (which save slots and remove WAL), and a client
/// that creates slots with RESERVE_WAL, advances them as a standby's
/// flush reports would, and drops every other one; a clean stop.
fn slot_workload(parent: &Path) -> (CrashLog, SlotRun) {
    let dir = parent.join("n");
    walrep::node::init::init(&dir, support::wal::seg()).unwrap();
    let storage = Arc::new(CrashStorage::new(parent).unwrap());
    let node = InProcessNode::start_existing(
        &dir,
        &[
            "checkpoint_timeout=1h",
            "max_wal_size=2MB",
            "min_wal_size=2MB",
        ],
        Some(storage.clone() as Arc<dyn Storage>),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let checkpointer = {
        let (node, stop) = (node.node().clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                node.checkpoint(CheckpointCause::Requested).unwrap();
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    let slots = {
        let (node, storage) = (node.node().clone(), storage.clone());
        let port = node.ports.lock().unwrap().replication;
        std::thread::spawn(move || slot_client(&node, port, &storage))
    };
    let prefixes: Vec<String> = (0..2).map(|t| format!("w{t}")).collect();
    let writers = write_all(&node.redis_url(), &prefixes, SLOT_WRITES, Some(&storage));
    let slots = slots.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    checkpointer.join().unwrap();
    drop(node);
    (storage.log(), SlotRun { writers, slots })
}

fn slot_client(node: &walrep::node::Node, port: u16, storage: &CrashStorage) -> Vec<SlotHistory> {
    let info = ConnInfo::parse(&format!("host=127.0.0.1 port={port} user=walrep")).unwrap();
    let mut c = ReplicationClient::connect(&info, DEADLINE).unwrap();
    let mut slots: Vec<SlotHistory> = Vec::new();
    for k in 0..SLOTS {
        let name = format!("s{k}");
        let create_started = storage.position();
        c.create_physical_slot(&name, false, true).unwrap();
        let created = storage.position();
        let reserved = node.slots.get(&name).unwrap().restart_lsn;
        let mut h = SlotHistory {
            name: name.clone(),
            create_started,
            created,
            reserved,
            ..Default::default()
        };
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(25));
            let lsn = node.wal().unwrap().flushed();
            h.confirms.push((lsn, storage.position()));
            node.slots.confirm_flush(&name, lsn);
        }
        slots.push(h);
        if k >= 2 && k % 2 == 0 {
            let old = &mut slots[k - 2];
            old.drop_started = Some(storage.position());
            c.drop_slot(&old.name, false).unwrap();
            old.dropped = Some(storage.position());
        }
    }
    c.close();
    slots
}

fn check_slot_image(run: &SlotRun, root: &Path, point: usize) -> Result<(), String> {
    let dir = root.join("n");
    let node = start_image(&dir, &[])?;
    let result = check_started_slots(run, &node, &dir, point);
    node.stop()
        .map_err(|e| format!("the node did not stop: {e}"))?;
    result
}

fn check_started_slots(
    run: &SlotRun,
    node: &RunningNode,
    dir: &Path,
    point: usize,
) -> Result<(), String> {
    let data = dump(&url_of(node))?;
    check_writers(&data, &run.writers, point, &[], |_| false)?;
    let found = node.node.slots.list();
    for f in &found {
        if !run.slots.iter().any(|h| h.name == f.name) {
            return Err(format!("slot {} was never created", f.name));
        }
    }
    let wal = node
        .node
        .wal()
        .ok_or("the recovered primary has no WAL writer")?;
    let seg = wal.seg_size();
    let end = wal.inserted().segno(seg);
    for h in &run.slots {
        let at = |p: u64| p as usize <= point;
        let slot = found.iter().find(|f| f.name == h.name);
        let must_exist = at(h.created) && !h.drop_started.is_some_and(at);
        let must_not = h.dropped.is_some_and(at) || !at(h.create_started);
        match slot {
            None if must_exist => {
                return Err(format!("slot {} was created before the crash and is gone", h.name))
            }
            Some(_) if must_not => {
                return Err(format!("slot {} exists, but its drop was acknowledged or it was never created before the crash", h.name))
            }
            None => continue,
            Some(s) => {
                let known = s.restart_lsn == h.reserved
                    || h.confirms.iter().any(|&(l, p)| l == s.restart_lsn && at(p));
                if !known {
                    return Err(format!(
                        "slot {} restarts at {}, a position it never held before the crash",
                        h.name, s.restart_lsn
                    ));
                }
                if !s.restart_lsn.is_valid() {
                    continue;
                }
                for segno in s.restart_lsn.segno(seg).0..=end.0 {
                    let file = walrep::SegNo(segno).file_name(walrep::TimelineId(1), seg);
                    if !dir.join("wal").join(&file).is_file() {
                        return Err(format!(
                            "slot {} restarts at {}, but WAL segment {file} is gone",
                            h.name, s.restart_lsn
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn power_loss_images_of_slots_created_advanced_and_dropped_keep_each_slot_and_its_wal() {
    run_workload("slots", CI_IMAGES_SLOTS, slot_workload, check_slot_image);
}

// ---------------------------------------------------------------------
// Base backup extraction.

/// Keys on the primary before the backup.
const BACKUP_KEYS: u64 = 2000;

struct BackupRun {
    /// The keys written before the backup (all in every copy that starts)
    /// and the writer that kept writing during it.
    writers: Vec<Writer>,
    /// Position once `walrep basebackup` returned success.
    finished_at: u64,
    /// End of the backup: a copy is consistent only from there.
    end: Lsn,
}

/// A primary holding [`BACKUP_KEYS`] keys and a writer going on during the
/// backup; `walrep basebackup` (with `jobs` connections) writes the copy
/// through a recording storage.
fn backup_workload(parent: &Path, jobs: u32) -> (CrashLog, BackupRun) {
    let primary = InProcessNode::start(&parent.join("p"), &["checkpoint_timeout=1h"]);
    let url = primary.redis_url();
    let mut writers = write_all(&url, &["k".to_string()], BACKUP_KEYS, None);
    std::fs::create_dir(parent.join("b")).unwrap();
    let storage = Arc::new(CrashStorage::new(&parent.join("b")).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Mutex::new(0u64));
    let during = {
        let (url, stop, written) = (url.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut c = redis_conn(&url);
            for n in 0..u64::MAX {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let _: String = redis::cmd("SET")
                    .arg(format!("d:{n}"))
                    .arg(value("d", n))
                    .query(&mut c)
                    .unwrap();
                *written.lock().unwrap() = n + 1;
            }
        })
    };
    let mut opts = copy_of(
        &primary,
        &parent.join("b").join("copy"),
        "copy",
        storage.clone(),
    );
    opts.write_standby_config = false;
    opts.jobs = jobs;
    // Slow enough that the writes made during the copy fill more than one
    // WAL segment of the backup.
    opts.max_rate_kbps = 1000;
    let summary = basebackup(&opts, &mut NoProgress).unwrap();
    let finished_at = storage.position();
    stop.store(true, Ordering::SeqCst);
    during.join().unwrap();
    drop(primary);
    writers.push(Writer {
        prefix: "d".into(),
        count: *written.lock().unwrap(),
        acked_at: Vec::new(),
    });
    let run = BackupRun {
        writers,
        finished_at,
        end: summary.end,
    };
    (storage.log(), run)
}

/// A copy that starts must be the whole backup: consistent (its WAL
/// reaches the backup's end), every key of before the backup there, the
/// writes made during it a prefix. One that does not start is fine unless
/// the backup had finished.
fn check_backup_image(run: &BackupRun, root: &Path, point: usize) -> Result<(), String> {
    let dir = root.join("copy");
    let node = match start_image(&dir, &[]) {
        Ok(node) => node,
        Err(e) if (run.finished_at as usize) <= point => {
            return Err(format!("the backup had finished: {e}"))
        }
        Err(_) => return Ok(()),
    };
    let result = check_started_copy(run, &node);
    node.stop()
        .map_err(|e| format!("the node did not stop: {e}"))?;
    result
}

fn check_started_copy(run: &BackupRun, node: &RunningNode) -> Result<(), String> {
    let end = node.node.replay_end();
    if end < run.end {
        return Err(format!(
            "the copy started, but its WAL ends at {end}, before the end of the backup {}",
            run.end
        ));
    }
    let data = dump(&url_of(node))?;
    check_writers(&data, &run.writers, 0, &[BACKUP_KEYS], |_| false)
}

#[test]
fn power_loss_images_of_a_base_backup_never_start_unless_complete() {
    run_workload(
        "basebackup",
        CI_IMAGES_BACKUP / 2,
        |p| backup_workload(p, 1),
        check_backup_image,
    );
}

#[test]
fn power_loss_images_of_a_parallel_base_backup_never_start_unless_complete() {
    run_workload(
        "basebackup --jobs 2",
        CI_IMAGES_BACKUP / 2,
        |p| backup_workload(p, 2),
        check_backup_image,
    );
}

/// What the basebackup workload found, named: a copy whose last WAL
/// segment did not survive (its control file and first segment did)
/// refuses to start, saying where its WAL ends and where it had to reach,
/// and changes nothing.
#[test]
fn a_copy_whose_wal_ends_before_the_backup_end_refuses_to_start() {
    let tmp = scratch();
    let (_, run) = backup_workload(tmp.path(), 1);
    let copy = tmp.path().join("b").join("copy");
    let seg = support::wal::seg();
    let redo = walrep::store::ControlFile::read(&copy)
        .unwrap()
        .redo_lsn
        .segno(seg);
    let last = Lsn(run.end.0 - 1).segno(seg);
    assert!(last > redo, "the backup's WAL fits in one segment");
    let file = copy
        .join("wal")
        .join(last.file_name(walrep::TimelineId(1), seg));
    std::fs::remove_file(&file).unwrap();
    let control = std::fs::read(copy.join("control")).unwrap();
    let e = start_image(&copy, &[]).err().expect("the copy started");
    assert!(
        e.contains("before the minimum recovery point") && e.contains(&run.end.to_string()),
        "{e}"
    );
    assert_eq!(std::fs::read(copy.join("control")).unwrap(), control);
}

// ---------------------------------------------------------------------
// The promotion's own syncs, in the order durability needs them.

/// Which inode each name refers to after `events[..upto]`, starting from
/// the log's base.
fn names_at(log: &CrashLog, upto: usize) -> std::collections::HashMap<PathBuf, usize> {
    use walrep::storage::CrashEvent as E;
    let mut names: std::collections::HashMap<PathBuf, usize> = log
        .base
        .iter()
        .zip(&log.base_inodes)
        .filter_map(|((p, _), id)| id.map(|id| (p.clone(), id)))
        .collect();
    for e in &log.events[..upto] {
        match e {
            E::Create { path, inode } => {
                names.insert(path.clone(), *inode);
            }
            E::Rename { from, to } => {
                if let Some(id) = names.remove(from) {
                    names.insert(to.clone(), id);
                }
            }
            E::Remove { path } => {
                names.remove(path);
            }
            _ => {}
        }
    }
    names
}

/// A standby's promotion makes its history file's contents durable before
/// the name, and the name durable (one fsync of `wal/`) before any segment
/// of the new timeline is named; then, once writes are accepted, one more
/// fsync of `wal/` (the new segments' names) runs beside the control
/// file's update, which overwrites the file in place (fdatasync, no
/// temporary file, no rename, no fsync of the data directory for it):
/// each directory fsync or new file's fsync is a journal commit, which on
/// a busy machine waits for other processes' writeback.
#[test]
fn a_promotion_fsyncs_wal_once_per_stage_and_overwrites_the_control_file_in_place() {
    use walrep::storage::CrashEvent as E;
    let root = scratch();
    let dir = root.path().join("n");
    walrep::node::init::init(&dir, support::wal::seg()).unwrap();
    std::fs::write(dir.join("standby.signal"), b"").unwrap();
    let storage = Arc::new(CrashStorage::new(root.path()).unwrap());
    let node = InProcessNode::start_existing(
        &dir,
        &["checkpoint_timeout=1h"],
        Some(storage.clone() as Arc<dyn Storage>),
    );
    walrep::standby::trigger::request_promotion(&StdStorage, &dir).unwrap();
    assert!(
        poll(|| node.node().is_primary()),
        "the standby did not promote"
    );
    let rel = |p: &str| PathBuf::from("n").join(p);
    let history = rel("wal/00000002.history");
    let wal_dir = rel("wal");
    let renamed_in = |log: &walrep::storage::CrashLog| {
        log.events
            .iter()
            .position(|e| matches!(e, E::Rename { to, .. } if *to == history))
    };
    // The first name a segment of timeline 2 gets.
    let segment_named_in = |log: &walrep::storage::CrashLog, from: usize| {
        (from..log.events.len()).find(|&i| {
            matches!(&log.events[i], E::Rename { to, .. }
            if to.parent() == Some(wal_dir.as_path())
                && to.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.len() == 24 && n.starts_with("00000002")
                }))
        })
    };
    let wal_synced_after = |log: &walrep::storage::CrashLog, from: usize| {
        (from..log.events.len())
            .find(|&i| matches!(&log.events[i], E::SyncDir { path } if *path == wal_dir))
    };
    // The node accepts writes while the promotion's last syncs are still
    // in flight: wait until the control file's update and the segments'
    // names have been synced.
    assert!(
        poll(|| {
            let log = storage.log();
            renamed_in(&log).is_some_and(|renamed| {
                let control = (renamed..log.events.len()).any(|i| match &log.events[i] {
                    E::Sync { inode } => names_at(&log, i).get(&rel("control")) == Some(inode),
                    _ => false,
                });
                let names = segment_named_in(&log, renamed)
                    .and_then(|named| wal_synced_after(&log, named))
                    .is_some();
                control && names
            })
        }),
        "the promotion's control file update or segment names were never synced"
    );
    let log = storage.log();
    drop(node);

    let renamed = renamed_in(&log).expect("the history file was renamed into place");
    // Its contents were synced under the temporary name first.
    let tmp = names_at(&log, renamed)[&rel("wal/00000002.history.tmp")];
    assert!(
        log.events[..renamed]
            .iter()
            .any(|e| matches!(e, E::Sync { inode } if *inode == tmp)),
        "the history file was renamed before its contents were durable"
    );
    let named = segment_named_in(&log, renamed).expect("a segment of timeline 2 was named");
    let names_synced = wal_synced_after(&log, named).expect("the segment names were synced");
    let wal_syncs = |from: usize, to: usize| {
        log.events[from..to]
            .iter()
            .filter(|e| matches!(e, E::SyncDir { path } if *path == wal_dir))
            .count()
    };
    // The history file's name is durable before the new timeline's first
    // segment is named (CRASH.md 4.6 and 4.10), with one fsync of `wal/`.
    assert_eq!(
        wal_syncs(renamed, named),
        1,
        "wal/ fsynced once for the history file's name: {:#?}",
        &log.events[renamed..named]
    );
    assert_eq!(
        wal_syncs(named, names_synced + 1),
        1,
        "wal/ fsynced once for the segments' names"
    );
    // The promotion's control file update: the first write to the file
    // named `control` after the rename, in place, after the segment was
    // named (the end-of-recovery step).
    let (updated, control) = (renamed..log.events.len())
        .find_map(|i| match &log.events[i] {
            E::Write {
                inode, offset: 0, ..
            } if names_at(&log, i).get(&rel("control")) == Some(inode) => Some((i, *inode)),
            _ => None,
        })
        .expect("the control file was overwritten in place");
    assert!(
        updated > named,
        "the control file named timeline 2 before its segment"
    );
    let window = &log.events[renamed..updated];
    assert!(
        window
            .iter()
            .filter(|e| matches!(e, E::SyncDir { path } if path.as_path() == Path::new("n")))
            .count()
            <= 1,
        "the data directory fsynced twice: {window:#?}"
    );
    assert!(
        !window
            .iter()
            .any(|e| matches!(e, E::Rename { to, .. } if *to == rel("control"))),
        "the control file was replaced, not overwritten: {window:#?}"
    );
    assert!(
        log.events[updated..]
            .iter()
            .any(|e| matches!(e, E::Sync { inode } if *inode == control)),
        "the overwritten control file was never synced"
    );
}

// ---------------------------------------------------------------------
// Writes accepted while the promotion's last syncs are in flight.

/// Storage that records through a [`CrashStorage`] and, once armed, holds
/// the next sync of one kind ([`StallOn`]) until the test lets it go: a
/// window in which the promoted node already accepts writes but must
/// confirm none.
#[derive(Debug)]
struct StallControlSync {
    inner: Arc<CrashStorage>,
    on: StallOn,
    stage: Mutex<Stall>,
    changed: std::sync::Condvar,
}

/// Which of the promotion's last syncs [`StallControlSync`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StallOn {
    /// The control file's fdatasync (its in-place update).
    Control,
    /// The fsync of `wal/` that makes the new timeline's segments' names
    /// durable, beside the control file's update (the history file's name
    /// was made durable before the end-of-recovery record).
    WalDir,
    /// The first fdatasync of a timeline-2 segment: the end-of-recovery
    /// record's (and the first writes') flush, which may come after the
    /// control file is durable.
    NewTimelineWal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    Off,
    Armed,
    /// The held sync is waiting.
    Stalled,
    Go,
}

impl StallControlSync {
    fn new(inner: Arc<CrashStorage>, on: StallOn) -> StallControlSync {
        StallControlSync {
            inner,
            on,
            stage: Mutex::new(Stall::Off),
            changed: std::sync::Condvar::new(),
        }
    }

    fn set(&self, to: Stall) {
        *self.stage.lock().unwrap() = to;
        self.changed.notify_all();
    }

    fn stage(&self) -> Stall {
        *self.stage.lock().unwrap()
    }

    /// The armed stall, for a sync of `path` of the kind held: wait
    /// (bounded) for the go-ahead.
    fn maybe_stall(&self, path: &Path, dir: bool) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let held = match self.on {
            StallOn::Control => !dir && name == "control",
            // The hold's fsync of `wal/`: once the new timeline's first
            // segment is named (the history stage fsyncs `wal/` before).
            StallOn::WalDir => dir && name == "wal" && names_a_timeline_2_segment(path),
            StallOn::NewTimelineWal => !dir && name.len() == 24 && name.starts_with("00000002"),
        };
        if !held {
            return;
        }
        let mut stage = self.stage.lock().unwrap();
        if *stage != Stall::Armed {
            return;
        }
        *stage = Stall::Stalled;
        self.changed.notify_all();
        let _ = self
            .changed
            .wait_timeout_while(stage, DEADLINE, |s| *s != Stall::Go)
            .unwrap();
    }
}

/// Whether `wal` holds a segment of timeline 2 by name.
fn names_a_timeline_2_segment(wal: &Path) -> bool {
    std::fs::read_dir(wal).is_ok_and(|d| {
        d.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.len() == 24 && n.starts_with("00000002")
        })
    })
}

impl Storage for StallControlSync {
    fn open(&self, path: &Path, how: walrep::storage::OpenFor) -> std::io::Result<std::fs::File> {
        self.inner.open(path, how)
    }
    fn write_at(
        &self,
        file: &std::fs::File,
        path: &Path,
        offset: u64,
        buf: &[u8],
    ) -> std::io::Result<()> {
        self.inner.write_at(file, path, offset, buf)
    }
    fn allocate(&self, file: &std::fs::File, path: &Path, len: u64) -> std::io::Result<()> {
        self.inner.allocate(file, path, len)
    }
    fn sync_data(&self, file: &std::fs::File, path: &Path) -> std::io::Result<()> {
        self.maybe_stall(path, false);
        self.inner.sync_data(file, path)
    }
    fn sync_all(&self, file: &std::fs::File, path: &Path) -> std::io::Result<()> {
        self.maybe_stall(path, false);
        self.inner.sync_all(file, path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.maybe_stall(dir, true);
        self.inner.sync_dir(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_dir_all(path)
    }
    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        self.inner.create_dir(path)
    }
}

/// Images of each promotion-with-writes workload.
const HELD_WRITE_IMAGES: usize = 48;

/// Promotion overlaps its control file's fdatasync with the first writes:
/// while it is in flight the node accepts a write and flushes its WAL on
/// the new timeline, but confirms nothing and lets no walsender past the
/// switch point (the worker that flushed it waits, as for a slow flush); once the control file is
/// durable the write is confirmed. Power-loss images anywhere in that run
/// come back as a primary (the promotion was announced once writes were
/// accepted) with every confirmed write, on either timeline.
#[test]
fn writes_accepted_during_the_promotions_control_file_update_are_confirmed_only_once_it_is_durable()
{
    held_promotion_images(StallOn::Control);
}

/// The node accepts writes as soon as the end-of-recovery record is
/// inserted, before the fsync of `wal/` that makes the new timeline's
/// first segment durable by name: while that fsync is in flight a write
/// is flushed on the new timeline (with the record before it) but not
/// confirmed, no walsender may pass the switch point, and the control
/// file's update runs beside it and becomes durable. So the run has crash
/// points with the control file naming timeline 2 and the segment's name
/// (with the record and the write in it) lost: those images must come
/// back as a primary of timeline 2 (its first segment made again from the
/// old timeline's) that takes writes.
#[test]
fn writes_accepted_before_the_new_timelines_names_are_durable_are_confirmed_only_after_them() {
    held_promotion_images(StallOn::WalDir);
}

/// The end-of-recovery record gets no fdatasync of its own: here its
/// flush (the first of the new timeline's segment) is held while the
/// control file becomes durable, so the run has crash points with the
/// control file naming timeline 2 and neither the record nor the first
/// write durable. Those images must come back as a primary of timeline 2
/// that takes writes; no write is confirmed before the record is durable.
#[test]
fn a_control_file_durable_before_the_end_of_recovery_record_recovers_on_the_new_timeline() {
    held_promotion_images(StallOn::NewTimelineWal);
}

/// A data directory as a crash inside the promotion's last window can
/// leave it, started by the `walrep` binary: the control file names
/// timeline 2 (its update became durable) while the fsync of `wal/` that
/// names the new timeline's first segment did not complete, so the
/// segment is gone; the history file is there (its name was durable
/// before any segment of the timeline was named). Nothing of timeline 2
/// was acknowledged. The node starts as a primary of timeline 2, its
/// first segment made again from the old timeline's, with every write
/// acknowledged before the promotion, and takes writes.
#[test]
fn a_promoted_data_directory_that_lost_its_first_segments_name_starts_on_the_new_timeline() {
    let root = scratch();
    let dir = root.path().join("n");
    walrep::node::init::init(&dir, support::wal::seg()).unwrap();
    const KEYS: u64 = 50;
    {
        let primary = InProcessNode::start_existing(&dir, &["checkpoint_timeout=1h"], None);
        let mut c = redis_conn(&primary.redis_url());
        for i in 0..KEYS {
            let _: String = redis::cmd("SET")
                .arg(format!("k{i}"))
                .arg(value("k", i))
                .query(&mut c)
                .unwrap();
        }
    }
    std::fs::write(dir.join("standby.signal"), b"").unwrap();
    let recording = Arc::new(CrashStorage::new(root.path()).unwrap());
    let storage = Arc::new(StallControlSync::new(recording, StallOn::WalDir));
    let node = InProcessNode::start_existing(
        &dir,
        &["checkpoint_timeout=1h"],
        Some(storage.clone() as Arc<dyn Storage>),
    );
    storage.set(Stall::Armed);
    walrep::standby::trigger::request_promotion(&StdStorage, &dir).unwrap();
    assert!(
        poll(|| storage.stage() == Stall::Stalled),
        "the fsync of wal/ for the new segment's name never started"
    );
    let control_names_2 = || {
        walrep::store::ControlFile::read(&dir).is_ok_and(|c| c.timeline == walrep::TimelineId(2))
    };
    assert!(
        poll(control_names_2),
        "the control file's update waited for the new segment's name"
    );
    let image = root.path().join("image");
    copy_dir(&dir, &image);
    storage.set(Stall::Go);
    drop(node);
    // What the lost fsync of `wal/` takes: the names of timeline 2's
    // segments (the first one, with the end-of-recovery record, and the
    // spare after it).
    let wal = image.join("wal");
    let mut lost = Vec::new();
    for e in std::fs::read_dir(&wal).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.len() == 24 && n.starts_with("00000002") {
            std::fs::remove_file(e.path()).unwrap();
            lost.push(n);
        }
    }
    assert!(!lost.is_empty(), "no segment of timeline 2 was named");
    let _ = std::fs::remove_file(image.join("walrep.pid"));
    assert!(image.join("wal/00000002.history").is_file());

    let mut started = support::node::TestNode::start(&image, &[]);
    let mut c = started.client();
    for i in 0..KEYS {
        let got: Option<String> = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query(&mut c)
            .unwrap();
        assert_eq!(got, Some(value("k", i)), "acknowledged write k{i}");
    }
    let _: String = redis::cmd("SET")
        .arg("after-crash")
        .arg("1")
        .query(&mut c)
        .expect("the recovered node takes writes");
    drop(c);
    assert!(started.stop().success());
    let control = walrep::store::ControlFile::read(&image).unwrap();
    assert_eq!(control.timeline, walrep::TimelineId(2));
    let seg = support::wal::seg();
    let switch_point = history_switch_point(&wal.join("00000002.history"));
    let first = switch_point
        .segno(seg)
        .file_name(walrep::TimelineId(2), seg);
    assert!(lost.contains(&first), "{first} was named: {lost:?}");
    let names = support::file_names(&wal);
    assert!(
        names.contains(&first),
        "timeline 2's first segment was not made again: {names:?}"
    );
}

/// Copy the files and directories under `from` into a new `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        let kind = e.file_type().unwrap();
        if kind.is_dir() {
            copy_dir(&e.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Run a promotion with `on` held, a write sent into the window, the
/// checks for that window, then power-loss images of the whole run.
fn held_promotion_images(on: StallOn) {
    use walrep::storage::CrashEvent as E;
    let root = scratch();
    let dir = root.path().join("n");
    walrep::node::init::init(&dir, support::wal::seg()).unwrap();
    std::fs::write(dir.join("standby.signal"), b"").unwrap();
    let recording = Arc::new(CrashStorage::new(root.path()).unwrap());
    let storage = Arc::new(StallControlSync::new(recording.clone(), on));
    let node = InProcessNode::start_existing(
        &dir,
        &["checkpoint_timeout=1h"],
        Some(storage.clone() as Arc<dyn Storage>),
    );
    let n = node.node().clone();
    storage.set(Stall::Armed);
    walrep::standby::trigger::request_promotion(&StdStorage, &dir).unwrap();
    assert!(
        poll(|| storage.stage() == Stall::Stalled),
        "the promotion's {on:?} sync never started"
    );
    assert!(
        poll(|| n.is_primary()),
        "writes are not accepted while the promotion's {on:?} sync is in flight"
    );
    let announced = recording.position();
    let wal = n.wal().expect("the promoted WAL writer");
    assert_eq!(wal.timeline(), walrep::TimelineId(2));
    let switch_point = history_switch_point(&dir.join("wal/00000002.history"));
    let rel = |p: &str| PathBuf::from("n").join(p);
    // The event that synced the control file after the history file's
    // rename (the promotion's update), if any yet.
    let control_sync = |log: &CrashLog| {
        let renamed = log.events.iter().position(
            |e| matches!(e, E::Rename { to, .. } if *to == rel("wal/00000002.history")),
        )?;
        (renamed..log.events.len()).find(|&i| match &log.events[i] {
            E::Sync { inode } => names_at(log, i).get(&rel("control")) == Some(inode),
            _ => false,
        })
    };
    let control_synced = |log: &CrashLog| control_sync(log).is_some();

    // A write: inserted on the new timeline, not confirmed.
    let before = wal.inserted();
    assert!(
        before > switch_point,
        "the end-of-recovery record is inserted"
    );
    let url = node.redis_url();
    let (tx, rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        let mut c = redis_conn(&url);
        let r: redis::RedisResult<String> = redis::cmd("SET").arg("held").arg("1").query(&mut c);
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    match on {
        // The write's flush (and the record's with it) goes on.
        StallOn::Control | StallOn::WalDir => assert!(
            poll(|| wal.inserted() > before && wal.flushed() >= wal.inserted()),
            "the write was not flushed while the promotion's {on:?} sync was in flight"
        ),
        // Its flush is the one held; the control file became durable.
        StallOn::NewTimelineWal => {
            assert!(
                poll(|| wal.inserted() > before),
                "the write was not inserted while the record's flush was in flight"
            );
            assert!(
                poll(|| control_synced(&recording.log())),
                "the control file was not made durable beside the record's flush"
            );
            assert!(
                wal.flushed() <= switch_point,
                "nothing of timeline 2 is durable"
            );
        }
    }
    if on == StallOn::WalDir {
        // Side by side: the control file names timeline 2 durably while
        // its first segment's name is not yet durable (the crash images
        // below recover that window).
        assert!(
            poll(|| control_synced(&recording.log())),
            "the control file waited for the new timeline's segment names"
        );
    }
    let flushed = wal.flushed();
    assert_eq!(
        rx.try_recv(),
        Err(std::sync::mpsc::TryRecvError::Empty),
        "a write was confirmed inside the promotion's {on:?} window"
    );
    let fp = n.flush_point();
    assert_eq!(fp.tli, walrep::TimelineId(2));
    assert_eq!(
        fp.lsn, switch_point,
        "walsenders may send WAL of the new timeline inside the promotion's {on:?} window"
    );

    // The sync done: the write is confirmed, visible, sendable.
    storage.set(Stall::Go);
    let reply = rx
        .recv_timeout(DEADLINE)
        .expect("the held write was never answered");
    assert_eq!(reply, Ok("OK".to_string()));
    let confirmed = recording.position();
    client.join().unwrap();
    let mut reader = redis_conn(&node.redis_url());
    let seen: Option<String> = redis::cmd("GET").arg("held").query(&mut reader).unwrap();
    assert_eq!(seen.as_deref(), Some("1"));
    assert!(n.flush_point().lsn >= flushed);
    let log = recording.log();
    drop(reader);
    drop(node);
    // From this crash point on, the control file names timeline 2 durably.
    let control_durable = control_sync(&log).expect("the control file update was synced") + 1;

    let seed = env_u64("CRASH_SEED").unwrap_or_else(|| StdRng::from_entropy().gen());
    let images = env_u64("CRASH_IMAGES").map_or(HELD_WRITE_IMAGES, |n| n as usize);
    eprintln!(
        "held writes ({on:?}): CRASH_SEED={seed}: {} events ({}), announced at {announced}, control durable at {control_durable}, confirmed at {confirmed}",
        log.events.len(),
        log.summary()
    );
    let violations = check_images(&log, seed, images, |root, point| {
        let dir = root.join("n");
        let node = start_image(&dir, &["primary_conninfo=".into()])?;
        let result = (|| {
            if !node.node.is_primary() {
                if point >= announced as usize {
                    return Err("writes were accepted before the crash, yet the node came back as a standby".to_string());
                }
                promote(&node, &dir)?;
            }
            let tli = node.node.wal().map(|w| w.timeline());
            if point >= control_durable && tli != Some(walrep::TimelineId(2)) {
                return Err(format!(
                    "the control file named timeline 2 durably, yet the node came back on {tli:?}"
                ));
            }
            let url = url_of(&node);
            let mut c = redis_conn(&url);
            let held: Option<String> = redis::cmd("GET")
                .arg("held")
                .query(&mut c)
                .map_err(|e| e.to_string())?;
            if point >= confirmed as usize && held.as_deref() != Some("1") {
                return Err(format!("the confirmed write is gone: {held:?}"));
            }
            let _: String = redis::cmd("SET")
                .arg("after-crash")
                .arg("1")
                .query(&mut c)
                .map_err(|e| format!("the recovered node refused a write: {e}"))?;
            Ok(())
        })();
        node.stop()
            .map_err(|e| format!("the node did not stop: {e}"))?;
        result
    });
    for v in violations.iter().take(10) {
        eprintln!(
            "VIOLATION held writes ({on:?}) CRASH_SEED={} point {} {}: {}",
            v.seed, v.point, v.choice, v.message
        );
    }
    assert!(violations.is_empty(), "{} violations", violations.len());
}

/// The switch point a history file's last line names (`1\t0/3000028\t...`).
fn history_switch_point(path: &Path) -> Lsn {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text
        .lines()
        .rfind(|l| l.split('\t').count() >= 2 && !l.starts_with('#'))
        .unwrap_or_else(|| panic!("no switch point in {text:?}"));
    let lsn = line.split('\t').nth(1).unwrap();
    let (hi, lo) = lsn.split_once('/').unwrap();
    let hi = u64::from_str_radix(hi, 16).unwrap();
    let lo = u64::from_str_radix(lo, 16).unwrap();
    Lsn((hi << 32) | lo)
}
