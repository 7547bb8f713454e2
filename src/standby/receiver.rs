//! The walreceiver (PostgreSQL's walreceiver.c): one thread per session
//! that connects to the upstream named by `primary_conninfo`, checks it
//! (not this node itself, same system identifier, timeline not behind
//! ours), fetches the history files it lacks, runs START_REPLICATION and
//! writes the WAL it receives into `wal/` under the real segment names,
//! fsyncing after each drained batch and reporting write/flush/apply
//! upstream. Every byte written also goes into the received-WAL buffer
//! ([`WalBuffer`]) that redo reads before the files.
//!
//! # Use
//!
//! The startup process uses [`Sessions`], which answers the recovery
//! machine's `StartWalReceiver` / `StopWalReceiver` (reusing a session that
//! waits after a timeline end). Directly:
//!
//! ```text
//! let shared = ReceiverShared::new(replayed);         // once per node
//! let h = start(session, config, events_tx, shared.clone())?;
//! // the redo loop publishes `replayed`, then calls
//! // shared.replay_published(): the reply a remote_apply commit waits for
//! // the WAL reader's limit: shared.flushed()
//! h.restart(next_session, from, tli)?;   // after TimelineEnded, same connection
//! let flushed = h.stop();                // bounded; WalReceiverStopped follows
//! ```
//!
//! While streaming, the session thread reads the upstream's socket itself
//! (no reader thread: a message that must be written, fsynced and
//! answered costs no thread hop), with its read bounded by its next timer;
//! `stop()` shuts the socket's read side to wake it. Redo sends the apply
//! position a commit waits for itself (see `replies`).
//!
//! # Events (each tagged with the session), in order
//!
//! - `StreamConnected { upstream_tli, upstream_flush }` once START_REPLICATION
//!   entered COPY (upstream values from IDENTIFY_SYSTEM);
//! - `HistoryReceived { tli, history }` for each history file fetched (before
//!   START_REPLICATION, timelines between ours and the upstream's);
//! - `WalFlushed { tli, upto }` after each fsync that advanced the flush
//!   position (coalesced when the event queue is full: the latest wins);
//! - `TimelineEnded { tli, next_tli, switch_point }` when the upstream ends the
//!   timeline (CopyDone + next timeline, or START_REPLICATION answering
//!   with the next timeline at once). The session then waits, connected,
//!   for [`ReceiverHandle::restart`] (PostgreSQL's WAITING → RESTARTING,
//!   same connection) for up to `restart_wait`, then ends with `StreamLost`;
//! - `StreamLost { reason }` when the session ends on its own: connection
//!   refused or lost, upstream error, `wal_receiver_timeout`, refusals
//!   (itself, other system, timeline behind), a write or fsync failure
//!   (then [`ReceiverShared::io_failure`] is set and no new session starts:
//!   nothing retries an fsync);
//! - `WalReceiverStopped { flushed }` after [`ReceiverHandle::stop`], always
//!   last; `stop()` also returns `flushed`.
//!
//! Everything is bounded: the connect and each command's answer
//! (`connect_timeout`), silence (`wal_receiver_timeout`), the wait after a
//! timeline end (`restart_wait`), `stop()` ([`STOP_BOUND`], then the socket
//! is shut down), event sends ([`EVENT_SEND_BOUND`]); no message is
//! buffered beyond the protocol's largest message.

mod buffer;
mod flusher;
mod inline;
mod replies;
mod session;
mod sessions;

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

pub use super::confirmed::HeldWal;
use super::events::EventSender;
use super::replayed::Replayed;
use crate::config::{ArchiveMode, Config};
use crate::replication::source::FlushPoint;
use crate::wal::{SegmentDir, SegmentError};
use crate::watch::Watch;
use crate::{Lsn, TimelineHistory, TimelineId};
pub use buffer::{WalBuffer, WAL_BUFFER_BYTES};
pub(crate) use inline::{InlineGate, InlineRedo};
pub(crate) use replies::APPLY_REPORT_SPACING;
use replies::{Positions, Replies, ReplyError};
pub use sessions::{ConfigFn, Sessions};

/// How long `stop()` waits for the session to flush and leave before it
/// shuts the socket down (then waits as long again).
pub const STOP_BOUND: Duration = Duration::from_secs(5);
/// Longest wait to queue one event (the runtime's queue is bounded).
pub const EVENT_SEND_BOUND: Duration = Duration::from_secs(10);

