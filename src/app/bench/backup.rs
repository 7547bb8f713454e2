//! The `backup` scenario: `walrep basebackup` MB/s with `--jobs` 1, 2 and
//! 4 of one primary's data, and a two-phase copy's time from the start of
//! `walrep basebackup --two-phase` to the new standby's first flush report
//! upstream (its walsender catching up or streaming; when it is caught
//! up, `streaming`, is noted beside it), for 100 MB and for `--backup-mb`
//! of data (PostgreSQL's standby can report nothing before its whole
//! copy is done). With
//! `--anchors`, pg_basebackup of a PostgreSQL 15 database of the same size
//! in the same run is the reference of the `--jobs` figures. Before each
//! `--jobs N` copy, the copy floor ([`super::copyfloor`]) moves the same
//! snapshot files over N plain loopback streams: each rate is also
//! reported as a share of that floor, which says whether the target is
//! within what the machine allows.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::{self, Node, Reply, Resp};
use super::ctx::Ctx;
use super::figures::{Better, Figure};
use super::BenchError;

/// Value size of the data written before the copies.
const VALUE_BYTES: usize = 256 * 1024;
/// Longest wait for phase 1, and for the first flush report.
const PHASE_LIMIT: Duration = Duration::from_secs(300);
/// The two-phase target (ms): under a second whatever the data size.
const TARGET_FIRST_FLUSH_MS: f64 = 1000.0;
/// pg_basebackup's single stream on this kind of machine (anchors, MB/s).
const PG_BASEBACKUP_ANCHOR_MBPS: f64 = 652.0;
/// The parallel target: 1.5 times pg_basebackup's same-run rate.
const TARGET_PARALLEL_RATIO: f64 = 1.5;

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), BenchError> {
    let big_mb = ctx.args.backup_mb;
    println!("\n== backup: --jobs 1, 2, 4 of {big_mb} MB; two-phase first flush at 100 MB and {big_mb} MB");
    let dir = ctx.subdir("backup")?;
    let pg_rate = match ctx.args.anchors.clone() {
        Some(anchors_dir) => {
            ctx.probe("before pg_basebackup", true)?;
            let (rate, cpu_s, written) =
                pg_basebackup_rate(&dir.join("postgres"), &anchors_dir, big_mb)?;
            println!("  pg_basebackup -X fetch: {big_mb} MB at {rate:.0} MB/s");
            ctx.note(format!(
                "pg_basebackup: client CPU {:.2} s/GB, client wrote {} MB",
                cpu_s / (big_mb as f64 / 1024.0),
                written >> 20
            ));
            Some(rate)
        }
        None => None,
    };
    let reference = pg_rate.unwrap_or(PG_BASEBACKUP_ANCHOR_MBPS);
    let mut jobs_f: Vec<Figure> = [1u32, 2, 4]
        .iter()
        .map(|&j| {
            let mut f = Figure::new(
                "backup",
                &format!("walrep basebackup --jobs {j} of {big_mb} MB"),
                "MB/s",
                Better::Higher,
            )
            .anchor(PG_BASEBACKUP_ANCHOR_MBPS);
            f.pg_same_run.extend(pg_rate);
            if j == 4 {
                f = f.goal(
                    &format!("≥ {TARGET_PARALLEL_RATIO}× pg_basebackup"),
                    Some(TARGET_PARALLEL_RATIO * reference),
                );
            }
            f
        })
        .collect();
    let mut floor_f: Vec<Figure> = [1u32, 2, 4]
        .iter()
        .map(|&j| {
            Figure::new(
                "backup",
                &format!(
                    "copy floor: read, loopback TCP, write, fsync; {j} stream(s), {big_mb} MB"
                ),
                "MB/s",
                Better::Higher,
            )
        })
        .collect();
    let mut flush_f: Vec<Figure> = Vec::new();
    for mb in [100, big_mb] {
        let pdir = dir.join(format!("primary-{mb}"));
        cluster::init(&ctx.exe, &pdir)?;
        let primary = Node::start(&ctx.exe, &pdir, &[])?;
        fill(&primary, mb)?;
        // The anchor's fill ends with CHECKPOINT, so pg_basebackup's
        // backup-start checkpoint has nothing to write; a shutdown
        // checkpoint does the same here (a backup of a node with nothing
        // new since its last checkpoint copies that one).
        primary.stop();
        let primary = Node::start(&ctx.exe, &pdir, &[])?;
        if mb == big_mb {
            let files = super::copyfloor::snapshot_files(&pdir)?;
            for ((j, fig), floor_fig) in [1u32, 2, 4]
                .into_iter()
                .zip(jobs_f.iter_mut())
                .zip(floor_f.iter_mut())
            {
                ctx.probe(&format!("before --jobs {j}"), true)?;
                let floor = super::copyfloor::measure(&files, &dir.join("floor"), j as usize)?;
                println!(
                    "  copy floor, {j} stream(s): {} MB in {:.2} s = {:.0} MB/s, CPU {:.2} s/GB",
                    floor.bytes >> 20,
                    floor.secs,
                    floor.mbps(),
                    floor.cpu_s_per_gb()
                );
                floor_fig.walrep.push(floor.mbps());
                let c = timed_copy(ctx, &primary, &dir.join(format!("copy-j{j}")), j)?;
                let rate = mb as f64 / c.secs;
                println!("  --jobs {j}: {mb} MB in {:.2} s = {rate:.0} MB/s", c.secs);
                let gb = mb as f64 / 1024.0;
                ctx.note(format!(
                    "--jobs {j}: client CPU {:.2} s/GB, server CPU {:.2} s/GB, client wrote {} MB; {}",
                    c.client_cpu_s / gb,
                    c.server_cpu_s / gb,
                    c.written_bytes >> 20,
                    c.phases
                ));
                fig.walrep.push(rate);
                ctx.note(share_of_floor(j, rate, pg_rate, &floor));
            }
        }
        ctx.probe(&format!("before two-phase {mb} MB"), false)?;
        let (phase1_ms, flush_ms, caught_up_ms) = two_phase_first_flush(ctx, &primary, &dir, mb)?;
        println!("  two-phase {mb} MB: phase 1 in {phase1_ms:.0} ms, first flush report upstream after {flush_ms:.0} ms, caught up (walsender streaming) after {caught_up_ms:.0} ms");
        ctx.note(format!(
            "two-phase {mb} MB: first flush report {flush_ms:.0} ms; the standby's walsender streaming (caught up with the WAL since the copied checkpoint) at {caught_up_ms:.0} ms"
        ));
        let mut f = Figure::new(
            "backup",
            &format!("two-phase {mb} MB: start to the standby's first flush report"),
            "ms",
            Better::Lower,
        )
        .goal("< 1000 ms", Some(TARGET_FIRST_FLUSH_MS));
        f.walrep.push(flush_ms);
        flush_f.push(f);
        primary.stop();
        let _ = std::fs::remove_dir_all(&pdir);
    }
    if let (Some(pg), Some(floor4)) = (pg_rate, floor_f.last().and_then(|f| f.walrep.first())) {
        let target = TARGET_PARALLEL_RATIO * pg;
        let verdict = if target > *floor4 {
            "above the floor: the machine, not walrep, stops the target"
        } else {
            "within the floor"
        };
        ctx.note(format!(
            "target {TARGET_PARALLEL_RATIO}x pg_basebackup = {target:.0} MB/s; copy floor with 4 streams {floor4:.0} MB/s: {verdict}"
        ));
    }
    ctx.figures.extend(jobs_f);
    ctx.figures.extend(floor_f);
    ctx.figures.extend(flush_f);
    Ok(())
}

