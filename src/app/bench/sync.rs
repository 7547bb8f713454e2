//! Commits per second and latency for each `synchronous_commit` level with
//! one synchronous standby on this machine, beside PostgreSQL
//! 15 measured by `shared/anchors/02_pgbench.sh` (one repetition) right
//! after each walrep repetition: interleaved, so that both see the same
//! phase of a shared machine's disk and CPU.
//!
//! A primary with `synchronous_standby_names = standby1` and a standby
//! from `walrep basebackup -R`; both are restarted for each level.
//! `local` runs twice, with no standby and with the standby attached as
//! an asynchronous one, and PostgreSQL's `local` is measured the same two
//! ways in a cluster of this scenario (02_pgbench.sh has no standby at
//! `local`). `on`
//! runs twice: with the standby asking for WAL while the primary flushes
//! it (the default) and with `wal_receiver_unflushed = off` (flushed WAL
//! only, as PostgreSQL), beside the same PostgreSQL cell. Per level and
//! client count: redis-benchmark
//! SET (16-byte values, random keys over 100k), calibrated to last
//! `--seconds`, with the fdatasync probe right before and after.
//!
//! The floor of one client's remote-flush commit: one fdatasync plus one
//! loopback round trip (primary to standby and back), both measured in
//! this run: the fdatasync probes around the 1-client `on` run and a TCP
//! ping-pong on 127.0.0.1. WAL goes to the standby while the primary
//! flushes it, so the primary's and the standby's fdatasyncs overlap; the
//! serial floor (two fdatasyncs + the round trip) is reported beside it.
//!
//! Beside those sums, the floor measured whole ([`syncfloor`]): a client,
//! a primary process and a standby process doing nothing but one SET's
//! WAL record per commit (append, fdatasync, send, reply) on the nodes'
//! disk, right after the 1-client `on` run, for `local`, `on` (flushes in
//! parallel), `on` serial, `remote_write` and `remote_apply`. walrep's
//! and PostgreSQL's one-client rates are reported as shares of each.

use std::time::Duration;

use super::anchors;
use super::cluster::{self, parse_slave_line, Node};
use super::ctx::Ctx;
use super::figures::{Better, Figure};
use super::fsync::loopback_rtt_us;
use super::loadgen::{self, Load};
use super::pg::PgAnchor;
use super::syncfloor::{self, Mode, ModeFloor};
use super::BenchError;

/// The targets.
pub const TARGET_ONE_CLIENT_FLOOR_RATIO: f64 = 0.80;
/// `on` with one synchronous standby, against PostgreSQL in the same shape.
pub const TARGET_ON_1_CLIENT_TIMES_PG: f64 = 2.5;
pub const TARGET_ON_64_CLIENTS_TIMES_PG: f64 = 3.0;
/// One client at `remote_write` and `remote_apply` (a synchronous
/// standby) and at `local` with an asynchronous standby attached.
pub const TARGET_1_CLIENT_STANDBY_TIMES_PG: f64 = 1.5;

/// The commits/s target of a cell, as a multiple of PostgreSQL's
/// commits/s in the same shape and run.
fn times_postgres(v: &Variant, clients: u32) -> Option<f64> {
    match (v.level, v.standby, v.unflushed, clients) {
        ("on", Standby::Sync, true, 1) => Some(TARGET_ON_1_CLIENT_TIMES_PG),
        ("on", Standby::Sync, true, 64) => Some(TARGET_ON_64_CLIENTS_TIMES_PG),
        ("remote_write" | "remote_apply", Standby::Sync, true, 1) => {
            Some(TARGET_1_CLIENT_STANDBY_TIMES_PG)
        }
        ("local", Standby::Async, _, 1) => Some(TARGET_1_CLIENT_STANDBY_TIMES_PG),
        _ => None,
    }
}
/// What one walrep run varies: the level, in walrep's names; where its
/// PostgreSQL cell comes from; whether a standby is attached and listed
/// as synchronous; and whether the standby asks for WAL while the primary
/// flushes it (`wal_receiver_unflushed`, walrep's default). `on` is run
/// both ways: what transmit-while-flushing buys, beside the same
/// PostgreSQL cell. `local` is run with no standby and with one
/// asynchronous standby attached (streaming, not in
/// `synchronous_standby_names`), each beside PostgreSQL in the same shape.
struct Variant {
    level: &'static str,
    pg: PgCell,
    standby: Standby,
    unflushed: bool,
}