/// What the walreceiver tells the startup process: the walreceiver events
/// of the recovery machine (same names and fields; the session is its
/// `SessionId`'s number), converted with `From` into
/// [`crate::states::recovery::Event`] (or any event type implementing it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// The session passed IDENTIFY_SYSTEM and START_REPLICATION.
    StreamConnected {
        /// The session's number.
        session: u64,
        /// The upstream's current timeline.
        upstream_tli: TimelineId,
        /// The upstream's flush position when streaming started.
        upstream_flush: Lsn,
    },
    /// WAL of `tli` was written and fsynced up to `upto` (PostgreSQL's flushedUpto).
    WalFlushed {
        /// The session's number.
        session: u64,
        /// The timeline the WAL belongs to.
        tli: TimelineId,
        /// The end of what is durable.
        upto: Lsn,
    },
    /// The upstream ended streaming of `tli` (CopyDone and the next-timeline result set).
    TimelineEnded {
        /// The session's number.
        session: u64,
        /// The timeline that ended.
        tli: TimelineId,
        /// The timeline the upstream continues on.
        next_tli: TimelineId,
        /// Where `tli` ends and `next_tli` begins.
        switch_point: Lsn,
    },
    /// TIMELINE_HISTORY returned `tli`'s history file, now written to `wal/`.
    HistoryReceived {
        /// The session's number.
        session: u64,
        /// The timeline whose history this is.
        tli: TimelineId,
        /// Its parsed contents.
        history: TimelineHistory,
    },
    /// The session ended on its own (refused, lost, wal_receiver_timeout, upstream error).
    StreamLost {
        /// The session's number.
        session: u64,
        /// Why, for the log and `last_transition_cause`.
        reason: String,
    },
    /// The session stopped as asked; everything it received is flushed.
    WalReceiverStopped {
        /// The session's number.
        session: u64,
        /// The end of what it flushed.
        flushed: Lsn,
    },
    /// The session ended holding WAL of `tli` in `[from, to)` past the
    /// upstream's last told flush position (see [`HeldWal`]).
    UnconfirmedWalHeld {
        /// The session's number.
        session: u64,
        /// The timeline of the files.
        tli: TimelineId,
        /// The upstream's last told flush position.
        from: Lsn,
        /// The end of the WAL held.
        to: Lsn,
    },
    /// A restarted upstream has less WAL than was held: zeroed from `from`.
    UnconfirmedWalTruncated {
        /// The session's number.
        session: u64,
        /// The timeline of the files.
        tli: TimelineId,
        /// Nothing is held from here on.
        from: Lsn,
    },
}

impl From<ReceiverEvent> for crate::states::recovery::Event {
    fn from(e: ReceiverEvent) -> Self {
        use crate::states::recovery::{Event, SessionId};
        match e {
            ReceiverEvent::StreamConnected {
                session,
                upstream_tli,
                upstream_flush,
            } => Event::StreamConnected {
                session: SessionId(session),
                upstream_tli,
                upstream_flush,
            },
            ReceiverEvent::WalFlushed { session, tli, upto } => Event::WalFlushed {
                session: SessionId(session),
                tli,
                upto,
            },
            ReceiverEvent::TimelineEnded {
                session,
                tli,
                next_tli,
                switch_point,
            } => Event::TimelineEnded {
                session: SessionId(session),
                tli,
                next_tli,
                switch_point,
            },
            ReceiverEvent::HistoryReceived {
                session,
                tli,
                history,
            } => Event::HistoryReceived {
                session: SessionId(session),
                tli,
                history,
            },
            ReceiverEvent::StreamLost { session, reason } => Event::StreamLost {
                session: SessionId(session),
                reason,
            },
            ReceiverEvent::WalReceiverStopped { session, flushed } => Event::WalReceiverStopped {
                session: SessionId(session),
                flushed,
            },
            ReceiverEvent::UnconfirmedWalHeld {
                session,
                tli,
                from,
                to,
            } => Event::UnconfirmedWalHeld {
                session: SessionId(session),
                tli,
                from,
                to,
            },
            ReceiverEvent::UnconfirmedWalTruncated { session, tli, from } => {
                Event::UnconfirmedWalTruncated {
                    session: SessionId(session),
                    tli,
                    from,
                }
            }
        }
    }
}

