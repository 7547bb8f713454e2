//! The primary's expiry, as Redis replicates it: only the primary deletes
//! a key whose time has passed, writing a delete record (so a standby, and
//! any replay, deletes it at the same point of the WAL); a standby only
//! hides such keys from readers. It happens on access (a read that meets
//! an expired key, [`delete_expired`]; a write builds on the key as absent
//! and logs its deletion first) and in a bounded background cycle
//! ([`ExpireCycle`]) that runs on every node but acts only while the node
//! is a primary, so a promoted standby takes over expiring by itself.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::backend::{Backend, Role, WriteError};
use crate::store::control::now_ms;
use crate::store::record::{self, KvCommand};
use crate::store::Level;

/// How often the cycle looks for expired keys (Redis's default `hz` 10).
pub const CYCLE_INTERVAL: Duration = Duration::from_millis(100);
/// Most time one cycle spends deleting (Redis: 25% of its interval), so a
/// mass expiry never holds the write lock for long stretches.
pub const CYCLE_BUDGET: Duration = Duration::from_millis(25);
/// Most keys one delete record (and one hold of the write lock) covers.
pub const KEYS_PER_RECORD: usize = 256;

/// Delete those of `keys` whose expiry has passed and whose newest state
/// is released, in one record; returns how many. Nothing on a standby.
///
/// The record is visible at once (`Level::Immediate`): every key it
/// deletes was already hidden from readers by its time, so nobody can see
/// the difference, and the record reaches the WAL (and the standbys)
/// with the next flush.
pub fn delete_expired(backend: &dyn Backend, keys: &[Vec<u8>]) -> Result<usize, WriteError> {
    if backend.role() != Role::Primary {
        return Ok(0);
    }
    let store = backend.store();
    let mut t = store.write_at(now_ms());
    let deleted = keys.iter().filter(|k| t.expire_if_due(k)).count();
    if deleted == 0 {
        return Ok(0);
    }
    let payload = record::encode(crate::store::control::now_us(), t.ops());
    let end = backend.insert(KvCommand::Expired as u8, &payload)?;
    t.commit(end, Level::Immediate);
    store.count_expired(deleted as u64);
    Ok(deleted)
}

/// The background expiry cycle's thread.
pub struct ExpireCycle {
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl ExpireCycle {
    /// Start the cycle for the node behind `backend`.
    pub fn start(backend: Arc<dyn Backend>) -> io::Result<ExpireCycle> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("expire-cycle".into())
            .spawn(move || run(&*backend, &stopped))?;
        Ok(ExpireCycle {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop it (within one cycle's budget) and wait for its thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ExpireCycle {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(backend: &dyn Backend, stopped: &Receiver<()>) {
    let _span = tracing::info_span!("expire-cycle").entered();
    loop {
        match stopped.recv_timeout(CYCLE_INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        if backend.role() == Role::Primary {
            cycle(backend);
        }
    }
}

/// One cycle: delete expired keys in records of [`KEYS_PER_RECORD`] until
/// none is due or [`CYCLE_BUDGET`] is spent.
fn cycle(backend: &dyn Backend) {
    let started = Instant::now();
    let store = backend.store();
    while started.elapsed() < CYCLE_BUDGET {
        let due = store.expired_keys(now_ms(), KEYS_PER_RECORD);
        if due.is_empty() {
            return;
        }
        match delete_expired(backend, &due) {
            // Keys still waiting for their level go in a later cycle.
            Ok(n) if n < due.len() => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "expiry cycle stopped early");
                return;
            }
        }
    }
}
