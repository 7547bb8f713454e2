//! Promotion time: from the promotion request to the first write
//! the promoted standby accepts, as `shared/anchors/04_promote.sh` measures
//! PostgreSQL (method B: one already-connected session retrying its write
//! in a tight loop; t0 just before the promote command is started).
//!
//! Per repetition a fresh standby (`walrep basebackup -R`) of one primary
//! catches up, idles 2 s, then is promoted either by `walrep promote
//! --wait-seconds 0 DATADIR` (a new process, as `pg_ctl promote -W`) or by
//! creating its `promote_trigger_file`. A client thread retries
//! `SET promote-test <n>` on one connection until `+OK`; the figure is the
//! time from t0 to that reply.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::anchors;
use super::cluster::{self, Node, Reply};
use super::ctx::Ctx;
use super::figures::{Better, Figure};
use super::BenchError;

/// PostgreSQL 15, anchors.md: promote to first write (ms, same session).
pub const PG_PROMOTE_MS: f64 = 29.0;
/// The target (ms).
pub const TARGET_PROMOTE_MS: f64 = 5.0;
/// Idle time after catch-up, as the script.
const IDLE: Duration = Duration::from_secs(2);
/// Longest the retrying client waits for a promotion.
const PROMOTE_LIMIT: Duration = Duration::from_secs(60);
/// Every repetition's standby connects under this application name...
const STANDBY_NAME: &str = "standby1";
/// ...and `walrep basebackup` names its slot after it.
const SLOT: &str = "walrep_standby1";
/// The trigger file's name inside the standby's data directory.
const TRIGGER: &str = "promote.trigger";

/// How a repetition asks for promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// `walrep promote --wait-seconds 0 DATADIR`.
    Command,
    /// Create `promote_trigger_file`.
    TriggerFile,
}

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), BenchError> {
    println!(
        "\n== promote: {} promotions per method",
        ctx.args.promote_reps
    );
    let dir = ctx.subdir("promote")?;
    let pdir = dir.join("primary");
    cluster::init(&ctx.exe, &pdir)?;
    let primary = Node::start(&ctx.exe, &pdir, &[])?;
    seed(&primary)?;
    let mut cmd_f = Figure::new(
        "promote",
        "`walrep promote` to the first accepted write (same session)",
        "ms",
        Better::Lower,
    )
    .anchor(PG_PROMOTE_MS)
    .goal("<= 5 ms", Some(TARGET_PROMOTE_MS));
    let mut file_f = Figure::new(
        "promote",
        "promote_trigger_file created to the first accepted write",
        "ms",
        Better::Lower,
    )
    .anchor(PG_PROMOTE_MS)
    .goal("<= 5 ms", Some(TARGET_PROMOTE_MS));
    for rep in 1..=ctx.args.promote_reps {
        for (how, fig) in [(How::Command, &mut cmd_f), (How::TriggerFile, &mut file_f)] {
            ctx.probe(&format!("before promote {how:?} rep {rep}"), false)?;
            let (ms, steps) = promote_once(ctx, &dir, &primary, how, rep)?;
            println!("  promote {how:?} rep {rep}: {ms:.2} ms to the first write; {steps}");
            fig.walrep.push(ms);
        }
    }
    primary.stop();
    if let Some(anchors_dir) = ctx.args.anchors.clone() {
        let base = ctx.anchors_base("pg-promote")?;
        ctx.probe("before PostgreSQL 04_promote.sh", false)?;
        let env = [("REPS", ctx.args.promote_reps.to_string())];
        let run = anchors::run_script(
            &anchors_dir,
            "04_promote.sh",
            "04_promote",
            &base,
            &env,
            Duration::from_secs(1800),
        )?;
        ctx.probe("after PostgreSQL 04_promote.sh", false)?;
        let pg = anchors::pg_promote(&run.results)?;
        println!(
            "  PostgreSQL 04_promote.sh: same session {:?} ms, new connection {:?} ms",
            pg.same_session_ms, pg.new_connection_ms
        );
        cmd_f.pg_same_run = pg.same_session_ms.clone();
        file_f.pg_same_run = pg.same_session_ms;
    }
    ctx.figures.push(cmd_f);
    ctx.figures.push(file_f);
    Ok(())
}