/// Where a variant's PostgreSQL cell comes from.
#[derive(Clone, Copy, PartialEq)]
enum PgCell {
    /// 02_pgbench.sh's (config, synchronous_commit) row.
    Script(&'static str, &'static str),
    /// This scenario's own PostgreSQL at `synchronous_commit=local`, with
    /// no standby or with one streaming asynchronous standby.
    Local(Standby),
}

/// The standby of a run.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Standby {
    None,
    Async,
    Sync,
}

const fn v(level: &'static str, pg_config: &'static str, pg_level: &'static str) -> Variant {
    Variant {
        level,
        pg: PgCell::Script(pg_config, pg_level),
        standby: Standby::Sync,
        unflushed: true,
    }
}

const fn local(standby: Standby) -> Variant {
    Variant {
        level: "local",
        pg: PgCell::Local(standby),
        standby,
        unflushed: true,
    }
}

const VARIANTS: [Variant; 7] = [
    v("off", "a_lone", "off"),
    local(Standby::None),
    local(Standby::Async),
    v("remote_write", "c_sync", "remote_write"),
    v("on", "d_sync", "on"),
    Variant {
        unflushed: false,
        ..v("on", "d_sync", "on")
    },
    v("remote_apply", "e_sync", "remote_apply"),
];
/// anchors.md: (walrep level, clients, PostgreSQL tps, p99 ms if given).
const PG_ANCHORS: &[(&str, u32, f64, Option<f64>)] = &[
    ("off", 1, 12_024.0, None),
    ("off", 16, 57_200.0, None),
    ("off", 64, 44_867.0, Some(4.10)),
    ("local", 1, 5_389.0, None),
    ("local", 16, 19_962.0, None),
    ("local", 64, 23_809.0, Some(6.39)),
    ("remote_write", 1, 2_265.0, None),
    ("remote_write", 16, 13_684.0, None),
    ("remote_write", 64, 17_178.0, Some(7.26)),
    ("on", 1, 1_723.0, None),
    ("on", 16, 11_787.0, None),
    ("on", 64, 16_058.0, Some(7.40)),
    ("remote_apply", 1, 1_786.0, None),
    ("remote_apply", 16, 11_030.0, None),
    ("remote_apply", 64, 15_490.0, Some(7.56)),
];
/// The two-process floor: rounds of each mode, commits per mode per round
/// (about 2 s in all at ~3 ms a commit, ~0.5 s at 0.3 ms).
const FLOOR_ROUNDS: u32 = 10;
const FLOOR_PER_ROUND: u32 = 100;

/// What the one-client `on` run of one repetition is judged against.
struct FloorInput {
    rep: u32,
    /// fdatasync µs before and after the run.
    fsync_us: (f64, f64),
    rtt_us: f64,
    /// walrep's commits/s.
    rps: f64,
    /// The two-process floors, measured right after the run.
    two: Vec<ModeFloor>,
}

/// The figures of one (variant, clients) cell.
struct Cell {
    variant: &'static Variant,
    clients: u32,
    rps: Figure,
    mean: Figure,
    p99: Figure,
}

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), BenchError> {
    println!(
        "\n== sync: primary + 1 synchronous standby, levels off/local/remote_write/on/remote_apply (and local with no standby and with an async one, on without wal_receiver_unflushed), clients {:?}, {} s per run, PostgreSQL after each rep",
        ctx.args.clients, ctx.args.seconds
    );
    let dir = ctx.subdir("sync")?;
    let pdir = dir.join("primary");
    cluster::init(&ctx.exe, &pdir)?;
    let mut cells = cells(&ctx.args.clients);
    let mut floor_inputs = Vec::new();
    for rep in 1..=ctx.args.reps {
        walrep_rep(ctx, &dir, rep, &mut cells, &mut floor_inputs)?;
        // Interleaved, so that both see the same phase of a shared machine.
        if let Some(anchors_dir) = ctx.args.anchors.clone() {
            postgres(ctx, &anchors_dir, rep, &mut cells)?;
            postgres_local(ctx, &anchors_dir, rep, &mut cells)?;
        }
    }
    floor_figure(ctx, &floor_inputs);
    two_process_figures(ctx, &floor_inputs, &cells);
    for c in cells {
        ctx.figures.extend([c.rps, c.mean, c.p99]);
    }
    Ok(())
}

