//! Replay lag added per hop of a cascading chain, primary -> s1 -> s2 ->
//! s3, under a steady load of 16 clients, beside PostgreSQL 15 with the
//! same chain in the same run (with `--anchors`).
//!
//! Each standby after the first is copied from its upstream standby (a
//! base backup from a standby) and streams from it. Every 10 ms, on each
//! node that has a downstream, the downstream's replay lag as that node's
//! walsender sees it: walrep's `replay_lag_ms` in `INFO replication`,
//! PostgreSQL's `pg_stat_replication.replay_lag`: the time from sending
//! WAL to the downstream reporting it replayed, so one hop each.
//!
//! Load: walrep, redis-benchmark SET (16-byte values, 100k keys);
//! PostgreSQL, pgbench with the anchors' upsert script; both 16 clients
//! with `synchronous_commit = on` and no synchronous standby (a local
//! flush per commit).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::cluster::{self, parse_slave_line, Node};
use super::ctx::Ctx;
use super::figures::{percentile, Better, Figure};
use super::loadgen::{self, Load};
use super::pg::PgAnchor;
use super::BenchError;

const CLIENTS: u32 = 16;
const HOPS: usize = 3;
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// The target for p99 per hop (ms).
const TARGET_HOP_P99_MS: f64 = 5.0;

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), BenchError> {
    let secs = ctx.args.lag_seconds;
    println!("\n== chain: primary -> s1 -> s2 -> s3, {CLIENTS} clients, {secs} s");
    let dir = ctx.subdir("chain")?;
    let mut figs = figures();
    for rep in 1..=ctx.args.reps {
        let lags = walrep_rep(ctx, &dir.join(format!("walrep{rep}")), secs)?;
        report("walrep", rep, &lags);
        for (hop, l) in lags.iter().enumerate() {
            figs[2 * hop].walrep.push(percentile(l, 0.5));
            figs[2 * hop + 1].walrep.push(percentile(l, 0.99));
        }
    }
    if let Some(anchors_dir) = ctx.args.anchors.clone() {
        for rep in 1..=ctx.args.reps {
            let base = ctx.anchors_base(&format!("pg-chain{rep}"))?;
            let lags = postgres_rep(&base, &anchors_dir, secs)?;
            report("PostgreSQL", rep, &lags);
            for (hop, l) in lags.iter().enumerate() {
                figs[2 * hop].pg_same_run.push(percentile(l, 0.5));
                figs[2 * hop + 1].pg_same_run.push(percentile(l, 0.99));
            }
        }
    }
    ctx.figures.extend(figs);
    Ok(())
}

fn figures() -> Vec<Figure> {
    let mut out = Vec::new();
    for hop in 1..=HOPS {
        let what = |q: &str| format!("hop {hop} replay lag {q} ({CLIENTS} clients)");
        out.push(Figure::new("chain", &what("p50"), "ms", Better::Lower));
        out.push(
            Figure::new("chain", &what("p99"), "ms", Better::Lower)
                .goal("<= 5 ms", Some(TARGET_HOP_P99_MS)),
        );
    }
    out
}

fn report(who: &str, rep: u32, lags: &[Vec<f64>]) {
    let hops: Vec<String> = lags
        .iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "hop {} p50/p99 {:.2}/{:.2} ms ({} samples)",
                i + 1,
                percentile(l, 0.5),
                percentile(l, 0.99),
                l.len()
            )
        })
        .collect();
    println!("  {who} chain rep {rep}: {}", hops.join("; "));
}