/// What one session needs.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// `primary_conninfo` (libpq key=value).
    pub conninfo: String,
    /// `primary_slot_name`; `None` streams without a slot.
    pub slot_name: Option<String>,
    /// Where streaming starts; rounded down to its segment start.
    pub start: Lsn,
    /// The timeline to stream (the recovery timeline at `start`).
    pub tli: TimelineId,
    /// This node's system identifier: the upstream's must be equal.
    pub system_id: u64,
    /// This node's instance identifier: the upstream's must differ.
    pub instance_id: u64,
    /// This node's status address, told to the upstream at connection so
    /// its page can link here.
    pub status_url: Option<String>,
    /// The WAL directory received WAL is written into.
    pub segdir: Arc<SegmentDir>,
    /// `archive_mode = always`: completed segments get `.ready`, else `.done`.
    pub archive_always: bool,
    /// `wal_receiver_status_interval`; `None` (0) sends status only when
    /// asked or forced.
    pub status_interval: Option<Duration>,
    /// `wal_receiver_timeout`; `None` (0) never gives up on silence.
    pub timeout: Option<Duration>,
    /// `hot_standby_feedback`.
    pub hot_standby_feedback: bool,
    /// `wal_receiver_unflushed`: ask a walrep upstream for WAL it has not
    /// flushed yet.
    pub receive_unflushed: bool,
    /// Bound on connecting and on each command's answer.
    pub connect_timeout: Duration,
    /// How long a session waits, connected, for a new start after a
    /// timeline end before it ends.
    pub restart_wait: Duration,
    /// Wait this long before connecting: the back-off after sessions that
    /// failed before streaming (a refused or unreachable upstream), so a
    /// standby never hammers its upstream with attempts.
    pub connect_delay: Duration,
}

impl ReceiverConfig {
    /// A configuration from the node's parameters.
    pub fn from_config(
        c: &Config,
        segdir: Arc<SegmentDir>,
        start: Lsn,
        tli: TimelineId,
        system_id: u64,
        instance_id: u64,
    ) -> ReceiverConfig {
        let nonzero = |d: Option<Duration>| d.filter(|d| !d.is_zero());
        let timeout = nonzero(c.wal_receiver_timeout.get());
        ReceiverConfig {
            conninfo: c.primary_conninfo.clone(),
            slot_name: Some(c.primary_slot_name.clone()).filter(|s| !s.is_empty()),
            start,
            tli,
            system_id,
            instance_id,
            status_url: crate::status::links::own_status_url(c),
            segdir,
            archive_always: c.archive_mode == ArchiveMode::Always,
            status_interval: nonzero(c.wal_receiver_status_interval.get()),
            timeout,
            hot_standby_feedback: c.hot_standby_feedback.0,
            receive_unflushed: c.wal_receiver_unflushed.0,
            connect_timeout: Duration::from_secs(30),
            restart_wait: timeout.unwrap_or(Duration::from_secs(60)),
            connect_delay: Duration::ZERO,
        }
    }
}

/// PostgreSQL's WalRcvState.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverState {
    /// No session runs.
    Stopped,
    /// A session is connecting and starting replication.
    Starting,
    /// WAL is arriving.
    Streaming,
    /// The timeline ended; waiting for a new start on the same connection.
    Waiting,
    /// A new start on the same connection was ordered, not yet running.
    Restarting,
    /// The session was asked to stop and is closing.
    Stopping,
}

impl ReceiverState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ReceiverState::Stopped => "stopped",
            ReceiverState::Starting => "starting",
            ReceiverState::Streaming => "streaming",
            ReceiverState::Waiting => "waiting",
            ReceiverState::Restarting => "restarting",
            ReceiverState::Stopping => "stopping",
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> ReceiverState {
        match c {
            1 => ReceiverState::Starting,
            2 => ReceiverState::Streaming,
            3 => ReceiverState::Waiting,
            4 => ReceiverState::Restarting,
            5 => ReceiverState::Stopping,
            _ => ReceiverState::Stopped,
        }
    }
}

