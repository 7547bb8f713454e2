//! `walrep bench`: figures of a fresh node beside the disk measured in the
//! same run and, with `--anchors`, PostgreSQL 15 (and Redis) measured in
//! the same run too. A benchmark that prints figures, never a test.
//!
//! Scenarios (`--scenario`, comma-separated):
//! - `commit` (default): durable commits per second and latency of a lone
//!   primary under redis-benchmark, beside the fdatasync rate, PostgreSQL
//!   (pgbench) and Redis with AOF;
//! - `stream`: WAL MB/s delivered to the real `pg_receivewal`;
//! - `catchup`, `archive-replay`: a standby replaying ~1 GB of WAL from the
//!   stream or from the archive (these three share one WAL load);
//! - `lag`: replication lag under 64 asynchronous clients;
//! - `chain`: replay lag added per hop of primary -> s1 -> s2 -> s3 under
//!   16 clients, beside the same PostgreSQL chain with `--anchors`;
//! - `promote`: promotion request to the first accepted write;
//! - `sync`: commits/s and latency per `synchronous_commit` level with one
//!   synchronous standby, and the one-client floor: one fdatasync + a
//!   loopback round trip, and the two-process floor (a client, a primary
//!   process and a standby process doing only one record's append,
//!   fdatasync, send and reply per commit) beside walrep and PostgreSQL;
//! - `sync-floor`: the two-process floor alone (no node), `--reps` times;
//! - `replication`: all of the above but `commit`;
//! - `wal`: the WAL writer alone (no node, no network), beside the raw
//!   fdatasync rate;
//! - `tls`: what TLS costs (commits/s at each `--clients`, WAL MB/s to
//!   pg_receivewal), beside what it costs PostgreSQL 15 with `--anchors`;
//! - `redis`: redis-benchmark's own test set (strings, lists, sets,
//!   hashes) against walrep `local` and Redis 7 `appendfsync always` in
//!   the same run.
//! - `pipeline`: pipelined SET (`-P 32`, 16 clients) on one key and on
//!   random keys against walrep `off` and Redis 7 `appendfsync no` in the
//!   same run: requests/s, ratios and CPU per SET;
//! - `backup`: `walrep basebackup` MB/s with `--jobs` 1, 2, 4, and a
//!   two-phase copy's time to the new standby's first flush report;
//! - `memory`: RSS per key of walrep and Redis 7 loaded with the same
//!   keys, per `--memory-keys` x `--memory-value-bytes`;
//! - `checkpoint`: commit p99 of 64 clients with checkpoints running
//!   (spread, and at full speed) against none, `local` and `on`;
//! - `restart`: `kill -9` with `--restart-records` of WAL since the last
//!   checkpoint to the first served read, beside Redis 7 with AOF;
//! - `redo`: crash recovery's redo alone, in this process, over
//!   `--restart-records` SETs to keys in order and to random keys;
//! - `scaling`: how cost grows with work: commits/s and CPU per commit
//!   with 0, 1, 2 and 4 standbys (async, `ANY 1`, `FIRST 2`), walsender
//!   CPU per standby, RSS per million keys and under 64 clients, and
//!   checkpoint, crash-recovery and base-backup times at 100 MB and 1 GB
//!   (4 GB with `WALREP_BENCH_SCALING_4GB=1`); not part of `replication`;
//! - `ha`: automatic failover on a three-member etcd this run starts:
//!   `--rounds` (default 50) kill -9, partitions and stalls of the primary
//!   under load and a planned switchover every third round; failover time
//!   p50/p99 per fault, acknowledged writes lost (must be 0);
//! - `failover`: a soak, not a speed: `--rounds` times SIGKILL of a
//!   synchronous primary under load, promotion, the history checker on the
//!   promoted node, the old primary rebuilt as its standby.
//!
//! # Layout
//! - [`fsync`]: the fdatasync probe (pg_test_fsync's 8 kB write + fdatasync)
//!   and a sequential-write probe.
//! - [`procs`]: the servers it starts (walrep from this binary, Redis), each
//!   stopped by a guard.
//! - [`interrupt`]: what it started, stopped (and its directories removed)
//!   when SIGINT or SIGTERM interrupts the run.
//! - [`loadgen`]: redis-benchmark runs and its CSV output.
//! - [`pg`]: PostgreSQL 15 with pgbench, as `shared/anchors/02_pgbench.sh`.
//! - [`report`]: medians, tables beside anchors.md, targets, JSON.
//! - [`cluster`]: walrep primaries and standbys, INFO, waits.
//! - [`anchors`]: the anchor scripts themselves, run and parsed.
//! - [`scenario`], [`bulk`], [`lag`], [`promote`], [`sync`]: the scenarios.
//! - [`syncfloor`]: the two-process floor of one synchronous commit (the
//!   `walrep floor-node` processes and their client), for `sync` and
//!   `sync-floor`.
//! - [`figures`]: their figures, ratios, targets and probe tables.
//! - [`wal_micro`]: the `wal` scenario; [`suite`]: the `redis` scenario.
//! - [`failover`]: the `failover` soak; [`memory`]: the `memory` scenario.
//! - [`pipeline`]: the `pipeline` scenario.
//! - [`failover`]: the `failover` soak; [`scaling`]: the `scaling` scenario.
//! - [`ha`]: the `ha` soak; [`soak`]: what it shares with `failover`.
//!
//! Node settings: `--walrep-setting NAME=VALUE` (repeatable) starts every
//! node of the `commit`, `sync` and `lag` scenarios with that setting
//! (checked by the configuration's parser first, read back from each
//! node with CONFIG GET), so a setting is judged by the same figures as
//! the defaults.
//!
//! Noise: the machine is shared, so the fdatasync rate is probed right
//! before and after every run and each run's ratio uses the mean of its
//! two probes; repetitions (`--reps`) give medians and ranges.