/// `sync-floor`: the two-process floor alone, `--reps` times, each
/// between two fdatasync probes and beside a loopback round trip;
/// `--seconds` bounds the rounds (two a second, at most ten).
pub fn run_floor(ctx: &mut Ctx<'_>) -> Result<(), BenchError> {
    println!(
        "\n== sync-floor: client -> primary process -> standby process, one {}-byte record per commit, {} rep(s)",
        syncfloor::RECORD_BYTES,
        ctx.args.reps
    );
    let dir = ctx.subdir("sync-floor")?;
    let rounds = (ctx.args.seconds.min(u64::from(FLOOR_ROUNDS)) as u32 * 2).clamp(1, FLOOR_ROUNDS);
    let mut figs: Vec<Figure> = Mode::ALL
        .iter()
        .map(|m| {
            Figure::new(
                "sync-floor",
                &format!("two-process floor, 1 client: {}", m.name()),
                "commits/s",
                Better::Higher,
            )
        })
        .collect();
    for rep in 1..=ctx.args.reps {
        let f0 = ctx.probe(&format!("before sync-floor rep {rep}"), false)?;
        let rtt_us = loopback_rtt_us()?;
        let two = syncfloor::measure(&ctx.exe, &dir, rounds, FLOOR_PER_ROUND)?;
        let f1 = ctx.probe(&format!("after sync-floor rep {rep}"), false)?;
        print!(
            "  rep {rep}: fdatasync {f0:.0} us before, {f1:.0} us after; loopback round trip {rtt_us:.0} us; 1 / (fdatasync + round trip) = {:.0}/s\n{}",
            1e6 / ((f0 + f1) / 2.0 + rtt_us),
            syncfloor::describe(&two)
        );
        for (fig, f) in figs.iter_mut().zip(&two) {
            fig.walrep.push(f.per_s);
        }
    }
    ctx.figures.extend(figs);
    Ok(())
}

/// One repetition of every variant and client count on walrep.
fn walrep_rep(
    ctx: &mut Ctx<'_>,
    dir: &std::path::Path,
    rep: u32,
    cells: &mut [Cell],
    floor_inputs: &mut Vec<FloorInput>,
) -> Result<(), BenchError> {
    let pdir = dir.join("primary");
    let sdir = dir.join("standby");
    let mut primary = start_primary(ctx, &pdir, &VARIANTS[4])?;
    if !sdir.exists() {
        cluster::basebackup(&ctx.exe, primary.repl_port, &sdir, "standby1")?;
    }
    for variant in &VARIANTS {
        primary.stop();
        primary = start_primary(ctx, &pdir, variant)?;
        // Each run gets a standby pointed at the new primary's port.
        let standby = match variant.standby {
            Standby::None => None,
            Standby::Async | Standby::Sync => {
                Some(start_standby(ctx, &sdir, &primary, variant.unflushed)?)
            }
        };
        wait_standby(&primary, variant.standby)?;
        for c in cells
            .iter_mut()
            .filter(|c| std::ptr::eq(c.variant, variant))
        {
            let label = format!("{} {} clients rep {rep}", label(variant), c.clients);
            let f0 = ctx.probe(&format!("before {label}"), false)?;
            let r = run_load(dir, &primary, c.clients, ctx.args.seconds)?;
            let f1 = ctx.probe(&format!("after {label}"), false)?;
            println!(
                "  {label}: {:.0}/s mean {:.3} ms p99 {:.3} ms (WAL {:.1} records/flush)",
                r.0.rps, r.0.mean_ms, r.0.p99_ms, r.1
            );
            c.rps.walrep.push(r.0.rps);
            c.mean.walrep.push(r.0.mean_ms);
            c.p99.walrep.push(r.0.p99_ms);
            if variant.level == "on" && variant.unflushed && c.clients == 1 {
                let rtt_us = loopback_rtt_us()?;
                let two = syncfloor::measure(
                    &ctx.exe,
                    &dir.join("floor"),
                    FLOOR_ROUNDS,
                    FLOOR_PER_ROUND,
                )?;
                print!(
                    "  two-process floor, 1 client, rep {rep} (client -> P -> S, {}-byte records):\n{}",
                    syncfloor::RECORD_BYTES,
                    syncfloor::describe(&two)
                );
                floor_inputs.push(FloorInput {
                    rep,
                    fsync_us: (f0, f1),
                    rtt_us,
                    rps: r.0.rps,
                    two,
                });
            }
        }
        if let Some(s) = standby {
            s.stop();
        }
    }
    primary.stop();
    Ok(())
}

