//! Runs walreceiver sessions for the startup process: one at a time, each
//! tagged with the session id the machine gave it.

use crossbeam_channel::Sender;

use crate::states::recovery::{Event, SessionId};
use crate::{Lsn, TimelineId};

/// The walreceiver sessions of one standby.
pub struct Receivers {
    pub events: Sender<Event>,
}

impl Receivers {
    /// START_REPLICATION at `from` on `tli` for `session`.
    pub fn start(&mut self, session: SessionId, from: Lsn, tli: TimelineId) {
        tracing::warn!(%session, %from, tli = tli.0, "no walreceiver in this build: streaming is unavailable");
        let _ = self.events.send(Event::StreamLost {
            session,
            reason: "walreceiver not available".into(),
        });
    }

    /// Stop `session` and wait (bounded) until it writes nothing more.
    pub fn stop(&mut self, session: SessionId) {
        let _ = self.events.send(Event::WalReceiverStopped {
            session,
            flushed: Lsn::INVALID,
        });
    }

    /// Recovery now follows `tli`.
    pub fn set_target(&mut self, _tli: TimelineId) {}

    /// Stop whatever still runs (end of recovery).
    pub fn stop_all(&mut self) {}
}
