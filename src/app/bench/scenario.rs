//! The replication scenarios of `walrep bench --scenario ...`: what they share — the run directory, this binary, the disk and
//! CPU probes around every measurement, the figures — and the order they
//! run in. Each scenario lives in its own module.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::figures::{self, Figure, Probe};
use super::fsync::{seq_write_probe, FsyncProber};
use super::{cluster, BenchArgs, BenchError, Scenario};

/// Size of the sequential-write probe (small: the disk's burst budget is
/// shared with the measurement).
const SEQ_PROBE_BYTES: u64 = 128 << 20;

/// Everything a scenario needs.
pub struct Ctx<'a> {
    pub args: &'a BenchArgs,
    /// This binary (`walrep init`, `start`, `basebackup`, `promote`).
    pub exe: PathBuf,
    /// The run directory (all data directories live here).
    pub dir: PathBuf,
    prober: FsyncProber,
    pub probes: Vec<Probe>,
    pub figures: Vec<Figure>,
    /// Free-text observations printed with the report.
    pub notes: Vec<String>,
}

/// Everything a run of the replication scenarios measured.
#[derive(Debug, serde::Serialize)]
pub struct ScenarioReport {
    pub scenarios: Vec<Scenario>,
    pub figures: Vec<Figure>,
    pub judged: Vec<figures::Judged>,
    pub probes: Vec<Probe>,
    pub notes: Vec<String>,
    pub elapsed_s: f64,
}

impl<'a> Ctx<'a> {
    pub fn new(args: &'a BenchArgs, exe: PathBuf, dir: PathBuf) -> Result<Ctx<'a>, BenchError> {
        Ok(Ctx {
            prober: FsyncProber::create(&dir)?,
            args,
            exe,
            dir,
            probes: Vec::new(),
            figures: Vec::new(),
            notes: Vec::new(),
        })
    }

    /// fdatasync rate (and, for bandwidth-bound scenarios, sequential
    /// write speed) and load average, recorded under `label`; returns the
    /// fdatasync mean latency in µs.
    pub fn probe(&mut self, label: &str, seq: bool) -> Result<f64, BenchError> {
        let f = self
            .prober
            .probe(Duration::from_secs_f64(self.args.fsync_seconds))?;
        let seq_write_mbps = if seq {
            Some(seq_write_probe(&self.dir, SEQ_PROBE_BYTES)?)
        } else {
            None
        };
        let p = Probe {
            label: label.into(),
            fdatasync_per_s: Some(f.ops_per_s),
            seq_write_mbps,
            load_avg: cluster::load_average(),
        };
        println!(
            "  probe {label}: fdatasync {:.0}/s ({:.0} us){}  load {:.2}",
            f.ops_per_s,
            f.mean_us,
            seq_write_mbps.map_or(String::new(), |m| format!("  seq write {m:.0} MB/s")),
            p.load_avg
        );
        self.probes.push(p);
        Ok(f.mean_us)
    }

    pub fn note(&mut self, text: String) {
        println!("  note: {text}");
        self.notes.push(text);
    }

    /// A fresh subdirectory of the run directory.
    pub fn subdir(&self, name: &str) -> Result<PathBuf, BenchError> {
        let d = self.dir.join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d)
                .map_err(|e| BenchError::io(format!("remove {}", d.display()), e))?;
        }
        std::fs::create_dir_all(&d)
            .map_err(|e| BenchError::io(format!("create {}", d.display()), e))?;
        Ok(d)
    }

    /// Where the anchor scripts put their clusters (reachable by `postgres`).
    pub fn anchors_base(&self, name: &str) -> Result<PathBuf, BenchError> {
        make_traversable(&self.dir)?;
        let base = self.dir.join(name);
        if base.exists() {
            std::fs::remove_dir_all(&base)
                .map_err(|e| BenchError::io(format!("remove {}", base.display()), e))?;
        }
        Ok(base)
    }
}

fn make_traversable(dir: &Path) -> Result<(), BenchError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| BenchError::io(format!("chmod {}", dir.display()), e))
}

/// Run the chosen replication scenarios and print their report.
pub fn run(args: &BenchArgs, scenarios: &[Scenario]) -> Result<ScenarioReport, BenchError> {
    let started = Instant::now();
    // The two-process floor alone needs neither.
    if scenarios.iter().any(|s| *s != Scenario::SyncFloor) {
        for tool in ["redis-benchmark", "pg_receivewal"] {
            super::require_tool(tool)?;
        }
    }
    let run_dir = super::RunDir::create(args, "walrep-bench-")?;
    let exe = std::env::current_exe().map_err(|e| BenchError::io("find this binary", e))?;
    let mut ctx = Ctx::new(args, exe, run_dir.path().to_path_buf())?;
    println!(
        "walrep bench --scenario {}: {} rep(s); data in {}",
        scenarios
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(","),
        args.reps,
        ctx.dir.display()
    );
    let bulk: Vec<super::bulk::Part> = scenarios.iter().filter_map(|s| s.bulk_part()).collect();
    if !bulk.is_empty() {
        super::bulk::run(&mut ctx, &bulk)?;
    }
    if scenarios.contains(&Scenario::Lag) {
        super::lag::run(&mut ctx)?;
    }
    if scenarios.contains(&Scenario::Chain) {
        super::chain::run(&mut ctx)?;
    }
    if scenarios.contains(&Scenario::Promote) {
        super::promote::run(&mut ctx)?;
    }
    if scenarios.contains(&Scenario::Sync) {
        super::sync::run(&mut ctx)?;
    }
    if scenarios.contains(&Scenario::SyncFloor) {
        super::sync::run_floor(&mut ctx)?;
    }
    if scenarios.contains(&Scenario::Backup) {
        super::backup::run(&mut ctx)?;
    }
    if scenarios.contains(&Scenario::Checkpoint) {
        super::checkpoint::run(&mut ctx)?;
    }
    if scenarios.contains(&Scenario::Restart) {
        super::restart::run(&mut ctx)?;
    }
    if scenarios.contains(&Scenario::Scaling) {
        super::scaling::run(&mut ctx)?;
    }
    let report = finish(ctx, scenarios, started.elapsed());
    run_dir.finish(args.keep);
    Ok(report)
}

fn finish(ctx: Ctx<'_>, scenarios: &[Scenario], elapsed: Duration) -> ScenarioReport {
    println!("\n{}", figures::table(&ctx.figures));
    println!("{}", figures::probe_table(&ctx.probes));
    let judged: Vec<_> = ctx.figures.iter().map(Figure::judge).collect();
    for j in &judged {
        if let (Some(t), Some(met)) = (&j.target, j.met) {
            println!(
                "target ({}): {} {}: {} -> {}",
                j.scenario,
                j.what,
                t,
                figures::fmt_num(j.walrep_median),
                if met { "met" } else { "NOT met" }
            );
        }
    }
    println!("elapsed {:.0} s", elapsed.as_secs_f64());
    ScenarioReport {
        scenarios: scenarios.to_vec(),
        figures: ctx.figures,
        judged,
        probes: ctx.probes,
        notes: ctx.notes,
        elapsed_s: elapsed.as_secs_f64(),
    }
}
