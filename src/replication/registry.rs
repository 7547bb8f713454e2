//! The connected walsenders (PostgreSQL's `pg_stat_replication`): who is
//! connected, in which state, how far each standby has written, flushed and
//! applied, and the lag of each. Every change is handed to an observer
//! (synchronous replication releases its waiters from it) outside the lock.
//! The registry is also the `max_wal_senders` admission counter.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use walrep_states::Lsn;

use super::pgwire::{HotStandbyFeedback, StandbyStatusUpdate};

/// PostgreSQL's walsender states (`pg_stat_replication.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WalSenderState {
    /// Connected, running commands.
    Startup,
    /// Sending a base backup.
    Backup,
    /// Streaming, behind the flush position.
    Catchup,
    /// Streaming and caught up at least once; only these count as synchronous.
    Streaming,
    /// The server is shutting down.
    Stopping,
}

impl WalSenderState {
    /// The name `pg_stat_replication.state` shows (`"streaming"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            WalSenderState::Startup => "startup",
            WalSenderState::Backup => "backup",
            WalSenderState::Catchup => "catchup",
            WalSenderState::Streaming => "streaming",
            WalSenderState::Stopping => "stopping",
        }
    }
}

/// One walsender, as `pg_stat_replication` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WalSenderStatus {
    /// Unique per server run (PostgreSQL's pid).
    pub id: u64,
    /// `application_name` from the startup packet (what
    /// synchronous_standby_names matches).
    pub application_name: String,
    /// The role that authenticated (`usename`).
    pub user: String,
    /// The standby's address (`client_addr`/`client_port`); always set by
    /// the server, `None` only for entries registered without a socket.
    pub client_addr: Option<SocketAddr>,
    /// Where the walsender is in its life (`state`).
    pub state: WalSenderState,
    /// Slot streamed from, if any.
    pub slot: Option<String>,
    /// This server is itself a standby: a cascading walsender is never
    /// synchronous.
    pub cascading: bool,
    /// Last WAL position sent.
    pub sent_lsn: Lsn,
    /// Written to disk by the standby, as it last reported (0/0 = not
    /// reported yet).
    pub write_lsn: Lsn,
    /// Flushed to durable storage by the standby: what
    /// `synchronous_commit = on` waits for.
    pub flush_lsn: Lsn,
    /// Replayed (applied) by the standby: visible to its readers.
    pub apply_lsn: Lsn,
    /// Time from sending WAL to the standby reporting it written (last
    /// measured; `None` until one report covers a sent position).
    pub write_lag: Option<Duration>,
    /// Time from sending WAL to the standby reporting it flushed.
    pub flush_lag: Option<Duration>,
    /// Time from sending WAL to the standby reporting it applied.
    pub apply_lag: Option<Duration>,
    /// When the last status update arrived.
    pub reply_time: Option<SystemTime>,
    /// Last hot standby feedback.
    #[serde(skip)]
    pub feedback: Option<HotStandbyFeedback>,
    /// When the walsender took its place, after authentication
    /// (`backend_start`).
    pub backend_start: SystemTime,
    /// The standby's status address, when it is a walrep node that said
    /// (its page, linked from this node's).
    pub status_url: Option<String>,
}

/// What changed, for the observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalSenderChange {
    /// A walsender took a `max_wal_senders` place.
    Connected,
    /// Its state or slot changed (e.g. catchup to streaming, which makes
    /// it eligible as a synchronous standby).
    StateChanged,
    /// A standby status update was recorded.
    Reply,
    /// Hot standby feedback was recorded.
    Feedback,
    /// The walsender ended; its place is free again.
    Disconnected,
}

/// Told about every change, after the registry lock is released.
pub trait ReplicationObserver: Send + Sync {
    /// `status` is the walsender's entry after the change (for
    /// `Disconnected`, its last state). Called on the thread that made the
    /// change (the walsender's, or for `Reply` its connection's reader
    /// thread): keep it short, it delays that thread.
    fn walsender_changed(&self, change: WalSenderChange, status: &WalSenderStatus);
}

/// The walsenders of one server.
pub struct WalSenderRegistry {
    /// `max_wal_senders`.
    max: usize,
    inner: Mutex<Inner>,
    observer: RwLock<Option<Arc<dyn ReplicationObserver>>>,
}

struct Inner {
    next_id: u64,
    senders: BTreeMap<u64, WalSenderStatus>,
}

