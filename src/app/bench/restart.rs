//! Restart after a crash: `kill -9` of a node with `--restart-records`
//! SETs of WAL since its last checkpoint, then the time from spawning the
//! new process to the first read it serves, beside Redis 7 with AOF
//! (`appendfsync always`) loaded with the same SETs and killed the same way.
//!
//! The load is redis-benchmark SET (16-byte values, random keys over 1 M,
//! 16 clients, 32 pipelined), then one marker key; the clock stops at the
//! first `GET` of the marker that returns it (walrep opens its port after
//! redo; Redis answers `-LOADING` until its AOF is loaded). walrep runs with
//! `checkpoint_timeout` and `max_wal_size` large enough that no checkpoint
//! happens during the load, so redo starts at the load's beginning. Redis
//! runs with its AOF rewrite off, so it too replays every command (with a
//! rewrite its restart would load an RDB preamble instead: that is what a
//! checkpoint is for, and walrep's would not be in play either).
//!
//! Figures: the time to the first read for both, their ratio (target: at
//! most 2), and walrep's redo rate from its "redo done" log line (target:
//! at least 1.5 M records/s).

use std::path::Path;
use std::time::{Duration, Instant};

use super::cluster::{self, Node};
use super::ctx::Ctx;
use super::figures::{Better, Figure};
use super::loadgen::{self, Load};
use super::pipeline::{CLIENTS, PIPELINE};
use super::procs::{self, Child};
use super::BenchError;

/// Targets: restart within twice Redis's time; redo rate.
pub const TARGET_RATIO_TO_REDIS: f64 = 2.0;
pub const TARGET_REDO_RECORDS_PER_S: f64 = 1_500_000.0;
/// The load: keys over this many, values of this size (clients and
/// pipeline depth are the pipelined-SET scenario's: 16 clients, `-P 32`).
const KEYSPACE: u64 = 1_000_000;
const VALUE_BYTES: u32 = 16;
/// Longest a load or a restart may take.
const LOAD_LIMIT: Duration = Duration::from_secs(900);
const RESTART_LIMIT: Duration = Duration::from_secs(300);
/// How often the restarting server is asked for the marker.
const POLL: Duration = Duration::from_millis(2);
const MARKER: &str = "restart:marker";

/// What one walrep restart's log said about redo.
#[derive(Debug, Default, Clone, Copy)]
struct Redo {
    records: u64,
    /// Key changes the records held (a pipelined run of SETs is one record).
    changes: u64,
    bytes: u64,
    seconds: f64,
}

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), BenchError> {
    let records = ctx.args.restart_records;
    println!(
        "\n== restart: kill -9 with {records} SETs since the last checkpoint, to the first served read, beside Redis 7 AOF always"
    );
    let dir = ctx.subdir("restart")?;
    let mut walrep_s = Figure::new(
        "restart",
        &format!("walrep: kill -9 to first served read, {records} SETs of WAL"),
        "s",
        Better::Lower,
    );
    let mut redis_s = Figure::new(
        "restart",
        &format!("Redis 7 AOF always: kill -9 to first served read, {records} commands"),
        "s",
        Better::Lower,
    );
    let mut ratio = Figure::new(
        "restart",
        "restart time, walrep / Redis 7 AOF",
        "ratio",
        Better::Lower,
    )
    .goal("<= 2", Some(TARGET_RATIO_TO_REDIS));
    // One SET was one record before pipelined runs shared one: the rate of
    // key changes is the figure that compares across both.
    let mut redo_rate = Figure::new(
        "restart",
        "walrep redo rate (key changes)",
        "changes/s",
        Better::Higher,
    )
    .goal(">= 1,500,000/s", Some(TARGET_REDO_RECORDS_PER_S));
    for rep in 1..=ctx.args.reps {
        ctx.probe(&format!("before restart rep {rep}"), false)?;
        let (w, redo) = walrep_restart(ctx, &dir.join(format!("walrep-{rep}")), records)?;
        let r = redis_restart(&dir.join(format!("redis-{rep}")), records)?;
        println!(
            "  rep {rep}: walrep {w:.3} s (redo {} records holding {} key changes, {:.0} MB in {:.3} s = {:.0} changes/s), Redis {r:.3} s",
            redo.records,
            redo.changes,
            redo.bytes as f64 / 1e6,
            redo.seconds,
            redo.changes as f64 / redo.seconds.max(1e-9)
        );
        walrep_s.walrep.push(w);
        redis_s.walrep.push(r);
        ratio.walrep.push(w / r);
        if redo.seconds > 0.0 {
            redo_rate.walrep.push(redo.changes as f64 / redo.seconds);
        }
    }
    ctx.figures.extend([walrep_s, redis_s, ratio, redo_rate]);
    Ok(())
}

