//! What every power-loss image test shares: where images are built, which
//! crash points are tried, and the environment knobs that scale a run.

use rand::Rng;
use walrep::storage::CrashLog;

use super::DEADLINE;

/// A scratch directory, in memory when the machine has `/dev/shm` (an
/// image's fsyncs cost nothing there, and nothing in them is meant to
/// survive: the images are built, not crashed).
pub fn scratch() -> tempfile::TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

/// The crash points to test: before and after each sync, and (one in
/// four) random points between, `images` of them in all (with repeats when
/// there are fewer points than images), in increasing order.
pub fn crash_points(log: &CrashLog, images: usize, rng: &mut impl Rng) -> Vec<usize> {
    let mut points = Vec::new();
    for (i, e) in log.events.iter().enumerate() {
        if e.is_sync() {
            points.push(i);
            points.push(i + 1);
        }
    }
    let total = log.events.len();
    let mut chosen: Vec<usize> = (0..images)
        .map(|k| {
            if k % 4 == 3 || points.is_empty() {
                rng.gen_range(0..=total)
            } else {
                points[rng.gen_range(0..points.len())]
            }
        })
        .collect();
    chosen.sort_unstable();
    chosen
}

/// A number from the environment (`CRASH_SEED`, `CRASH_IMAGES`,
/// `CRASH_ROUNDS`), when it is set and parses.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A Redis connection to an image's node, every wait bounded by
/// [`DEADLINE`].
pub fn redis_conn(url: &str) -> redis::Connection {
    let c = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(DEADLINE)
        .unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c
}
