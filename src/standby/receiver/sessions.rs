//! The walreceiver as the startup process drives it: one session at a
//! time, answering the recovery machine's `StartWalReceiver` and
//! `StopWalReceiver` actions. A session waiting after a timeline end is
//! reused for the next start (PostgreSQL's RESTARTING: same connection).

use std::sync::Arc;

use crossbeam_channel::Sender;

use super::{start, ReceiverConfig, ReceiverEvent, ReceiverHandle, ReceiverShared};
use crate::{Lsn, TimelineId};

/// Builds a session's configuration for a start position and timeline.
pub type ConfigFn = Box<dyn Fn(Lsn, TimelineId) -> ReceiverConfig + Send>;

/// The walreceiver sessions of one standby.
pub struct Sessions<E> {
    events: Sender<E>,
    shared: Arc<ReceiverShared>,
    config: ConfigFn,
    /// The running (or waiting, or ended-but-not-stopped) session.
    current: Option<ReceiverHandle>,
}

impl<E: From<ReceiverEvent> + Send + 'static> Sessions<E> {
    pub fn new(events: Sender<E>, shared: Arc<ReceiverShared>, config: ConfigFn) -> Sessions<E> {
        Sessions {
            events,
            shared,
            config,
            current: None,
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
        match start(
            session,
            (self.config)(from, tli),
            self.events.clone(),
            Arc::clone(&self.shared),
        ) {
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

    /// `primary_conninfo` or `primary_slot_name` was reloaded: end the
    /// current session and report it lost, so the recovery machine goes
    /// through its usual transitions and its next `StartWalReceiver`
    /// connects with the new settings. Nothing runs: nothing to do (the
    /// next start reads the new settings anyway).
    pub fn upstream_changed(&mut self) {
        if let Some(h) = self.current.take() {
            let session = h.session();
            drop(h);
            tracing::info!(
                session,
                "upstream settings changed by a reload: walreceiver reconnects"
            );
            self.report(ReceiverEvent::StreamLost {
                session,
                reason: "primary_conninfo or primary_slot_name changed by a reload".into(),
            });
        }
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