/// How a variant is named in figures and progress lines.
fn label(v: &Variant) -> String {
    match (v.standby, v.unflushed) {
        (Standby::None, _) => format!("{} (no standby)", v.level),
        (Standby::Async, _) => format!("{} (async standby attached)", v.level),
        (Standby::Sync, true) => v.level.to_string(),
        (Standby::Sync, false) => format!("{} (wal_receiver_unflushed=off)", v.level),
    }
}

fn cells(clients: &[u32]) -> Vec<Cell> {
    let mut out = Vec::new();
    for variant in &VARIANTS {
        let level = variant.level;
        for &n in clients {
            // anchors.md measured `local` on a lone primary only.
            let anchor = PG_ANCHORS
                .iter()
                .find(|a| a.0 == level && a.1 == n && variant.standby != Standby::Async)
                .copied();
            let l = label(variant);
            let name = |what: &str| format!("{what}, synchronous_commit={l}, {n} clients");
            let mut rps = Figure::new("sync", &name("commits/s"), "commits/s", Better::Higher);
            if let Some(a) = anchor {
                rps = rps.anchor(a.2);
            }
            if let Some(times) = times_postgres(variant, n) {
                rps = rps.goal_times_pg(times);
            }
            let mean = Figure::new("sync", &name("mean latency"), "ms", Better::Lower);
            let mut p99 = Figure::new("sync", &name("p99 latency"), "ms", Better::Lower);
            if let Some(p) = anchor.and_then(|a| a.3) {
                p99 = p99.anchor(p);
            }
            out.push(Cell {
                variant,
                clients: n,
                rps,
                mean,
                p99,
            });
        }
    }
    out
}

fn start_primary(
    ctx: &mut Ctx<'_>,
    pdir: &std::path::Path,
    v: &Variant,
) -> Result<Node, BenchError> {
    let names = match v.standby {
        Standby::Sync => "standby1",
        Standby::None | Standby::Async => "",
    };
    ctx.start_node(
        pdir,
        &[
            format!("synchronous_commit={}", v.level),
            format!("synchronous_standby_names={names}"),
        ],
    )
}

fn start_standby(
    ctx: &mut Ctx<'_>,
    sdir: &std::path::Path,
    primary: &Node,
    unflushed: bool,
) -> Result<Node, BenchError> {
    ctx.start_node(
        sdir,
        &[
            format!("primary_conninfo={}", primary.conninfo("standby1")),
            "wal_retrieve_retry_interval=100ms".into(),
            format!(
                "wal_receiver_unflushed={}",
                if unflushed { "on" } else { "off" }
            ),
        ],
    )
}

/// Wait until the primary lists the standby as streaming (and `sync` if
/// it is to be synchronous).
fn wait_standby(primary: &Node, standby: Standby) -> Result<(), BenchError> {
    match standby {
        Standby::None => Ok(()),
        Standby::Sync => wait_sync(primary),
        Standby::Async => wait_state(primary, "async"),
    }
}

/// Wait until the primary lists the standby as streaming and `sync`.
pub(crate) fn wait_sync(primary: &Node) -> Result<(), BenchError> {
    wait_state(primary, "sync")
}

/// Wait until the primary lists the standby as streaming, `sync_state`
/// `state`.
fn wait_state(primary: &Node, state: &str) -> Result<(), BenchError> {
    let mut c = primary.connect()?;
    cluster::wait_for(
        "the standby to be streaming",
        Duration::from_secs(120),
        Duration::from_millis(20),
        || {
            let info = c.info("replication")?;
            Ok(info.get("slave0").and_then(|l| {
                let s = parse_slave_line(l);
                (s.get("sync_state").map(String::as_str) == Some(state)
                    && s.get("walsender_state").map(String::as_str) == Some("streaming"))
                .then_some(())
            }))
        },
    )
}

/// One calibrated redis-benchmark run; also the WAL's records per flush.
fn run_load(
    dir: &std::path::Path,
    primary: &Node,
    clients: u32,
    seconds: u64,
) -> Result<(loadgen::LoadResult, f64), BenchError> {
    let load = Load {
        port: primary.port,
        clients,
        keyspace: 100_000,
        value_bytes: 16,
    };
    let before = super::wal_counters(primary.port);
    let r = loadgen::run_for(&load, Duration::from_secs(seconds), dir)?;
    let after = super::wal_counters(primary.port);
    let batch = match (before, after) {
        (Some(a), Some(b)) if b.1 > a.1 => (b.2 - a.2) as f64 / (b.1 - a.1) as f64,
        _ => f64::NAN,
    };
    Ok((r, batch))
}

