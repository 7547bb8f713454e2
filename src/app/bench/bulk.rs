//! Bulk WAL scenarios on one ~1 GB WAL load, as
//! `shared/anchors/05_wal_bulk.sh` does for PostgreSQL:
//!
//! 1. a primary with archiving; physical slots reserved and a base backup
//!    (`bb_preload`) taken *before* the load;
//! 2. `--wal-mb` of WAL from redis-benchmark SETs of `--bulk-value-bytes`
//!    values (pipelined, `synchronous_commit=off`), then a few writes past
//!    the target so pg_receivewal (which stops only *beyond* `--endpos`)
//!    can finish, and `archive_timeout` to complete and archive the last
//!    segment (PostgreSQL's script calls `pg_switch_wal()`);
//! 3. `stream`: the real `pg_receivewal -S slot -E TARGET`, async and
//!    `--synchronous`, MB/s = bytes from its start position to TARGET over
//!    the process's wall time;
//! 4. `catchup`: a standby from a copy of `bb_preload` with the
//!    primary's `primary_conninfo` and a slot; MB/s = (TARGET − backup
//!    start) over the time from `walrep start` to `replay_lsn ≥ TARGET`;
//! 5. `archive-replay`: the primary stopped; a standby from a copy of
//!    `bb_preload` with `restore_command = cp ARCHIVE/%f %p` only.
//!
//! MB = 1e6 bytes, as the script. The standby's CPU seconds (process and
//! redo thread) are recorded too: they are steadier than wall time on
//! these shared machines.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::anchors;
use super::cluster::{self, Node, Resp};
use super::ctx::Ctx;
use super::figures::{Better, Figure};
use super::procs::Child;
use super::BenchError;
use walrep::Lsn;

/// PostgreSQL 15 in anchors.md (MB/s).
pub const PG_RECEIVEWAL_MBPS: f64 = 380.0;
pub const PG_RECEIVEWAL_SYNC_MBPS: f64 = 378.0;
pub const PG_CATCHUP_MBPS: f64 = 237.0;
pub const PG_ARCHIVE_REPLAY_MBPS: f64 = 201.0;
/// The targets, as multiples of PostgreSQL's MB/s (measured in the same
/// run with `--anchors`, else the anchors.md figures above): catch-up
/// from the stream and replay from the archive; pg_receivewal's rate,
/// asynchronous and `--synchronous`.
pub const TARGET_REPLAY_TIMES_PG: f64 = 3.0;
pub const TARGET_RECEIVEWAL_TIMES_PG: f64 = 1.2;

/// Stop generating WAL when the disk has less free space than this
/// (the WAL exists three times: primary, archive, standby).
const MIN_FREE_BYTES: u64 = 15 << 30;
/// Longest a replay or a pg_receivewal run may take.
const REPLAY_LIMIT: Duration = Duration::from_secs(900);
/// Replay position polling period (the script polls every 100 ms with psql).
const POLL: Duration = Duration::from_millis(10);
/// Slots per repetition: two pg_receivewal modes and one catch-up standby.
const MAX_REPS_FOR_SLOTS: u32 = 5;

/// Which parts of the bulk scenario to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Stream,
    Catchup,
    ArchiveReplay,
}

/// Where the load ended.
struct Loaded {
    archive: PathBuf,
    /// The base backup taken before the load.
    preload: PathBuf,
    /// Its start (redo) LSN: where replay begins.
    backup_start: Lsn,
    /// End of the load: the position every measurement reaches.
    target: Lsn,
}

