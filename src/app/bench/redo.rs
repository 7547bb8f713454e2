//! `walrep bench --scenario redo`: crash recovery's redo alone, in this
//! process (no node, no network, no fsync in the measured part): a WAL of
//! `--restart-records` SETs (16-byte values) written once with keys in
//! order (every SET a new key) and once with random keys over a third as
//! many keys (most SETs replace a key, as the `restart` scenario's load
//! does), then each replayed by `replay_to_end`, the function a restarting
//! node runs, into an empty store; each WAL once with one SET per record
//! and once with runs of [`PIPELINED_SETS`] SETs per record (what a
//! pipelining client's writes become, as in the `restart` scenario). The
//! figures are key changes (SETs) per second of that replay, by the wall
//! clock, per second of the process's CPU time (both threads; steadier
//! than wall time on a shared machine) and per second of the applying
//! thread's CPU time (the reading thread works beside it: with a core
//! each, this is the wall-clock rate redo can reach).
//!
//! Instruction counts per record are steadier than wall time on a shared
//! machine: run it under callgrind and count only the replay, e.g.
//! `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='*replay_to_end*' --toggle-collect='*redo_read_ahead*'
//! walrep bench --scenario redo --restart-records 300000`, with
//! `WALREP_BENCH_REDO_KEYS=sequential` or `random` for one key order and
//! `WALREP_BENCH_REDO_SETS=1` or `32` for one record size.

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};

use walrep::node::recovery::{replay_to_end, WalRepair};
use walrep::states::TimelineHistory;
use walrep::storage::StdStorage;
use walrep::store::record::{encode, Op, RM_KV};
use walrep::store::{ControlFile, Store};
use walrep::wal::{initial_lsn, Wal, WalConfig};
use walrep::{Lsn, TimelineId, WalSegSize};

use super::{BenchArgs, BenchError};

/// Bytes of each SET's value (the `restart` scenario's).
const VALUE_BYTES: usize = 16;
/// The system identifier of the WAL this scenario writes.
const SYSTEM_ID: u64 = 1;
/// SETs per record of a pipelined run (the `restart` scenario's pipeline
/// depth: the server logs a client's run of SETs as one record).
const PIPELINED_SETS: u64 = 32;

type Result<T> = std::result::Result<T, BenchError>;

/// Which keys the SETs write.
#[derive(Debug, Clone, Copy)]
enum Keys {
    /// `key:000000000000`, `key:000000000001`, ...: every SET a new key,
    /// appended at the end of the map.
    Sequential,
    /// Uniformly random over a third as many keys as records.
    Random,
}

/// Whether `WALREP_BENCH_REDO_KEYS` (`sequential` or `random`; unset:
/// both) asks for this key order: one order per run under callgrind.
fn wanted(keys: &Keys) -> bool {
    match std::env::var("WALREP_BENCH_REDO_KEYS") {
        Ok(only) => format!("{keys:?}").eq_ignore_ascii_case(&only),
        Err(_) => true,
    }
}

/// Whether `WALREP_BENCH_REDO_SETS` (`1` or `32`; unset: both) asks for
/// records of `sets` SETs.
fn wanted_sets(sets: u64) -> bool {
    std::env::var("WALREP_BENCH_REDO_SETS").map_or(true, |only| only == sets.to_string())
}

/// Write the WAL and replay it, for both key orders and record sizes;
/// print key changes/s.
pub fn run(args: &BenchArgs) -> Result<()> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let n = args.restart_records;
    println!(
        "\n== redo: {n} SETs replayed by crash recovery into an empty store, in {}",
        base.display()
    );
    for keys in [Keys::Sequential, Keys::Random].into_iter().filter(wanted) {
        for sets in [1, PIPELINED_SETS].into_iter().filter(|s| wanted_sets(*s)) {
            let dir = super::RunDir::create(args, "walrep-bench-redo-")?;
            let end = write_wal(dir.path(), n, keys, sets)?;
            let (secs, cpu, store_keys) = replay(dir.path())?;
            let bytes = end.0 - initial_lsn(WalSegSize::DEFAULT).0;
            println!(
                "  {keys:?} keys, {sets} SET(s) per record: {n} changes ({:.0} MB) in {secs:.3} s = {:.0} changes/s, {:.0} MB/s; CPU {:.3} s = {:.0} changes per CPU-second; applying thread {:.3} s = {:.0} changes per its CPU-second; {store_keys} keys",
                bytes as f64 / 1e6,
                n as f64 / secs,
                bytes as f64 / 1e6 / secs,
                cpu.process,
                n as f64 / cpu.process.max(1e-9),
                cpu.applying,
                n as f64 / cpu.applying.max(1e-9),
            );
        }
    }
    Ok(())
}

