//! `walrep bench --scenario wal`: the WAL writer alone, without a node or
//! a network. The disk's raw fdatasync rate measured in the same run, then
//! durable commits per second and commit latency (mean, p99) of the WAL
//! writer for each `--clients` count of committing threads, the ratio of one
//! thread's commit rate to the raw fdatasync rate, the WAL's own cost per
//! commit without the fdatasync, and the rate at which asynchronous
//! inserts are written and the reader validates them.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walrep::states::TimelineHistory;
use walrep::storage::{OpenFor, StdStorage, Storage};
use walrep::wal::{initial_lsn, ReaderConfig, Wal, WalConfig, WalError, WalReader, RM_KV};
use walrep::{Lsn, TimelineId, WalSegSize};

use super::{BenchArgs, BenchError};

/// Bytes of one commit record's payload (a small SET: key + value).
const PAYLOAD_BYTES: usize = 48;
/// Size of the file the raw fdatasync loop appends to.
const RAW_FILE_BYTES: u64 = 16 << 20;
/// WAL written, then read back, by the insert/read measurement.
const READ_MB: u64 = 256;

type Result<T> = std::result::Result<T, BenchError>;

fn wal_err(what: &str) -> impl FnOnce(WalError) -> BenchError + '_ {
    move |e| BenchError::Server(format!("{what}: {e}"))
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |e| BenchError::io(what, e)
}

/// Run the WAL micro-benchmark in a temporary directory under `--dir`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let secs = args.seconds;
    let dur = Duration::from_secs(secs);
    let dir = super::RunDir::create(args, "walrep-bench-wal-")?;
    println!(
        "walrep WAL benchmark in {} ({secs} s per measurement)",
        base.display()
    );

    single_client_ratio(dir.path(), (2 * secs).max(4) as usize)?;
    let cpu = commit_overhead(dir.path(), Duration::from_secs(1))?;
    println!(
        "WAL cost per 1-thread commit without the fdatasync (pwrite included): {:.2} us ({:.0} commits/s)",
        1e6 / cpu,
        cpu
    );
    let raw_8k = RawLoop::new(dir.path(), 8192)?.run(dur)?;
    println!("raw fdatasync, 8 kB writes (pg_test_fsync style): {raw_8k:.0}/s");
    for &n in &args.clients {
        let r = wal_commits(dir.path(), n as usize, dur)?;
        println!(
            "WAL commits, {n:>2} threads: {:>8.0}/s  latency mean {:>7.1} us  p99 {:>7.1} us  fdatasyncs {:.0}/s  mean batch {:.1}",
            r.commits_per_s, r.mean_us, r.p99_us, r.fsyncs_per_s, r.mean_batch
        );
    }
    for payload in [100, 1000] {
        let (ins, read) = async_write_then_read(dir.path(), payload, READ_MB)?;
        println!(
            "async inserts (no waiting), {payload}-byte payloads: {:.0} MB/s, {:.0} records/s (flushed by the WAL writer)",
            ins.0, ins.1
        );
        println!(
            "WalReader, {payload}-byte payloads, {READ_MB} MB of WAL in page cache: {:.0} MB/s, {:.0} records/s",
            read.0, read.1
        );
    }
    Ok(())
}