impl WalSenderRegistry {
    /// An empty registry admitting at most `max_wal_senders` walsenders.
    pub fn new(max_wal_senders: usize) -> Arc<WalSenderRegistry> {
        Arc::new(WalSenderRegistry {
            max: max_wal_senders,
            inner: Mutex::new(Inner {
                next_id: 1,
                senders: BTreeMap::new(),
            }),
            observer: RwLock::new(None),
        })
    }

    /// Install the observer (synchronous replication, status pages).
    pub fn set_observer(&self, observer: Arc<dyn ReplicationObserver>) {
        *self.observer.write().unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }

    /// The admission limit given to [`WalSenderRegistry::new`].
    pub fn max_wal_senders(&self) -> usize {
        self.max
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a walsender slot; `None` when `max_wal_senders` are in use.
    pub(crate) fn register(
        self: &Arc<Self>,
        application_name: &str,
        user: &str,
        client_addr: Option<SocketAddr>,
        cascading: bool,
    ) -> Option<WalSenderHandle> {
        let status = {
            let mut inner = self.lock();
            if inner.senders.len() >= self.max {
                return None;
            }
            let id = inner.next_id;
            inner.next_id += 1;
            let status = WalSenderStatus {
                id,
                application_name: application_name.to_string(),
                user: user.to_string(),
                client_addr,
                state: WalSenderState::Startup,
                slot: None,
                cascading,
                sent_lsn: Lsn::INVALID,
                write_lsn: Lsn::INVALID,
                flush_lsn: Lsn::INVALID,
                apply_lsn: Lsn::INVALID,
                write_lag: None,
                flush_lag: None,
                apply_lag: None,
                reply_time: None,
                feedback: None,
                backend_start: SystemTime::now(),
                status_url: None,
            };
            inner.senders.insert(id, status.clone());
            status
        };
        self.notify(WalSenderChange::Connected, &status);
        Some(WalSenderHandle {
            registry: Arc::clone(self),
            id: status.id,
            lag: LagTracker::default(),
        })
    }

    /// Every walsender, ordered by id.
    pub fn snapshot(&self) -> Vec<WalSenderStatus> {
        self.lock().senders.values().cloned().collect()
    }

    /// Walsender `id` ([`WalSenderStatus::id`]), if still connected.
    pub fn get(&self, id: u64) -> Option<WalSenderStatus> {
        self.lock().senders.get(&id).cloned()
    }

    /// Walsenders connected now.
    pub fn len(&self) -> usize {
        self.lock().senders.len()
    }

    /// No walsender is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn notify(&self, change: WalSenderChange, status: &WalSenderStatus) {
        let observer = self
            .observer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(o) = observer {
            o.walsender_changed(change, status);
        }
    }

    /// Apply `f` to walsender `id` and notify; no-op if it is gone.
    fn update(&self, id: u64, change: WalSenderChange, f: impl FnOnce(&mut WalSenderStatus)) {
        let status = {
            let mut inner = self.lock();
            let Some(s) = inner.senders.get_mut(&id) else {
                return;
            };
            f(s);
            s.clone()
        };
        self.notify(change, &status);
    }
}

/// A walsender's own entry; dropping it frees the slot.
pub(crate) struct WalSenderHandle {
    registry: Arc<WalSenderRegistry>,
    id: u64,
    lag: LagTracker,
}

