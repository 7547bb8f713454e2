//! Commit latency while a checkpoint is written: p99 of 64 clients'
//! durable SETs with checkpoints running against the same load with none,
//! for `synchronous_commit = local` on a lone primary and `on` with one
//! synchronous standby (target: at most 1.5 times).
//!
//! The primary first holds `--checkpoint-keys` keys (100-byte values, a
//! pipelined load), so a checkpoint has a snapshot of that size to write.
//! Then per level, three runs of `--seconds` each, 64 clients on keys
//! over the same keyspace:
//! - `none`: `checkpoint_timeout = 1h`, no checkpoint during the run;
//! - `spread`: `checkpoint_timeout = 5s`, checkpoints paced over
//!   `checkpoint_completion_target` (0.9) of it, back to back;
//! - `immediate`: the same with `checkpoint_completion_target = 0`,
//!   each checkpoint at full speed (what a checkpoint cost before pacing).
//!
//! The node's log says how many checkpoints completed during each run.

use std::path::Path;
use std::time::Duration;

use super::cluster::{self, Node};
use super::ctx::Ctx;
use super::figures::{Better, Figure};
use super::loadgen::{self, Load};
use super::BenchError;

/// The target: p99 with checkpoints over p99 without.
pub const TARGET_P99_RATIO: f64 = 1.5;
const CLIENTS: u32 = 64;
const VALUE_BYTES: u32 = 100;
const PRELOAD_CLIENTS: u32 = 16;
const PRELOAD_PIPELINE: u32 = 32;
const PRELOAD_LIMIT: Duration = Duration::from_secs(900);
/// checkpoint_timeout of the runs with checkpoints.
const CHECKPOINT_EVERY: &str = "5s";

/// The runs of one level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    None,
    Spread,
    Immediate,
}

impl Run {
    const ALL: [Run; 3] = [Run::None, Run::Spread, Run::Immediate];

    fn name(self) -> &'static str {
        match self {
            Run::None => "no checkpoint",
            Run::Spread => "spread checkpoints",
            Run::Immediate => "immediate checkpoints",
        }
    }

    fn settings(self) -> Vec<String> {
        let every = format!("checkpoint_timeout={CHECKPOINT_EVERY}");
        match self {
            Run::None => vec!["checkpoint_timeout=1h".into()],
            Run::Spread => vec![every, "checkpoint_completion_target=0.9".into()],
            Run::Immediate => vec![every, "checkpoint_completion_target=0".into()],
        }
    }
}

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), BenchError> {
    let keys = ctx.args.checkpoint_keys;
    println!(
        "\n== checkpoint: commit p99 at {CLIENTS} clients with checkpoints of {keys} keys running vs none, {} s per run",
        ctx.args.seconds
    );
    let dir = ctx.subdir("checkpoint")?;
    let pdir = dir.join("primary");
    cluster::init(&ctx.exe, &pdir)?;
    preload(ctx, &pdir, &dir, keys)?;
    let sdir = dir.join("standby");
    for level in ["local", "on"] {
        let mut p99 = Run::ALL.map(|r| {
            Figure::new(
                "checkpoint",
                &format!(
                    "p99 latency, synchronous_commit={level}, {CLIENTS} clients, {}",
                    r.name()
                ),
                "ms",
                Better::Lower,
            )
        });
        let mut ratio = [Run::Spread, Run::Immediate].map(|r| {
            let f = Figure::new(
                "checkpoint",
                &format!(
                    "p99 with {} / without, synchronous_commit={level}",
                    r.name()
                ),
                "ratio",
                Better::Lower,
            );
            if r == Run::Spread {
                f.goal("<= 1.5", Some(TARGET_P99_RATIO))
            } else {
                f
            }
        });
        for rep in 1..=ctx.args.reps {
            let mut got = [f64::NAN; 3];
            for (i, r) in Run::ALL.into_iter().enumerate() {
                let label = format!("{level}, {}, rep {rep}", r.name());
                ctx.probe(&format!("before {label}"), false)?;
                got[i] = measure(ctx, &pdir, &sdir, level, r, &label)?;
                p99[i].walrep.push(got[i]);
            }
            ratio[0].walrep.push(got[1] / got[0]);
            ratio[1].walrep.push(got[2] / got[0]);
        }
        ctx.figures.extend(p99);
        ctx.figures.extend(ratio);
    }
    Ok(())
}

