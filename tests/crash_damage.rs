//! Power-loss images with damage in the middle of the WAL: a torn tail may
//! end recovery, a damaged middle never does. A primary writes about three
//! 1 MB segments of acknowledged writes on a [`CrashStorage`]; at crash
//! points in the last segments, the disk a power loss could have left is
//! rebuilt ([`CrashModel`]), 16 bytes in the middle of the first segment
//! are flipped, and a node is started on it. It either refuses to start
//! with the damage named, changing no WAL, or starts with every write
//! acknowledged before the crash: it never starts having dropped one. The
//! same image without the flip (a torn tail only) must start, whole.
//!
//! `CRASH_SEED=n` replays one seed; `CRASH_IMAGES=n` sets how many images.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use walrep::storage::{image_rng, CrashLog, CrashModel, CrashStorage, Generator, Storage};

use support::crash::scratch;
use support::node::InProcessNode;
use support::wal::seg;
use support::DEADLINE;

/// Images per run in CI.
const CI_IMAGES: usize = 48;
/// Acknowledged writes of the workload (~600 bytes each: three segments).
const WRITES: u64 = 5_000;
/// Crash points are taken after this many acknowledgements (the first
/// segment is full and a later one holds acknowledged writes).
const CRASH_AFTER: usize = 2_500;
const SEG: usize = 1 << 20;

fn value(n: u64) -> String {
    format!("{n}:{}", "v".repeat(600))
}

/// The workload's log and, for each write, the log position after its ack.
fn workload(parent: &Path) -> (CrashLog, Vec<u64>) {
    let dir = parent.join("n");
    walrep::node::init::init(&dir, seg()).unwrap();
    let storage = Arc::new(CrashStorage::new(parent).unwrap());
    let node = InProcessNode::start_existing(
        &dir,
        &["checkpoint_timeout=1h", "max_wal_size=1GB"],
        Some(storage.clone() as Arc<dyn Storage>),
    );
    let client = redis::Client::open(node.redis_url()).unwrap();
    let mut c = client.get_connection_with_timeout(DEADLINE).unwrap();
    let mut acked_at = Vec::new();
    for n in 0..WRITES {
        let _: String = redis::cmd("SET")
            .arg(format!("k{n}"))
            .arg(value(n))
            .query(&mut c)
            .unwrap();
        acked_at.push(storage.position());
    }
    let log = storage.log();
    drop(node);
    (log, acked_at)
}

/// The image's WAL segment files that were written (not pre-allocated),
/// oldest first.
fn written_segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.len() == 24 && fs::read(p).is_ok_and(|b| b.len() == SEG && b[..4] == *b"WALR")
        })
        .collect();
    v.sort();
    v
}

fn is_temp(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("xlogtemp."))
}

fn wal_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        // A crash can leave a half-made temporary file; start-up removes
        // it before anything else, as PostgreSQL's RemoveTempXlogFiles.
        .filter(|p| p.is_file() && !is_temp(p))
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

/// What a start on a damaged image did.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Refused, naming the damage, WAL untouched.
    Refused,
    /// Started with every acknowledged write.
    StartedWhole,
}

/// With `damage`, flip the middle of the first segment; start a node on
/// the image, and check it never starts short of an acknowledged write.
fn check_image(image: &Path, acked: u64, damage: bool) -> Result<Verdict, String> {
    let dir = image.join("n");
    if damage {
        let first = written_segments(&dir)
            .into_iter()
            .next()
            .ok_or("no written segment in the image")?;
        let mut bytes = fs::read(&first).unwrap();
        for b in &mut bytes[SEG / 2..SEG / 2 + 16] {
            *b ^= 0xA5;
        }
        fs::write(&first, bytes).unwrap();
    }
    let before = wal_bytes(&dir);
    let opts = walrep::node::StartOptions {
        overrides: vec!["port=0".into(), "replication_port=0".into()],
        storage: None,
    };
    let node = match walrep::node::RunningNode::start(&dir, &opts) {
        Err(e) => {
            let text = e.to_string();
            if !text.contains("WAL is damaged at") {
                return Err(format!("refused for another reason: {text}"));
            }
            if wal_bytes(&dir) != before {
                return Err("the refused start changed the WAL".into());
            }
            return Ok(Verdict::Refused);
        }
        Ok(node) => node,
    };
    let port = node.node.ports.lock().unwrap().redis;
    let present = present_writes(port);
    node.stop()
        .map_err(|e| format!("the node did not stop: {e}"))?;
    let present = present?;
    match (0..acked).find(|n| !present.contains(n)) {
        Some(n) => Err(format!(
            "started past the damage without k{n}, acknowledged before the crash \
             ({acked} acknowledged, {} present)",
            present.len()
        )),
        None => Ok(Verdict::StartedWhole),
    }
}

fn present_writes(port: u16) -> Result<BTreeSet<u64>, String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut c = client
        .get_connection_with_timeout(DEADLINE)
        .map_err(|e| e.to_string())?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("k*")
        .query(&mut c)
        .map_err(|e| e.to_string())?;
    Ok(keys
        .iter()
        .filter_map(|k| k.strip_prefix('k')?.parse().ok())
        .collect())
}

#[test]
fn a_damaged_middle_never_ends_recovery_in_any_power_loss_image() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rngs::StdRng::from_entropy().gen());
    let images: usize = std::env::var("CRASH_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CI_IMAGES);
    let tmp = scratch();
    let (log, acked_at) = workload(tmp.path());
    let mut rng = image_rng(seed);
    let from = acked_at[CRASH_AFTER] as usize;
    let to = *acked_at.last().unwrap() as usize;
    let mut points: Vec<usize> = (0..images).map(|_| rng.gen_range(from..=to)).collect();
    points.sort_unstable();
    eprintln!("CRASH_SEED={seed}: {images} images between events {from} and {to}");
    let mut model = CrashModel::new(&log);
    let mut refused = 0;
    for (k, &point) in points.iter().enumerate() {
        while model.position < point {
            model.apply(&log.events[model.position]);
        }
        let generator = Generator::ALL[k % Generator::ALL.len()];
        let acked = acked_at.iter().filter(|&&at| at as usize <= point).count() as u64;
        // The same image twice: torn tail only, then with the damage too.
        let image_seed: u64 = rng.gen();
        for damage in [false, true] {
            let image = scratch();
            let choice = model
                .build_image(image.path(), generator, &mut image_rng(image_seed))
                .unwrap();
            let what = if damage { "damaged" } else { "torn tail only" };
            match (damage, check_image(image.path(), acked, damage)) {
                (true, Ok(Verdict::Refused)) => refused += 1,
                (_, Ok(Verdict::StartedWhole)) => {}
                (false, Ok(Verdict::Refused)) => panic!(
                    "CRASH_SEED={seed} point {point} ({choice:?}): a torn tail was taken for damage"
                ),
                (_, Err(e)) => panic!("CRASH_SEED={seed} point {point} ({choice:?}, {what}): {e}"),
            }
        }
    }
    // Every image holds acknowledged writes in a segment after the
    // damaged one: each must have been refused.
    assert_eq!(refused, images, "CRASH_SEED={seed}");
}