/// Load, crash, restart one walrep node; the time to the first read.
fn walrep_restart(ctx: &Ctx<'_>, datadir: &Path, records: u64) -> Result<(f64, Redo), BenchError> {
    cluster::init(&ctx.exe, datadir)?;
    let overrides: Vec<String> = [
        "synchronous_commit=off",
        "checkpoint_timeout=1h",
        "max_wal_size=64GB",
        "log_level=info",
    ]
    .map(String::from)
    .to_vec();
    let mut node = Node::start(&ctx.exe, datadir, &overrides)?;
    load(node.port, records, datadir.parent().unwrap_or(datadir))?;
    set_marker(node.port)?;
    // synchronous_commit = off: the marker is acknowledged before the WAL
    // writer wrote it; wait for the flush (within wal_writer_delay).
    let mut c = node.connect()?;
    let inserted = cluster::insert_lsn(&mut c)?;
    cluster::wait_for(
        "the marker's WAL to be flushed",
        Duration::from_secs(30),
        Duration::from_millis(10),
        || Ok((cluster::flush_lsn(&mut c)? >= inserted).then_some(())),
    )?;
    node.child.kill();
    let log = datadir.with_extension("log");
    let before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let mut node = Node::spawn(&ctx.exe, datadir, &overrides)?;
    let secs = first_read(&mut node.child, node.port, node.spawned_at)?;
    node.stop();
    let text = std::fs::read(&log).map_err(|e| BenchError::io("read the walrep log", e))?;
    let after = String::from_utf8_lossy(&text[before as usize..]).into_owned();
    Ok((secs, parse_redo(&after).unwrap_or_default()))
}

/// Load, crash, restart one Redis; the time to the first read.
fn redis_restart(dir: &Path, records: u64) -> Result<f64, BenchError> {
    let extra = ["--auto-aof-rewrite-percentage", "0"];
    let port = procs::free_port()?;
    let mut redis = procs::spawn_redis(dir, "always", port, &extra)?;
    procs::wait_ready(&mut redis, port)?;
    load(port, records, dir)?;
    set_marker(port)?;
    redis.kill();
    let port = procs::free_port()?;
    let spawned_at = Instant::now();
    let mut redis = procs::spawn_redis(dir, "always", port, &extra)?;
    let secs = first_read(&mut redis, port, spawned_at)?;
    redis.stop();
    Ok(secs)
}

fn load(port: u16, records: u64, dir: &Path) -> Result<(), BenchError> {
    let load = Load {
        port,
        clients: CLIENTS,
        keyspace: KEYSPACE,
        value_bytes: VALUE_BYTES,
    };
    let r = loadgen::run_pipelined(&load, records, PIPELINE, LOAD_LIMIT, dir)?;
    println!("  loaded {records} SETs at {:.0}/s", r.rps);
    Ok(())
}

fn set_marker(port: u16) -> Result<(), BenchError> {
    let reply = procs::query(port, format!("SET {MARKER} ok\r\n").as_bytes())?;
    if !reply.starts_with("+OK") {
        return Err(BenchError::Server(format!("SET {MARKER}: {reply:?}")));
    }
    Ok(())
}

/// Seconds from `spawned_at` to the first `GET` of the marker answered
/// with its value.
fn first_read(child: &mut Child, port: u16, spawned_at: Instant) -> Result<f64, BenchError> {
    let get = format!("GET {MARKER}\r\n");
    loop {
        if let Ok(reply) = procs::query(port, get.as_bytes()) {
            if reply.starts_with("$2\r\nok") {
                return Ok(spawned_at.elapsed().as_secs_f64());
            }
        }
        if child.exited()? {
            return Err(BenchError::Server(format!(
                "the server on port {port} exited while restarting"
            )));
        }
        if spawned_at.elapsed() > RESTART_LIMIT {
            return Err(BenchError::Server(format!(
                "no read served on port {port} within {RESTART_LIMIT:?} of the restart"
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// The figures of the "redo done at X; N records, M bytes in S s (...);
/// C key changes" line.
fn parse_redo(log: &str) -> Option<Redo> {
    let line = log.lines().find(|l| l.contains("redo done at"))?;
    let mut parts = line.split("; ").skip(1);
    let mut words = parts.next()?.split_whitespace();
    let records = words.next()?.parse().ok()?;
    let _ = words.next(); // "records,"
    let bytes = words.next()?.parse().ok()?;
    let _ = words.next(); // "bytes"
    let _ = words.next(); // "in"
    let seconds = words.next()?.parse().ok()?;
    let changes = parts.next()?.split_whitespace().next()?.parse().ok()?;
    Some(Redo {
        records,
        changes,
        bytes,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_redo_line() {
        let log = "2026-12-05T08:00:00Z  INFO walrep::node::recovery: redo done at 0/1F4A2B8; 60000 records, 257000000 bytes in 1.875 s (32000 records/s, 137.1 MB/s); 3000000 key changes (1600000/s) end=0/1F4A2B8\n";
        let r = parse_redo(log).unwrap();
        assert_eq!(r.records, 60_000);
        assert_eq!(r.changes, 3_000_000);
        assert_eq!(r.bytes, 257_000_000);
        assert_eq!(r.seconds, 1.875);
        assert!(parse_redo("redo starts").is_none());
    }
}
