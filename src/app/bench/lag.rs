//! Replication lag of an asynchronous standby under a steady load of 64
//! clients with `synchronous_commit = off`, as
//! `shared/anchors/03_lag.sh` measures PostgreSQL (`64:off`).
//!
//! Load: redis-benchmark SET, 16-byte values, random keys over 100k, 64
//! clients, sized by a calibration run to last `--lag-seconds`. Samples are
//! taken from 1 s after the start to 1 s before the end, every 10 ms:
//!
//! - `replay_lag_ms` of the standby in the primary's `INFO replication` —
//!   PostgreSQL's `pg_stat_replication.replay_lag`: the time from the
//!   walsender sending WAL to the standby reporting it applied (the LSN
//!   tracker of walsender.c), whole milliseconds;
//! - bytes behind: the primary's `wal_flush_lsn` minus the standby's
//!   reported `replay_lsn` (the script's `pg_current_wal_lsn() - replay_lsn`);
//! - key visibility, a second thread: every 10 ms a `SET` of a fresh
//!   value on the primary, then `GET` on the standby, polled with pauses
//!   of a twentieth of the wait so far (20 µs to 1 ms), until it returns
//!   that value: the time from the primary's reply to the value
//!   being readable on the standby (µs resolution; includes the
//!   primary's flush, which the standby waits for before it applies, the
//!   network and replay; the standby's own fsync runs beside replay).
//!   The value became readable after the last GET that missed was sent
//!   and before the one that found it returned: the figure is that upper
//!   end, and each rep also prints the lower end (the start of the last
//!   miss), so the probe's own polling can be told from the standby's
//!   lag. The probe thread's timer slack is 1 ns: with the default 50 µs
//!   every pause of 20 µs ran late by up to that. Each probe also sends
//!   `WAITAOF 1 0` after the SET's reply and notes when its answer is seen
//!   between GETs: the primary's flush of the probe's write, part of every
//!   visibility figure (a standby applies only what its primary flushed),
//!   and the time from it to the value being visible.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::anchors;
use super::cluster::{self, parse_slave_line, Node, Reply};
use super::ctx::Ctx;
use super::figures::{percentile, Better, Figure};
use super::loadgen::{self, Load};
use super::BenchError;
use walrep::Lsn;

/// PostgreSQL 15, anchors.md: replay lag with 64 async clients (ms).
pub const PG_LAG_P50_MS: f64 = 120.0;
pub const PG_LAG_P99_MS: f64 = 322.0;
/// The target for p99 (ms).
pub const TARGET_LAG_P99_MS: f64 = 5.0;
/// Sampling period.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// Longest a key-visibility probe waits for its value.
const VISIBILITY_LIMIT: Duration = Duration::from_secs(5);
/// Bounds of the pause between a probe's GETs (see [`poll_pause`]).
const POLL_PAUSE_MIN: Duration = Duration::from_micros(20);
const POLL_PAUSE_MAX: Duration = Duration::from_millis(1);
const CLIENTS: u32 = 64;

/// What one repetition sampled.
#[derive(Default)]
struct Samples {
    replay_lag_ms: Vec<f64>,
    bytes_behind: Vec<f64>,
    visibility_ms: Vec<f64>,
    /// Per probe: when the last GET that missed was sent (0 if none did).
    visibility_low_ms: Vec<f64>,
    /// Per probe: when the primary's answer to `WAITAOF 1 0` was seen.
    flushed_ms: Vec<f64>,
    /// Per probe: visibility minus `flushed_ms`.
    after_flush_ms: Vec<f64>,
    rps: f64,
}

