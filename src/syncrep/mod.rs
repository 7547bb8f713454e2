//! Synchronous replication: committers wait for the synchronous standbys.
//!
//! A committing session, once its WAL is flushed locally, queues on its end
//! LSN in the queue of its level (remote_write, on = remote flush,
//! remote_apply); queues are kept in LSN order. Each standby reply computes
//! the positions the synchronous standbys have confirmed (FIRST n: the
//! minimum over the n highest-priority streaming standbys; ANY n: the n-th
//! highest), advances the store's visibility for those levels *before*
//! waking anyone (so an acknowledged write is readable by every client), then
//! releases every waiter at or below them in one pass: one wake-up per
//! released committer, no storms.
//!
//! WAL reaches walrep standbys while it is still being flushed here, so a
//! standby may confirm a position before this node has flushed it: a
//! level is released only up to the lower of what the synchronous
//! standbys confirm and the local flush position, and re-examined on each
//! local flush, so a write is acknowledged (and visible) only once it is
//! durable on both sides.
//!
//! With no synchronous standby connected, commits wait, as in PostgreSQL.
//! `synchronous_standby_timeout` bounds that wait: after it the node
//! *degrades* to local commits (logged at warn, shown in INFO) until the
//! synchronous standbys have caught up again.

pub mod standby_names;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

pub use standby_names::{SyncMethod, SyncStandbyConfig};

use crate::server::{Notify, WriteError};
use crate::store::{Level, Visibility};
use crate::watch::Watch;
use crate::Lsn;

/// How long a waiter sleeps between checks of shutdown and degradation when
/// nothing wakes it (a bound, not a poll interval: releases wake it at once).
pub const RECHECK_INTERVAL: Duration = Duration::from_millis(100);

/// How long after a `remote_write` commit waited its standbys are still
/// told that one may (they report their written position before their
/// fsync meanwhile): long enough to cover pauses of a `remote_write`
/// workload, short enough that an `on` workload soon gets one status
/// update per commit again.
pub const WRITE_WAIT_MEMORY: Duration = Duration::from_secs(10);

/// The levels that wait for standbys, in `remote_confirmed` order.
const REMOTE_LEVELS: [Level; 3] = [Level::RemoteWrite, Level::RemoteFlush, Level::RemoteApply];

fn remote_index(level: Level) -> usize {
    match level {
        Level::RemoteWrite => 0,
        Level::RemoteFlush => 1,
        _ => 2,
    }
}

/// What the release computation needs to know of one connected standby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyPosition {
    pub application_name: String,
    /// Only streaming (caught-up) standbys can be synchronous.
    pub streaming: bool,
    pub write: Lsn,
    pub flush: Lsn,
    pub apply: Lsn,
}

/// `sync_state` of a standby, as pg_stat_replication shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    Sync,
    Potential,
    Quorum,
    Async,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Sync => "sync",
            SyncState::Potential => "potential",
            SyncState::Quorum => "quorum",
            SyncState::Async => "async",
        }
    }
}

const WAITING: u8 = 0;
const RELEASED: u8 = 1;
const ABORTED: u8 = 2;

/// How a released (or aborted) waiter is told.
enum WakeBy {
    /// A committer thread parked in [`SyncRep::wait`].
    Thread(Thread),
    /// A thread that serves others meanwhile (a Redis worker's event
    /// loop): it polls its [`SyncWait`] when woken.
    Notify(Notify),
}

struct Waiter {
    lsn: Lsn,
    wake: WakeBy,
    state: AtomicU8,
}

impl Waiter {
    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        match &self.wake {
            WakeBy::Thread(t) => t.unpark(),
            WakeBy::Notify(f) => f(),
        }
    }
}

/// A commit waiting for the synchronous standbys without a thread of its
/// own ([`SyncRep::start_wait`]): whoever releases it calls its notify
/// function, and its owner then [`polls`](SyncWait::poll) it. Dropped
/// unfinished (its client went away), it leaves the queue.
pub struct SyncWait {
    rep: Arc<SyncRep>,
    waiter: Arc<Waiter>,
    level: Level,
    started: Instant,
}

impl SyncWait {
    /// `Some` once the wait is over: confirmed, or ended by a shutdown, a
    /// closed write gate or degradation (the same rules as
    /// [`SyncRep::wait`]); `None` while it goes on. Call it when notified
    /// and at least every [`RECHECK_INTERVAL`] (the degradation timeout is
    /// checked here, as nothing else wakes an unconfirmed wait).
    pub fn poll(&self) -> Option<Result<(), WriteError>> {
        self.rep.check(&self.waiter, self.started)
    }
}

