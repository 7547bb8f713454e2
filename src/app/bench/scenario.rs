//! The replication scenarios of `walrep bench --scenario ...`: the order
//! they run in and their report. What they share is in [`super::ctx`];
//! each scenario lives in its own module.

use std::time::{Duration, Instant};

use super::ctx::Ctx;
use super::figures::{self, Figure, Probe};
use super::{BenchArgs, BenchError, Scenario};

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
        "walrep bench --scenario {}: {} rep(s); data in {}\n{}",
        scenarios
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(","),
        args.reps,
        ctx.dir.display(),
        args.settings_header()
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
    for line in judged.iter().filter_map(|j| j.summary_line(&j.scenario)) {
        println!("{line}");
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