/// What the visibility probe measured, per probe.
#[derive(Default)]
struct Probes {
    visible_ms: Vec<f64>,
    low_ms: Vec<f64>,
    flushed_ms: Vec<f64>,
}

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), BenchError> {
    println!(
        "\n== lag: async standby, {CLIENTS} clients, synchronous_commit=off, {} s",
        ctx.args.lag_seconds
    );
    let dir = ctx.subdir("lag")?;
    let pdir = dir.join("primary");
    cluster::init(&ctx.exe, &pdir)?;
    let primary = ctx.start_node(&pdir, &["synchronous_commit=off".into()])?;
    let sdir = dir.join("standby");
    cluster::basebackup(&ctx.exe, primary.repl_port, &sdir, "standby1")?;
    let standby = ctx.start_node(&sdir, &[])?;
    let mut figs = [
        Figure::new(
            "lag",
            "replay lag p50 (primary's replay_lag_ms, 64 clients async)",
            "ms",
            Better::Lower,
        )
        .anchor(PG_LAG_P50_MS),
        Figure::new(
            "lag",
            "replay lag p99 (primary's replay_lag_ms, 64 clients async)",
            "ms",
            Better::Lower,
        )
        .anchor(PG_LAG_P99_MS)
        .goal("<= 5 ms", Some(TARGET_LAG_P99_MS)),
        Figure::new(
            "lag",
            "key visible on the standby after the primary's reply, p50",
            "ms",
            Better::Lower,
        ),
        Figure::new(
            "lag",
            "key visible on the standby after the primary's reply, p99",
            "ms",
            Better::Lower,
        )
        .goal("<= 5 ms", Some(TARGET_LAG_P99_MS)),
        Figure::new(
            "lag",
            "the probe's write flushed on the primary after its reply (WAITAOF 1 0 answered), p99",
            "ms",
            Better::Lower,
        ),
        Figure::new(
            "lag",
            "key visible on the standby after WAITAOF 1 0 answered, per probe, p99",
            "ms",
            Better::Lower,
        ),
        Figure::new("lag", "bytes behind replay p99", "bytes", Better::Lower),
        Figure::new(
            "lag",
            "load during the lag samples",
            "SET/s",
            Better::Higher,
        )
        .anchor(48_000.0),
    ];
    for rep in 1..=ctx.args.reps {
        catch_up(&primary, &standby)?;
        ctx.probe(&format!("before lag rep {rep}"), false)?;
        let s = sample_rep(ctx, &dir, &primary, &standby)?;
        ctx.probe(&format!("after lag rep {rep}"), false)?;
        println!(
            "  lag rep {rep}: {:.0} SET/s; replay_lag p50/p99 {:.2}/{:.2} ms ({} samples); visibility p50/p99 {:.3}/{:.3} ms ({} probes; last miss sent at p50/p99 {:.3}/{:.3} ms; primary's flush (WAITAOF 1 0) p50/p99 {:.3}/{:.3} ms; visible after it p50/p99 {:.3}/{:.3} ms); bytes behind p50/p99 {:.0}/{:.0}",
            s.rps,
            percentile(&s.replay_lag_ms, 0.5),
            percentile(&s.replay_lag_ms, 0.99),
            s.replay_lag_ms.len(),
            percentile(&s.visibility_ms, 0.5),
            percentile(&s.visibility_ms, 0.99),
            s.visibility_ms.len(),
            percentile(&s.visibility_low_ms, 0.5),
            percentile(&s.visibility_low_ms, 0.99),
            percentile(&s.flushed_ms, 0.5),
            percentile(&s.flushed_ms, 0.99),
            percentile(&s.after_flush_ms, 0.5),
            percentile(&s.after_flush_ms, 0.99),
            percentile(&s.bytes_behind, 0.5),
            percentile(&s.bytes_behind, 0.99),
        );
        figs[0].walrep.push(percentile(&s.replay_lag_ms, 0.5));
        figs[1].walrep.push(percentile(&s.replay_lag_ms, 0.99));
        figs[2].walrep.push(percentile(&s.visibility_ms, 0.5));
        figs[3].walrep.push(percentile(&s.visibility_ms, 0.99));
        figs[4].walrep.push(percentile(&s.flushed_ms, 0.99));
        figs[5].walrep.push(percentile(&s.after_flush_ms, 0.99));
        figs[6].walrep.push(percentile(&s.bytes_behind, 0.99));
        figs[7].walrep.push(s.rps);
    }
    standby.stop();
    primary.stop();
    if let Some(anchors_dir) = ctx.args.anchors.clone() {
        postgres(ctx, &anchors_dir, &mut figs)?;
    }
    ctx.figures.extend(figs);
    Ok(())
}

/// Wait until the standby has replayed everything the primary flushed.
fn catch_up(primary: &Node, standby: &Node) -> Result<(), BenchError> {
    let mut p = primary.connect()?;
    p.call(&[b"SET", b"lag:start", b"1"])?;
    let mut s = standby.connect()?;
    let target = cluster::flush_lsn(&mut p)?;
    cluster::wait_replayed(&mut s, target, Duration::from_secs(120), SAMPLE_EVERY)?;
    Ok(())
}