/// pg_basebackup of a PostgreSQL 15 database of `mb` MB: MB/s (of the
/// data written, as the walrep figures), its CPU seconds and the bytes it
/// wrote.
fn pg_basebackup_rate(
    dir: &Path,
    anchors_dir: &Path,
    mb: u64,
) -> Result<(f64, f64, u64), BenchError> {
    let pg = super::pg::PgAnchor::start(dir, anchors_dir)?;
    pg.fill_bulk(mb)?;
    let before = children_usage();
    let secs = pg.basebackup_secs()?;
    let after = children_usage();
    drop(pg);
    let _ = std::fs::remove_dir_all(dir);
    Ok((
        mb as f64 / secs,
        after.0 - before.0,
        after.1.saturating_sub(before.1),
    ))
}

/// `--jobs j`'s rate (and pg_basebackup's, beside the one-stream floor)
/// as shares of the floor measured just before it.
fn share_of_floor(
    j: u32,
    rate: f64,
    pg_rate: Option<f64>,
    floor: &super::copyfloor::Floor,
) -> String {
    let f = floor.mbps();
    let pg = pg_rate.filter(|_| j == 1).map_or(String::new(), |pg| {
        format!(", pg_basebackup {:.0}%", 100.0 * pg / f)
    });
    format!(
        "--jobs {j}: {:.0}% of the {j}-stream copy floor ({f:.0} MB/s, its CPU {:.2} s/GB){pg}",
        100.0 * rate / f,
        floor.cpu_s_per_gb()
    )
}

/// Write about `mb` MB of values.
fn fill(primary: &Node, mb: u64) -> Result<(), BenchError> {
    let mut c = primary.connect()?;
    let value = vec![b'v'; VALUE_BYTES];
    let n = mb * 1024 * 1024 / VALUE_BYTES as u64;
    for i in 0..n {
        let key = format!("bulk:{i}");
        if let Reply::Error(e) = c.call(&[b"SET", key.as_bytes(), &value])? {
            return Err(BenchError::Server(format!("SET {key}: {e}")));
        }
    }
    Ok(())
}

/// What one timed copy took.
struct Copied {
    /// Wall time of the command.
    secs: f64,
    /// CPU (user + system) of the `walrep basebackup` process.
    client_cpu_s: f64,
    /// CPU of the primary meanwhile.
    server_cpu_s: f64,
    /// Bytes the client wrote to the disk (its block output).
    written_bytes: u64,
    /// The client's own account of its phases (its `phases:` line).
    phases: String,
}

