//! The figures the live page charts, sampled once a second into a bounded
//! ring (the last [`HISTORY_SAMPLES`] seconds). The sampler reads the same
//! snapshot `/status` does; nothing on the node's own paths (commits,
//! replay, transitions) does any work for it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};

use super::{Snapshot, SnapshotProvider};
use crate::store::control::now_ms;

/// Seconds of history the charts show (five minutes).
pub const HISTORY_SAMPLES: usize = 300;
/// How often the sampler reads the node.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// The charted figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// WAL flushed by this node's writer (a primary).
    pub flush_lsn: Option<u64>,
    /// WAL received and replayed (a standby).
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    /// WAL records inserted since start (a primary): writes per second.
    pub wal_records: Option<u64>,
    /// Largest flush lag of a connected downstream, bytes.
    pub downstream_lag_bytes: u64,
}

impl Sample {
    /// The figures of `s`, taken at `at_ms`.
    pub fn of(s: &Snapshot, at_ms: u64) -> Sample {
        let recovering = s.recovery.as_ref().filter(|r| r.state.is_some());
        let own = s
            .wal
            .as_ref()
            .map(|w| w.flush_lsn)
            .or(recovering.map(|r| r.replay_lsn));
        Sample {
            at_ms,
            flush_lsn: s.wal.as_ref().map(|w| w.flush_lsn.0),
            receive_lsn: recovering.map(|r| r.receive_lsn.0),
            replay_lsn: recovering.map(|r| r.replay_lsn.0),
            wal_records: s.wal.as_ref().map(|w| w.stats.records),
            downstream_lag_bytes: s
                .walsenders
                .iter()
                .map(|w| own.map_or(0, |o| o.saturating_sub(w.flush_lsn)))
                .max()
                .unwrap_or(0),
        }
    }
}

/// The ring of samples.
#[derive(Debug, Default)]
pub struct History {
    ring: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Append, dropping the oldest beyond [`HISTORY_SAMPLES`].
    pub fn push(&self, s: Sample) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == HISTORY_SAMPLES {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    /// Every sample, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().copied().collect()
    }
}

/// The sampler thread; stops when dropped.
pub struct Sampler {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Sample `provider` into `history` every [`SAMPLE_INTERVAL`].
    pub fn start(
        provider: Arc<dyn SnapshotProvider>,
        history: Arc<History>,
    ) -> std::io::Result<Sampler> {
        let (tx, rx) = bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("status-sampler".into())
            .spawn(move || loop {
                history.push(Sample::of(&provider.snapshot(), now_ms()));
                match rx.recv_timeout(SAMPLE_INTERVAL) {
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            })?;
        Ok(Sampler {
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_samples_only() {
        let h = History::default();
        for i in 0..(HISTORY_SAMPLES as u64 + 10) {
            h.push(Sample {
                at_ms: i,
                ..Default::default()
            });
        }
        let s = h.samples();
        assert_eq!(s.len(), HISTORY_SAMPLES);
        assert_eq!(s[0].at_ms, 10);
        assert_eq!(s.last().unwrap().at_ms, HISTORY_SAMPLES as u64 + 9);
    }
}
