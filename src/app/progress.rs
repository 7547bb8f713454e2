//! Progress of `walrep basebackup --progress`: a bar on a terminal
//! (indicatif), plain lines on stderr otherwise.

use std::io::{self, IsTerminal};
use std::time::{Duration, Instant};

use walrep::backup::client::{NoProgress, Progress};

/// Least time between two plain progress lines.
const LINE_INTERVAL: Duration = Duration::from_secs(2);

/// A progress bar on a terminal, and one line per job of a parallel
/// backup under it.
struct BarProgress {
    multi: indicatif::MultiProgress,
    total: indicatif::ProgressBar,
    jobs: Vec<indicatif::ProgressBar>,
}

impl Progress for BarProgress {
    fn begin(&mut self, total: Option<u64>) {
        self.total.set_length(total.unwrap_or(0));
    }
    fn advance(&mut self, done: u64) {
        if self.total.length().is_some_and(|l| done > l) {
            self.total.set_length(done);
        }
        self.total.set_position(done);
    }
    fn end(&mut self, done: u64) {
        self.advance(done);
        self.total.finish();
        for j in &self.jobs {
            j.finish();
        }
    }
    fn jobs(&mut self, done_per_job: &[u64]) {
        while self.jobs.len() < done_per_job.len() {
            let n = self.jobs.len();
            let name = job_name(n, done_per_job.len());
            let bar = self.multi.add(indicatif::ProgressBar::new_spinner());
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("  {prefix:>8} {bytes} {bytes_per_sec}")
            {
                bar.set_style(style);
            }
            bar.set_prefix(name);
            self.jobs.push(bar);
        }
        for (bar, done) in self.jobs.iter().zip(done_per_job) {
            bar.set_position(*done);
        }
    }
}

/// The name of job `n` of `count`: the leader, the parts, the WAL.
fn job_name(n: usize, count: usize) -> String {
    match n {
        0 => "leader".into(),
        n if n + 1 == count => "wal".into(),
        n => format!("part {n}"),
    }
}

/// Plain lines on stderr when it is not a terminal.
struct LineProgress {
    total: Option<u64>,
    last: Option<Instant>,
    /// When the transfer began (for the rate and the ETA).
    started: Option<Instant>,
    /// The last bytes per job of a parallel backup.
    jobs: Vec<u64>,
}

impl LineProgress {
    fn line(&self, done: u64) {
        let secs = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let mut line = match self.total.filter(|t| *t > 0) {
            Some(t) => {
                let t = t.max(done);
                let eta = if rate > 0.0 {
                    format!(", ETA {:.0}s", (t - done) as f64 / rate)
                } else {
                    String::new()
                };
                format!(
                    "{}/{} kB ({}%), {:.1} MB/s{eta}",
                    done / 1024,
                    t / 1024,
                    done * 100 / t,
                    rate / 1e6
                )
            }
            None => format!("{} kB, {:.1} MB/s", done / 1024, rate / 1e6),
        };
        if !self.jobs.is_empty() {
            let per_job: Vec<String> = self
                .jobs
                .iter()
                .enumerate()
                .map(|(n, d)| format!("{} {} kB", job_name(n, self.jobs.len()), d / 1024))
                .collect();
            line.push_str(&format!(" [{}]", per_job.join(", ")));
        }
        eprintln!("{line}");
    }
}

impl Progress for LineProgress {
    fn begin(&mut self, total: Option<u64>) {
        self.total = total;
        self.last = Some(Instant::now());
        self.started = Some(Instant::now());
    }
    fn jobs(&mut self, done_per_job: &[u64]) {
        self.jobs = done_per_job.to_vec();
    }
    fn advance(&mut self, done: u64) {
        if self.last.is_none_or(|l| l.elapsed() >= LINE_INTERVAL) {
            self.last = Some(Instant::now());
            self.line(done);
        }
    }
    fn end(&mut self, done: u64) {
        self.line(done);
    }
}

/// Any progress, plus the line saying a two-phase backup's standby may
/// start now (printed with or without `--progress`: it is what the
/// operator waits for).
pub struct WithPhaseNotice(pub Box<dyn Progress>);

impl Progress for WithPhaseNotice {
    fn begin(&mut self, total: Option<u64>) {
        self.0.begin(total);
    }
    fn advance(&mut self, done: u64) {
        self.0.advance(done);
    }
    fn end(&mut self, done: u64) {
        self.0.end(done);
    }
    fn jobs(&mut self, done_per_job: &[u64]) {
        self.0.jobs(done_per_job);
    }
    fn phase_one_complete(&mut self, datadir: &std::path::Path) {
        use std::io::Write;
        println!(
            "walrep: phase 1 complete: start the standby now with: walrep start {} \
             (it streams WAL and waits for the copy, which goes on)",
            datadir.display()
        );
        let _ = io::stdout().flush();
    }
}

/// Progress for `--progress`: a bar on a terminal, plain lines otherwise.
pub fn progress_reporter(enabled: bool) -> Box<dyn Progress> {
    if !enabled {
        return Box::new(NoProgress);
    }
    if io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} ({percent}%) {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        let multi = indicatif::MultiProgress::new();
        let total = multi.add(bar);
        Box::new(BarProgress {
            multi,
            total,
            jobs: Vec::new(),
        })
    } else {
        Box::new(LineProgress {
            total: None,
            last: None,
            started: None,
            jobs: Vec::new(),
        })
    }
}