pub mod anchors;
pub mod backup;
pub mod bulk;
pub mod chain;
pub mod checkpoint;
pub mod cluster;
pub mod copyfloor;
pub mod ctx;
pub mod failover;
pub mod figures;
pub mod fsync;
pub mod ha;
pub mod interrupt;
pub mod lag;
pub mod loadgen;
pub mod memory;
pub mod pg;
pub mod pipeline;
pub mod procs;
pub mod promote;
pub mod redo;
pub mod report;
pub mod restart;
pub mod scaling;
pub mod scenario;
pub mod soak;
pub mod suite;
pub mod sync;
pub mod syncfloor;
pub mod tls;
pub mod wal_micro;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fsync::{FsyncProbe, FsyncProber};
use loadgen::{Load, LoadResult};
use report::Cell;

/// Errors of the benchmark (the CLI adds context).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Server(String),
    #[error("load generator: {0}")]
    Load(String),
    #[error("anchor: {0}")]
    Anchor(String),
    #[error("invalid option: {0}")]
    Usage(String),
    /// SIGINT or SIGTERM (the number) came: nothing more is started.
    #[error("interrupted by signal {0}")]
    Interrupted(i32),
}

impl BenchError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The durability levels a lone primary has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Reply after the local fdatasync.
    Local,
    /// Reply at once; the WAL writer flushes within wal_writer_delay.
    Off,
}

impl Level {
    pub fn walrep(self) -> &'static str {
        match self {
            Level::Local => "local",
            Level::Off => "off",
        }
    }

    /// PostgreSQL's equivalent on a lone primary.
    pub fn postgres(self) -> &'static str {
        match self {
            Level::Local => "on",
            Level::Off => "off",
        }
    }

    /// Redis AOF's equivalent.
    pub fn redis_appendfsync(self) -> &'static str {
        match self {
            Level::Local => "always",
            Level::Off => "no",
        }
    }
}

