//! The `memory` scenario: resident memory per key of walrep and of Redis 7,
//! each loaded with the same distinct keys (`key:%012d`) and values of the
//! same size, in the same run.
//!
//! Each server starts empty; its RSS (`VmRSS` of /proc/PID/status) is read
//! before and after the load, and the difference divided by the number of
//! keys is its cost per key, the server's fixed footprint left out. The
//! load is pipelined SETs over a few connections, checked with DBSIZE
//! afterwards. walrep runs with `synchronous_commit = off`, Redis with
//! `appendfsync no`: memory does not depend on the flushes. A size whose
//! data (keys and values) would exceed `--memory-max-gb` is skipped and
//! said so (10 M keys of 1 KB need ~10 GB on each server).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::procs::{self, Child};
use super::{require_tool, BenchArgs, BenchError};

/// The target: walrep's RSS per key at most this multiple of Redis's.
pub const TARGET_RATIO: f64 = 1.2;

/// SETs sent before their replies are read, per connection.
const PIPELINE: usize = 1000;
/// Connections loading in parallel (keys split between them).
const LOADERS: u64 = 4;
/// How long RSS may take to settle after the load.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// One size on one server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemoryCell {
    pub server: &'static str,
    pub keys: u64,
    pub value_bytes: u32,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub bytes_per_key: f64,
    pub load_s: f64,
}

/// One size on both servers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemorySummary {
    pub keys: u64,
    pub value_bytes: u32,
    pub walrep_bytes_per_key: f64,
    pub redis_bytes_per_key: f64,
    /// walrep / Redis.
    pub ratio: f64,
    pub met: bool,
}

/// What the scenario measured.
#[derive(Debug, serde::Serialize)]
pub struct MemoryReport {
    pub cells: Vec<MemoryCell>,
    pub summaries: Vec<MemorySummary>,
    /// Sizes left out by `--memory-max-gb`.
    pub skipped: Vec<(u64, u32)>,
    /// Redo in memory (decode and apply, no WAL reading), records/s:
    /// one record at a time, and in batches of [`REDO_BATCH`].
    pub redo_per_record: f64,
    pub redo_batched: f64,
}

/// Records per batch of the in-memory redo figure (crash recovery's).
pub const REDO_BATCH: usize = 256;
/// SET records of the in-memory redo figure.
const REDO_RECORDS: u64 = 1_000_000;

/// Run every size of `--memory-keys` × `--memory-value-bytes` on both.
pub fn run(args: &BenchArgs) -> Result<MemoryReport, BenchError> {
    require_tool("redis-server")?;
    let run_dir = super::RunDir::create(args, "walrep-bench-memory-")?;
    let exe = std::env::current_exe().map_err(|e| BenchError::io("find this binary", e))?;
    let (redo_per_record, redo_batched) = redo_rates(REDO_RECORDS);
    println!(
        "redo in memory ({REDO_RECORDS} SETs of 16-byte values, decode + apply): {:.0} records/s one by one, {:.0} records/s in batches of {REDO_BATCH}",
        redo_per_record, redo_batched
    );
    let mut report = MemoryReport {
        cells: Vec::new(),
        summaries: Vec::new(),
        skipped: Vec::new(),
        redo_per_record,
        redo_batched,
    };
    println!(
        "memory: RSS per key, walrep (synchronous_commit=off) beside Redis 7 (appendfsync=no)"
    );
    for &keys in &args.memory_keys {
        for &value_bytes in &args.memory_value_bytes {
            let data_gb = keys as f64 * (f64::from(value_bytes) + 16.0) / 1e9;
            if data_gb > args.memory_max_gb {
                println!(
                    "  {keys} keys x {value_bytes} B: skipped ({data_gb:.1} GB of data > --memory-max-gb {})",
                    args.memory_max_gb
                );
                report.skipped.push((keys, value_bytes));
                continue;
            }
            let tag = format!("{keys}x{value_bytes}");
            let dir = run_dir.path().join(format!("walrep-{tag}"));
            let (mut w, port) = procs::start_walrep(&exe, &dir, "off")?;
            let walrep = measure("walrep", &mut w, port, keys, value_bytes)?;
            w.stop();
            let _ = std::fs::remove_dir_all(&dir);
            let dir = run_dir.path().join(format!("redis-{tag}"));
            let (mut r, port) = procs::start_redis(&dir, "no")?;
            let redis = measure("redis", &mut r, port, keys, value_bytes)?;
            r.stop();
            let _ = std::fs::remove_dir_all(&dir);
            let ratio = walrep.bytes_per_key / redis.bytes_per_key;
            println!(
                "  {keys:>9} keys x {value_bytes:>5} B: walrep {:>7.1} B/key ({:.1}s load), Redis {:>7.1} B/key ({:.1}s load), ratio {ratio:.2} (target <= {TARGET_RATIO})",
                walrep.bytes_per_key, walrep.load_s, redis.bytes_per_key, redis.load_s
            );
            report.summaries.push(MemorySummary {
                keys,
                value_bytes,
                walrep_bytes_per_key: walrep.bytes_per_key,
                redis_bytes_per_key: redis.bytes_per_key,
                ratio,
                met: ratio <= TARGET_RATIO,
            });
            report.cells.extend([walrep, redis]);
        }
    }
    run_dir.finish(args.keep);
    Ok(report)
}