/// What the walreceiver shares with the rest of the standby; one per node,
/// reused by every session. It owns the flush position (published on a
/// [`Watch`] after every fsync: cascading walsenders, INFO, restartpoints'
/// WAL retention; redo's limit is told to the recovery machine, and may
/// run ahead of it by one batch: see `exposed_early`) and reads the replay
/// position redo owns for its replies.
#[derive(Debug)]
pub struct ReceiverShared {
    /// End of WAL written by the current session (maybe not durable).
    written: AtomicU64,
    /// WAL fsynced here and told flushed upstream, and the timeline of its
    /// files.
    flushed: Watch<FlushPoint>,
    /// Owned by the redo loop: its `end` is the apply position replies
    /// carry (redo sends the one a commit waits for itself, see
    /// [`ReceiverShared::replay_published`]).
    replayed: Arc<Watch<Replayed>>,
    /// WAL fsynced here by the current session: the flush position
    /// replies carry (what is exposed is `flushed`, capped by the
    /// upstream's told flush position).
    durable: AtomicU64,
    /// Replies of the connected session; `None` while not connected.
    replies: Mutex<Option<Replies>>,
    /// Hot standby feedback's xmin (0 = none).
    feedback_xmin: AtomicU32,
    /// The upstream's flush position as last reported (walEnd): the
    /// primary flush position. WAL past it is neither exposed (published
    /// as flushed, replayed) nor reported as applied.
    upstream_flush: AtomicU64,
    /// WAL an ended session left past the upstream's told flush position.
    held: Mutex<Option<HeldWal>>,
    /// How far the current session let redo apply before its own fsync
    /// (written here, told flushed upstream; see the session's
    /// `expose_written`); `INVALID` at a session's or timeline's start.
    /// Replay past `flushed` while this is past it too is not durable here
    /// yet: cascading walsenders do not send it (see
    /// `StandbyProgress::flush_point`).
    exposed_early: AtomicU64,
    /// [`ReceiverState`] code, for INFO.
    state: AtomicU8,
    /// The running session's control.
    current: Mutex<Option<Arc<Control>>>,
    /// A write or fsync failure ended a session: no session may start.
    io_failure: Mutex<Option<Arc<SegmentError>>>,
    /// The upstream's instance and the instances it streams from, nearest
    /// first, as of the last connection (what this node's own walsenders
    /// report downstream, so a loop of any length is refused).
    upstream_chain: Mutex<Vec<u64>>,
    /// The upstream last connected to: host, port, application_name.
    upstream: Mutex<Option<Upstream>>,
    /// Sessions that reached streaming, ever (a session that did not
    /// counts as a failed attempt for the connect back-off).
    streamed_sessions: AtomicU64,
    /// Every byte written, for redo to read without the files.
    buffer: Arc<WalBuffer>,
    /// The streaming session spaces its fsyncs (its upstream said no
    /// commit waits for this standby's flush; see `flusher`).
    flush_deferred: AtomicBool,
    /// The streaming session reports its written position before its
    /// fsync, on the fsync thread (its upstream said a commit waited
    /// lately for that position alone); otherwise a synchronous standby
    /// fsyncs on the session's thread (see `Session::fsync_inline`).
    write_reports: AtomicBool,
    /// fsyncs of received WAL made by sessions' fsync threads, ever.
    fsyncs: AtomicU64,
    /// The recovery machine's inline leave: the session applies what it
    /// exposed itself when redo is free (see [`inline`]).
    inline: InlineGate,
}

/// The upstream a session connected to, for INFO and /status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstream {
    /// The upstream's host (`primary_conninfo`'s host).
    pub(crate) host: String,
    /// The upstream's replication port.
    pub(crate) port: u16,
    /// The name this standby connected as (`application_name`).
    pub(crate) application_name: String,
    /// `None` from a server that does not say (PostgreSQL).
    pub instance_id: Option<u64>,
    /// Its status address (`walrep_status_url`), with an unspecified host
    /// replaced by `host`; `None` from PostgreSQL.
    pub status_url: Option<String>,
}

impl ReceiverShared {
    /// Replies carry `replayed`'s end as the apply position.
    pub fn new(replayed: Arc<Watch<Replayed>>) -> Arc<ReceiverShared> {
        Arc::new(ReceiverShared {
            written: AtomicU64::new(0),
            flushed: Watch::new(FlushPoint {
                tli: TimelineId(0),
                lsn: Lsn::INVALID,
            }),
            replayed,
            durable: AtomicU64::new(0),
            replies: Mutex::new(None),
            feedback_xmin: AtomicU32::new(0),
            upstream_flush: AtomicU64::new(0),
            held: Mutex::new(None),
            exposed_early: AtomicU64::new(0),
            state: AtomicU8::new(ReceiverState::Stopped.code()),
            current: Mutex::new(None),
            io_failure: Mutex::new(None),
            upstream_chain: Mutex::new(Vec::new()),
            upstream: Mutex::new(None),
            streamed_sessions: AtomicU64::new(0),
            buffer: Arc::new(WalBuffer::default()),
            flush_deferred: AtomicBool::new(false),
            write_reports: AtomicBool::new(false),
            fsyncs: AtomicU64::new(0),
            inline: InlineGate::default(),
        })
    }

    /// The received WAL redo reads before the files (see [`WalBuffer`]).
    pub fn wal_buffer(&self) -> &Arc<WalBuffer> {
        &self.buffer
    }

    /// Whether the streaming session spaces its fsyncs now (its upstream
    /// said no commit there waits for this standby's flush).
    pub fn flush_deferred(&self) -> bool {
        self.flush_deferred.load(Ordering::Acquire)
    }

    /// Whether the streaming session was told that a commit upstream
    /// waited lately for its written position alone (`remote_write`), and
    /// so reports that before each fsync.
    pub fn write_reports_wanted(&self) -> bool {
        self.write_reports.load(Ordering::Acquire)
    }