pub fn run(ctx: &mut Ctx<'_>, parts: &[Part]) -> Result<(), BenchError> {
    println!("\n== bulk WAL ({} MB): {parts:?}", ctx.args.wal_mb);
    if ctx.args.reps > MAX_REPS_FOR_SLOTS {
        return Err(BenchError::Usage(format!(
            "--reps must be at most {MAX_REPS_FOR_SLOTS} for the bulk scenarios"
        )));
    }
    let dir = ctx.subdir("bulk")?;
    let (primary, loaded) = load(ctx, &dir)?;
    let mut figs = Vec::new();
    if parts.contains(&Part::Stream) {
        figs.extend(stream(ctx, &dir, &primary, &loaded)?);
    }
    if parts.contains(&Part::Catchup) {
        let f = Figure::new(
            "catchup",
            "standby catch-up replay from the stream",
            "MB/s",
            Better::Higher,
        )
        .anchor(PG_CATCHUP_MBPS)
        .goal_times_pg(TARGET_REPLAY_TIMES_PG);
        figs.push(replay_reps(ctx, &dir, &loaded, f, "catchup", |rep| {
            let name = format!("catchup_{rep}");
            vec![
                format!("primary_conninfo={}", primary.conninfo(&name)),
                format!("primary_slot_name={name}"),
                "restore_command=".into(),
            ]
        })?);
    }
    primary.stop();
    if parts.contains(&Part::ArchiveReplay) {
        let f = Figure::new(
            "archive-replay",
            "standby replay from the archive (restore_command = cp)",
            "MB/s",
            Better::Higher,
        )
        .anchor(PG_ARCHIVE_REPLAY_MBPS)
        .goal_times_pg(TARGET_REPLAY_TIMES_PG);
        let restore = format!("restore_command=cp {}/%f %p", loaded.archive.display());
        figs.push(replay_reps(
            ctx,
            &dir,
            &loaded,
            f,
            "archive replay",
            |_| vec!["primary_conninfo=".into(), restore.clone()],
        )?);
    }
    if ctx.args.anchors.is_some() {
        postgres(ctx, &mut figs)?;
    }
    ctx.figures.extend(figs);
    Ok(())
}

/// Set up the primary, the slots and `bb_preload`, then generate the WAL.
fn load(ctx: &mut Ctx<'_>, dir: &Path) -> Result<(Node, Loaded), BenchError> {
    let archive = dir.join("archive");
    std::fs::create_dir_all(&archive).map_err(|e| BenchError::io("create the archive", e))?;
    let datadir = dir.join("primary");
    cluster::init(&ctx.exe, &datadir)?;
    let primary = Node::start(
        &ctx.exe,
        &datadir,
        &[
            "synchronous_commit=off".into(),
            "archive_mode=on".into(),
            format!(
                "archive_command=test ! -f {a}/%f && cp %p {a}/%f",
                a = archive.display()
            ),
            "archive_timeout=1s".into(),
            "max_replication_slots=16".into(),
        ],
    )?;
    create_slots(&primary, ctx.args.reps)?;
    let preload = dir.join("bb_preload");
    cluster::basebackup(&ctx.exe, primary.repl_port, &preload, "catchup")?;
    let backup_start = backup_start(&preload)?;
    let mut conn = primary.connect()?;
    let start = cluster::insert_lsn(&mut conn)?;
    let want = ctx.args.wal_mb << 20;
    let t0 = Instant::now();
    generate(ctx, dir, &primary, &mut conn, start, want)?;
    let gen_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let target = cluster::insert_lsn(&mut conn)?;
    cluster::wait_for("flush of the load", REPLAY_LIMIT, POLL, || {
        Ok((cluster::flush_lsn(&mut conn)? >= target).then_some(()))
    })?;
    // pg_receivewal stops only once it received WAL *beyond* --endpos.
    for i in 0..10 {
        let k = format!("after-target-{i}");
        conn.call(&[b"SET", k.as_bytes(), b"x"])?;
    }
    wait_archived(&mut conn, target)?;
    let generated = target.saturating_sub(start);
    println!(
        "  load: {} MB of WAL ({}..{}) in {gen_s:.1} s ({:.0} MB/s); base backup starts at {backup_start}",
        generated / 1_000_000,
        start,
        target,
        generated as f64 / 1e6 / gen_s
    );
    Ok((
        primary,
        Loaded {
            archive,
            preload,
            backup_start,
            target,
        },
    ))
}