impl WalSenderHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn status(&self) -> Option<WalSenderStatus> {
        self.registry.get(self.id)
    }

    pub fn set_state(&self, state: WalSenderState) {
        if self.status().is_some_and(|s| s.state == state) {
            return;
        }
        self.registry
            .update(self.id, WalSenderChange::StateChanged, |s| s.state = state);
    }

    /// Whether this server is a standby for this stream. A walsender that
    /// began while its server was a standby and goes on after the
    /// promotion (the standby asks for the new timeline on the same
    /// connection) is no longer cascading, and may now be synchronous.
    pub fn set_cascading(&self, cascading: bool) {
        if self.status().is_some_and(|s| s.cascading == cascading) {
            return;
        }
        self.registry
            .update(self.id, WalSenderChange::StateChanged, |s| {
                s.cascading = cascading
            });
    }

    pub fn set_slot(&self, slot: Option<String>) {
        self.registry
            .update(self.id, WalSenderChange::StateChanged, |s| s.slot = slot);
    }

    /// The standby's status address, told once at startup. No observer
    /// cares (it changes nothing about replication), so none is told.
    pub fn set_status_url(&self, url: Option<String>) {
        if let Some(s) = self.registry.lock().senders.get_mut(&self.id) {
            s.status_url = url;
        }
    }

    /// WAL up to `lsn` was sent at `now` (recorded for lag and `sent_lsn`).
    pub fn record_sent(&mut self, lsn: Lsn, now: Instant) {
        self.lag.sent(lsn, now);
        let mut inner = self.registry.lock();
        if let Some(s) = inner.senders.get_mut(&self.id) {
            s.sent_lsn = lsn;
        }
    }

    /// The stream starts at `lsn`: a standby may report positions up to
    /// here before anything is sent (what [`ReplyRecorder`] checks).
    pub fn set_sent(&self, lsn: Lsn) {
        if let Some(s) = self.registry.lock().senders.get_mut(&self.id) {
            s.sent_lsn = lsn;
        }
    }

    /// Records this walsender's standby replies from another thread.
    pub fn recorder(&self) -> ReplyRecorder {
        ReplyRecorder {
            registry: Arc::clone(&self.registry),
            id: self.id,
        }
    }

    /// The lags of a status update that arrived at `now`, whose positions
    /// [`ReplyRecorder::record`] already recorded. Nobody is told: lags
    /// release no one.
    pub fn record_lags(&mut self, r: &StandbyStatusUpdate, now: Instant) {
        let lags = [
            self.lag.read(0, r.write, now),
            self.lag.read(1, r.flush, now),
            self.lag.read(2, r.apply, now),
        ];
        if let Some(s) = self.registry.lock().senders.get_mut(&self.id) {
            s.write_lag = lags[0].or(s.write_lag);
            s.flush_lag = lags[1].or(s.flush_lag);
            s.apply_lag = lags[2].or(s.apply_lag);
        }
    }

    /// A standby status update arrived at `now`: its positions (the
    /// observer is told) and its lags.
    #[cfg(test)]
    pub fn record_reply(&mut self, r: &StandbyStatusUpdate, now: Instant) {
        self.recorder().record(r);
        self.record_lags(r, now);
    }

    pub fn record_feedback(&self, h: &HotStandbyFeedback) {
        self.registry
            .update(self.id, WalSenderChange::Feedback, |s| {
                s.feedback = Some(*h)
            });
    }
}

/// Records a walsender's standby status updates on the thread that reads
/// them off the socket, so that synchronous commits are released (by the
/// observer) without waiting for the walsender thread to wake: the reply
/// is on every synchronous commit's path. The walsender handles the rest
/// of the update (lags, slot, shutdown handshake) when it gets to it.
#[derive(Clone)]
pub(crate) struct ReplyRecorder {
    registry: Arc<WalSenderRegistry>,
    id: u64,
}

impl ReplyRecorder {
    /// Record `r`'s positions and tell the observer; `false`, recording
    /// nothing, when it claims WAL written or flushed beyond what was sent
    /// (such a report could release commits no standby holds). Apply is
    /// cut at what was sent (after a reconnect it may lead). The sent
    /// position is recorded before each send, so a true report is never
    /// beyond it.
    pub fn record(&self, r: &StandbyStatusUpdate) -> bool {
        let status = {
            let mut inner = self.registry.lock();
            let Some(s) = inner.senders.get_mut(&self.id) else {
                return true;
            };
            let beyond = |lsn: Lsn| lsn.is_valid() && lsn > s.sent_lsn;
            if beyond(r.write) || beyond(r.flush) {
                return false;
            }
            s.apply_lsn = if beyond(r.apply) { s.sent_lsn } else { r.apply };
            s.write_lsn = r.write;
            s.flush_lsn = r.flush;
            s.reply_time = Some(SystemTime::now());
            s.clone()
        };
        self.registry.notify(WalSenderChange::Reply, &status);
        true
    }
}

impl Drop for WalSenderHandle {
    fn drop(&mut self) {
        let removed = self.registry.lock().senders.remove(&self.id);
        if let Some(status) = removed {
            self.registry.notify(WalSenderChange::Disconnected, &status);
        }
    }
}

/// Most (LSN, time) samples kept per reader: bounded memory whatever the
/// standby does; with a full buffer the oldest samples are dropped, which
/// only makes the lag estimate coarser.
const LAG_SAMPLES: usize = 1024;

/// PostgreSQL's LagTracker: when WAL up to an LSN was sent, so a report
/// that the standby reached it tells how long that took. One queue per
/// reported position (write, flush, apply).
#[derive(Default)]
struct LagTracker {
    queues: [VecDeque<(Lsn, Instant)>; 3],
    last_sent: Lsn,
}

impl LagTracker {
    fn sent(&mut self, lsn: Lsn, now: Instant) {
        if lsn <= self.last_sent {
            return;
        }
        self.last_sent = lsn;
        for q in &mut self.queues {
            if q.len() == LAG_SAMPLES {
                q.pop_front();
            }
            q.push_back((lsn, now));
        }
    }