/// Write `mb` MiB of WAL with asynchronous commits (nobody waits; the WAL
/// writer and back-pressure flush), then time a WalReader validating all of
/// it. Returns (MB/s, records/s) of both phases.
fn async_write_then_read(
    base: &Path,
    payload_bytes: usize,
    mb: u64,
) -> Result<((f64, f64), (f64, f64))> {
    let dir = tempfile::tempdir_in(base).map_err(io_err("create a WAL directory"))?;
    let seg = WalSegSize::DEFAULT;
    let mut cfg = WalConfig::new(
        dir.path(),
        1,
        TimelineId(1),
        seg,
        initial_lsn(seg),
        Lsn::INVALID,
    );
    cfg.wal_writer_delay = Duration::from_secs(10);
    let wal = Wal::start(cfg).map_err(wal_err("start the WAL"))?;
    let payload = vec![0x5Au8; payload_bytes];
    let target = initial_lsn(seg).0 + (mb << 20);
    let t0 = Instant::now();
    let mut inserted = 0u64;
    while wal.inserted().0 < target {
        wal.insert(RM_KV, 0, &payload)
            .map_err(wal_err("insert a record"))?;
        inserted += 1;
    }
    let end = wal.shutdown().map_err(wal_err("shut the WAL down"))?;
    let write_secs = t0.elapsed().as_secs_f64();
    let rcfg = ReaderConfig {
        dir: dir.path().to_path_buf(),
        system_id: 1,
        seg_size: seg,
        history: TimelineHistory::root(TimelineId(1)),
    };
    let mut reader = WalReader::new(rcfg, initial_lsn(seg));
    let start = Instant::now();
    let mut records = 0u64;
    while reader.read_record().is_ok() {
        records += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    if reader.next_lsn() != end {
        return Err(BenchError::Server(format!(
            "the reader stopped at {} before the end of WAL {end}",
            reader.next_lsn()
        )));
    }
    let bytes = (end.0 - initial_lsn(seg).0) as f64;
    Ok((
        (bytes / write_secs / 1e6, inserted as f64 / write_secs),
        (bytes / secs / 1e6, records as f64 / secs),
    ))
}

/// The machine is shared and its fdatasync rate drifts, so the 1-thread
/// ratio alternates one-second rounds of the raw loop and of WAL commits
/// (both warmed up, both in steady state: no file creation inside a round)
/// and compares their totals; it also reports the median per-round ratio.
fn single_client_ratio(dir: &Path, rounds: usize) -> Result<()> {
    let round = Duration::from_secs(1);
    let mut raw = RawLoop::new(dir, PAYLOAD_BYTES + 32)?;
    let wal_dir = tempfile::tempdir_in(dir).map_err(io_err("create a WAL directory"))?;
    let wal = start_wal(wal_dir.path())?;
    raw.run(round)?;
    commit_loop(&wal, 0, Instant::now() + round)?;
    let (mut raw_sum, mut wal_sum, mut ratios) = (0.0, 0.0, Vec::new());
    let wal_round = || -> Result<f64> {
        let t0 = Instant::now();
        let n = commit_loop(&wal, 0, t0 + round)?.len();
        Ok(n as f64 / t0.elapsed().as_secs_f64())
    };
    for i in 0..rounds {
        // Alternate the order so neither side always runs first.
        let (r, w) = if i % 2 == 0 {
            let r = raw.run(round)?;
            (r, wal_round()?)
        } else {
            let w = wal_round()?;
            (raw.run(round)?, w)
        };
        raw_sum += r;
        wal_sum += w;
        ratios.push(w / r);
    }
    wal.shutdown().map_err(wal_err("shut the WAL down"))?;
    ratios.sort_by(f64::total_cmp);
    println!(
        "raw fdatasync, {}-byte appends (what one WAL commit writes), {rounds} rounds: {:.0}/s",
        PAYLOAD_BYTES + 32,
        raw_sum / rounds as f64
    );
    println!(
        "1-thread WAL commits in the same rounds: {:.0}/s = {:.1}% of the raw fdatasync rate (median round {:.1}%)",
        wal_sum / rounds as f64,
        100.0 * wal_sum / raw_sum,
        100.0 * ratios[ratios.len() / 2]
    );
    Ok(())
}

/// pwrite `len` bytes sequentially into a pre-allocated file + fdatasync:
/// the disk's floor for one durable commit.
struct RawLoop {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    off: u64,
}

impl RawLoop {
    fn new(dir: &Path, len: usize) -> Result<RawLoop> {
        let path = dir.join(format!("raw-fdatasync-{len}"));
        let file = preallocated(&path)?;
        Ok(RawLoop {
            path,
            file,
            buf: vec![0xA5u8; len],
            off: 0,
        })
    }

    /// fdatasyncs per second over `dur`.
    fn run(&mut self, dur: Duration) -> Result<f64> {
        let len = self.buf.len() as u64;
        let mut n = 0u64;
        let start = Instant::now();
        while start.elapsed() < dur {
            self.file
                .write_all_at(&self.buf, self.off)
                .map_err(io_err("write the probe file"))?;
            self.file
                .sync_data()
                .map_err(io_err("fdatasync the probe file"))?;
            self.off = (self.off + len) % (RAW_FILE_BYTES - len);
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    }
}

impl Drop for RawLoop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn preallocated(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err("create the probe file"))?;
    let zeros = vec![0u8; 1 << 20];
    for i in 0..(RAW_FILE_BYTES >> 20) {
        f.write_all_at(&zeros, i << 20)
            .map_err(io_err("zero-fill the probe file"))?;
    }
    f.sync_all().map_err(io_err("fsync the probe file"))?;
    Ok(f)
}

struct CommitResult {
    commits_per_s: f64,
    mean_us: f64,
    p99_us: f64,
    fsyncs_per_s: f64,
    mean_batch: f64,
}

/// `threads` sessions each loop insert + wait_flushed for `dur`.
fn wal_commits(base: &Path, threads: usize, dur: Duration) -> Result<CommitResult> {
    let dir = tempfile::tempdir_in(base).map_err(io_err("create a WAL directory"))?;
    let wal = Arc::new(start_wal(dir.path())?);
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || commit_loop(&wal, t, start + dur))
        })
        .collect();
    let mut lat: Vec<u32> = Vec::new();
    for w in workers {
        let joined = w
            .join()
            .map_err(|_| BenchError::Server("a committing thread panicked".into()))?;
        lat.extend(joined?);
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = wal.stats();
    wal.shutdown().map_err(wal_err("shut the WAL down"))?;
    lat.sort_unstable();
    let mean = lat.iter().map(|&l| f64::from(l)).sum::<f64>() / lat.len().max(1) as f64;
    let p99 = lat
        .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0);
    Ok(CommitResult {
        commits_per_s: lat.len() as f64 / secs,
        mean_us: mean / 1000.0,
        p99_us: f64::from(p99) / 1000.0,
        fsyncs_per_s: stats.fsyncs as f64 / secs,
        mean_batch: stats.mean_batch_records(),
    })
}