    /// fsyncs of received WAL made while streaming, ever (segment
    /// completions and the flushes at a stream's end not counted).
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Acquire)
    }

    /// How many sessions reached streaming so far.
    pub fn streamed_sessions(&self) -> u64 {
        self.streamed_sessions.load(Ordering::Acquire)
    }

    /// See [`ReceiverShared::upstream_chain`]'s field.
    pub fn upstream_chain(&self) -> Vec<u64> {
        self.upstream_chain
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The upstream last connected to (kept while reconnecting).
    pub fn upstream(&self) -> Option<Upstream> {
        self.upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A session connected to `upstream`, whose chain is `chain`.
    pub(crate) fn set_upstream(&self, upstream: Option<Upstream>, chain: Vec<u64>) {
        *self.upstream.lock().unwrap_or_else(|e| e.into_inner()) = upstream;
        *self
            .upstream_chain
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = chain;
    }

    /// WAL written and fsynced: the timeline of the files and the end.
    pub fn flushed(&self) -> (TimelineId, Lsn) {
        let p = self.flushed.get();
        (p.tli, p.lsn)
    }

    /// [`flushed`](Self::flushed) as a flush point.
    pub fn flushed_point(&self) -> FlushPoint {
        self.flushed.get()
    }

    /// The flush position, published after every fsync that moved it.
    pub fn flushed_watch(&self) -> &Watch<FlushPoint> {
        &self.flushed
    }

    /// WAL written (maybe not yet durable).
    pub fn written(&self) -> Lsn {
        Lsn(self.written.load(Ordering::Acquire))
    }

    /// The apply position replies carry (redo's).
    pub fn apply(&self) -> Lsn {
        self.replayed.read(|r| r.end)
    }

    /// The xmin sent in hot standby feedback (0 = none).
    pub fn set_feedback_xmin(&self, xmin: u32) {
        self.feedback_xmin.store(xmin, Ordering::Release);
    }

    /// The upstream's flush position, as it last said.
    pub fn upstream_flush(&self) -> Lsn {
        Lsn(self.upstream_flush.load(Ordering::Acquire))
    }

    /// WAL held past the upstream's told flush position, if any.
    pub fn held(&self) -> Option<HeldWal> {
        *self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_held(&self, held: Option<HeldWal>) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = held;
    }

    /// The session's state now (`pg_stat_wal_receiver.status`).
    pub fn state(&self) -> ReceiverState {
        ReceiverState::from_code(self.state.load(Ordering::Acquire))
    }

    /// The write or fsync failure that stopped the walreceiver for good.
    pub fn io_failure(&self) -> Option<Arc<SegmentError>> {
        self.io_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_io_failure(&self, e: Arc<SegmentError>) {
        *self.io_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    fn lock_current(&self) -> MutexGuard<'_, Option<Arc<Control>>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(&self, s: ReceiverState) {
        self.state.store(s.code(), Ordering::Release);
    }

    /// The inline leave (see [`inline`]).
    pub(crate) fn inline(&self) -> &InlineGate {
        &self.inline
    }

    /// Batches a walreceiver session applied itself, ever.
    pub fn inline_applies(&self) -> u64 {
        self.inline.applies()
    }

    /// See the `exposed_early` field.
    pub fn exposed_early(&self) -> Lsn {
        Lsn(self.exposed_early.load(Ordering::Acquire))
    }

    fn publish_exposed_early(&self, lsn: Lsn) {
        self.exposed_early.store(lsn.0, Ordering::Release);
    }

    fn publish_written(&self, lsn: Lsn) {
        self.written.store(lsn.0, Ordering::Release);
    }

    fn publish_durable(&self, lsn: Lsn) {
        self.durable.store(lsn.0, Ordering::Release);
    }

    /// While streaming, the session's own fsync and the fsync thread's may
    /// finish in either order: the reported flush position never goes
    /// back.
    fn raise_durable(&self, lsn: Lsn) {
        self.durable.fetch_max(lsn.0, Ordering::AcqRel);
    }

    fn lock_replies(&self) -> MutexGuard<'_, Option<Replies>> {
        self.replies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a status update says now; read under the replies' lock, after
    /// the session published its positions, so updates never go back.
    fn positions(&self) -> Positions {
        Positions {
            write: self.written(),
            flush: Lsn(self.durable.load(Ordering::Acquire)),
            apply: self.apply(),
        }
    }

    /// The connected session's replies, run under their lock.
    fn with_replies<R>(
        &self,
        f: impl FnOnce(&mut Replies, Positions) -> Result<R, ReplyError>,
    ) -> Result<R, ReplyError> {
        let mut replies = self.lock_replies();
        let r = replies.as_mut().ok_or(ReplyError::NotConnected)?;
        f(r, self.positions())
    }

    /// A flagged keepalive asked for replay progress up to `wal_end`.
    fn request_apply(&self, wal_end: Lsn) {
        if let Some(r) = self.lock_replies().as_mut() {
            r.request_apply(wal_end);
        }
    }

    /// Redo published a new replay position: report it upstream from the
    /// calling thread (see `Replies::report_apply`). Returns whether
    /// progress was left unreported for `APPLY_REPORT_SPACING`: the
    /// caller calls again after it. A failed send is left to the session,
    /// which finds the connection broken on its next read.
    pub fn replay_published(&self) -> bool {
        let mut replies = self.lock_replies();
        let Some(r) = replies.as_mut() else {
            return false;
        };
        match r.report_apply(self.positions()) {
            Ok(owed) => owed,
            Err(e) => {
                tracing::debug!("could not report the replay position: {e}");
                false
            }
        }
    }

    fn publish_flushed(&self, tli: TimelineId, lsn: Lsn) {
        let point = FlushPoint { tli, lsn };
        self.flushed
            .update(|f| std::mem::replace(f, point) != point);
    }
}

/// A new start after a timeline end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RestartOrder {
    /// The session id events carry from now on.
    session: u64,
    /// Where START_REPLICATION starts (rounded down to a segment start).
    from: Lsn,
    /// The timeline to stream.
    tli: TimelineId,
}

/// The restart handshake: `waiting` and `order` change under one lock, so
/// a restart is accepted only if the session will take it.
#[derive(Debug, Default)]
struct RestartSlot {
    /// The session is in WAITING and will take an order.
    waiting: bool,
    /// The order given by `restart`, taken by the session.
    order: Option<RestartOrder>,
}

/// Flags between the handle and the session thread.
#[derive(Debug)]
struct Control {
    /// Wakes the session thread (stop, restart): a token, coalesced.
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    /// `stop()` was called.
    stop: AtomicBool,
    /// Stopped for a promotion ([`ReceiverHandle::stop_writing`]): the
    /// session reports `WalReceiverStopped` as soon as its last write is
    /// done, and makes it durable and leaves the upstream after that.
    early: AtomicBool,
    /// That early `WalReceiverStopped` was queued: nothing more is.
    reported: AtomicBool,
    /// The handle was dropped: end without reporting.
    dropped: AtomicBool,
    restart: Mutex<RestartSlot>,
    /// The session's current id (changes on restart).
    session: AtomicU64,
    /// The connection, to shut it down if the thread is stuck in IO.
    socket: Mutex<Option<TcpStream>>,
}

impl Control {
    fn wake(&self) {
        let _ = self.wake_tx.try_send(());
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn lock_restart(&self) -> MutexGuard<'_, RestartSlot> {
        self.restart.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake a session blocked reading its upstream: the read side is shut
    /// (the write side stays open for the goodbye); the session then
    /// finds `stop` set, flushes and leaves.
    fn interrupt_read(&self) {
        self.shutdown_socket_side(std::net::Shutdown::Read);
    }

    fn shutdown_socket(&self) {
        self.shutdown_socket_side(std::net::Shutdown::Both);
    }

    fn shutdown_socket_side(&self, how: std::net::Shutdown) {
        if let Some(s) = self
            .socket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = s.shutdown(how);
        }
    }
}

/// Why a session could not start or restart.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// An earlier write or fsync of received WAL failed: no session starts again (never retried).
    #[error("walreceiver stopped after an IO failure (restart the node): {0}")]
    Poisoned(Arc<SegmentError>),
    /// The session's thread could not be started.
    #[error("could not start the walreceiver thread: {0}")]
    Spawn(std::io::Error),
    /// A restart was ordered while the session was not waiting; holds its state's name.
    #[error("the walreceiver session is not waiting for a new start (state {0})")]
    NotWaiting(&'static str),
}

/// What happened to an event handed to the runtime's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Queued,
    /// Not queued: the queue was full (non-blocking send) or the wait
    /// was cut short (stopping, or the bound passed).
    Full,
    /// The runtime dropped its receiver.
    Gone,
}