impl Drop for SyncWait {
    fn drop(&mut self) {
        if self.waiter.state.load(Ordering::Acquire) == WAITING {
            self.rep.cancel(&self.waiter, self.level);
        }
    }
}

/// The three remote levels' queues, each in LSN order.
#[derive(Default)]
struct Queues {
    write: VecDeque<Arc<Waiter>>,
    flush: VecDeque<Arc<Waiter>>,
    apply: VecDeque<Arc<Waiter>>,
}

impl Queues {
    fn get(&mut self, level: Level) -> &mut VecDeque<Arc<Waiter>> {
        match level {
            Level::RemoteWrite => &mut self.write,
            Level::RemoteApply => &mut self.apply,
            _ => &mut self.flush,
        }
    }

    fn len(&self) -> usize {
        self.write.len() + self.flush.len() + self.apply.len()
    }
}

/// Counters and state for INFO.
#[derive(Debug, Default)]
pub struct SyncRepStats {
    pub released_total: AtomicU64,
    pub degraded_total: AtomicU64,
}

/// The synchronous-replication wait queues and release logic of a primary.
pub struct SyncRep {
    /// `synchronous_standby_names`, replaced by a reload.
    config: RwLock<Option<Arc<SyncStandbyConfig>>>,
    vis: Arc<Visibility>,
    queues: Mutex<Queues>,
    /// When a waiter started that has not been released yet (for INFO).
    oldest_wait_since: Mutex<Option<Instant>>,
    degrade_after: Option<Duration>,
    degraded: AtomicBool,
    /// Local flush position, followed by the remote levels while degraded,
    /// and the bound of every remote release.
    local_flushed: AtomicU64,
    /// The (write, flush, apply) positions the synchronous standbys last
    /// confirmed, kept to release them once the local flush catches up.
    remote_confirmed: [AtomicU64; 3],
    shutting_down: AtomicBool,
    pub stats: SyncRepStats,
    /// The highest position a `remote_apply` commit waits (or waited)
    /// for: walsenders tell their standbys to report replay progress up
    /// to here at once (see [`SyncRep::want_apply`]).
    apply_wanted: Watch<Lsn>,
    /// When a `remote_write` commit last asked to wait: walsenders tell their
    /// standbys whether a commit may wait for their written position
    /// alone (see [`SyncRep::remote_write_waited_within`]).
    write_waited_at: Mutex<Option<Instant>>,
    /// Under automatic failover, the standbys whose confirmations count:
    /// those the last successfully written `sync` key names. `None` (HA
    /// off): every standby `synchronous_standby_names` names.
    allowed: RwLock<Option<Arc<Vec<String>>>>,
    /// The node's HA write gate: while it is closed nothing is released
    /// (no write becomes visible as acknowledged), waiters get an error
    /// and the node never degrades to local commits.
    fence: std::sync::OnceLock<Arc<crate::node::fence::WriteGate>>,
}

impl SyncRep {
    pub fn new(
        config: Option<SyncStandbyConfig>,
        vis: Arc<Visibility>,
        degrade_after: Option<Duration>,
    ) -> SyncRep {
        SyncRep {
            config: RwLock::new(config.map(Arc::new)),
            vis,
            queues: Mutex::new(Queues::default()),
            oldest_wait_since: Mutex::new(None),
            degrade_after,
            degraded: AtomicBool::new(false),
            local_flushed: AtomicU64::new(0),
            remote_confirmed: Default::default(),
            shutting_down: AtomicBool::new(false),
            stats: SyncRepStats::default(),
            allowed: RwLock::new(None),
            fence: std::sync::OnceLock::new(),
            apply_wanted: Watch::new(Lsn::INVALID),
            write_waited_at: Mutex::new(None),
        }
    }

    /// A commit is about to wait for the standbys' apply position up to
    /// `lsn`: call before its flush completes, so the walsenders' keepalive
    /// announcing that flush also asks for the apply report. If the WAL is
    /// flushed here already (another session's flush covered it), the
    /// walsenders are woken to ask. Decided under the queue lock, which the
    /// local flush position also moves under: either the flush sees this
    /// announcement before it is published, or this sees the flush.
    pub fn want_apply(&self, lsn: Lsn) {
        let flushed = {
            let _q = self.lock();
            self.apply_wanted.update(|w| {
                *w = (*w).max(lsn);
                false
            });
            Lsn(self.local_flushed.load(Ordering::SeqCst))
        };
        if flushed >= lsn {
            self.apply_wanted.update(|_| true);
        }
    }