/// The probes around a run may straddle a change of the disk's phase
/// (~100 µs or ~3 ms per fdatasync): a floor from such a pair means nothing.
const MAX_PROBE_SPREAD: f64 = 2.0;

/// One client with `on` against its floor: one fdatasync + a round trip
/// (the standby's fdatasync runs during the primary's), and against the
/// serial floor of two fdatasyncs + a round trip.
/// `inputs`: fdatasync µs before and after the run, round trip µs, commits/s.
fn floor_figure(ctx: &mut Ctx<'_>, inputs: &[FloorInput]) {
    let mut f = Figure::new(
        "sync",
        "1 client, synchronous_commit=on, share of the floor (1 fdatasync + loopback round trip)",
        "ratio",
        Better::Higher,
    )
    .goal(">= 0.80", Some(TARGET_ONE_CLIENT_FLOOR_RATIO));
    let mut serial = Figure::new(
        "sync",
        "1 client, synchronous_commit=on, share of the serial floor (2 fdatasyncs + loopback round trip)",
        "ratio",
        Better::Higher,
    )
    .anchor(0.58);
    for i in inputs {
        let ((f0, f1), rtt_us, rps) = (i.fsync_us, i.rtt_us, i.rps);
        if f0.max(f1) > MAX_PROBE_SPREAD * f0.min(f1) {
            ctx.note(format!(
                "1 client, on: the disk changed phase during the run (fdatasync {f0:.0} us before, {f1:.0} us after): no floor ratio for this rep ({rps:.0} commits/s)"
            ));
            continue;
        }
        let fsync_us = (f0 + f1) / 2.0;
        let floor_us = fsync_us + rtt_us;
        let floor_rate = 1e6 / floor_us;
        let serial_rate = 1e6 / (2.0 * fsync_us + rtt_us);
        ctx.note(format!(
            "1 client, on: floor = {fsync_us:.0} us fdatasync + {rtt_us:.0} us loopback round trip = {floor_us:.0} us = {floor_rate:.0} commits/s; measured {rps:.0}/s = {:.2} of the floor ({:.2} of the serial floor, {serial_rate:.0}/s)",
            rps / floor_rate,
            rps / serial_rate
        ));
        f.walrep.push(rps / floor_rate);
        serial.walrep.push(rps / serial_rate);
    }
    ctx.figures.push(f);
    ctx.figures.push(serial);
}

/// PostgreSQL 15 through 02_pgbench.sh: one repetition (REPS=1) of the
/// same clients and seconds, right after walrep's repetition `rep`.
fn postgres(
    ctx: &mut Ctx<'_>,
    anchors_dir: &std::path::Path,
    rep: u32,
    cells: &mut [Cell],
) -> Result<(), BenchError> {
    let base = ctx.anchors_base(&format!("pg-sync-{rep}"))?;
    ctx.probe(&format!("before PostgreSQL 02_pgbench.sh rep {rep}"), false)?;
    let clients: Vec<String> = ctx.args.clients.iter().map(u32::to_string).collect();
    let env = [
        ("CLIENTS", clients.join(" ")),
        ("DUR", ctx.args.seconds.to_string()),
        ("REPS", "1".to_string()),
    ];
    let cells_n = 5 * ctx.args.clients.len() as u64;
    let run = anchors::run_script(
        anchors_dir,
        "02_pgbench.sh",
        "02_pgbench",
        &base,
        &env,
        Duration::from_secs(cells_n * (ctx.args.seconds + 30) + 600),
    )?;
    ctx.probe(&format!("after PostgreSQL 02_pgbench.sh rep {rep}"), false)?;
    let pg = anchors::pg_commits(&run.results)?;
    // `local` is measured in this scenario's own cluster (beside an
    // attached standby too); the script's lone-primary cell is printed.
    for r in pg.rows.iter().filter(|r| r.config == "b_lone") {
        println!(
            "  PostgreSQL local (02_pgbench.sh b_lone, no standby) {} clients rep {rep}: {:.0}/s mean {:.3} ms p99 {:.3} ms",
            r.clients, r.tps, r.mean_ms, r.p99_ms
        );
    }
    for c in cells.iter_mut() {
        let v = c.variant;
        let PgCell::Script(config, level) = v.pg else {
            continue;
        };
        for r in pg.rows.iter().filter(|r| {
            r.config == config && r.synchronous_commit == level && r.clients == c.clients
        }) {
            println!(
                "  PostgreSQL {} {} clients rep {rep}: {:.0}/s mean {:.3} ms p99 {:.3} ms",
                label(v),
                c.clients,
                r.tps,
                r.mean_ms,
                r.p99_ms
            );
            c.rps.pg_same_run.push(r.tps);
            c.mean.pg_same_run.push(r.mean_ms);
            c.p99.pg_same_run.push(r.p99_ms);
        }
    }
    Ok(())
}