fn sample_rep(
    ctx: &Ctx<'_>,
    dir: &std::path::Path,
    primary: &Node,
    standby: &Node,
) -> Result<Samples, BenchError> {
    let load = Load {
        port: primary.port,
        clients: CLIENTS,
        keyspace: 100_000,
        value_bytes: 16,
    };
    let calib = loadgen::run(&load, 20_000, Duration::from_secs(60), dir)?;
    let secs = ctx.args.lag_seconds;
    let requests = ((calib.rps * secs as f64) as u64).max(1000);
    let limit = Duration::from_secs(secs * 5 + 30);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let loader = scope.spawn(|| {
            let r = loadgen::run(&load, requests, limit, dir);
            done.store(true, Ordering::Release);
            r
        });
        let window = Duration::from_secs(secs.saturating_sub(2).max(1));
        std::thread::sleep(Duration::from_secs(1));
        let done = &done;
        let visibility = scope.spawn(move || visibility_probe(primary, standby, window, done));
        let sampled = sample_primary(primary, window, done);
        let vis = visibility.join();
        let load = loader.join();
        let load = load.map_err(|_| BenchError::Load("the load thread panicked".into()))??;
        let (replay_lag_ms, bytes_behind) = sampled?;
        let probes = vis.map_err(|_| BenchError::Load("the probe panicked".into()))??;
        let after_flush_ms = probes
            .visible_ms
            .iter()
            .zip(&probes.flushed_ms)
            .map(|(v, f)| v - f)
            .collect();
        Ok(Samples {
            replay_lag_ms,
            bytes_behind,
            visibility_ms: probes.visible_ms,
            visibility_low_ms: probes.low_ms,
            flushed_ms: probes.flushed_ms,
            after_flush_ms,
            rps: load.rps,
        })
    })
}