/// What `walrep bench` measures (`--scenario`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Durable commits of a lone primary.
    Commit,
    /// WAL MB/s to pg_receivewal.
    Stream,
    /// Catch-up replay from the stream.
    Catchup,
    /// Replay from the archive.
    ArchiveReplay,
    /// Lag of an async standby under 64 clients.
    Lag,
    /// Replay lag per hop of a chain of three standbys.
    Chain,
    /// Promotion to the first accepted write.
    Promote,
    /// Every synchronous_commit level with a sync standby.
    Sync,
    /// The two-process floor of one synchronous commit alone (no node):
    /// client -> primary process -> standby process, per level.
    SyncFloor,
    /// Every replication scenario (all but commit and wal).
    Replication,
    /// The WAL writer alone, beside the raw fdatasync rate.
    Wal,
    /// TLS cost on both ports, beside PostgreSQL's.
    Tls,
    /// redis-benchmark's test set against walrep and Redis 7.
    Redis,
    /// Pipelined SET (`-P 32`, 16 clients) against walrep `off` and Redis 7
    /// `appendfsync no`: requests/s and CPU per SET.
    Pipeline,
    /// A soak: SIGKILL the primary under load, promote, check every
    /// acknowledged write, bring the old primary back; `--rounds` times.
    Failover,
    /// Base backups: MB/s per `--jobs`, two-phase time to the first flush.
    Backup,
    /// RSS per key beside Redis 7 loaded with the same keys.
    Memory,
    /// Commit p99 with checkpoints running against none.
    Checkpoint,
    /// kill -9 to the first served read, beside Redis with AOF.
    Restart,
    /// Crash recovery's redo alone, in this process.
    Redo,
    /// Automatic failover on etcd: kill -9, partitions and stalls of the
    /// primary under load, and planned switchovers; `--rounds` times.
    Ha,
    /// How cost grows with standbys, keys and data size.
    Scaling,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Commit => "commit",
            Scenario::Stream => "stream",
            Scenario::Catchup => "catchup",
            Scenario::ArchiveReplay => "archive-replay",
            Scenario::Lag => "lag",
            Scenario::Chain => "chain",
            Scenario::Promote => "promote",
            Scenario::Sync => "sync",
            Scenario::SyncFloor => "sync-floor",
            Scenario::Replication => "replication",
            Scenario::Wal => "wal",
            Scenario::Tls => "tls",
            Scenario::Redis => "redis",
            Scenario::Pipeline => "pipeline",
            Scenario::Failover => "failover",
            Scenario::Backup => "backup",
            Scenario::Memory => "memory",
            Scenario::Checkpoint => "checkpoint",
            Scenario::Restart => "restart",
            Scenario::Redo => "redo",
            Scenario::Ha => "ha",
            Scenario::Scaling => "scaling",
        }
    }

    /// Which part of the shared bulk-WAL scenario this is, if any.
    pub fn bulk_part(self) -> Option<bulk::Part> {
        match self {
            Scenario::Stream => Some(bulk::Part::Stream),
            Scenario::Catchup => Some(bulk::Part::Catchup),
            Scenario::ArchiveReplay => Some(bulk::Part::ArchiveReplay),
            _ => None,
        }
    }

    /// `replication` expanded; duplicates removed, order kept.
    pub fn expand(list: &[Scenario]) -> Vec<Scenario> {
        let mut out: Vec<Scenario> = Vec::new();
        for s in list {
            let more: &[Scenario] = match s {
                Scenario::Replication => &[
                    Scenario::Stream,
                    Scenario::Catchup,
                    Scenario::ArchiveReplay,
                    Scenario::Lag,
                    Scenario::Promote,
                    Scenario::Sync,
                ],
                one => std::slice::from_ref(one),
            };
            for m in more {
                if !out.contains(m) {
                    out.push(*m);
                }
            }
        }
        out
    }
}