/// Load `keys` keys into the server on `port` and read its RSS around it.
fn measure(
    server: &'static str,
    child: &mut Child,
    port: u16,
    keys: u64,
    value_bytes: u32,
) -> Result<MemoryCell, BenchError> {
    let before = rss_kb(child.pid())?;
    let started = Instant::now();
    load_keys(port, 0..keys, value_bytes)?;
    let load_s = started.elapsed().as_secs_f64();
    let dbsize = procs::query(port, b"DBSIZE\r\n")?;
    if dbsize.trim() != format!(":{keys}") {
        return Err(BenchError::Server(format!(
            "{server} holds {} keys after loading {keys}",
            dbsize.trim()
        )));
    }
    let after = settled_rss_kb(child)?;
    Ok(MemoryCell {
        server,
        keys,
        value_bytes,
        rss_before_kb: before,
        rss_after_kb: after,
        bytes_per_key: after.saturating_sub(before) as f64 * 1024.0 / keys as f64,
        load_s,
    })
}

/// SET `key:%012d` (redis-benchmark's `-r` keys) for every number of
/// `keys` to a value of `value_bytes` bytes, over [`LOADERS`] pipelined
/// connections, every reply checked: the same load for every server.
pub(crate) fn load_keys(
    port: u16,
    keys: std::ops::Range<u64>,
    value_bytes: u32,
) -> Result<(), BenchError> {
    let (start, n) = (keys.start, keys.end.saturating_sub(keys.start));
    std::thread::scope(|s| {
        let loaders: Vec<_> = (0..LOADERS)
            .map(|i| {
                let (from, to) = (start + n * i / LOADERS, start + n * (i + 1) / LOADERS);
                s.spawn(move || load(port, from..to, value_bytes as usize))
            })
            .collect();
        loaders
            .into_iter()
            .try_for_each(|l| l.join().expect("a loader panicked"))
    })
}

/// RSS once two readings a second apart agree within 1% (a checkpoint or
/// a background rehash may still be moving it), or after a bound.
fn settled_rss_kb(child: &mut Child) -> Result<u64, BenchError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = rss_kb(child.pid())?;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        child.check_alive()?;
        let now = rss_kb(child.pid())?;
        if now.abs_diff(last) * 100 <= last || Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// `VmRSS` of a process, in kB.
fn rss_kb(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| BenchError::io(&path, e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| BenchError::Server(format!("no VmRSS in {path}")))
}

/// SET `key:%012d` for every number of `range` to a value of `value_len`
/// bytes, `PIPELINE` commands per round trip, every reply checked.
fn load(port: u16, range: std::ops::Range<u64>, value_len: usize) -> Result<(), BenchError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let io = |e| BenchError::io(format!("load 127.0.0.1:{port}"), e);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    let value = vec![b'x'; value_len];
    let mut out = Vec::with_capacity(PIPELINE * (value_len + 64));
    let mut replies = vec![0u8; PIPELINE * 5];
    let mut next = range.start;
    while next < range.end {
        let n = (range.end - next).min(PIPELINE as u64);
        out.clear();
        for k in next..next + n {
            let key = format!("key:{k:012}");
            write!(
                out,
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${value_len}\r\n",
                key.len()
            )
            .map_err(io)?;
            out.extend_from_slice(&value);
            out.extend_from_slice(b"\r\n");
        }
        s.write_all(&out).map_err(io)?;
        let want = &mut replies[..n as usize * 5];
        s.read_exact(want).map_err(io)?;
        if want.chunks(5).any(|r| r != b"+OK\r\n") {
            return Err(BenchError::Load(format!(
                "a SET was refused: {}",
                String::from_utf8_lossy(&want[..want.len().min(200)])
            )));
        }
        next += n;
    }
    Ok(())
}

/// Records/s of `Store::apply_record` one at a time and of
/// `Store::apply_records` in batches, over the same `n` SET records of
/// distinct keys (the WAL reader's cost left out).
fn redo_rates(n: u64) -> (f64, f64) {
    use std::borrow::Cow;
    use walrep::store::record::{encode, Op, RM_KV};
    use walrep::store::Store;
    use walrep::wal::Record;
    use walrep::Lsn;
    let recs: Vec<Record> = (0..n)
        .map(|i| {
            let key = format!("key:{i:012}");
            let op = Op::Set {
                key: Cow::Owned(key.into_bytes()),
                value: Cow::Borrowed(&b"xxxxxxxxxxxxxxxx"[..]),
            };
            Record {
                lsn: Lsn(64 * i + 64),
                end: Lsn(64 * i + 128),
                prev: Lsn(64 * i),
                rmid: RM_KV,
                info: 1,
                payload: encode(0, &[op]),
            }
        })
        .collect();
    let rate = |f: &dyn Fn(&Store)| {
        let store = Store::new();
        let started = Instant::now();
        f(&store);
        n as f64 / started.elapsed().as_secs_f64()
    };
    let one = rate(&|s| {
        for r in &recs {
            s.apply_record(r).expect("a record this run encoded");
        }
    });
    let batched = rate(&|s| {
        for b in recs.chunks(REDO_BATCH) {
            s.apply_records(b).expect("records this run encoded");
        }
    });
    (one, batched)
}