/// `--reps` replays of the loaded WAL into `f`, each by a standby started
/// with `overrides(rep)`.
fn replay_reps(
    ctx: &mut Ctx<'_>,
    dir: &Path,
    loaded: &Loaded,
    mut f: Figure,
    what: &str,
    overrides: impl Fn(u32) -> Vec<String>,
) -> Result<Figure, BenchError> {
    let replay_bytes = loaded.target.saturating_sub(loaded.backup_start) as f64;
    for rep in 1..=ctx.args.reps {
        let label = format!("{what} rep {rep}");
        f.walrep.push(replay(
            ctx,
            dir,
            loaded,
            &label,
            &overrides(rep),
            replay_bytes,
        )?);
    }
    Ok(f)
}

/// Slots reserved before the load (PostgreSQL's script does the same), so
/// the primary keeps all of it for pg_receivewal and the catch-up standbys.
fn create_slots(primary: &Node, reps: u32) -> Result<(), BenchError> {
    use walrep::replication::client::{ConnInfo, ReplicationClient};
    let info = ConnInfo::parse(&primary.conninfo("bench"))
        .map_err(|e| BenchError::Server(format!("conninfo: {e}")))?;
    let mut c = ReplicationClient::connect(&info, Duration::from_secs(30))
        .map_err(|e| BenchError::Server(format!("replication connection: {e}")))?;
    for rep in 1..=reps {
        for kind in ["rw_async", "rw_sync", "catchup"] {
            c.create_physical_slot(&format!("{kind}_{rep}"), false, true)
                .map_err(|e| BenchError::Server(format!("CREATE_REPLICATION_SLOT: {e}")))?;
        }
    }
    c.close();
    Ok(())
}

/// `START WAL LOCATION: X/Y` of a base backup's backup_label.
fn backup_start(backup: &Path) -> Result<Lsn, BenchError> {
    let label = std::fs::read_to_string(backup.join("backup_label"))
        .map_err(|e| BenchError::io("read backup_label", e))?;
    label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| BenchError::Server(format!("no START WAL LOCATION in {label:?}")))
}

/// redis-benchmark SETs in chunks until `want` bytes of WAL follow `start`.
fn generate(
    ctx: &Ctx<'_>,
    dir: &Path,
    primary: &Node,
    conn: &mut Resp,
    start: Lsn,
    want: u64,
) -> Result<(), BenchError> {
    let value = u64::from(ctx.args.bulk_value_bytes);
    // Record size: header and the KV payload around key and value.
    let per_record = value + 72;
    let keyspace = ((400u64 << 20) / (value + 16)).clamp(10_000, 1_000_000);
    loop {
        let done = cluster::insert_lsn(conn)?.saturating_sub(start);
        if done >= want {
            return Ok(());
        }
        check_free_space(dir)?;
        let n = ((want - done) / per_record + 1).clamp(1_000, 500_000);
        let mut cmd = Command::new("redis-benchmark");
        cmd.args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args(["-t", "set", "-c", "16", "-P", "32", "-q"])
            .args(["-n", &n.to_string(), "-r", &keyspace.to_string()])
            .args(["-d", &value.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = Child::spawn("redis-benchmark", &mut cmd)?;
        cluster::wait_for(
            "a load chunk",
            REPLAY_LIMIT,
            Duration::from_millis(20),
            || child.exited().map(|e| e.then_some(())),
        )?;
    }
}

fn check_free_space(dir: &Path) -> Result<(), BenchError> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| BenchError::Usage("the run directory's path has a NUL byte".into()))?;
    // SAFETY: statvfs fills the struct we own through a valid pointer and
    // reads a NUL-terminated path that lives for the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(BenchError::io("statvfs", std::io::Error::last_os_error()));
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    if free < MIN_FREE_BYTES {
        return Err(BenchError::Usage(format!(
            "only {} GB free in {}: stopping the WAL load (needs 15 GB free)",
            free >> 30,
            dir.display()
        )));
    }
    Ok(())
}