/// Build the walrep chain in `dir`, load it, sample each hop.
fn walrep_rep(ctx: &Ctx<'_>, dir: &Path, secs: u64) -> Result<Vec<Vec<f64>>, BenchError> {
    let pdir = dir.join("primary");
    cluster::init(&ctx.exe, &pdir)?;
    let mut nodes = vec![Node::start(&ctx.exe, &pdir, &[])?];
    for i in 1..=HOPS {
        let sdir = dir.join(format!("s{i}"));
        let upstream = nodes[i - 1].repl_port;
        cluster::basebackup(&ctx.exe, upstream, &sdir, &format!("s{i}"))?;
        nodes.push(Node::start(&ctx.exe, &sdir, &[])?);
    }
    wait_chain(&nodes)?;
    let load = Load {
        port: nodes[0].port,
        clients: CLIENTS,
        keyspace: 100_000,
        value_bytes: 16,
    };
    let window = Duration::from_secs(secs.saturating_sub(2).max(1));
    let done = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        let loader = scope.spawn(|| {
            let r = loadgen::run_for(&load, Duration::from_secs(secs), dir);
            done.store(true, Ordering::Release);
            r
        });
        std::thread::sleep(Duration::from_secs(1));
        let samplers: Vec<_> = nodes[..HOPS]
            .iter()
            .map(|n| {
                let done = &done;
                scope.spawn(move || sample_walrep(n, window, done))
            })
            .collect();
        let lags: Result<Vec<Vec<f64>>, BenchError> = samplers
            .into_iter()
            .map(|s| {
                s.join()
                    .map_err(|_| BenchError::Load("a sampler panicked".into()))?
            })
            .collect();
        loader
            .join()
            .map_err(|_| BenchError::Load("the load thread panicked".into()))??;
        lags
    });
    for n in nodes.into_iter().rev() {
        n.stop();
    }
    result
}

/// Every node streams to its downstream.
fn wait_chain(nodes: &[Node]) -> Result<(), BenchError> {
    for n in &nodes[..HOPS] {
        let mut c = n.connect()?;
        let limit = Duration::from_secs(120);
        cluster::wait_for("a downstream streaming", limit, SAMPLE_EVERY, || {
            let repl = c.info("replication")?;
            Ok(repl
                .get("slave0")
                .map(|l| parse_slave_line(l))
                .and_then(|s| s.get("walsender_state").cloned())
                .filter(|s| s == "streaming")
                .map(|_| ()))
        })?;
    }
    Ok(())
}

/// `node`'s downstream's replay_lag_ms every 10 ms for `window`.
fn sample_walrep(node: &Node, window: Duration, done: &AtomicBool) -> Result<Vec<f64>, BenchError> {
    let mut c = node.connect()?;
    let mut out = Vec::new();
    let end = Instant::now() + window;
    while Instant::now() < end && !done.load(Ordering::Acquire) {
        let repl = c.info("replication")?;
        if let Some(ms) = repl
            .get("slave0")
            .map(|l| parse_slave_line(l))
            .and_then(|s| s.get("replay_lag_ms").and_then(|v| v.parse::<f64>().ok()))
        {
            out.push(ms);
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    Ok(out)
}

/// The same chain of PostgreSQL 15 under pgbench; each hop's replay_lag.
fn postgres_rep(base: &Path, anchors_dir: &Path, secs: u64) -> Result<Vec<Vec<f64>>, BenchError> {
    let mut nodes = vec![PgAnchor::start(&base.join("primary"), anchors_dir)?];
    for i in 1..=HOPS {
        let upstream = nodes[i - 1].port();
        let s = nodes[i - 1].standby_of(upstream, &base.join(format!("s{i}")))?;
        nodes.push(s);
    }
    let times = (secs.saturating_sub(2).max(1) * 1000 / SAMPLE_EVERY.as_millis() as u64) as usize;
    let sql = "SELECT extract(epoch from replay_lag) * 1000 FROM pg_stat_replication";
    std::thread::scope(|scope| {
        let primary = &nodes[0];
        let loader = scope.spawn(move || primary.pgbench(CLIENTS, secs));
        std::thread::sleep(Duration::from_secs(1));
        let samplers: Vec<_> = nodes[..HOPS]
            .iter()
            .map(|n| scope.spawn(move || n.sample(sql, times, SAMPLE_EVERY.as_secs_f64())))
            .collect();
        let mut lags = Vec::new();
        for s in samplers {
            let text = s
                .join()
                .map_err(|_| BenchError::Load("a sampler panicked".into()))??;
            lags.push(
                text.lines()
                    .filter_map(|l| l.trim().parse::<f64>().ok())
                    .collect(),
            );
        }
        loader
            .join()
            .map_err(|_| BenchError::Load("pgbench panicked".into()))??;
        Ok(lags)
    })
}
