//! Progress of `walrep basebackup --progress`: a bar on a terminal
//! (indicatif), plain lines on stderr otherwise.

use std::io::{self, IsTerminal};
use std::time::{Duration, Instant};

use walrep::backup::client::{NoProgress, Progress};

/// Least time between two plain progress lines.
const LINE_INTERVAL: Duration = Duration::from_secs(2);

/// A progress bar on a terminal.
struct BarProgress(indicatif::ProgressBar);

impl Progress for BarProgress {
    fn begin(&mut self, total: Option<u64>) {
        self.0.set_length(total.unwrap_or(0));
    }
    fn advance(&mut self, done: u64) {
        if self.0.length().is_some_and(|l| done > l) {
            self.0.set_length(done);
        }
        self.0.set_position(done);
    }
    fn end(&mut self, done: u64) {
        self.advance(done);
        self.0.finish();
    }
}

/// Plain lines on stderr when it is not a terminal.
struct LineProgress {
    total: Option<u64>,
    last: Option<Instant>,
}

impl LineProgress {
    fn line(&self, done: u64) {
        match self.total.filter(|t| *t > 0) {
            Some(t) => eprintln!(
                "{}/{} kB ({}%)",
                done / 1024,
                t.max(done) / 1024,
                done * 100 / t.max(done)
            ),
            None => eprintln!("{} kB", done / 1024),
        }
    }
}

impl Progress for LineProgress {
    fn begin(&mut self, total: Option<u64>) {
        self.total = total;
        self.last = Some(Instant::now());
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
        Box::new(BarProgress(bar))
    } else {
        Box::new(LineProgress {
            total: None,
            last: None,
        })
    }
}
