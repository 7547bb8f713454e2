//! The walreceiver as the startup process drives it: one session at a
//! time, answering the recovery machine's `StartWalReceiver` and
//! `StopWalReceiver` actions. A session waiting after a timeline end is
//! reused for the next start (PostgreSQL's RESTARTING: same connection).

use std::sync::Arc;
use std::time::Duration;

use super::super::events::EventSender;
use super::{start, ReceiverConfig, ReceiverEvent, ReceiverHandle, ReceiverShared};
use crate::{Lsn, TimelineId};

/// Builds a session's configuration for a start position and timeline.
pub type ConfigFn = Box<dyn Fn(Lsn, TimelineId) -> ReceiverConfig + Send>;

/// The walreceiver sessions of one standby.
pub struct Sessions<E> {
    events: EventSender<E>,
    shared: Arc<ReceiverShared>,
    config: ConfigFn,
    /// The running (or waiting, or ended-but-not-stopped) session.
    current: Option<ReceiverHandle>,
    /// Sessions in a row that ended before streaming, and the streamed
    /// count when the last one started: the connect back-off.
    failures: u32,
    streamed_at_start: u64,
}

/// The connect back-off: none after a session that streamed, then 100 ms
/// doubling per failed attempt, at most [`MAX_CONNECT_DELAY`].
fn connect_delay(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => (Duration::from_millis(100) * 2u32.saturating_pow(n - 2).min(1 << 10))
            .min(MAX_CONNECT_DELAY),
    }
}

/// Below the recovery machine's connect timeout (10 s), so a backed-off
/// session is not taken for a hung one.
const MAX_CONNECT_DELAY: Duration = Duration::from_secs(5);

impl<E: From<ReceiverEvent> + Send + 'static> Sessions<E> {
    /// Sessions that send their events to `events`, publish on `shared` and take
    /// each session's settings from `config` (called at every start).
    pub fn new(
        events: impl Into<EventSender<E>>,
        shared: Arc<ReceiverShared>,
        config: ConfigFn,
    ) -> Sessions<E> {
        Sessions {
            events: events.into(),
            shared,
            config,
            current: None,
            failures: 0,
            streamed_at_start: 0,
        }
    }

    /// The positions shared with redo (apply, forced replies) and INFO.
    pub fn shared(&self) -> &Arc<ReceiverShared> {
        &self.shared
    }

    /// `StartWalReceiver`: restart the waiting session on the same
    /// connection, else end the old one (without report) and start anew.
    /// A session that cannot start reports `StreamLost` at once.
    pub fn start(&mut self, session: u64, from: Lsn, tli: TimelineId) {
        if let Some(h) = self.current.as_ref().filter(|h| h.is_waiting()) {
            if h.restart(session, from, tli).is_ok() {
                tracing::info!(session, %from, tli = tli.0, "walreceiver restarting on the same connection");
                return;
            }
        }
        drop(self.current.take());
        let streamed = self.shared.streamed_sessions();
        self.failures = match streamed == self.streamed_at_start {
            true => self.failures.saturating_add(1),
            false => 0,
        };
        self.streamed_at_start = streamed;
        let mut cfg = (self.config)(from, tli);
        cfg.connect_delay = connect_delay(self.failures);
        if !cfg.connect_delay.is_zero() {
            tracing::info!(
                session,
                failed_attempts = self.failures - 1,
                delay_ms = cfg.connect_delay.as_millis() as u64,
                "walreceiver backs off before connecting again"
            );
        }
        match start(session, cfg, self.events.clone(), Arc::clone(&self.shared)) {
            Ok(h) => self.current = Some(h),
            Err(e) => {
                tracing::error!(session, "could not start the walreceiver: {e}");
                self.report(ReceiverEvent::StreamLost {
                    session,
                    reason: e.to_string(),
                });
            }
        }
    }

    /// `StopWalReceiver`: stop the session (bounded) and wait for its
    /// thread; `WalReceiverStopped` reaches the queue. A session that is
    /// not the current one is answered at once with the shared flush
    /// position. Returns the flushed position.
    pub fn stop(&mut self, session: u64) -> Lsn {
        match self.current.take() {
            Some(mut h) if h.session() == session => {
                let flushed = h.stop();
                drop(h);
                flushed
            }
            other => {
                self.current = other;
                let flushed = self.shared.flushed().1;
                self.report(ReceiverEvent::WalReceiverStopped { session, flushed });
                flushed
            }
        }
    }

    /// `StopWalReceiver` while promoting: stop the session without
    /// waiting; it queues `WalReceiverStopped` once its last write is done
    /// and makes what it wrote durable afterwards, beside the promotion's
    /// next steps ([`ReceiverHandle::stop_writing`]). The handle stays
    /// here until [`Sessions::take_stopping`]. Asked again (the machine's
    /// stop timeout passed), or for a session that is not the current
    /// one: as [`Sessions::stop`].
    pub fn stop_writing(&mut self, session: u64) {
        match self.current.as_mut() {
            Some(h) if h.session() == session && !h.stopping_early() => h.stop_writing(),
            Some(h) if h.session() == session => {
                // Asked again: wait for all of it, as `stop` does. A session
                // stopped early queues no report after its first (the
                // machine ignores a second one).
                let flushed = self.stop(session);
                self.report(ReceiverEvent::WalReceiverStopped { session, flushed });
            }
            _ => {
                self.stop(session);
            }
        }
    }

    /// The session [`Sessions::stop_writing`] stopped, to wait for its
    /// fsync ([`ReceiverHandle::finish`]); `None` if there is none.
    pub fn take_stopping(&mut self) -> Option<ReceiverHandle> {
        match self.current.take() {
            Some(h) if h.stopping_early() => Some(h),
            other => {
                self.current = other;
                None
            }
        }
    }

    /// Whether a session stopped by [`Sessions::stop_writing`] is still
    /// to be waited for.
    pub fn has_stopping(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(ReceiverHandle::stopping_early)
    }

    /// `primary_conninfo` or `primary_slot_name` was reloaded: forget the
    /// old upstream and its failures. The recovery machine, told with
    /// `UpstreamReloaded`, stops the running session itself and starts
    /// the next one (which reads the new settings) through its usual
    /// transitions.
    pub fn upstream_changed(&mut self) {
        self.shared.set_upstream(None, Vec::new());
        self.failures = 0;
        tracing::info!(
            session = self.current(),
            "upstream settings changed by a reload: walreceiver reconnects"
        );
    }

    /// End whatever runs (end of recovery, shutdown), without reports.
    pub fn stop_all(&mut self) {
        drop(self.current.take());
    }

    /// The session id of the current session, if any.
    pub fn current(&self) -> Option<u64> {
        self.current.as_ref().map(ReceiverHandle::session)
    }

    /// Queue an event from the caller's thread without blocking (the caller
    /// is usually the queue's only reader).
    fn report(&self, ev: ReceiverEvent) {
        if self.events.try_send(E::from(ev)).is_err() {
            tracing::warn!("walreceiver report dropped: the startup process's queue is full");
        }
    }
}