/// Options of `walrep bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to measure, comma-separated: commit, stream, catchup,
    /// archive-replay, lag, chain (replay lag per hop of a cascade), promote, sync (every
    /// synchronous_commit level with one standby, beside the one-client
    /// floors: fdatasync + round trip, and two real processes doing only a
    /// commit's append, fdatasync, send and reply), sync-floor (that
    /// two-process floor alone), replication (all the replication
    /// scenarios), wal (the WAL writer alone), tls (TLS cost), redis
    /// (redis-benchmark's test set against walrep and Redis 7), pipeline
    /// (pipelined SET beside Redis 7 `appendfsync no`), backup,
    /// failover, ha (automatic failover on etcd), memory (RSS per key beside Redis 7), checkpoint (commit
    /// p99 during checkpoints), restart (kill -9 to the first read, beside
    /// Redis 7 with AOF) or scaling (how cost grows with standbys, keys and
    /// data).
    #[arg(long = "scenario", value_delimiter = ',', default_value = "commit")]
    pub scenarios: Vec<Scenario>,
    /// Client counts (redis-benchmark -c), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<u32>,
    /// synchronous_commit levels, comma-separated.
    #[arg(
        long = "synchronous-commit",
        value_delimiter = ',',
        default_value = "local,off"
    )]
    pub levels: Vec<Level>,
    /// Seconds of each measured run (after a short calibration run).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Repetitions of the whole matrix (medians and ranges are reported).
    #[arg(long, default_value_t = 1)]
    pub reps: u32,
    /// Seconds of each fdatasync probe (one before and one after every run).
    #[arg(long, default_value_t = 1.0)]
    pub fsync_seconds: f64,
    /// Keys are random over this many (redis-benchmark -r).
    #[arg(long, default_value_t = 100_000)]
    pub keyspace: u64,
    /// Value size in bytes (redis-benchmark -d).
    #[arg(long, default_value_t = 16)]
    pub value_bytes: u32,
    /// Where data directories go (its filesystem is the one probed);
    /// default: the system's temporary directory. Removed afterwards
    /// unless --keep.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also measure PostgreSQL 15 (pgbench with DIR/kv_upsert.sql, as
    /// DIR/02_pgbench.sh) and Redis with AOF in the same run; DIR is
    /// shared/anchors.
    #[arg(long, value_name = "DIR")]
    pub anchors: Option<PathBuf>,
    /// Write every run and the summaries as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep the data directories and logs.
    #[arg(long)]
    pub keep: bool,
    /// Bulk scenarios: MiB of WAL to generate (05_wal_bulk.sh's WAL_MB).
    #[arg(long, default_value_t = 1024)]
    pub wal_mb: u64,
    /// Bulk scenarios: SET value size in bytes for the WAL load.
    #[arg(long, default_value_t = 4096)]
    pub bulk_value_bytes: u32,
    /// Lag scenario: seconds of load per repetition (03_lag.sh's DUR).
    #[arg(long, default_value_t = 30)]
    pub lag_seconds: u64,
    /// Promote scenario: promotions per method (04_promote.sh's REPS).
    #[arg(long, default_value_t = 5)]
    pub promote_reps: u32,
    /// Backup scenario: MB of data copied with --jobs 1, 2, 4 and by the
    /// large two-phase copy (the small one is 100 MB).
    #[arg(long, default_value_t = 2048)]
    pub backup_mb: u64,
    /// Checkpoint scenario: keys in the store a checkpoint writes.
    #[arg(long, default_value_t = 1_000_000)]
    pub checkpoint_keys: u64,
    /// Restart scenario: SETs written since the last checkpoint before
    /// the kill -9.
    #[arg(long, default_value_t = 3_000_000)]
    pub restart_records: u64,
    /// Failover and ha scenarios: rounds of faults (default 10 for
    /// failover, 50 automatic failovers for ha).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Failover and ha scenarios: clients writing during each round.
    #[arg(long, default_value_t = 16)]
    pub failover_clients: u32,
    /// Failover and ha scenarios: the seed of the fault moments (printed by every
    /// run, to replay one).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Memory scenario: key counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    pub memory_keys: Vec<u64>,
    /// Memory scenario: value sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,1024")]
    pub memory_value_bytes: Vec<u32>,
    /// Memory scenario: sizes whose keys and values exceed this many GB
    /// are skipped (each server holds them in RAM).
    #[arg(long, default_value_t = 4.0)]
    pub memory_max_gb: f64,
    /// A walrep setting (`NAME=VALUE`, as `walrep start -c`) for every
    /// walrep node the commit, sync and lag scenarios start, primaries and
    /// standbys alike; repeatable. Checked with the configuration's own
    /// parser before anything starts, printed in the report's header, and
    /// read back from each node (CONFIG GET). A scenario's own per-run
    /// settings (`synchronous_commit` per level, `primary_conninfo`, ...)
    /// are applied after it and win; the ports are the benchmark's.
    #[arg(long = "walrep-setting", value_name = "NAME=VALUE")]
    pub walrep_settings: Vec<String>,
}

/// The scenarios whose nodes take `--walrep-setting`.
const SETTING_SCENARIOS: [Scenario; 3] = [Scenario::Commit, Scenario::Sync, Scenario::Lag];
/// Settings the benchmark chooses itself for every node.
const BENCH_OWNED_SETTINGS: [&str; 2] = ["port", "replication_port"];

/// Upper bounds of the options, so a run stays bounded in time.
const MAX_SECONDS: u64 = 600;
const MAX_REPS: u32 = 20;
const MAX_CLIENTS: u32 = 1000;
/// Most WAL a bulk scenario generates (it is stored three times).
const MAX_WAL_MB: u64 = 8192;
/// Most keys or records a bulk load of the checkpoint and restart
/// scenarios writes.
const MAX_BULK_KEYS: u64 = 100_000_000;
/// Most failover rounds in one run (each takes a few seconds).
const MAX_ROUNDS: u32 = 100_000;