/// Some data, as the script's 100k-row table.
fn seed(primary: &Node) -> Result<(), BenchError> {
    let load = super::loadgen::Load {
        port: primary.port,
        clients: 16,
        keyspace: 100_000,
        value_bytes: 16,
    };
    super::loadgen::run(&load, 100_000, Duration::from_secs(120), &primary.datadir)?;
    Ok(())
}

/// One promotion of a fresh, caught-up, idle standby: milliseconds to the
/// first accepted write, and the standby's own account of the steps.
fn promote_once(
    ctx: &Ctx<'_>,
    dir: &Path,
    primary: &Node,
    how: How,
    rep: u32,
) -> Result<(f64, String), BenchError> {
    let sdir = dir.join(format!("standby-{how:?}-{rep}"));
    cluster::basebackup(&ctx.exe, primary.repl_port, &sdir, STANDBY_NAME)?;
    let standby = Node::start(
        &ctx.exe,
        &sdir,
        &[
            format!("promote_trigger_file={TRIGGER}"),
            "log_level=info".into(),
        ],
    )?;
    let mut p = primary.connect()?;
    p.call(&[b"SET", b"promote-test", b"before"])?;
    let target = cluster::flush_lsn(&mut p)?;
    let mut s = standby.connect()?;
    cluster::wait_replayed(
        &mut s,
        target,
        Duration::from_secs(60),
        Duration::from_millis(10),
    )?;
    std::thread::sleep(IDLE);
    let started = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        let writer = scope.spawn(|| retry_until_accepted(&mut s, &started));
        // Start only once the client is retrying, as the script's sleep 0.3.
        while !started.load(Ordering::Acquire) && !writer.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        let wall0 = SystemTime::now();
        let asked = request(ctx, &sdir, how);
        let accepted = writer
            .join()
            .map_err(|_| BenchError::Server("the retrying client panicked".into()))?;
        asked?;
        let t1 = accepted?;
        let ms = t1.saturating_duration_since(t0).as_secs_f64() * 1000.0;
        Ok::<(f64, SystemTime), BenchError>((ms, wall0))
    });
    let parts = match &result {
        Ok((ms, wall0)) => parts(&sdir, *wall0, *ms),
        Err(_) => String::new(),
    };
    let steps = format!("{parts}; {}; {}", promotion_steps(&sdir), step_times(&sdir));
    standby.stop();
    let _ = std::fs::remove_dir_all(&sdir);
    // `walrep basebackup` made a slot for this standby on the primary: the
    // next repetition's copy makes it again.
    cluster::drop_slot(primary.repl_port, SLOT)?;
    Ok((result?.0, steps))
}

/// Retry `SET` until `+OK`; returns when it was accepted.
fn retry_until_accepted(
    s: &mut cluster::Resp,
    started: &AtomicBool,
) -> Result<Instant, BenchError> {
    let cmd = cluster::encode(&[b"SET", b"promote-test", b"after"]);
    let deadline = Instant::now() + PROMOTE_LIMIT;
    loop {
        let reply = s.call_raw(&cmd)?;
        started.store(true, Ordering::Release);
        match reply {
            Reply::Simple(ok) if ok == "OK" => return Ok(Instant::now()),
            Reply::Error(e) if e.starts_with("READONLY") => {}
            other => {
                return Err(BenchError::Server(format!(
                    "unexpected reply while promoting: {other:?}"
                )))
            }
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Server(format!(
                "no write accepted within {PROMOTE_LIMIT:?} of the promotion request"
            )));
        }
    }
}

fn request(ctx: &Ctx<'_>, sdir: &Path, how: How) -> Result<(), BenchError> {
    match how {
        How::Command => {
            let status = Command::new(&ctx.exe)
                .args(["promote", "--wait-seconds", "0"])
                .arg(sdir)
                .stdout(Stdio::null())
                .status()
                .map_err(|e| BenchError::io("walrep promote", e))?;
            if !status.success() {
                return Err(BenchError::Server(format!("walrep promote: {status}")));
            }
            Ok(())
        }
        How::TriggerFile => std::fs::File::create(sdir.join(TRIGGER))
            .map(|_| ())
            .map_err(|e| BenchError::io("create the trigger file", e)),
    }
}

