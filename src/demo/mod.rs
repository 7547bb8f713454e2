//! `walrep demo`: the main job, on loopback in a temporary directory.
//!
//! A primary with WAL archiving serves a write load from several clients;
//! it is killed with SIGKILL in the middle of it and restarted; every write
//! that was acknowledged before the crash is checked on the restarted node.
//!
//! # Layout
//! - [`client`]: a small blocking RESP client.
//! - [`process`]: `walrep start` child processes.

pub mod client;
pub mod process;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use client::{Reply, RespClient};
use process::NodeProcess;

/// Options of `walrep demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where to put the data directories (a temporary directory if unset).
    pub dir: Option<PathBuf>,
    /// Concurrent writing clients.
    pub clients: usize,
    /// How long the load runs before the crash.
    pub load_seconds: f64,
}

/// What one writer did.
#[derive(Debug, Default, Clone)]
struct WriterResult {
    /// Sequence numbers acknowledged with OK (keys `demo:<writer>:<seq>`).
    acked: Vec<u64>,
}

fn say(step: &str, text: impl AsRef<str>) {
    println!("[{step}] {}", text.as_ref());
}

pub fn run(opts: &DemoOptions) -> anyhow::Result<()> {
    let tmp;
    let root: PathBuf = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("walrep-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let started = Instant::now();
    let archive = root.join("archive");
    std::fs::create_dir_all(&archive)?;
    let primary_dir = root.join("primary");
    say(
        "init",
        format!(
            "walrep init {} --wal-segment-size 1MB",
            primary_dir.display()
        ),
    );
    crate::node::init::init(
        &primary_dir,
        crate::WalSegSize::new(1 << 20).expect("1MB is valid"),
    )?;
    let settings = vec![
        "archive_mode=on".to_string(),
        format!("archive_command=cp %p {}/%f", archive.display()),
        "checkpoint_timeout=2s".to_string(),
    ];
    let mut primary = NodeProcess::start("primary", &primary_dir, &settings)?;
    say(
        "start",
        format!(
            "primary listening on {} (Redis protocol), archiving to {}",
            primary.addr(),
            archive.display()
        ),
    );

    let results = drive_load(&primary, opts)?;
    let acked: usize = results.iter().map(|r| r.acked.len()).sum();
    say(
        "crash",
        format!(
            "kill -9 the primary (pid {}) in the middle of the load",
            primary.pid().unwrap_or(0)
        ),
    );
    primary.kill9();
    if acked == 0 {
        bail!(
            "no write was acknowledged before the crash; see {}",
            primary.log.display()
        );
    }

    primary.restart().context("restart after the crash")?;
    say(
        "recover",
        format!(
            "primary restarted: crash recovery replayed the WAL (log: {})",
            primary.log.display()
        ),
    );
    let checked = verify(&primary, &results)?;
    say(
        "verify",
        format!("all {checked} acknowledged writes are present after the crash"),
    );

    let mut c = primary.client()?;
    let info = match c.cmd(&["INFO", "persistence"])? {
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        other => bail!("unexpected INFO reply {other:?}"),
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    primary.stop()?;
    let archived = std::fs::read_dir(&archive).map(|d| d.count()).unwrap_or(0);
    println!();
    println!("walrep demo: OK in {:.1}s", started.elapsed().as_secs_f64());
    println!("  writes acknowledged before the crash: {acked} (all verified after recovery)");
    println!(
        "  WAL after restart: insert {} flush {}, timeline {}",
        field("wal_insert_lsn"),
        field("wal_flush_lsn"),
        field("timeline")
    );
    println!("  segments archived: {archived} in {}", archive.display());
    if opts.dir.is_some() {
        println!("  logs: {}", primary.log.display());
        println!("  data directories kept under {}", root.display());
    } else {
        println!("  (everything was in a temporary directory, now removed; run with --dir DIR to keep it)");
    }
    Ok(())
}

/// Run `opts.clients` writers for `opts.load_seconds`, printing throughput.
fn drive_load(node: &NodeProcess, opts: &DemoOptions) -> anyhow::Result<Vec<WriterResult>> {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let addr = node.addr();
    let handles: Vec<_> = (0..opts.clients)
        .map(|w| {
            let (stop, total) = (stop.clone(), total.clone());
            std::thread::spawn(move || writer(addr, w, &stop, &total))
        })
        .collect();
    say(
        "load",
        format!("{} clients writing SET demo:<client>:<n> ...", opts.clients),
    );
    let t0 = Instant::now();
    let mut last = 0;
    let load = Duration::from_secs_f64(opts.load_seconds.clamp(0.5, 300.0));
    while t0.elapsed() < load {
        std::thread::sleep(Duration::from_millis(500).min(load.saturating_sub(t0.elapsed())));
        let now = total.load(Ordering::Relaxed);
        say(
            "load",
            format!(
                "{:>6.1}s  {now} writes acknowledged ({:.0}/s)",
                t0.elapsed().as_secs_f64(),
                (now - last) as f64 * 2.0
            ),
        );
        last = now;
    }
    // The crash comes while the writers are still running.
    stop.store(true, Ordering::Relaxed);
    Ok(handles
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .collect())
}

fn writer(
    addr: std::net::SocketAddr,
    w: usize,
    stop: &AtomicBool,
    total: &AtomicU64,
) -> WriterResult {
    let mut r = WriterResult::default();
    let Ok(mut c) = RespClient::connect(addr, Duration::from_secs(10)) else {
        return r;
    };
    // Bounded: at most this many writes per client.
    for seq in 0..1_000_000u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("demo:{w}:{seq}");
        match c.cmd(&["SET", &key, &seq.to_string()]) {
            Ok(reply) if reply.is_ok() => {
                r.acked.push(seq);
                total.fetch_add(1, Ordering::Relaxed);
            }
            _ => break,
        }
    }
    r
}

/// Check every acknowledged write on `node`; returns how many were checked.
fn verify(node: &NodeProcess, results: &[WriterResult]) -> anyhow::Result<usize> {
    let mut c = node.client()?;
    let mut checked = 0;
    for (w, r) in results.iter().enumerate() {
        for chunk in r.acked.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|s| format!("demo:{w}:{s}")).collect();
            let mut args: Vec<&str> = vec!["MGET"];
            args.extend(keys.iter().map(String::as_str));
            let Reply::Array(values) = c.cmd(&args)? else {
                bail!("MGET did not return an array")
            };
            for (seq, v) in chunk.iter().zip(values) {
                if v.as_text() != Some(seq.to_string()) {
                    bail!("acknowledged write demo:{w}:{seq} is missing or wrong after recovery: {v:?}");
                }
                checked += 1;
            }
        }
    }
    Ok(checked)
}