impl BenchArgs {
    fn check(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Usage(m));
        if self.seconds == 0 || self.seconds > MAX_SECONDS {
            return bad(format!("--seconds must be 1..={MAX_SECONDS}"));
        }
        if self.reps == 0 || self.reps > MAX_REPS {
            return bad(format!("--reps must be 1..={MAX_REPS}"));
        }
        if self.clients.is_empty() || self.clients.iter().any(|&c| c == 0 || c > MAX_CLIENTS) {
            return bad(format!("--clients must be 1..={MAX_CLIENTS} each"));
        }
        if !(0.05..=60.0).contains(&self.fsync_seconds) {
            return bad("--fsync-seconds must be 0.05..=60".into());
        }
        if self.keyspace == 0 || self.value_bytes == 0 || self.value_bytes > 1 << 20 {
            return bad("--keyspace must be > 0 and --value-bytes 1..=1048576".into());
        }
        if self.levels.is_empty() {
            return bad("--synchronous-commit needs at least one level".into());
        }
        if self.backup_mb < 100 || self.backup_mb > MAX_WAL_MB {
            return bad(format!("--backup-mb must be 100..={MAX_WAL_MB}"));
        }
        if self.wal_mb == 0 || self.wal_mb > MAX_WAL_MB {
            return bad(format!("--wal-mb must be 1..={MAX_WAL_MB}"));
        }
        if self.bulk_value_bytes == 0 || self.bulk_value_bytes > 1 << 20 {
            return bad("--bulk-value-bytes must be 1..=1048576".into());
        }
        if self.lag_seconds < 3 || self.lag_seconds > MAX_SECONDS {
            return bad(format!("--lag-seconds must be 3..={MAX_SECONDS}"));
        }
        if self.promote_reps == 0 || self.promote_reps > MAX_REPS {
            return bad(format!("--promote-reps must be 1..={MAX_REPS}"));
        }
        if self.rounds.is_some_and(|r| r == 0 || r > MAX_ROUNDS) {
            return bad(format!("--rounds must be 1..={MAX_ROUNDS}"));
        }
        if self.failover_clients == 0 || self.failover_clients > MAX_CLIENTS {
            return bad(format!("--failover-clients must be 1..={MAX_CLIENTS}"));
        }
        if self.memory_keys.iter().any(|&k| k == 0 || k > 1 << 30)
            || self
                .memory_value_bytes
                .iter()
                .any(|&b| b == 0 || b > 1 << 20)
        {
            return bad("--memory-keys must be 1..=2^30, --memory-value-bytes 1..=1048576".into());
        }
        if !(1000..=MAX_BULK_KEYS).contains(&self.checkpoint_keys)
            || !(1000..=MAX_BULK_KEYS).contains(&self.restart_records)
        {
            return bad(format!(
                "--checkpoint-keys and --restart-records must be 1000..={MAX_BULK_KEYS}"
            ));
        }
        if self.scenarios.is_empty() {
            return bad("--scenario needs at least one scenario".into());
        }
        self.check_walrep_settings()
    }

    /// `--walrep-setting`: each one a known parameter with a valid value
    /// (all of them parsed together, as `walrep start -c` would), not one
    /// the benchmark sets itself, and only for scenarios that apply them.
    fn check_walrep_settings(&self) -> Result<(), BenchError> {
        if self.walrep_settings.is_empty() {
            return Ok(());
        }
        let bad = |m: String| Err(BenchError::Usage(format!("--walrep-setting: {m}")));
        for s in &self.walrep_settings {
            let Some((name, _)) = s.split_once('=') else {
                return bad(format!("{s:?} is not NAME=VALUE"));
            };
            if BENCH_OWNED_SETTINGS.contains(&name.trim()) {
                return bad(format!("{} is chosen by the benchmark", name.trim()));
            }
        }
        if let Err(e) = walrep::config::Config::from_toml_with_overrides(
            "",
            "--walrep-setting",
            &self.walrep_settings,
        ) {
            return bad(e.to_string());
        }
        let others: Vec<&str> = Scenario::expand(&self.scenarios)
            .into_iter()
            .filter(|s| !SETTING_SCENARIOS.contains(s))
            .map(Scenario::name)
            .collect();
        if !others.is_empty() {
            return bad(format!(
                "applies to the commit, sync and lag scenarios only, not to {}",
                others.join(", ")
            ));
        }
        Ok(())
    }

    /// `--walrep-setting`s as the report's header shows them.
    pub fn settings_header(&self) -> String {
        if self.walrep_settings.is_empty() {
            "walrep settings: the defaults".into()
        } else {
            format!("walrep settings: {}", self.walrep_settings.join(", "))
        }
    }
}

/// Everything a run measured.
#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    pub workload: String,
    pub fsync_probes: Vec<FsyncProbe>,
    pub fsync_median_per_s: f64,
    pub fsync_min_per_s: f64,
    pub fsync_max_per_s: f64,
    pub cells: Vec<Cell>,
    pub summaries: Vec<report::Summary>,
    pub targets: Vec<report::Target>,
    pub elapsed_s: f64,
}

/// What one `walrep bench` run measured (the JSON file).
#[derive(Debug, serde::Serialize)]
pub struct RunReport {
    /// The `commit` scenario.
    pub commit: Option<BenchReport>,
    /// The replication scenarios.
    pub replication: Option<scenario::ScenarioReport>,
    /// The `tls` scenario.
    pub tls: Option<tls::TlsReport>,
    /// The `redis` scenario.
    pub redis: Option<suite::SuiteReport>,
    /// The `failover` soak.
    pub failover: Option<failover::FailoverReport>,
    /// The `memory` scenario.
    pub memory: Option<memory::MemoryReport>,
    /// The `pipeline` scenario.
    pub pipeline: Option<pipeline::PipelineReport>,
    /// The `ha` soak.
    pub ha: Option<ha::HaReport>,
}