/// One `walrep basebackup --jobs N` into `dest` (removed after).
fn timed_copy(ctx: &Ctx<'_>, primary: &Node, dest: &Path, jobs: u32) -> Result<Copied, BenchError> {
    let server_cpu = || cluster::process_cpu_s(primary.child.pid()).unwrap_or(0.0);
    let (server0, children0) = (server_cpu(), children_usage());
    let t0 = Instant::now();
    let out = Command::new(&ctx.exe)
        .arg("basebackup")
        .args(["--from", &format!("127.0.0.1:{}", primary.repl_port), "-D"])
        .arg(dest)
        .args(["--jobs", &jobs.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BenchError::io("walrep basebackup", e))?;
    let secs = t0.elapsed().as_secs_f64();
    let (server1, children1) = (server_cpu(), children_usage());
    let _ = std::fs::remove_dir_all(dest);
    if !out.status.success() {
        return Err(BenchError::Server(format!(
            "walrep basebackup --jobs {jobs} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let phases = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("walrep: "))
        .find(|l| l.starts_with("phases: "))
        .unwrap_or("no phases reported")
        .to_string();
    Ok(Copied {
        secs,
        client_cpu_s: children1.0 - children0.0,
        server_cpu_s: server1 - server0,
        written_bytes: children1.1.saturating_sub(children0.1),
        phases,
    })
}

/// CPU seconds and bytes written (block output) of this process's
/// children that have ended and been waited for.
fn children_usage() -> (f64, u64) {
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN is valid and `usage` is writable.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return (0.0, 0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = secs(usage.ru_utime) + secs(usage.ru_stime);
    // Blocks of 512 bytes.
    (cpu, (usage.ru_oublock.max(0) as u64) * 512)
}

/// Start `walrep basebackup --two-phase --jobs 4`, start the standby as
/// soon as phase 1 is printed, and time the first flush report the
/// primary gets from it, and the moment its walsender is `streaming`
/// (caught up with the WAL written since the copied checkpoint; until
/// then it is `catchup`, and reports flushes all the same): (phase 1 ms,
/// first flush ms, caught up ms), all from the start.
fn two_phase_first_flush(
    ctx: &Ctx<'_>,
    primary: &Node,
    dir: &Path,
    mb: u64,
) -> Result<(f64, f64, f64), BenchError> {
    let dest = dir.join(format!("two-phase-{mb}"));
    let app = format!("tp{mb}");
    let t0 = Instant::now();
    let mut child = Command::new(&ctx.exe)
        .arg("basebackup")
        .args(["--from", &format!("127.0.0.1:{}", primary.repl_port), "-D"])
        .arg(&dest)
        .args(["-R", "--no-slot", "--application-name", &app])
        .args(["--two-phase", "--jobs", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::io("walrep basebackup --two-phase", e))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let phase1 = loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("phase 1 complete") => break t0.elapsed(),
            Some(Ok(_)) => {}
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BenchError::Server(
                    "two-phase basebackup ended before phase 1".into(),
                ));
            }
        }
    };
    let standby = Node::start(&ctx.exe, &dest, &[])?;
    let mut c = primary.connect()?;
    let every = Duration::from_millis(5);
    let mut first_flush = None;
    let flushed = cluster::wait_for("the standby caught up", PHASE_LIMIT, every, || {
        let Some((_, streaming)) = standby_flush(&mut c, &app)? else {
            return Ok(None);
        };
        let at = t0.elapsed();
        first_flush.get_or_insert(at);
        Ok(streaming.then_some(at))
    });
    // Drain the rest of the output, then the exit.
    for _ in lines {}
    let status = child
        .wait()
        .map_err(|e| BenchError::io("wait for basebackup", e))?;
    standby.stop();
    let _ = std::fs::remove_dir_all(&dest);
    let flushed = flushed?;
    if !status.success() {
        return Err(BenchError::Server(format!(
            "two-phase basebackup failed ({status})"
        )));
    }
    let first_flush = first_flush.unwrap_or(flushed);
    Ok((
        phase1.as_secs_f64() * 1e3,
        first_flush.as_secs_f64() * 1e3,
        flushed.as_secs_f64() * 1e3,
    ))
}

/// The flush position the primary has from the standby `app` (its
/// walsender catching up or streaming; the copy's own walsenders share
/// the name but report no flush), and whether it is streaming.
fn standby_flush(c: &mut Resp, app: &str) -> Result<Option<(String, bool)>, BenchError> {
    let info = c.info("replication")?;
    Ok(info.values().find_map(|v| {
        let f = cluster::parse_slave_line(v);
        let state = f.get("walsender_state").map(String::as_str);
        let ours = f.get("application_name").is_some_and(|a| a == app)
            && matches!(state, Some("catchup" | "streaming"));
        let streaming = state == Some("streaming");
        f.get("flush_lsn")
            .filter(|l| ours && *l != "0/0")
            .map(|l| (l.clone(), streaming))
    }))
}
