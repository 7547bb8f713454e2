//! The replication scenarios' report: each figure per repetition for walrep
//! and for PostgreSQL measured in the same run, beside the anchors.md
//! figure, with the ratio and the target; plus the disk and CPU
//! probes taken around each measurement, and the JSON of all of it.

use std::fmt::Write as _;

use super::report::median;

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// A target: the median of the walrep values against a bound.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Goal {
    /// The target as written, e.g. "≥ 600 MB/s".
    pub text: String,
    /// The bound; `None` = `times` × PostgreSQL's median measured in the
    /// same run. Without PostgreSQL in the run such a target is not judged:
    /// the anchors.md figure comes from another machine and another day.
    pub bound: Option<f64>,
    /// With no `bound`: the multiple of PostgreSQL's median to reach.
    pub times: f64,
}

/// One measured figure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figure {
    /// The scenario that measured it (`stream`, `lag`, ...).
    pub scenario: String,
    pub what: String,
    pub unit: String,
    pub better: Better,
    /// One value per repetition.
    pub walrep: Vec<f64>,
    /// PostgreSQL 15 in this run (anchor scripts), one per repetition.
    pub pg_same_run: Vec<f64>,
    /// The figure in shared/anchors.md.
    pub pg_anchor: Option<f64>,
    pub goal: Option<Goal>,
}

/// A figure's summary line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Judged {
    pub scenario: String,
    pub what: String,
    pub walrep_median: f64,
    pub pg_same_run_median: Option<f64>,
    pub pg_anchor: Option<f64>,
    /// walrep / PostgreSQL (same run if measured, else anchors.md).
    pub ratio: Option<f64>,
    pub target: Option<String>,
    /// `None` with a target: not judged (a target relative to PostgreSQL
    /// in a run without PostgreSQL).
    pub met: Option<bool>,
}

/// What the `met` column and the summary lines say of a target that was
/// not judged.
const NOT_JUDGED: &str = "not judged (no PostgreSQL in this run)";

impl Judged {
    /// The summary line of a figure with a target (`None` without one),
    /// "not judged" included: a target is never left out silently.
    pub fn summary_line(&self, label: &str) -> Option<String> {
        let target = self.target.as_ref()?;
        let verdict = match self.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => NOT_JUDGED,
        };
        Some(format!(
            "target ({label}): {} {target}: {} -> {verdict}",
            self.what,
            fmt_num(self.walrep_median),
        ))
    }
}

impl Figure {
    pub fn new(scenario: &str, what: &str, unit: &str, better: Better) -> Figure {
        Figure {
            scenario: scenario.into(),
            what: what.into(),
            unit: unit.into(),
            better,
            walrep: Vec::new(),
            pg_same_run: Vec::new(),
            pg_anchor: None,
            goal: None,
        }
    }

    pub fn anchor(mut self, v: f64) -> Figure {
        self.pg_anchor = Some(v);
        self
    }

    pub fn goal(mut self, text: &str, bound: Option<f64>) -> Figure {
        self.goal = Some(Goal {
            text: text.into(),
            bound,
            times: 1.0,
        });
        self
    }

    /// A target relative to PostgreSQL: at least `times` its median in
    /// the same run; not judged when PostgreSQL did not run.
    pub fn goal_times_pg(mut self, times: f64) -> Figure {
        let text = match self.better {
            Better::Higher => format!(">= {times}x PostgreSQL"),
            Better::Lower => format!("<= {times}x PostgreSQL"),
        };
        self.goal = Some(Goal {
            text,
            bound: None,
            times,
        });
        self
    }

    pub fn judge(&self) -> Judged {
        let w = median(&mut self.walrep.clone());
        let pg = (!self.pg_same_run.is_empty()).then(|| median(&mut self.pg_same_run.clone()));
        let reference = pg.or(self.pg_anchor);
        let met = self.goal.as_ref().and_then(|g| {
            let bound = g.bound.or(pg.map(|r| r * g.times))?;
            if !w.is_finite() {
                return Some(false);
            }
            Some(match self.better {
                Better::Higher => w >= bound,
                Better::Lower => w <= bound,
            })
        });
        Judged {
            scenario: self.scenario.clone(),
            what: self.what.clone(),
            walrep_median: w,
            pg_same_run_median: pg,
            pg_anchor: self.pg_anchor,
            ratio: reference.filter(|r| *r != 0.0).map(|r| w / r),
            target: self.goal.as_ref().map(|g| g.text.clone()),
            met,
        }
    }
}

/// A disk or CPU probe taken around a measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Probe {
    /// What it was taken around (`before stream rep 1`, ...).
    pub label: String,
    /// 8 kB write + fdatasync per second.
    pub fdatasync_per_s: Option<f64>,
    /// Sequential write of the probe size + fdatasync, MB/s.
    pub seq_write_mbps: Option<f64>,
    /// 1-minute load average (2 cores shared with other builds).
    pub load_avg: f64,
}

pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        super::report::num(v)
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn list(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.iter()
        .map(|x| fmt_num(*x))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The table of all figures, one row each.
pub fn table(figures: &[Figure]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "| scenario | figure | unit | walrep per rep | walrep median | PG15 same run per rep | PG15 anchors.md | walrep / PG | target | met |");
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|");
    for f in figures {
        let j = f.judge();
        let unit = match f.better {
            Better::Higher => f.unit.clone(),
            Better::Lower => format!("{} (lower is better)", f.unit),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f.scenario,
            f.what,
            unit,
            list(&f.walrep),
            fmt_num(j.walrep_median),
            list(&f.pg_same_run),
            f.pg_anchor.map_or("-".into(), fmt_num),
            j.ratio.map_or("-".into(), |r| format!("{r:.2}")),
            j.target.as_deref().unwrap_or("-"),
            match (j.met, &j.target) {
                (Some(true), _) => "yes",
                (Some(false), _) => "**no**",
                (None, Some(_)) => NOT_JUDGED,
                (None, None) => "-",
            }
        );
    }
    t
}

/// The probes as a compact table.
pub fn probe_table(probes: &[Probe]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| when | fdatasync/s | seq write MB/s | load avg |\n|---|---|---|---|"
    );
    for p in probes {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.2} |",
            p.label,
            p.fdatasync_per_s.map_or("-".into(), fmt_num),
            p.seq_write_mbps.map_or("-".into(), fmt_num),
            p.load_avg
        );
    }
    t
}

/// Percentile `q` (0..=1) of `v` (nearest rank, as the anchor scripts).
pub fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((q * s.len() as f64) as usize).min(s.len() - 1);
    s[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_judged_against_goals_and_postgres() {
        let mut f = Figure::new("archive", "archive replay", "MB/s", Better::Higher)
            .anchor(201.0)
            .goal(">= 600 MB/s", Some(600.0));
        f.walrep = vec![500.0, 700.0, 650.0];
        f.pg_same_run = vec![200.0, 250.0];
        let j = f.judge();
        assert_eq!(j.walrep_median, 650.0);
        assert_eq!(j.pg_same_run_median, Some(225.0));
        assert_eq!(j.met, Some(true));
        assert!((j.ratio.unwrap() - 650.0 / 225.0).abs() < 1e-9);

        let mut lag = Figure::new("lag", "p99", "ms", Better::Lower).goal("<= 5 ms", Some(5.0));
        lag.walrep = vec![7.0];
        assert_eq!(lag.judge().met, Some(false));
        assert_eq!(lag.judge().ratio, None);

        // "At least PostgreSQL": the same-run median is the bound.
        let mut s = Figure::new("stream", "MB/s", "MB/s", Better::Higher)
            .anchor(380.0)
            .goal(">= PostgreSQL", None);
        s.walrep = vec![300.0];
        assert_eq!(
            s.judge().met,
            None,
            "not judged against the anchors.md figure"
        );
        s.pg_same_run = vec![250.0];
        assert_eq!(s.judge().met, Some(true));
        s.walrep = vec![200.0];
        assert_eq!(s.judge().met, Some(false));

        // A multiple of PostgreSQL: judged against the same run's median.
        let mut on = Figure::new("sync", "on, 1 client", "commits/s", Better::Higher)
            .anchor(1_000.0)
            .goal_times_pg(2.5);
        on.walrep = vec![3_000.0];
        assert_eq!(
            on.judge().met,
            None,
            "without PostgreSQL in the run: not judged, though 3,000 >= 2.5 x the anchor 1,000"
        );
        assert_eq!(
            on.judge().ratio,
            Some(3.0),
            "the ratio to anchors.md is shown"
        );
        on.pg_same_run = vec![1_300.0];
        assert_eq!(
            on.judge().met,
            Some(false),
            "3,000 < 2.5 x 1,300 in the same run"
        );
        assert_eq!(on.judge().target.as_deref(), Some(">= 2.5x PostgreSQL"));
        let t = table(&[f, lag, s, on.clone()]);
        on.pg_same_run.clear();
        let t2 = table(&[on.clone()]);
        assert!(
            t2.contains("not judged (no PostgreSQL in this run)"),
            "{t2}"
        );
        assert_eq!(
            on.judge().summary_line("sync").as_deref(),
            Some("target (sync): on, 1 client >= 2.5x PostgreSQL: 3,000 -> not judged (no PostgreSQL in this run)"),
            "the summary lines name a target that was not judged"
        );
        on.pg_same_run = vec![1_300.0];
        assert_eq!(
            on.judge().summary_line("sync").as_deref(),
            Some("target (sync): on, 1 client >= 2.5x PostgreSQL: 3,000 -> NOT met")
        );
        assert_eq!(
            Figure::new("x", "y", "z", Better::Higher)
                .judge()
                .summary_line("x"),
            None,
            "no line without a target"
        );
        assert!(
            t.contains("| archive | archive replay | MB/s | 500 / 700 / 650 | 650 |"),
            "{t}"
        );
        assert!(t.contains("**no**"), "{t}");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 100.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