/// Run the chosen scenarios and print their reports.
pub fn run(args: &BenchArgs) -> Result<RunReport, BenchError> {
    args.check()?;
    interrupt::install(args.keep)?;
    let scenarios = Scenario::expand(&args.scenarios);
    let commit = if scenarios.contains(&Scenario::Commit) {
        Some(run_commit(args)?)
    } else {
        None
    };
    if scenarios.contains(&Scenario::Wal) {
        wal_micro::run(args)?;
    }
    if scenarios.contains(&Scenario::Redo) {
        redo::run(args)?;
    }
    let tls = if scenarios.contains(&Scenario::Tls) {
        Some(tls::run(args)?)
    } else {
        None
    };
    let redis = if scenarios.contains(&Scenario::Redis) {
        Some(suite::run(args)?)
    } else {
        None
    };
    let failover = if scenarios.contains(&Scenario::Failover) {
        Some(failover::run(args)?)
    } else {
        None
    };
    let memory = if scenarios.contains(&Scenario::Memory) {
        Some(memory::run(args)?)
    } else {
        None
    };
    let pipeline = if scenarios.contains(&Scenario::Pipeline) {
        Some(pipeline::run(args)?)
    } else {
        None
    };
    let ha = if scenarios.contains(&Scenario::Ha) {
        Some(ha::run(args)?)
    } else {
        None
    };
    let others: Vec<Scenario> = scenarios
        .into_iter()
        .filter(|s| {
            !matches!(
                s,
                Scenario::Commit
                    | Scenario::Wal
                    | Scenario::Redo
                    | Scenario::Tls
                    | Scenario::Redis
                    | Scenario::Failover
                    | Scenario::Memory
                    | Scenario::Pipeline
                    | Scenario::Ha
            )
        })
        .collect();
    let replication = if others.is_empty() {
        None
    } else {
        Some(scenario::run(args, &others)?)
    };
    Ok(RunReport {
        commit,
        replication,
        tls,
        redis,
        failover,
        memory,
        pipeline,
        ha,
    })
}

/// The `commit` scenario: commits of a lone primary.
fn run_commit(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    require_tool("redis-benchmark")?;
    if args.anchors.is_some() {
        require_tool("redis-server")?;
    }
    let started = Instant::now();
    let run_dir = RunDir::create(args, "walrep-bench-")?;
    let exe = std::env::current_exe().map_err(|e| BenchError::io("find this binary", e))?;
    let mut b = Bench {
        args,
        dir: run_dir.path().to_path_buf(),
        prober: FsyncProber::create(run_dir.path())?,
        probes: Vec::new(),
        cells: Vec::new(),
    };
    println!("{}", b.header());
    for rep in 1..=args.reps {
        for &level in &args.levels {
            b.walrep_level(&exe, level, rep)?;
        }
        if let Some(anchors) = &args.anchors {
            b.anchors(anchors, rep)?;
        }
    }
    let report = b.finish(started.elapsed());
    run_dir.finish(args.keep);
    Ok(report)
}

/// A run's scratch directory in `--dir` (default: the system's temporary
/// directory): removed when dropped, unless the run was interrupted: then
/// the signal thread removes it once it has stopped every process using
/// it, unless `--keep`.
pub struct RunDir {
    // Withdrawn before the directory goes (fields drop in order).
    _registered: interrupt::Registered,
    dir: tempfile::TempDir,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if interrupt::interrupted().is_some() {
            self.dir.disable_cleanup(true);
        }
    }
}