/// Sends events to the runtime's bounded queue; `true` = wait (bounded).
type Emit = Arc<dyn Fn(ReceiverEvent, &Control, bool) -> Sent + Send + Sync>;

/// Start a walreceiver session. Events go to `events` (converted into the
/// runtime's event type).
pub fn start<E>(
    session: u64,
    config: ReceiverConfig,
    events: impl Into<EventSender<E>>,
    shared: Arc<ReceiverShared>,
) -> Result<ReceiverHandle, ReceiverError>
where
    E: From<ReceiverEvent> + Send + 'static,
{
    if let Some(f) = shared.io_failure() {
        return Err(ReceiverError::Poisoned(f));
    }
    let (wake_tx, wake_rx) = bounded(1);
    let control = Arc::new(Control {
        wake_tx,
        wake_rx,
        stop: AtomicBool::new(false),
        early: AtomicBool::new(false),
        reported: AtomicBool::new(false),
        dropped: AtomicBool::new(false),
        restart: Mutex::new(RestartSlot::default()),
        session: AtomicU64::new(session),
        socket: Mutex::new(None),
    });
    let events = events.into();
    let emit: Emit = Arc::new(move |ev, control, wait| send_event(&events, ev, control, wait));
    let (done_tx, done_rx) = bounded(1);
    let (exited_tx, exited_rx) = bounded::<()>(0);
    *shared.lock_current() = Some(Arc::clone(&control));
    shared.set_state(ReceiverState::Starting);
    let thread = {
        let control = Arc::clone(&control);
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("walreceiver-{session}"))
            .spawn(move || {
                // Dropped when the thread ends: the handle's signal.
                let _exited = exited_tx;
                session::run(config, control, shared, emit, done_tx)
            })
            .map_err(ReceiverError::Spawn)?
    };
    Ok(ReceiverHandle {
        control,
        shared,
        thread: Some(thread),
        done_rx,
        exited_rx,
        stopped: None,
    })
}

