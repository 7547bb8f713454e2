//! `DATADIR/log/transitions.jsonl`: every notable transition of the recovery
//! machine as one JSON object per line (time, from, to, event, actions, LSNs,
//! cause), for `walrep viz trace` and for operators.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::states::recovery::Transition;

/// The file is rotated to `transitions.jsonl.1` beyond this size, so a
/// standby that flaps for days does not fill its disk.
const MAX_TRACE_BYTES: u64 = 64 << 20;

/// The trace file name inside `DATADIR/log`.
pub const TRACE_FILE: &str = "transitions.jsonl";

/// One line of the trace: the transition plus the wall-clock time.
#[derive(Serialize)]
struct Line<'a> {
    /// Milliseconds since the Unix epoch.
    time_unix_ms: u64,
    #[serde(flatten)]
    transition: &'a Transition,
}

/// Appends transitions to the trace file.
pub struct TraceLog {
    path: PathBuf,
    file: Option<File>,
    written: u64,
}

impl TraceLog {
    /// Open (creating `log_dir` if needed) the trace in `log_dir`; a file that cannot
    /// be opened leaves a log that drops transitions: the trace never stops recovery.
    pub(crate) fn open(log_dir: &Path) -> TraceLog {
        let path = log_dir.join(TRACE_FILE);
        let _ = fs::create_dir_all(log_dir);
        let written = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        TraceLog {
            file: OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .ok(),
            path,
            written,
        }
    }

    /// The trace file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one transition. A failure is logged, never fatal: the trace is
    /// for people, recovery goes on without it.
    pub fn append(&mut self, t: &Transition, time_unix_ms: u64) {
        if let Err(e) = self.try_append(t, time_unix_ms) {
            tracing::warn!(error = %e, path = %self.path.display(), "could not append to the transition trace");
        }
    }

    fn try_append(&mut self, t: &Transition, time_unix_ms: u64) -> io::Result<()> {
        if self.written > MAX_TRACE_BYTES {
            let _ = fs::rename(&self.path, self.path.with_extension("jsonl.1"));
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
            self.written = 0;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("trace file is not open"));
        };
        let mut line = serde_json::to_vec(&Line {
            time_unix_ms,
            transition: t,
        })
        .map_err(io::Error::other)?;
        line.push(b'\n');
        file.write_all(&line)?;
        self.written += line.len() as u64;
        Ok(())
    }
}