impl RunDir {
    /// A new directory named `prefix` and a random suffix.
    pub fn create(args: &BenchArgs, prefix: &str) -> Result<RunDir, BenchError> {
        let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
        let (dir, registered) = interrupt::start(
            || {
                tempfile::Builder::new()
                    .prefix(prefix)
                    .tempdir_in(&base)
                    .map_err(|e| {
                        BenchError::io(format!("create a directory in {}", base.display()), e)
                    })
            },
            |dir| interrupt::Entry::Dir(dir.path().to_path_buf()),
        )?;
        Ok(RunDir {
            _registered: registered,
            dir,
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Leave the directory in place; where it is.
    pub fn keep(mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }

    /// The end of a run: with `--keep`, leave the directory and say where;
    /// else remove it.
    pub fn finish(self, keep: bool) {
        if keep {
            println!(
                "data directories and logs kept in {}",
                self.keep().display()
            );
        }
    }
}

pub(crate) fn require_tool(tool: &str) -> Result<(), BenchError> {
    if soak::tool_in_path(tool) {
        Ok(())
    } else {
        Err(BenchError::Usage(format!(
            "{tool} not found in PATH (Debian: apt-get install redis-tools redis-server)"
        )))
    }
}

struct Bench<'a> {
    args: &'a BenchArgs,
    dir: PathBuf,
    prober: FsyncProber,
    probes: Vec<FsyncProbe>,
    cells: Vec<Cell>,
}

impl Bench<'_> {
    fn header(&self) -> String {
        format!(
            "walrep bench: SET, {}-byte values, random keys over {}; {} s per run, {} rep(s); data in {}\n\
             fdatasync probe: 8 kB write + fdatasync at offset 0 (pg_test_fsync), {:.1} s before and after every run\n\
             {}",
            self.args.value_bytes,
            self.args.keyspace,
            self.args.seconds,
            self.args.reps,
            self.dir.display(),
            self.args.fsync_seconds,
            self.args.settings_header()
        )
    }

    fn probe(&mut self) -> Result<f64, BenchError> {
        let p = self
            .prober
            .probe(Duration::from_secs_f64(self.args.fsync_seconds))?;
        self.probes.push(p);
        Ok(p.ops_per_s)
    }

    fn load(&self, port: u16, clients: u32) -> Load {
        Load {
            port,
            clients,
            keyspace: self.args.keyspace,
            value_bytes: self.args.value_bytes,
        }
    }

    /// A fresh node at `level`, every client count.
    fn walrep_level(&mut self, exe: &Path, level: Level, rep: u32) -> Result<(), BenchError> {
        let datadir = self.dir.join(format!("walrep-{}-r{rep}", level.walrep()));
        let (mut node, port) =
            procs::start_walrep_with(exe, &datadir, level.walrep(), &self.args.walrep_settings)?;
        let seen = cluster::settings_in_effect(port, &self.args.walrep_settings)?;
        if !seen.is_empty() {
            println!(
                "  walrep settings in effect (CONFIG GET): {}",
                seen.join(", ")
            );
        }
        for &clients in &self.args.clients.clone() {
            let f0 = self.probe()?;
            let before = wal_counters(port);
            let t0 = Instant::now();
            let load = loadgen::run_for(&self.load(port, clients), self.secs(), &self.dir)?;
            let after = wal_counters(port);
            let secs = t0.elapsed().as_secs_f64();
            let f1 = self.probe()?;
            let mut cell = self.cell("walrep", level, clients, rep, load, (f0 + f1) / 2.0);
            self.one_client_floor(&mut cell)?;
            if let (Some(a), Some(b)) = (before, after) {
                let flushes = b.1.saturating_sub(a.1);
                cell.wal_fsyncs_per_s = Some(b.0.saturating_sub(a.0) as f64 / secs);
                cell.wal_batch_records =
                    (flushes > 0).then(|| b.2.saturating_sub(a.2) as f64 / flushes as f64);
            }
            self.print_cell(&cell);
            self.cells.push(cell);
        }
        node.stop();
        Ok(())
    }

    fn secs(&self) -> Duration {
        Duration::from_secs(self.args.seconds)
    }

    fn cell(
        &self,
        system: &'static str,
        level: Level,
        clients: u32,
        rep: u32,
        load: LoadResult,
        fsync_per_s: f64,
    ) -> Cell {
        Cell {
            system,
            level,
            clients,
            rep,
            ratio_to_fsync: load.rps / fsync_per_s,
            load,
            fsync_per_s,
            wal_fsyncs_per_s: None,
            wal_batch_records: None,
            rtt_us: None,
            ratio_to_floor: None,
        }
    }

    /// One client: measure the loopback round trip right after the run,
    /// for the floor 1 / (fdatasync + round trip).
    fn one_client_floor(&self, cell: &mut Cell) -> Result<(), BenchError> {
        if cell.clients == 1 {
            cell.set_rtt(fsync::loopback_rtt_us()?);
        }
        Ok(())
    }

    fn print_cell(&self, c: &Cell) {
        println!(
            "  {:<10} {:<5} {:>3} clients rep {}: {:>9.0}/s  mean {:.3} ms  p99 {:.3} ms  fdatasync {:.0}/s  ratio {:.2}{}",
            c.system,
            c.level.walrep(),
            c.clients,
            c.rep,
            c.load.rps,
            c.load.mean_ms,
            c.load.p99_ms,
            c.fsync_per_s,
            c.ratio_to_fsync,
            c.wal_batch_records
                .map_or(String::new(), |b| format!("  records/flush {b:.1}"))
        );
        if let (Some(rtt), Some(share)) = (c.rtt_us, c.ratio_to_floor) {
            println!(
                "  {:<10} {:<5} {:>3} clients rep {}: loopback round trip {rtt:.1} us, 1 / (fdatasync + round trip) = {:.0}/s, share {share:.2}",
                c.system,
                c.level.walrep(),
                c.clients,
                c.rep,
                1e6 / (1e6 / c.fsync_per_s + rtt)
            );
        }
    }

    /// PostgreSQL and Redis for the same levels and client counts.
    fn anchors(&mut self, anchors: &Path, rep: u32) -> Result<(), BenchError> {
        let pg_dir = self.dir.join(format!("postgresql-r{rep}"));
        make_traversable(&self.dir)?;
        let pg = pg::PgAnchor::start(&pg_dir, anchors)?;
        for &level in &self.args.levels.clone() {
            pg.set_synchronous_commit(level.postgres())?;
            for &clients in &self.args.clients.clone() {
                let f0 = self.probe()?;
                let load = pg.pgbench(clients, self.args.seconds)?;
                let f1 = self.probe()?;
                let mut cell = self.cell("postgresql", level, clients, rep, load, (f0 + f1) / 2.0);
                self.one_client_floor(&mut cell)?;
                self.print_cell(&cell);
                self.cells.push(cell);
            }
        }
        drop(pg);
        for &level in &self.args.levels.clone() {
            let dir = self
                .dir
                .join(format!("redis-{}-r{rep}", level.redis_appendfsync()));
            let (mut redis, port) = procs::start_redis(&dir, level.redis_appendfsync())?;
            for &clients in &self.args.clients.clone() {
                let f0 = self.probe()?;
                let load = loadgen::run_for(&self.load(port, clients), self.secs(), &self.dir)?;
                let f1 = self.probe()?;
                let mut cell = self.cell("redis", level, clients, rep, load, (f0 + f1) / 2.0);
                self.one_client_floor(&mut cell)?;
                self.print_cell(&cell);
                self.cells.push(cell);
            }
            redis.stop();
        }
        Ok(())
    }

    fn finish(self, elapsed: Duration) -> BenchReport {
        let summaries = report::summarise(&self.cells);
        let targets = report::targets(&summaries);
        let mut rates: Vec<f64> = self.probes.iter().map(|p| p.ops_per_s).collect();
        let fmin = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let fmax = rates.iter().copied().fold(0.0, f64::max);
        let fmed = report::median(&mut rates);
        println!(
            "\nfdatasync rate over {} probes: median {:.0}/s ({:.0} us), min {:.0}/s, max {:.0}/s\n",
            self.probes.len(),
            fmed,
            1e6 / fmed,
            fmin,
            fmax
        );
        for &level in &self.args.levels {
            println!("{}", report::level_table(level, &summaries));
        }
        println!("{}", report::floor_table(&self.cells));
        for t in &targets {
            println!(
                "target: {}: {} -> {}",
                t.what,
                t.measured,
                if t.met { "met" } else { "NOT met" }
            );
        }
        println!("elapsed {:.0} s", elapsed.as_secs_f64());
        BenchReport {
            workload: format!(
                "redis-benchmark -t set -d {} -r {}",
                self.args.value_bytes, self.args.keyspace
            ),
            fsync_probes: self.probes,
            fsync_median_per_s: fmed,
            fsync_min_per_s: fmin,
            fsync_max_per_s: fmax,
            cells: self.cells,
            summaries,
            targets,
            elapsed_s: elapsed.as_secs_f64(),
        }
    }
}

/// The run directory is private to us; PostgreSQL's user must reach its
/// own subdirectory.
fn make_traversable(dir: &Path) -> Result<(), BenchError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| BenchError::io(format!("chmod {}", dir.display()), e))
}

/// (fsyncs, flushes, flushed records) from the node's INFO persistence.
pub(crate) fn wal_counters(port: u16) -> Option<(u64, u64, u64)> {
    let text = procs::query(port, b"INFO persistence\r\n").ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((
        field("wal_fsyncs")?,
        field("wal_flushes")?,
        field("wal_records")?,
    ))
}

/// Write the report as JSON.
pub fn write_json(report: &RunReport, path: &Path) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| BenchError::Server(format!("could not encode the report: {e}")))?;
    std::fs::write(path, text).map_err(|e| BenchError::io(format!("write {}", path.display()), e))
}
