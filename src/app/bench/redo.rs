//! `walrep bench --scenario redo`: crash recovery's redo alone, in this
//! process (no node, no network, no fsync in the measured part): a WAL of
//! `--restart-records` SETs (16-byte values) written once with keys in
//! order (every SET a new key) and once with random keys over a third as
//! many keys (most SETs replace a key, as the `restart` scenario's load
//! does), then each replayed by `replay_to_end`, the function a restarting
//! node runs, into an empty store. The figure is records/s of that replay.
//!
//! Instruction counts per record are steadier than wall time on a shared
//! machine: run it under callgrind and count only the replay, e.g.
//! `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='*replay_to_end*' --toggle-collect='*redo_read_ahead*'
//! walrep bench --scenario redo --restart-records 300000`, with
//! `WALREP_BENCH_REDO_KEYS=sequential` or `random` for one key order.

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

/// Write the WAL and replay it, for both key orders; print records/s.
pub fn run(args: &BenchArgs) -> Result<()> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let n = args.restart_records;
    println!(
        "\n== redo: {n} SET records replayed by crash recovery into an empty store, in {}",
        base.display()
    );
    for keys in [Keys::Sequential, Keys::Random].into_iter().filter(wanted) {
        let dir = tempfile::tempdir_in(&base)
            .map_err(|e| BenchError::io("create a data directory", e))?;
        let end = write_wal(dir.path(), n, keys)?;
        let (secs, store_keys) = replay(dir.path())?;
        let bytes = end.0 - initial_lsn(WalSegSize::DEFAULT).0;
        println!(
            "  {keys:?} keys: {n} records ({:.0} MB) in {secs:.3} s = {:.0} records/s, {:.0} MB/s; {store_keys} keys",
            bytes as f64 / 1e6,
            n as f64 / secs,
            bytes as f64 / 1e6 / secs,
        );
    }
    Ok(())
}

/// `n` SET records into `datadir/wal`, as the server logs them; returns the
/// end of WAL.
fn write_wal(datadir: &Path, n: u64, keys: Keys) -> Result<Lsn> {
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
    for i in 0..n {
        let k = match keys {
            Keys::Sequential => i,
            Keys::Random => xorshift(&mut rng) % keyspace,
        };
        let key = format!("key:{k:012}");
        let op = Op::Set {
            key: Cow::Borrowed(key.as_bytes()),
            value: Cow::Borrowed(&value),
        };
        wal.insert(RM_KV, 0, &encode(i, &[op]))
            .map_err(err("insert a record"))?;
    }
    wal.shutdown().map_err(err("shut the WAL down"))
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Replay all of `datadir`'s WAL into an empty store: seconds, keys.
fn replay(datadir: &Path) -> Result<(f64, u64)> {
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
    let started = Instant::now();
    replay_to_end(datadir, &control, history, &store, &repair)
        .map_err(|e| BenchError::Server(format!("replay: {e}")))?;
    Ok((started.elapsed().as_secs_f64(), store.len()))
}