/// Fill the store with `keys` keys and stop (a shutdown checkpoint).
fn preload(ctx: &Ctx<'_>, pdir: &Path, dir: &Path, keys: u64) -> Result<(), BenchError> {
    let overrides = [
        "synchronous_commit=off".to_string(),
        "max_wal_size=4GB".into(),
    ];
    let node = Node::start(&ctx.exe, pdir, &overrides)?;
    let load = Load {
        port: node.port,
        clients: PRELOAD_CLIENTS,
        keyspace: keys,
        value_bytes: VALUE_BYTES,
    };
    // Random keys: twice as many SETs as keys reach ~86% of them.
    let r = loadgen::run_pipelined(&load, keys * 2, PRELOAD_PIPELINE, PRELOAD_LIMIT, dir)?;
    let size = node.connect()?.info("keyspace")?;
    println!(
        "  preloaded at {:.0} SETs/s: {}",
        r.rps,
        size.get("db0").map_or("?", String::as_str)
    );
    node.stop();
    Ok(())
}

/// One run: start the primary (and for `on` its synchronous standby) with
/// the run's settings, 64 clients for `--seconds`; returns the p99 in ms.
fn measure(
    ctx: &mut Ctx<'_>,
    pdir: &Path,
    sdir: &Path,
    level: &str,
    run: Run,
    label: &str,
) -> Result<f64, BenchError> {
    let mut overrides = run.settings();
    overrides.push(format!("synchronous_commit={level}"));
    overrides.push("log_level=info".into());
    if level == "on" {
        overrides.push("synchronous_standby_names=standby1".into());
    }
    let primary = Node::start(&ctx.exe, pdir, &overrides)?;
    let standby = if level == "on" {
        if !sdir.exists() {
            cluster::basebackup(&ctx.exe, primary.repl_port, sdir, "standby1")?;
        }
        let mut s = run.settings();
        s.push(format!("primary_conninfo={}", primary.conninfo("standby1")));
        s.push("wal_retrieve_retry_interval=100ms".into());
        let standby = Node::start(&ctx.exe, sdir, &s)?;
        super::sync::wait_sync(&primary)?;
        Some(standby)
    } else {
        None
    };
    let log = pdir.with_extension("log");
    let before = log_len(&log);
    let load = Load {
        port: primary.port,
        clients: CLIENTS,
        keyspace: ctx.args.checkpoint_keys,
        value_bytes: VALUE_BYTES,
    };
    let dir = pdir.parent().unwrap_or(pdir);
    let r = loadgen::run_for(&load, Duration::from_secs(ctx.args.seconds), dir)?;
    let checkpoints = checkpoints_logged(&log, before);
    if let Some(s) = standby {
        s.stop();
    }
    primary.stop();
    println!(
        "  {label}: {:.0} commits/s, mean {:.3} ms, p99 {:.3} ms, max {:.1} ms; {}",
        r.rps,
        r.mean_ms,
        r.p99_ms,
        r.max_ms,
        checkpoints.join("; ")
    );
    if run != Run::None && checkpoints.is_empty() {
        ctx.note(format!(
            "{label}: no checkpoint completed during the run (the load ran shorter than checkpoint_timeout, or a checkpoint outlasted it)"
        ));
    }
    Ok(r.p99_ms)
}

fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The "checkpoint complete" lines the primary logged after byte `from`,
/// shortened to their figures (keys, write, sync and total time).
fn checkpoints_logged(path: &Path, from: u64) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let start = (from as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..])
        .lines()
        .filter(|l| l.contains("checkpoint complete"))
        .map(|l| {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .unwrap_or("?")
                    .to_string()
            };
            format!(
                "checkpoint of {} keys: write {} ms, sync {} ms, total {} ms, lock hold p99 {} us, max {} us",
                field("keys="),
                field("write_ms="),
                field("sync_ms="),
                field("elapsed_ms="),
                field("lock_hold_p99_us="),
                field("lock_hold_max_us=")
            )
        })
        .collect()
}