/// PostgreSQL 15 at `synchronous_commit=local` in this scenario's own
/// cluster (02_pgbench.sh measures `local` only on a lone primary): a
/// fresh primary, pgbench alone, then with one streaming asynchronous
/// standby (pg_basebackup -R, not in `synchronous_standby_names`), the
/// same clients and seconds, right after walrep's repetition `rep`.
fn postgres_local(
    ctx: &mut Ctx<'_>,
    anchors_dir: &std::path::Path,
    rep: u32,
    cells: &mut [Cell],
) -> Result<(), BenchError> {
    let base = ctx.anchors_base(&format!("pg-local-{rep}"))?;
    let primary = PgAnchor::start(&base.join("primary"), anchors_dir)?;
    primary.set_synchronous_commit("local")?;
    let mut standby = None;
    for attached in [Standby::None, Standby::Async] {
        if attached == Standby::Async {
            let s = primary.standby_of(primary.port(), &base.join("standby"))?;
            primary.wait_streaming()?;
            standby = Some(s);
        }
        for c in cells
            .iter_mut()
            .filter(|c| c.variant.pg == PgCell::Local(attached))
        {
            let label = format!("{} {} clients rep {rep}", label(c.variant), c.clients);
            ctx.probe(&format!("before PostgreSQL {label}"), false)?;
            let r = primary.pgbench(c.clients, ctx.args.seconds)?;
            println!(
                "  PostgreSQL {label}: {:.0}/s mean {:.3} ms p99 {:.3} ms",
                r.rps, r.mean_ms, r.p99_ms
            );
            c.rps.pg_same_run.push(r.rps);
            c.mean.pg_same_run.push(r.mean_ms);
            c.p99.pg_same_run.push(r.p99_ms);
        }
    }
    drop(standby);
    Ok(())
}

/// Which two-process floors a one-client cell is judged against: its own
/// level's, and for `on` also the serial one (PostgreSQL's order).
fn floor_modes(v: &Variant) -> &'static [Mode] {
    match (v.level, v.standby, v.unflushed) {
        ("local", Standby::None, _) => &[Mode::Local],
        ("on", Standby::Sync, true) => &[Mode::On, Mode::Serial],
        ("on", Standby::Sync, false) => &[Mode::Serial],
        ("remote_write", Standby::Sync, _) => &[Mode::RemoteWrite],
        ("remote_apply", Standby::Sync, _) => &[Mode::RemoteApply],
        _ => &[],
    }
}

/// The one-client rates of walrep and PostgreSQL as shares of the
/// two-process floor of the same repetition, per level; and each
/// repetition's floors as a note.
fn two_process_figures(ctx: &mut Ctx<'_>, inputs: &[FloorInput], cells: &[Cell]) {
    let reps = ctx.args.reps as usize;
    for i in inputs {
        let line: Vec<String> = i
            .two
            .iter()
            .map(|f| format!("{} {:.0}/s ({:.0} us)", f.mode.name(), f.per_s, f.mean_us))
            .collect();
        ctx.note(format!(
            "1 client, rep {}: two-process floor (client -> primary process -> standby process, one {}-byte record per commit, same disk): {}",
            i.rep,
            syncfloor::RECORD_BYTES,
            line.join("; ")
        ));
    }
    for c in cells.iter().filter(|c| c.clients == 1) {
        for &mode in floor_modes(c.variant) {
            let mut f = Figure::new(
                "sync",
                &format!(
                    "1 client, synchronous_commit={}, share of the two-process floor: {}",
                    label(c.variant),
                    mode.name()
                ),
                "ratio",
                Better::Higher,
            );
            for i in inputs {
                let Some(floor) = i.two.iter().find(|f| f.mode == mode) else {
                    continue;
                };
                let at = i.rep as usize - 1;
                if let Some(w) = c.rps.walrep.get(at) {
                    f.walrep.push(w / floor.per_s);
                }
                if c.rps.pg_same_run.len() == reps {
                    f.pg_same_run.push(c.rps.pg_same_run[at] / floor.per_s);
                }
            }
            if !f.walrep.is_empty() {
                ctx.figures.push(f);
            }
        }
    }
}