/// Wait until the segment holding `target` is archived (the idle primary's
/// archive_timeout ends it).
fn wait_archived(conn: &mut Resp, target: Lsn) -> Result<(), BenchError> {
    let seg = conn
        .info("server")?
        .get("wal_segment_size")
        .and_then(|v| v.parse().ok())
        .and_then(|b| walrep::WalSegSize::new(b).ok())
        .ok_or_else(|| BenchError::Server("INFO server has no wal_segment_size".into()))?;
    let name = target.segno(seg).file_name(walrep::TimelineId::FIRST, seg);
    cluster::wait_for("archiving of the load", REPLAY_LIMIT, POLL * 10, || {
        let last = conn.info("persistence")?.get("last_archived_wal").cloned();
        Ok(last.filter(|l| l.as_str() >= name.as_str()).map(|_| ()))
    })
}

/// pg_receivewal, async and `--synchronous`, each repetition from its own
/// slot (reserved before the load).
fn stream(
    ctx: &mut Ctx<'_>,
    dir: &Path,
    primary: &Node,
    loaded: &Loaded,
) -> Result<Vec<Figure>, BenchError> {
    let mut async_f = Figure::new(
        "stream",
        "pg_receivewal from the primary (async)",
        "MB/s",
        Better::Higher,
    )
    .anchor(PG_RECEIVEWAL_MBPS)
    .goal_times_pg(TARGET_RECEIVEWAL_TIMES_PG);
    let mut sync_f = Figure::new(
        "stream",
        "pg_receivewal --synchronous",
        "MB/s",
        Better::Higher,
    )
    .anchor(PG_RECEIVEWAL_SYNC_MBPS)
    .goal_times_pg(TARGET_RECEIVEWAL_TIMES_PG);
    for rep in 1..=ctx.args.reps {
        for (mode, fig) in [("async", &mut async_f), ("sync", &mut sync_f)] {
            let label = format!("pg_receivewal {mode} rep {rep}");
            ctx.probe(&format!("before {label}"), true)?;
            let mbps = receivewal(dir, primary, loaded.target, mode, rep)?;
            ctx.probe(&format!("after {label}"), true)?;
            println!("  {label}: {mbps:.1} MB/s");
            fig.walrep.push(mbps);
        }
    }
    Ok(vec![async_f, sync_f])
}