/// The primary's view every 10 ms: the standby's replay_lag_ms and the
/// bytes between the primary's flush and the standby's replay.
fn sample_primary(
    primary: &Node,
    window: Duration,
    done: &AtomicBool,
) -> Result<(Vec<f64>, Vec<f64>), BenchError> {
    let mut c = primary.connect()?;
    let (mut lag, mut behind) = (Vec::new(), Vec::new());
    let end = Instant::now() + window;
    while Instant::now() < end && !done.load(Ordering::Acquire) {
        let flush = cluster::flush_lsn(&mut c)?;
        let repl = c.info("replication")?;
        if let Some(line) = repl.get("slave0") {
            let s = parse_slave_line(line);
            if let Some(ms) = s.get("replay_lag_ms").and_then(|v| v.parse::<f64>().ok()) {
                lag.push(ms);
            }
            if let Some(r) = s.get("replay_lsn").and_then(|v| v.parse::<Lsn>().ok()) {
                behind.push(flush.saturating_sub(r) as f64);
            }
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    Ok((lag, behind))
}

/// Every 10 ms: SET a fresh value on the primary, then GET on the standby
/// until it shows; milliseconds from the SET's reply to the value (the
/// end of the GET that found it), and to the start of the last GET that
/// did not (0 if none): the value became readable in between. Right after
/// the SET's reply the probe also sends `WAITAOF 1 0` on the primary
/// (it waits for the flush covering the SET and causes none) and notes
/// when its answer is seen between GETs: the primary's flush, which
/// the standby waits for before it makes the value visible.
fn visibility_probe(
    primary: &Node,
    standby: &Node,
    window: Duration,
    done: &AtomicBool,
) -> Result<Probes, BenchError> {
    precise_sleeps();
    let mut p = primary.connect()?;
    let mut s = standby.connect()?;
    let waitaof = cluster::encode(&[b"WAITAOF", b"1", b"0", b"1000"]);
    let mut out = Probes::default();
    let end = Instant::now() + window;
    let mut seq = 0u64;
    while Instant::now() < end && !done.load(Ordering::Acquire) {
        seq += 1;
        let value = seq.to_string();
        match p.call(&[b"SET", b"lag:probe", value.as_bytes()])? {
            Reply::Simple(_) => {}
            other => return Err(BenchError::Server(format!("probe SET: {other:?}"))),
        }
        let t0 = Instant::now();
        p.send_raw(&waitaof)?;
        let mut flushed = None;
        let get = cluster::encode(&[b"GET", b"lag:probe"]);
        let mut last_miss = Duration::ZERO;
        loop {
            let sent = t0.elapsed();
            let found = matches!(s.call_raw(&get)?, Reply::Bulk(Some(v)) if v == value.as_bytes());
            if flushed.is_none() && p.reply_arrived()? {
                flushed = Some(t0.elapsed());
            }
            if found {
                break;
            }
            last_miss = sent;
            let waited = t0.elapsed();
            if waited > VISIBILITY_LIMIT {
                return Err(BenchError::Server(format!(
                    "probe value {seq} not visible on the standby within {VISIBILITY_LIMIT:?}"
                )));
            }
            std::thread::sleep(poll_pause(waited));
        }
        let visible = t0.elapsed();
        let (local, _) = p.read_waitaof()?;
        if local != 1 {
            return Err(BenchError::Server(format!(
                "the primary had not flushed probe value {seq} 1 s after its reply"
            )));
        }
        let flushed = flushed.unwrap_or_else(|| t0.elapsed());
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        out.visible_ms.push(ms(visible));
        out.low_ms.push(ms(last_miss));
        out.flushed_ms.push(ms(flushed));
        std::thread::sleep(SAMPLE_EVERY);
    }
    Ok(out)
}

/// Let this thread's sleeps end when asked: Linux stretches a normal
/// thread's timed sleeps by up to its timer slack (50 µs by default), as
/// long as the probe's shortest pause, which made every pause late.
fn precise_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer and changes only the
    // calling thread's slack; a failure leaves the default.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
}

/// The pause between two GETs of a visibility probe: a twentieth of the
/// wait so far (the figure is at most 5% late), between 20 µs and 1 ms.
/// A tight loop of GETs took a core's share from the standby exactly when
/// it was behind (this thread and the standby's Redis worker, on two
/// cores), so a slow sample made itself slower: the probe fed the tail it
/// measured.
fn poll_pause(waited: Duration) -> Duration {
    (waited / 20).clamp(POLL_PAUSE_MIN, POLL_PAUSE_MAX)
}

/// PostgreSQL 15 through 03_lag.sh with SCENARIOS=64:off.
fn postgres(
    ctx: &mut Ctx<'_>,
    anchors_dir: &std::path::Path,
    figs: &mut [Figure],
) -> Result<(), BenchError> {
    let base = ctx.anchors_base("pg-lag")?;
    ctx.probe("before PostgreSQL 03_lag.sh", false)?;
    let env = [
        ("SCENARIOS", format!("{CLIENTS}:off")),
        ("DUR", ctx.args.lag_seconds.to_string()),
        ("REPS", ctx.args.reps.to_string()),
    ];
    let run = anchors::run_script(
        anchors_dir,
        "03_lag.sh",
        "03_lag",
        &base,
        &env,
        Duration::from_secs(ctx.args.lag_seconds * 4 * u64::from(ctx.args.reps) + 600),
    )?;
    ctx.probe("after PostgreSQL 03_lag.sh", false)?;
    // One figure per rep, as for walrep: the script names samples r<rep>_c64_off.
    for rep in 1..=ctx.args.reps {
        let pg = anchors::pg_lag(&run.results, &format!("r{rep}_c{CLIENTS}_off"))?;
        println!(
            "  PostgreSQL lag rep {rep}: {:?} tps; replay_lag p50/p99 {:.2}/{:.2} ms ({} samples); bytes behind p99 {:.0}",
            pg.tps,
            percentile(&pg.replay_lag_ms, 0.5),
            percentile(&pg.replay_lag_ms, 0.99),
            pg.replay_lag_ms.len(),
            percentile(&pg.replay_bytes_behind, 0.99)
        );
        figs[0].pg_same_run.push(percentile(&pg.replay_lag_ms, 0.5));
        figs[1]
            .pg_same_run
            .push(percentile(&pg.replay_lag_ms, 0.99));
        figs[6]
            .pg_same_run
            .push(percentile(&pg.replay_bytes_behind, 0.99));
        figs[7].pg_same_run.extend(pg.tps.iter().copied());
    }
    Ok(())
}