/// From the standby's transition trace: milliseconds from the promote
/// request to `Promoted`, and between the steps in between.
fn promotion_steps(sdir: &Path) -> String {
    let text =
        std::fs::read_to_string(sdir.join("log").join("transitions.jsonl")).unwrap_or_default();
    let mut first: Option<f64> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let kind = v["event"]["event"].as_str().unwrap_or("");
        let t = v["time_unix_ms"].as_f64();
        let to = v["to"].as_str().unwrap_or("");
        if kind == "PromoteRequested" || first.is_some() {
            let Some(t) = t else { continue };
            let t0 = *first.get_or_insert(t);
            out.push(format!("{kind}->{to} +{:.0}", t - t0));
        }
    }
    if out.is_empty() {
        "(no trace)".into()
    } else {
        format!("trace: {}", out.join(", "))
    }
}

/// The standby's own timing of the promotion steps (its log at info).
fn step_times(sdir: &Path) -> String {
    let log = std::fs::read_to_string(sdir.with_extension("log")).unwrap_or_default();
    let keys = [
        "elapsed_us",
        "history_fsync_us",
        "damage_check_us",
        "segment_copy_us",
        "receiver_sync_wait_us",
        "datadir_sync_us",
        "segment_us",
        "wal_start_us",
        "record_us",
        "control_us",
        "total_us",
    ];
    let mut out = Vec::new();
    for line in log.lines().filter(|l| {
        l.contains("timeline history file")
            || l.contains("end-of-recovery record")
            || l.contains("archive recovery complete")
    }) {
        for k in keys {
            if let Some(v) = line
                .split(&format!("{k}="))
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
            {
                let k = if k == "elapsed_us" { "history_us" } else { k };
                out.push(format!("{k}={v}"));
            }
        }
    }
    out.join(" ")
}

/// Where the time from the request (`wall0`) to the first accepted write
/// (`total_ms` later) went, from the standby's log lines (their
/// microsecond UTC timestamps): request noticed by the trigger watcher,
/// taken up by the recovery machine, the end of the WAL here replayed,
/// the new timeline chosen, the history file written, the end-of-recovery
/// record written, writes accepted, the control file durable (writes held
/// until then are confirmed); the rest up to `total_ms` is the retrying
/// client's next round trip (with the first write's own flush).
fn parts(sdir: &Path, wall0: SystemTime, total_ms: f64) -> String {
    let log = std::fs::read_to_string(sdir.with_extension("log")).unwrap_or_default();
    let Ok(since_epoch) = wall0.duration_since(UNIX_EPOCH) else {
        return String::new();
    };
    let t0 = (since_epoch.as_secs_f64()) % 86_400.0;
    let marks = [
        ("noticed", "received promote request"),
        ("machine", "event=PromoteRequested"),
        ("end_of_wal", "event=InvalidRecord"),
        ("new_timeline", "selected new timeline ID"),
        ("history", "wrote timeline history file"),
        ("end_of_recovery", "end-of-recovery record written"),
        ("accepting", "ready to accept connections (promoted)"),
        ("control_durable", "control file durable"),
    ];
    let mut out = Vec::new();
    for (name, text) in marks {
        let at = log
            .lines()
            .filter(|l| l.contains(text))
            .filter_map(time_of_day)
            .find(|t| *t >= t0 - 1.0);
        if let Some(at) = at {
            out.push(format!("{name} +{:.2}", (at - t0) * 1000.0));
        }
    }
    out.push(format!("first write +{total_ms:.2}"));
    format!("ms after the request: {}", out.join(", "))
}

/// Seconds since midnight UTC of a log line's leading RFC 3339 timestamp
/// (`2026-12-05T17:31:22.123456Z ...`).
fn time_of_day(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let clock = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut hms = clock.split(':');
    let h: f64 = hms.next()?.parse().ok()?;
    let m: f64 = hms.next()?.parse().ok()?;
    let s: f64 = hms.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}