/// One pg_receivewal run to `target`; MB/s over its wall time.
fn receivewal(
    dir: &Path,
    primary: &Node,
    target: Lsn,
    mode: &str,
    rep: u32,
) -> Result<f64, BenchError> {
    let out = dir.join(format!("rw_{mode}"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| BenchError::io("create the receivewal dir", e))?;
    let log = dir.join(format!("receivewal_{mode}_{rep}.log"));
    let log_file = std::fs::File::create(&log).map_err(|e| BenchError::io("create a log", e))?;
    let mut cmd = Command::new("pg_receivewal");
    cmd.args(["-h", "127.0.0.1", "-p", &primary.repl_port.to_string()])
        .args(["-U", "walrep", "-w", "-n", "-v", "-D"])
        .arg(&out)
        .args(["-S", &format!("rw_{mode}_{rep}"), "-E", &target.to_string()])
        .stdout(Stdio::null())
        .stderr(log_file);
    if mode == "sync" {
        cmd.arg("--synchronous");
    }
    let t0 = Instant::now();
    let mut child = Child::spawn("pg_receivewal", &mut cmd)?;
    cluster::wait_for(
        "pg_receivewal",
        REPLAY_LIMIT,
        Duration::from_millis(2),
        || child.exited().map(|e| e.then_some(())),
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let start = text
        .lines()
        .find_map(|l| l.split("starting log streaming at ").nth(1))
        .and_then(|r| r.split_whitespace().next()?.parse::<Lsn>().ok())
        .ok_or_else(|| BenchError::Server(format!("pg_receivewal did not stream: {text}")))?;
    if !text.contains("stopped log streaming") {
        return Err(BenchError::Server(format!(
            "pg_receivewal did not reach {target}: {text}"
        )));
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok(target.saturating_sub(start) as f64 / 1e6 / secs)
}

/// A standby from a copy of `bb_preload` with `overrides`, timed from
/// `walrep start` until it has replayed to the target.
fn replay(
    ctx: &mut Ctx<'_>,
    dir: &Path,
    loaded: &Loaded,
    label: &str,
    overrides: &[String],
    replay_bytes: f64,
) -> Result<f64, BenchError> {
    let sb = dir.join("standby");
    let _ = std::fs::remove_dir_all(&sb);
    copy_dir(&loaded.preload, &sb)?;
    ctx.probe(&format!("before {label}"), true)?;
    let node = Node::start(&ctx.exe, &sb, overrides)?;
    let mut conn = node.connect()?;
    cluster::wait_replayed(&mut conn, loaded.target, REPLAY_LIMIT, POLL)?;
    let secs = node.spawned_at.elapsed().as_secs_f64();
    let pid = node.child.pid();
    let cpu = cluster::process_cpu_s(pid).unwrap_or(f64::NAN);
    let redo_cpu = cluster::thread_cpu_s(pid, "redo").unwrap_or(f64::NAN);
    let recv_cpu = cluster::thread_cpu_s(pid, "walreceiver-1").unwrap_or(f64::NAN);
    drop(conn);
    node.stop();
    let mbps = replay_bytes / 1e6 / secs;
    ctx.probe(&format!("after {label}"), true)?;
    ctx.note(format!(
        "{label}: {:.0} MB in {secs:.2} s = {mbps:.0} MB/s; standby CPU {cpu:.2} s (redo {redo_cpu:.2} s, walreceiver {recv_cpu:.2} s) = {:.0} MB per CPU-second of redo",
        replay_bytes / 1e6,
        replay_bytes / 1e6 / redo_cpu
    ));
    let _ = std::fs::remove_dir_all(&sb);
    Ok(mbps)
}

/// `cp -a SRC DST` (a base backup copy per standby, as the script).
fn copy_dir(src: &Path, dst: &Path) -> Result<(), BenchError> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .map_err(|e| BenchError::io("cp -a", e))?;
    if !status.success() {
        return Err(BenchError::Server(format!(
            "cp -a {} {} failed",
            src.display(),
            dst.display()
        )));
    }
    Ok(())
}

/// PostgreSQL 15 through 05_wal_bulk.sh, same amount of WAL and reps.
fn postgres(ctx: &mut Ctx<'_>, figs: &mut [Figure]) -> Result<(), BenchError> {
    let Some(anchors_dir) = ctx.args.anchors.clone() else {
        return Ok(());
    };
    let base = ctx.anchors_base("pg-bulk")?;
    ctx.probe("before PostgreSQL 05_wal_bulk.sh", true)?;
    let env = [
        ("WAL_MB", ctx.args.wal_mb.to_string()),
        ("REPS", ctx.args.reps.to_string()),
    ];
    let run = anchors::run_script(
        &anchors_dir,
        "05_wal_bulk.sh",
        "05_wal_bulk",
        &base,
        &env,
        Duration::from_secs(3600),
    )?;
    ctx.probe("after PostgreSQL 05_wal_bulk.sh", true)?;
    let pg = anchors::pg_bulk(&run.results)?;
    println!(
        "  PostgreSQL 05_wal_bulk.sh ({:.0} s): receivewal async {:?} sync {:?} catch-up {:?} archive {:?} MB/s ({:.0} MB replayed)",
        run.elapsed.as_secs_f64(),
        pg.receivewal_async_mbps,
        pg.receivewal_sync_mbps,
        pg.catchup_mbps,
        pg.archive_replay_mbps,
        pg.replay_bytes / 1e6
    );
    for f in figs.iter_mut() {
        f.pg_same_run = match (f.scenario.as_str(), f.what.contains("synchronous")) {
            ("stream", false) => pg.receivewal_async_mbps.clone(),
            ("stream", true) => pg.receivewal_sync_mbps.clone(),
            ("catchup", _) => pg.catchup_mbps.clone(),
            ("archive-replay", _) => pg.archive_replay_mbps.clone(),
            _ => continue,
        };
    }
    Ok(())
}