/// Queue one event. Without `wait`, only if there is room. With it, wait
/// at most [`EVENT_SEND_BOUND`]; while the session is being stopped,
/// anything but the final report is dropped instead of waiting (the
/// runtime may be blocked in `stop()`), and everything once the handle is
/// dropped.
fn send_event<E: From<ReceiverEvent>>(
    events: &EventSender<E>,
    ev: ReceiverEvent,
    c: &Control,
    wait: bool,
) -> Sent {
    let last = matches!(ev, ReceiverEvent::WalReceiverStopped { .. });
    if !wait {
        return match events.try_send(E::from(ev)) {
            Ok(()) => Sent::Queued,
            Err(crossbeam_channel::TrySendError::Full(_)) => Sent::Full,
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Sent::Gone,
        };
    }
    let deadline = Instant::now() + EVENT_SEND_BOUND;
    let mut msg = E::from(ev);
    loop {
        match events.send_timeout(msg, Duration::from_millis(100)) {
            Ok(()) => return Sent::Queued,
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return Sent::Gone,
            Err(crossbeam_channel::SendTimeoutError::Timeout(m)) => {
                let dropped = c.dropped.load(Ordering::Acquire);
                if dropped || (c.stopping() && !last) || Instant::now() >= deadline {
                    tracing::warn!(
                        "walreceiver event dropped: the startup process is not reading its queue"
                    );
                    return Sent::Full;
                }
                msg = m;
            }
        }
    }
}

/// The running session.
pub struct ReceiverHandle {
    control: Arc<Control>,
    shared: Arc<ReceiverShared>,
    /// The session thread, joined (bounded) on drop.
    thread: Option<JoinHandle<()>>,
    /// The thread reports the flushed position when it has left the upstream.
    done_rx: Receiver<Lsn>,
    /// Disconnected when the thread ends.
    exited_rx: Receiver<()>,
    /// What `stop()` returned (it is idempotent).
    stopped: Option<Lsn>,
}

impl ReceiverHandle {
    /// The session's current id (the last `restart`'s, or `start`'s).
    pub fn session(&self) -> u64 {
        self.control.session.load(Ordering::Acquire)
    }

    /// Waiting after a timeline end: `restart` will be accepted.
    pub fn is_waiting(&self) -> bool {
        self.control.lock_restart().waiting
    }

    /// The thread has ended (after `stop`, or on its own after `StreamLost`
    /// once the handle is stopped or dropped).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stream again on the same connection from `from` (rounded down to
    /// its segment start) on `tli`, as session `session`. Only while
    /// [`is_waiting`](Self::is_waiting); otherwise start a new session.
    pub fn restart(&self, session: u64, from: Lsn, tli: TimelineId) -> Result<(), ReceiverError> {
        let mut slot = self.control.lock_restart();
        if !slot.waiting {
            return Err(ReceiverError::NotWaiting(self.shared.state().as_str()));
        }
        slot.order = Some(RestartOrder { session, from, tli });
        slot.waiting = false;
        drop(slot);
        self.control.wake();
        Ok(())
    }

    /// Stop the session for a promotion, without waiting: it stops
    /// receiving and, as soon as its last write is done (the end of the
    /// received WAL is then fixed), queues `WalReceiverStopped` with the
    /// position it would have after its fsync (see
    /// `Session::report_writes_ended`). The fsync of what it wrote, its
    /// goodbye to the upstream and the thread's end follow on its own
    /// thread, beside the promotion's next steps; [`ReceiverHandle::finish`]
    /// waits for them.
    ///
    /// Where this differs from PostgreSQL: its startup process
    /// (`FinishWalRecovery` → `XLogShutdownWalRcv` → `ShutdownWalRcv`)
    /// signals the walreceiver and sleeps until it is `WALRCV_STOPPED`,
    /// which its exit handler `WalRcvDie` sets after the last
    /// `XLogWalRcvFlush` (an fsync) and before the disconnect: the fsync is
    /// on the promotion's path there. Here only the last write is. Why
    /// that is safe: what the promotion reads next (the last records, the
    /// copy of the switch point's segment) it reads through the page
    /// cache, which holds every byte written; the fsync matters only for
    /// what a crash keeps, and the promotion waits for it (`finish`, in
    /// the history stage) before `standby.signal` is removed and before
    /// any WAL of the new timeline is written (`promote::DataDirStep`).
    /// Nothing is reported flushed (upstream, to cascading walsenders)
    /// before the fsync either.
    pub fn stop_writing(&mut self) {
        self.control.early.store(true, Ordering::Release);
        self.control.stop.store(true, Ordering::Release);
        self.control.wake();
        self.control.interrupt_read();
    }