    /// The lag of the newest sample at or below `reported`, if any.
    fn read(&mut self, which: usize, reported: Lsn, now: Instant) -> Option<Duration> {
        let q = &mut self.queues[which];
        let mut found = None;
        while let Some(&(lsn, at)) = q.front() {
            if lsn > reported {
                break;
            }
            found = Some(now.saturating_duration_since(at));
            q.pop_front();
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(Mutex<Vec<(WalSenderChange, Lsn)>>);
    impl ReplicationObserver for Count {
        fn walsender_changed(&self, change: WalSenderChange, status: &WalSenderStatus) {
            self.0.lock().unwrap().push((change, status.flush_lsn));
        }
    }

    #[test]
    fn bounded_by_max_wal_senders_and_observed() {
        let r = WalSenderRegistry::new(1);
        let seen = Arc::new(Count(Mutex::new(Vec::new())));
        r.set_observer(seen.clone());
        let mut a = r.register("s1", "walrep", None, false).unwrap();
        assert!(r.register("s2", "walrep", None, false).is_none());
        let t0 = Instant::now();
        a.record_sent(Lsn(100), t0);
        let reply = StandbyStatusUpdate {
            write: Lsn(100),
            flush: Lsn(100),
            apply: Lsn(0),
            client_time: 0,
            reply_requested: false,
        };
        a.record_reply(&reply, t0 + Duration::from_millis(5));
        let s = a.status().unwrap();
        assert_eq!(s.flush_lsn, Lsn(100));
        assert_eq!(s.flush_lag, Some(Duration::from_millis(5)));
        assert_eq!(s.apply_lag, None);
        drop(a);
        assert!(r.is_empty());
        let log = seen.0.lock().unwrap().clone();
        assert_eq!(
            log,
            vec![
                (WalSenderChange::Connected, Lsn(0)),
                (WalSenderChange::Reply, Lsn(100)),
                (WalSenderChange::Disconnected, Lsn(100)),
            ]
        );
        assert!(r.register("s2", "walrep", None, false).is_some());
    }

    #[test]
    fn a_walsender_begun_on_a_standby_stops_cascading_after_the_promotion() {
        let r = WalSenderRegistry::new(1);
        let seen = Arc::new(Count(Mutex::new(Vec::new())));
        r.set_observer(seen.clone());
        let a = r.register("s1", "walrep", None, true).unwrap();
        assert!(a.status().unwrap().cascading);
        a.set_cascading(false);
        a.set_cascading(false);
        assert!(!a.status().unwrap().cascading);
        // Told once: syncrep may count it from now on.
        let changes: Vec<_> = seen.0.lock().unwrap().iter().map(|c| c.0).collect();
        assert_eq!(
            changes,
            vec![WalSenderChange::Connected, WalSenderChange::StateChanged]
        );
    }

    #[test]
    fn the_reader_records_only_replies_within_what_was_sent() {
        let r = WalSenderRegistry::new(1);
        let seen = Arc::new(Count(Mutex::new(Vec::new())));
        r.set_observer(seen.clone());
        let mut a = r.register("s1", "walrep", None, false).unwrap();
        a.set_sent(Lsn(50));
        let rec = a.recorder();
        let reply = |write, flush, apply| StandbyStatusUpdate {
            write: Lsn(write),
            flush: Lsn(flush),
            apply: Lsn(apply),
            client_time: 0,
            reply_requested: false,
        };
        // Positions up to the stream's start count before anything is sent.
        assert!(rec.record(&reply(50, 50, 0)));
        assert!(!rec.record(&reply(60, 50, 0)), "write beyond sent");
        assert!(!rec.record(&reply(50, 60, 0)), "flush beyond sent");
        assert_eq!(a.status().unwrap().flush_lsn, Lsn(50));
        a.record_sent(Lsn(100), Instant::now());
        // Apply may lead after a reconnect: cut at what was sent.
        assert!(rec.record(&reply(100, 100, 500)));
        let s = a.status().unwrap();
        assert_eq!((s.flush_lsn, s.apply_lsn), (Lsn(100), Lsn(100)));
        let log = seen.0.lock().unwrap().clone();
        assert_eq!(
            log,
            vec![
                (WalSenderChange::Connected, Lsn(0)),
                (WalSenderChange::Reply, Lsn(50)),
                (WalSenderChange::Reply, Lsn(100)),
            ]
        );
    }
}