    /// See [`SyncRep::want_apply`].
    pub fn apply_wanted(&self) -> Lsn {
        self.apply_wanted.get()
    }

    /// Moves of [`SyncRep::apply_wanted`] that must wake walsenders.
    pub fn apply_wanted_watch(&self) -> &Watch<Lsn> {
        &self.apply_wanted
    }

    /// Whether a `remote_write` commit waited within the last `window`:
    /// a synchronous standby then reports its written position before its
    /// fsync; otherwise it may fsync before it reports at all (one status
    /// update per commit instead of two).
    pub fn remote_write_waited_within(&self, window: Duration) -> bool {
        let at = *self
            .write_waited_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        at.is_some_and(|t| t.elapsed() <= window)
    }

    /// Follow the node's HA write gate (set once, at start-up).
    pub fn set_fence(&self, gate: Arc<crate::node::fence::WriteGate>) {
        let _ = self.fence.set(gate);
    }

    fn fenced(&self) -> bool {
        self.fence.get().is_some_and(|g| !g.is_open())
    }

    /// Count only these standbys' confirmations from now on (`None`: every
    /// standby `synchronous_standby_names` names, as with HA off). The HA
    /// loop narrows the set *before* writing a `sync` key without a
    /// standby and widens it only *after* writing one that names it, so
    /// a write is never acknowledged on a standby the key does not name.
    pub fn set_allowed(&self, names: Option<Vec<String>>, standbys: &[StandbyPosition]) {
        *self.allowed.write().unwrap_or_else(|e| e.into_inner()) = names.map(Arc::new);
        // Confirmations kept for a local flush still to come may come from
        // a standby no longer counted: forget what was not released yet.
        for level in REMOTE_LEVELS {
            self.remote_confirmed[remote_index(level)]
                .fetch_min(self.vis.released(level).0, Ordering::SeqCst);
        }
        self.on_standby_reply(standbys);
    }