    /// After [`ReceiverHandle::stop_writing`] (or any stop): wait
    /// (bounded, as `stop`) until the session has fsynced what it wrote
    /// and left the upstream, and end its thread. `Err` if a write or
    /// fsync of received WAL failed: nothing retries it.
    pub fn finish(mut self) -> Result<Lsn, Arc<SegmentError>> {
        let flushed = self.stop();
        let failure = self.shared.io_failure();
        // Joins the thread (bounded): it ends right after its report.
        drop(self);
        match failure {
            Some(e) => Err(e),
            None => Ok(flushed),
        }
    }

    /// Whether [`ReceiverHandle::stop_writing`] was called.
    pub fn stopping_early(&self) -> bool {
        self.control.early.load(Ordering::Acquire)
    }

    /// Stop the session: it stops receiving, flushes what it wrote, leaves
    /// the upstream and queues `WalReceiverStopped { flushed }`. Bounded by
    /// [`STOP_BOUND`] (then the socket is shut down and it gets as long
    /// again). Returns the flushed position.
    pub fn stop(&mut self) -> Lsn {
        if let Some(f) = self.stopped {
            return f;
        }
        self.control.stop.store(true, Ordering::Release);
        self.control.wake();
        self.control.interrupt_read();
        let flushed = match self.done_rx.recv_timeout(STOP_BOUND) {
            Ok(f) => f,
            Err(_) => {
                tracing::warn!(
                    "walreceiver did not stop within {STOP_BOUND:?}; closing its connection"
                );
                self.control.shutdown_socket();
                self.done_rx
                    .recv_timeout(STOP_BOUND)
                    .unwrap_or_else(|_| self.shared.flushed().1)
            }
        };
        self.stopped = Some(flushed);
        flushed
    }
}

impl Drop for ReceiverHandle {
    fn drop(&mut self) {
        if self.stopped.is_none() {
            // Not stopped: end without the final report.
            self.control.dropped.store(true, Ordering::Release);
            self.control.stop.store(true, Ordering::Release);
            self.control.wake();
            self.control.interrupt_read();
            if self.done_rx.recv_timeout(STOP_BOUND).is_err() {
                self.control.shutdown_socket();
            }
        }
        self.control.wake();
        if let Some(t) = self.thread.take() {
            // Nothing is ever sent: this returns when the thread ends.
            let ended = self.exited_rx.recv_timeout(STOP_BOUND)
                == Err(crossbeam_channel::RecvTimeoutError::Disconnected);
            if ended {
                let _ = t.join();
            } else {
                tracing::warn!("walreceiver thread still running after {STOP_BOUND:?}; detached");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::states::recovery::{Event, SessionId};

    #[test]
    fn events_convert_to_the_machine_s_events() {
        let s = SessionId(9);
        let cases = [
            (
                ReceiverEvent::StreamConnected {
                    session: 9,
                    upstream_tli: TimelineId(2),
                    upstream_flush: Lsn(5),
                },
                Event::StreamConnected {
                    session: s,
                    upstream_tli: TimelineId(2),
                    upstream_flush: Lsn(5),
                },
            ),
            (
                ReceiverEvent::TimelineEnded {
                    session: 9,
                    tli: TimelineId(1),
                    next_tli: TimelineId(2),
                    switch_point: Lsn(7),
                },
                Event::TimelineEnded {
                    session: s,
                    tli: TimelineId(1),
                    next_tli: TimelineId(2),
                    switch_point: Lsn(7),
                },
            ),
            (
                ReceiverEvent::WalReceiverStopped {
                    session: 9,
                    flushed: Lsn(3),
                },
                Event::WalReceiverStopped {
                    session: s,
                    flushed: Lsn(3),
                },
            ),
            (
                ReceiverEvent::StreamLost {
                    session: 9,
                    reason: "x".into(),
                },
                Event::StreamLost {
                    session: s,
                    reason: "x".into(),
                },
            ),
        ];
        for (ours, theirs) in cases {
            assert_eq!(Event::from(ours), theirs);
        }
    }
}