/// `n` SETs into `datadir/wal`, `sets` per record, as the server logs
/// them; returns the end of WAL.
fn write_wal(datadir: &Path, n: u64, keys: Keys, sets: u64) -> Result<Lsn> {
    let seg = WalSegSize::DEFAULT;
    let wal_dir = datadir.join("wal");
    std::fs::create_dir_all(&wal_dir).map_err(|e| BenchError::io("create wal/", e))?;
    let mut cfg = WalConfig::new(
        &wal_dir,
        SYSTEM_ID,
        TimelineId(1),
        seg,
        initial_lsn(seg),
        Lsn::INVALID,
    );
    cfg.wal_writer_delay = Duration::from_millis(10);
    let err = |what: &'static str| move |e| BenchError::Server(format!("{what}: {e}"));
    let wal = Wal::start(cfg).map_err(err("start the WAL"))?;
    let keyspace = (n / 3).max(1);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let value = [b'x'; VALUE_BYTES];
    let mut keys_of_record = Vec::with_capacity(sets as usize);
    for i in 0..n {
        let k = match keys {
            Keys::Sequential => i,
            Keys::Random => xorshift(&mut rng) % keyspace,
        };
        keys_of_record.push(format!("key:{k:012}"));
        if (keys_of_record.len() as u64) < sets && i + 1 < n {
            continue;
        }
        let ops: Vec<Op<'_>> = keys_of_record
            .iter()
            .map(|key| Op::Set {
                key: Cow::Borrowed(key.as_bytes()),
                value: Cow::Borrowed(&value),
            })
            .collect();
        wal.insert(RM_KV, 0, &encode(i, &ops))
            .map_err(err("insert a record"))?;
        keys_of_record.clear();
    }
    wal.shutdown().map_err(err("shut the WAL down"))
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// CPU time a replay took.
struct Cpu {
    /// The whole process's (both redo threads), in seconds.
    process: f64,
    /// The applying thread's (this one), in seconds: what bounds redo's
    /// wall-clock rate when each thread has a core to itself.
    applying: f64,
}

/// Replay all of `datadir`'s WAL into an empty store: seconds, CPU
/// time, keys.
fn replay(datadir: &Path) -> Result<(f64, Cpu, u64)> {
    let seg = WalSegSize::DEFAULT;
    let mut control = ControlFile::new_system(SYSTEM_ID, seg, 0);
    control.redo_lsn = initial_lsn(seg);
    let storage = StdStorage;
    let repair = WalRepair {
        storage: &storage,
        restore: None,
        peers: Vec::new(),
    };
    let store = Store::new();
    let history = TimelineHistory::root(TimelineId(1));
    let (started, cpu, thread) = (Instant::now(), cpu_secs(), thread_cpu_secs());
    replay_to_end(datadir, &control, history, &store, &repair)
        .map_err(|e| BenchError::Server(format!("replay: {e}")))?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = Cpu {
        process: cpu_secs() - cpu,
        applying: thread_cpu_secs() - thread,
    };
    Ok((secs, cpu, store.len()))
}

/// CPU time this thread has used, in seconds.
fn thread_cpu_secs() -> f64 {
    // SAFETY: clock_gettime writes the struct it is given and nothing
    // else; CLOCK_THREAD_CPUTIME_ID is always valid.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return 0.0;
    }
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// User and system CPU time this process has used, in seconds.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