/// Storage that writes but never fdatasyncs: isolates the WAL's own cost.
#[derive(Debug)]
struct NoSyncStorage;

impl Storage for NoSyncStorage {
    fn open(&self, path: &Path, how: OpenFor) -> std::io::Result<File> {
        StdStorage.open(path, how)
    }
    fn write_at(&self, file: &File, path: &Path, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        StdStorage.write_at(file, path, offset, buf)
    }
    fn allocate(&self, file: &File, path: &Path, len: u64) -> std::io::Result<()> {
        StdStorage.allocate(file, path, len)
    }
    fn sync_data(&self, _: &File, _: &Path) -> std::io::Result<()> {
        Ok(())
    }
    fn sync_all(&self, file: &File, path: &Path) -> std::io::Result<()> {
        StdStorage.sync_all(file, path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        StdStorage.sync_dir(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        StdStorage.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        StdStorage.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> std::io::Result<()> {
        StdStorage.remove_dir_all(path)
    }
    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        StdStorage.create_dir(path)
    }
}

/// One thread's commits per second when fdatasync costs nothing.
fn commit_overhead(base: &Path, dur: Duration) -> Result<f64> {
    let dir = tempfile::tempdir_in(base).map_err(io_err("create a WAL directory"))?;
    let seg = WalSegSize::DEFAULT;
    let mut cfg = WalConfig::new(
        dir.path(),
        1,
        TimelineId(1),
        seg,
        initial_lsn(seg),
        Lsn::INVALID,
    );
    cfg.storage = Arc::new(NoSyncStorage);
    let wal = Wal::start(cfg).map_err(wal_err("start the WAL"))?;
    commit_loop(&wal, 0, Instant::now() + Duration::from_millis(200))?;
    let t0 = Instant::now();
    let n = commit_loop(&wal, 0, t0 + dur)?.len();
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    wal.shutdown().map_err(wal_err("shut the WAL down"))?;
    Ok(rate)
}

fn start_wal(dir: &Path) -> Result<Wal> {
    let seg = WalSegSize::DEFAULT;
    let cfg = WalConfig::new(dir, 1, TimelineId(1), seg, initial_lsn(seg), Lsn::INVALID);
    let wal = Wal::start(cfg).map_err(wal_err("start the WAL"))?;
    // Create the first segment and let the next one be pre-allocated.
    let end = wal
        .insert(RM_KV, 0, b"warm-up")
        .map_err(wal_err("insert a record"))?;
    wal.wait_flushed(end).map_err(wal_err("flush the WAL"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while wal.stats().segments_created < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(wal)
}

/// Commit until `until`; returns each commit's latency in nanoseconds.
fn commit_loop(wal: &Wal, t: usize, until: Instant) -> Result<Vec<u32>> {
    let mut payload = vec![0u8; PAYLOAD_BYTES];
    let mut lat = Vec::with_capacity(1 << 16);
    let mut i = 0u64;
    loop {
        let t0 = Instant::now();
        if t0 >= until {
            return Ok(lat);
        }
        payload[..8].copy_from_slice(&i.to_le_bytes());
        payload[8] = t as u8;
        let end = wal
            .insert(RM_KV, 0, &payload)
            .map_err(wal_err("insert a record"))?;
        wal.wait_flushed(end).map_err(wal_err("flush the WAL"))?;
        lat.push(t0.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
        i += 1;
    }
}