    /// The standbys whose confirmations count (`None`: all named).
    pub fn allowed(&self) -> Option<Arc<Vec<String>>> {
        self.allowed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether any synchronous standby is configured.
    pub fn defined(&self) -> bool {
        self.config().is_some()
    }

    pub fn config(&self) -> Option<Arc<SyncStandbyConfig>> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A reloaded `synchronous_standby_names`: from now on commits wait for
    /// the new set. Waiters are re-examined against `standbys` at once, and
    /// all released when no synchronous standby is named any more (as
    /// PostgreSQL's SyncRepUpdateSyncStandbysDefined).
    pub fn set_config(&self, config: Option<SyncStandbyConfig>, standbys: &[StandbyPosition]) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config.map(Arc::new);
        self.on_standby_reply(standbys);
        let local = Lsn(self.local_flushed.load(Ordering::SeqCst));
        self.on_local_flush(local);
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of committers waiting and how long the oldest has waited.
    pub fn waiters(&self) -> (usize, Option<Duration>) {
        let n = self.lock().len();
        let age = self
            .oldest_wait_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .filter(|_| n > 0)
            .map(|t| t.elapsed());
        (n, age)
    }

    /// Block until `lsn` is confirmed at `level` (a remote level), the node
    /// degrades, or it shuts down.
    pub fn wait(&self, lsn: Lsn, level: Level) -> Result<(), WriteError> {
        let started = Instant::now();
        let Some(waiter) = self.enqueue(lsn, level, WakeBy::Thread(std::thread::current())) else {
            return Ok(());
        };
        loop {
            if let Some(result) = self.check(&waiter, started) {
                return result;
            }
            std::thread::park_timeout(RECHECK_INTERVAL);
        }
    }

    /// [`wait`](Self::wait) for a thread that does not block: `None` if
    /// `lsn` is confirmed at `level` already, else a wait whose release
    /// calls `notify` (on the releasing thread: it must be quick and must
    /// not take this struct's locks).
    pub fn start_wait(
        self: &Arc<Self>,
        lsn: Lsn,
        level: Level,
        notify: Notify,
    ) -> Option<SyncWait> {
        let started = Instant::now();
        let waiter = self.enqueue(lsn, level, WakeBy::Notify(notify))?;
        Some(SyncWait {
            rep: Arc::clone(self),
            waiter,
            level,
            started,
        })
    }

    /// Queue a waiter for `lsn` at `level`, in LSN order; `None` if the
    /// level is released that far already.
    fn enqueue(&self, lsn: Lsn, level: Level, wake: WakeBy) -> Option<Arc<Waiter>> {
        debug_assert!(level >= Level::RemoteWrite);
        if level == Level::RemoteWrite {
            // Counted even if already released: a standby's early written
            // report is what released it.
            let first = {
                let mut at = self
                    .write_waited_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let first = at.is_none_or(|t| t.elapsed() > WRITE_WAIT_MEMORY);
                *at = Some(Instant::now());
                first
            };
            if first {
                // Wake the walsenders (those of synchronous candidates
                // follow this watch) to tell their standbys at once.
                self.apply_wanted.update(|_| true);
            }
        }
        if self.vis.released(level) >= lsn {
            return None;
        }
        let started = Instant::now();
        let waiter = Arc::new(Waiter {
            lsn,
            wake,
            state: AtomicU8::new(WAITING),
        });
        let mut q = self.lock();
        // Re-check under the lock: a release may have passed us meanwhile.
        if self.vis.released(level) >= lsn {
            return None;
        }
        let queue = q.get(level);
        let at = queue
            .iter()
            .rposition(|w| w.lsn <= lsn)
            .map_or(0, |i| i + 1);
        queue.insert(at, waiter.clone());
        let mut oldest = self
            .oldest_wait_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        oldest.get_or_insert(started);
        Some(waiter)
    }

    /// Whether a queued wait is over, and how: released, aborted by a
    /// shutdown or a closed write gate, or released by degrading once it
    /// waited `synchronous_standby_timeout`.
    fn check(&self, waiter: &Waiter, started: Instant) -> Option<Result<(), WriteError>> {
        for _ in 0..2 {
            match waiter.state.load(Ordering::Acquire) {
                RELEASED => return Some(Ok(())),
                ABORTED => return Some(Err(WriteError::ShuttingDown)),
                _ if self.shutting_down.load(Ordering::SeqCst) => {
                    return Some(Err(WriteError::ShuttingDown))
                }
                _ if self.fenced() => return Some(Err(WriteError::FencedUnconfirmed)),
                _ => {}
            }
            let after = self
                .degrade_after
                .filter(|_| self.fence.get().is_none_or(|g| !g.controlled()))?;
            if started.elapsed() < after {
                return None;
            }
            // Releases everything flushed here, this waiter included:
            // look at its state once more.
            self.degrade(after);
        }
        None
    }

    /// An unfinished wait is abandoned: take it out of its queue.
    fn cancel(&self, waiter: &Arc<Waiter>, level: Level) {
        let mut q = self.lock();
        q.get(level).retain(|w| !Arc::ptr_eq(w, waiter));
        if q.len() == 0 {
            *self
                .oldest_wait_since
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// A standby replied: recompute the confirmed positions and release.
    pub fn on_standby_reply(&self, standbys: &[StandbyPosition]) {
        let Some(config) = self.config() else { return };
        let confirmed = match self.allowed() {
            None => confirmed_positions(&config, standbys),
            Some(allowed) => {
                let counted: Vec<StandbyPosition> = standbys
                    .iter()
                    .filter(|s| {
                        allowed
                            .iter()
                            .any(|a| a.eq_ignore_ascii_case(&s.application_name))
                    })
                    .cloned()
                    .collect();
                confirmed_positions(&config, &counted)
            }
        };
        let Some((write, flush, apply)) = confirmed else {
            return;
        };
        if self.is_degraded() && flush >= Lsn(self.local_flushed.load(Ordering::SeqCst)) {
            self.degraded.store(false, Ordering::SeqCst);
            tracing::warn!(%flush, "synchronous standbys caught up: leaving degraded mode, commits wait for them again");
        }
        for (level, lsn) in REMOTE_LEVELS.into_iter().zip([write, flush, apply]) {
            self.remote_confirmed[remote_index(level)].store(lsn.0, Ordering::SeqCst);
        }
        self.release_confirmed();
    }

    /// Release each remote level up to what the standbys confirmed, but
    /// never past the local flush: a standby may hold (and confirm) WAL
    /// this node has not made durable yet.
    fn release_confirmed(&self) {
        let local = self.local_flushed.load(Ordering::SeqCst);
        for level in REMOTE_LEVELS {
            let confirmed = self.remote_confirmed[remote_index(level)].load(Ordering::SeqCst);
            self.release(level, Lsn(confirmed.min(local)));
        }
    }

    /// The WAL is flushed locally up to `lsn` (called by the WAL flush hook,
    /// under the WAL flush lock: it takes only this struct's own locks,
    /// which nobody holds while inserting WAL or waiting for it).
    pub fn on_local_flush(&self, lsn: Lsn) {
        {
            // Under the queue lock: see `want_apply`.
            let _q = self.lock();
            self.local_flushed.fetch_max(lsn.0, Ordering::SeqCst);
        }
        if self.is_degraded() || !self.defined() {
            for level in REMOTE_LEVELS {
                self.release(level, lsn);
            }
        } else {
            self.release_confirmed();
        }
    }

    fn degrade(&self, after: Duration) {
        if !self.degraded.swap(true, Ordering::SeqCst) {
            self.stats.degraded_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                timeout_ms = after.as_millis() as u64,
                "no synchronous standby confirmed a commit within synchronous_standby_timeout: degrading to local commits (acknowledged writes may not survive a failover until the standbys catch up)"
            );
        }
        let local = Lsn(self.local_flushed.load(Ordering::SeqCst));
        for level in [Level::RemoteWrite, Level::RemoteFlush, Level::RemoteApply] {
            self.release(level, local);
        }
    }

    /// Advance `level` to `lsn` (visibility first), then wake its waiters.
    fn release(&self, level: Level, lsn: Lsn) {
        if lsn <= self.vis.released(level) || self.fenced() {
            return;
        }
        self.vis.advance(level, lsn);
        let mut woken = Vec::new();
        {
            let mut q = self.lock();
            let queue = q.get(level);
            while queue.front().is_some_and(|w| w.lsn <= lsn) {
                woken.push(queue.pop_front().expect("front exists"));
            }
            if q.len() == 0 {
                *self
                    .oldest_wait_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        self.stats
            .released_total
            .fetch_add(woken.len() as u64, Ordering::Relaxed);
        for w in woken {
            w.set(RELEASED);
        }
    }

    /// Wake every waiter with an error: the node is shutting down. Their
    /// clients get an error, never "OK".
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let mut guard = self.lock();
        let q = &mut *guard;
        for queue in [&mut q.write, &mut q.flush, &mut q.apply] {
            for w in queue.drain(..) {
                w.set(ABORTED);
            }
        }
    }

    /// The sync_state of each standby, in the order given.
    pub fn sync_states(&self, standbys: &[StandbyPosition]) -> Vec<SyncState> {
        let Some(config) = self.config() else {
            return vec![SyncState::Async; standbys.len()];
        };
        let sync = sync_set(&config, standbys);
        standbys
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let prio = config.priority(&s.application_name);
                match (prio, config.method) {
                    (0, _) => SyncState::Async,
                    (_, SyncMethod::Quorum) => SyncState::Quorum,
                    (_, SyncMethod::Priority) if sync.contains(&i) => SyncState::Sync,
                    _ => SyncState::Potential,
                }
            })
            .collect()
    }
}

/// Indexes of the standbys that count as synchronous under `config`.
fn sync_set(config: &SyncStandbyConfig, standbys: &[StandbyPosition]) -> Vec<usize> {
    let mut candidates: Vec<(usize, usize)> = standbys
        .iter()
        .enumerate()
        .filter(|(_, s)| s.streaming && s.flush.is_valid())
        .map(|(i, s)| (config.priority(&s.application_name), i))
        .filter(|(p, _)| *p > 0)
        .collect();
    // Priority order, ties broken by connection order (PostgreSQL: slot order).
    candidates.sort();
    match config.method {
        SyncMethod::Priority => candidates
            .into_iter()
            .take(config.num_sync)
            .map(|(_, i)| i)
            .collect(),
        SyncMethod::Quorum => candidates.into_iter().map(|(_, i)| i).collect(),
    }
}

/// The (write, flush, apply) positions the synchronous standbys confirm, or
/// `None` if fewer than `num_sync` are streaming.
pub fn confirmed_positions(
    config: &SyncStandbyConfig,
    standbys: &[StandbyPosition],
) -> Option<(Lsn, Lsn, Lsn)> {
    let set = sync_set(config, standbys);
    if set.len() < config.num_sync {
        return None;
    }
    let pick = |f: fn(&StandbyPosition) -> Lsn| -> Lsn {
        let mut v: Vec<Lsn> = set.iter().map(|&i| f(&standbys[i])).collect();
        match config.method {
            SyncMethod::Priority => v.into_iter().min().unwrap_or_default(),
            SyncMethod::Quorum => {
                v.sort_unstable_by(|a, b| b.cmp(a));
                v[config.num_sync - 1]
            }
        }
    };
    Some((pick(|s| s.write), pick(|s| s.flush), pick(|s| s.apply)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(name: &str, w: u64, f: u64, a: u64) -> StandbyPosition {
        StandbyPosition {
            application_name: name.into(),
            streaming: true,
            write: Lsn(w),
            flush: Lsn(f),
            apply: Lsn(a),
        }
    }

    #[test]
    fn first_n_takes_the_minimum_of_the_highest_priorities() {
        let c = standby_names::parse("FIRST 2 (s1, s2, s3)")
            .unwrap()
            .unwrap();
        let all = [
            sb("s3", 90, 90, 90),
            sb("s2", 50, 40, 30),
            sb("s1", 70, 60, 50),
        ];
        assert_eq!(
            confirmed_positions(&c, &all),
            Some((Lsn(50), Lsn(40), Lsn(30)))
        );
        assert_eq!(confirmed_positions(&c, &all[..1]), None);
        let rep = SyncRep::new(Some(c), Arc::new(Visibility::default()), None);
        assert_eq!(
            rep.sync_states(&all),
            vec![SyncState::Potential, SyncState::Sync, SyncState::Sync]
        );
    }

    #[test]
    fn any_n_takes_the_nth_highest() {
        let c = standby_names::parse("ANY 2 (s1, s2, s3)").unwrap().unwrap();
        let all = [
            sb("s1", 10, 10, 10),
            sb("s2", 30, 30, 30),
            sb("s3", 20, 20, 20),
            sb("x", 99, 99, 99),
        ];
        assert_eq!(
            confirmed_positions(&c, &all),
            Some((Lsn(20), Lsn(20), Lsn(20)))
        );
        let rep = SyncRep::new(Some(c), Arc::new(Visibility::default()), None);
        assert_eq!(rep.sync_states(&all)[3], SyncState::Async);
        assert_eq!(rep.sync_states(&all)[0], SyncState::Quorum);
    }

    #[test]
    fn waiters_are_released_in_order_and_visibility_comes_first() {
        let vis = Arc::new(Visibility::default());
        let c = standby_names::parse("s1").unwrap();
        let rep = Arc::new(SyncRep::new(c, vis.clone(), None));
        // Flushed here already: the standby's replies decide.
        rep.on_local_flush(Lsn(1000));
        let mut handles = Vec::new();
        for lsn in [300u64, 100, 200] {
            let rep = rep.clone();
            let vis = vis.clone();
            handles.push(std::thread::spawn(move || {
                rep.wait(Lsn(lsn), Level::RemoteFlush).unwrap();
                // Released only once visible.
                assert!(vis.released(Level::RemoteFlush) >= Lsn(lsn));
                lsn
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while rep.waiters().0 < 3 {
            assert!(Instant::now() < deadline, "waiters never queued");
            std::thread::sleep(Duration::from_millis(2));
        }
        rep.on_standby_reply(&[sb("s1", 250, 250, 0)]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while rep.waiters().0 != 1 {
            assert!(Instant::now() < deadline, "release did not happen");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(rep.stats.released_total.load(Ordering::SeqCst), 2);
        rep.on_standby_reply(&[sb("s1", 300, 300, 0)]);
        let mut done: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        done.sort();
        assert_eq!(done, vec![100, 200, 300]);
    }

    #[test]
    fn a_standby_ahead_of_the_local_flush_releases_only_what_is_flushed_here() {
        let vis = Arc::new(Visibility::default());
        let rep = Arc::new(SyncRep::new(
            standby_names::parse("s1").unwrap(),
            vis.clone(),
            None,
        ));
        rep.on_local_flush(Lsn(100));
        // The standby received and flushed WAL sent before it was flushed here.
        rep.on_standby_reply(&[sb("s1", 300, 300, 300)]);
        for level in REMOTE_LEVELS {
            assert_eq!(vis.released(level), Lsn(100), "{level:?}");
        }
        let waiter = {
            let rep = rep.clone();
            std::thread::spawn(move || rep.wait(Lsn(250), Level::RemoteFlush))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while rep.waiters().0 < 1 {
            assert!(Instant::now() < deadline, "waiter never queued");
            std::thread::sleep(Duration::from_millis(2));
        }
        // The local flush completes: both sides hold 250, the waiter goes.
        rep.on_local_flush(Lsn(250));
        waiter.join().unwrap().unwrap();
        assert_eq!(vis.released(Level::RemoteFlush), Lsn(250));
        assert_eq!(vis.released(Level::RemoteApply), Lsn(250));
        rep.on_local_flush(Lsn(400));
        assert_eq!(vis.released(Level::RemoteFlush), Lsn(300));
    }

    #[test]
    fn a_wait_without_a_thread_is_notified_and_polled() {
        use std::sync::atomic::AtomicUsize;
        let vis = Arc::new(Visibility::default());
        let rep = Arc::new(SyncRep::new(
            standby_names::parse("s1").unwrap(),
            vis.clone(),
            None,
        ));
        rep.on_local_flush(Lsn(500));
        let woken = Arc::new(AtomicUsize::new(0));
        let notify: Notify = {
            let woken = woken.clone();
            Arc::new(move || {
                woken.fetch_add(1, Ordering::SeqCst);
            })
        };
        let w = rep
            .start_wait(Lsn(300), Level::RemoteFlush, notify.clone())
            .expect("not confirmed yet");
        assert!(w.poll().is_none());
        rep.on_standby_reply(&[sb("s1", 300, 200, 0)]);
        assert_eq!(woken.load(Ordering::SeqCst), 0, "200 does not cover 300");
        assert!(w.poll().is_none());
        rep.on_standby_reply(&[sb("s1", 300, 300, 0)]);
        assert_eq!(woken.load(Ordering::SeqCst), 1, "the release notified it");
        assert!(matches!(w.poll(), Some(Ok(()))));
        assert_eq!(rep.waiters().0, 0);
        assert!(
            rep.start_wait(Lsn(300), Level::RemoteFlush, notify.clone())
                .is_none(),
            "confirmed already: nothing to wait for"
        );
        // Abandoned (its client went away): it leaves the queue.
        let gone = rep.start_wait(Lsn(400), Level::RemoteApply, notify.clone());
        assert_eq!(rep.waiters().0, 1);
        drop(gone);
        assert_eq!(rep.waiters(), (0, None));
        // A shutdown ends it with an error, and notifies.
        let w = rep
            .start_wait(Lsn(450), Level::RemoteWrite, notify)
            .expect("not confirmed yet");
        rep.shutdown();
        assert_eq!(woken.load(Ordering::SeqCst), 2);
        assert!(matches!(w.poll(), Some(Err(WriteError::ShuttingDown))));
    }

    #[test]
    fn a_polled_wait_degrades_after_the_timeout() {
        let rep = Arc::new(SyncRep::new(
            standby_names::parse("s1").unwrap(),
            Arc::new(Visibility::default()),
            Some(Duration::from_millis(30)),
        ));
        rep.on_local_flush(Lsn(100));
        let w = rep
            .start_wait(Lsn(100), Level::RemoteFlush, Arc::new(|| {}))
            .expect("no standby confirmed");
        assert!(w.poll().is_none());
        let deadline = Instant::now() + Duration::from_secs(10);
        let result = loop {
            if let Some(r) = w.poll() {
                break r;
            }
            assert!(Instant::now() < deadline, "never degraded");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(result.is_ok());
        assert!(rep.is_degraded());
    }

    #[test]
    fn not_streaming_standbys_release_nothing() {
        let vis = Arc::new(Visibility::default());
        let rep = SyncRep::new(standby_names::parse("s1").unwrap(), vis.clone(), None);
        let mut s = sb("s1", 10, 10, 10);
        s.streaming = false;
        rep.on_standby_reply(&[s]);
        assert_eq!(vis.released(Level::RemoteFlush), Lsn(0));
    }

    #[test]
    fn bounded_wait_degrades_then_recovers() {
        let vis = Arc::new(Visibility::default());
        let rep = SyncRep::new(
            standby_names::parse("FIRST 1 (s1)").unwrap(),
            vis.clone(),
            Some(Duration::from_millis(50)),
        );
        rep.on_local_flush(Lsn(500));
        rep.wait(Lsn(500), Level::RemoteFlush).unwrap();
        assert!(rep.is_degraded());
        assert_eq!(rep.stats.degraded_total.load(Ordering::SeqCst), 1);
        // While degraded, local flushes release at once.
        rep.on_local_flush(Lsn(600));
        rep.wait(Lsn(600), Level::RemoteApply).unwrap();
        // The standby catches up: back to waiting for it.
        rep.on_standby_reply(&[sb("s1", 600, 600, 600)]);
        assert!(!rep.is_degraded());
    }

    #[test]
    fn shutdown_aborts_waiters_with_an_error() {
        let rep = Arc::new(SyncRep::new(
            standby_names::parse("s1").unwrap(),
            Arc::new(Visibility::default()),
            None,
        ));
        let r2 = rep.clone();
        let h = std::thread::spawn(move || r2.wait(Lsn(10), Level::RemoteFlush));
        let deadline = Instant::now() + Duration::from_secs(10);
        while rep.waiters().0 < 1 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(2));
        }
        rep.shutdown();
        assert!(matches!(h.join().unwrap(), Err(WriteError::ShuttingDown)));
    }

    #[test]
    fn only_allowed_standbys_confirm_under_ha() {
        let vis = Arc::new(Visibility::default());
        let rep = SyncRep::new(
            standby_names::parse("FIRST 1 (n1, n2, n3)").unwrap(),
            vis.clone(),
            None,
        );
        rep.on_local_flush(Lsn(500));
        rep.set_allowed(Some(vec!["n3".into()]), &[]);
        // n1 is the highest-priority standby but the sync key does not name it.
        rep.on_standby_reply(&[sb("n1", 400, 400, 400), sb("n3", 100, 100, 100)]);
        assert_eq!(vis.released(Level::RemoteFlush), Lsn(100));
        rep.on_standby_reply(&[sb("n1", 500, 500, 500)]);
        assert_eq!(
            vis.released(Level::RemoteFlush),
            Lsn(100),
            "a standby outside the allowed set confirms nothing"
        );
        // Widened after a sync key naming n1 was written: n1 counts (case as PostgreSQL: insensitive).
        rep.set_allowed(Some(vec!["N1".into()]), &[sb("n1", 500, 500, 500)]);
        assert_eq!(vis.released(Level::RemoteFlush), Lsn(500));
        // HA off: everyone named counts again.
        rep.set_allowed(None, &[]);
        rep.on_local_flush(Lsn(600));
        rep.on_standby_reply(&[sb("n2", 600, 600, 600)]);
        assert_eq!(vis.released(Level::RemoteFlush), Lsn(600));
    }

    #[test]
    fn narrowing_the_allowed_set_forgets_unreleased_confirmations() {
        let vis = Arc::new(Visibility::default());
        let rep = SyncRep::new(standby_names::parse("n1, n2").unwrap(), vis.clone(), None);
        rep.set_allowed(Some(vec!["n1".into()]), &[]);
        rep.on_local_flush(Lsn(100));
        // n1 confirms past the local flush: kept for the next local flush.
        rep.on_standby_reply(&[sb("n1", 300, 300, 300)]);
        assert_eq!(vis.released(Level::RemoteFlush), Lsn(100));
        rep.set_allowed(Some(vec![]), &[]);
        rep.on_local_flush(Lsn(300));
        assert_eq!(
            vis.released(Level::RemoteFlush),
            Lsn(100),
            "n1's confirmation no longer counts once n1 is removed"
        );
    }

    #[test]
    fn a_closed_fence_releases_nothing_and_errors_waiters() {
        use crate::node::fence::WriteGate;
        let vis = Arc::new(Visibility::default());
        let rep = Arc::new(SyncRep::new(
            standby_names::parse("s1").unwrap(),
            vis.clone(),
            Some(Duration::from_millis(20)),
        ));
        let gate = Arc::new(WriteGate::fenced());
        gate.open_until(Instant::now() + Duration::from_secs(60));
        rep.set_fence(gate.clone());
        rep.on_local_flush(Lsn(100));
        rep.on_standby_reply(&[sb("s1", 50, 50, 50)]);
        assert_eq!(vis.released(Level::RemoteFlush), Lsn(50));
        let waiter = {
            let rep = rep.clone();
            std::thread::spawn(move || rep.wait(Lsn(100), Level::RemoteFlush))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while rep.waiters().0 < 1 {
            assert!(Instant::now() < deadline, "waiter never queued");
            std::thread::sleep(Duration::from_millis(2));
        }
        gate.close();
        assert!(matches!(
            waiter.join().unwrap(),
            Err(WriteError::FencedUnconfirmed)
        ));
        assert!(
            !rep.is_degraded(),
            "under HA a node never degrades to local commits"
        );
        rep.on_standby_reply(&[sb("s1", 100, 100, 100)]);
        assert_eq!(
            vis.released(Level::RemoteFlush),
            Lsn(50),
            "a fenced node makes no write visible as acknowledged"
        );
    }
}
