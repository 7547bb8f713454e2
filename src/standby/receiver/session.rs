//! One walreceiver session's thread: connect and check the upstream, fetch
//! history files, stream into segment files (fsynced by the session's
//! fsync thread, see `flusher`), answer with status updates, wait after a
//! timeline end, and report.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Sender};

use super::flusher::{self, Durability, FlushRequest, Flusher};
use super::replies::Replies;
use super::{
    Control, Emit, HeldWal, ReceiverConfig, ReceiverEvent, ReceiverShared, ReceiverState,
    RestartOrder,
};
use crate::replication::client::{
    ConnInfo, IdentifySystem, ReplicationClient, StartOutcome, StreamEvent,
};
use crate::replication::server::{
    format_instance_id, parse_history_id_parameter, APPLY_FEEDBACK_ON_REQUEST,
    APPLY_FEEDBACK_PARAMETER, FLUSH_HINT_PARAMETER, HISTORY_ID_PARAMETER,
    RECEIVE_UNFLUSHED_PARAMETER,
};
use crate::standby::confirmed::ConfirmedFlush;
use crate::status::links::{resolve, STATUS_URL_STARTUP_PARAMETER};
use crate::wal::timeline::{
    compare_history_ids, format_history_id, history_ids, history_path, newest_timeline,
    read_history_text,
};
use crate::wal::{write_history_text, CompletedMark, SegmentError, SegmentWriter};
use crate::{Lsn, TimelineId};

/// Most bytes received before an fsync is asked for, even if the socket
/// still has data.
const MAX_BATCH_BYTES: u64 = 16 << 20;
/// Longest a batch gathers *new* messages before its fsync, even if the
/// socket still has data. Replay only applies flushed WAL, so under a
/// steady stream (which rarely drains the socket) a byte bound alone let a
/// batch gather for seconds at ~10 MB/s: this bounds the replay lag the
/// batching adds. What was already queued when the batch began (what
/// arrived during the last fsync) is always written in it, however long
/// that takes: cutting it by time made one slow fsync (tens of ms on a
/// busy disk) cost several more, each adding its own wait, and replay
/// fell behind in bursts.
const MAX_BATCH_TIME: Duration = Duration::from_millis(2);
/// Longest single wait; tokens wake the thread for stop, restart and
/// replay progress, this only bounds the timers.
const MAX_NAP: Duration = Duration::from_secs(1);

/// How a session ended.
enum End {
    /// Asked to stop (or the runtime is gone).
    Stopped,
    Lost(String),
}

/// A history file's text indented for an error message.
fn indent(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("    {}\n", l.replace('\t', "  ")))
        .collect()
}

fn lost(reason: impl Into<String>) -> End {
    End::Lost(reason.into())
}

/// How one START_REPLICATION ended.
enum StreamEnd {
    Stop,
    TimelineEnded {
        next_tli: TimelineId,
        switch_point: Lsn,
    },
}

/// The thread's body.
pub(super) fn run(
    cfg: ReceiverConfig,
    control: Arc<Control>,
    shared: Arc<ReceiverShared>,
    emit: Emit,
    done_tx: Sender<Lsn>,
) {
    // Not the conninfo: it may carry a password.
    let span = tracing::info_span!(
        "walreceiver",
        session = control.session.load(Ordering::Acquire),
        tli = cfg.tli.0,
        start = %cfg.start,
    );
    let _in_session = span.enter();
    let mut s = Session::new(cfg, control, shared, emit);
    let mut end = s.main();
    if s.control.stopping() {
        // Whatever cut the session short, it was asked to stop: the
        // runtime expects WalReceiverStopped, not StreamLost.
        end = End::Stopped;
        s.report_writes_ended();
    }
    let flushed = s.finish(&end);
    let control = Arc::clone(&s.control);
    let dropped = || control.dropped.load(Ordering::Acquire);
    if let End::Lost(reason) = &end {
        tracing::warn!(session = s.session, "walreceiver ended: {reason}");
        if !dropped() {
            s.emit_now(ReceiverEvent::StreamLost {
                session: s.session,
                reason: reason.clone(),
            });
        }
    }
    s.shared.set_state(ReceiverState::Stopped);
    {
        let mut cur = s.shared.lock_current();
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, &s.control)) {
            *cur = None;
        }
    }
    let _ = done_tx.try_send(flushed);
    // Wait for the handle: stop() wants the final report, drop does not.
    while !s.control.stopping() && !dropped() {
        let _ = s.control.wake_rx.recv_timeout(MAX_NAP);
    }
    if !dropped() && !s.control.reported.load(Ordering::Acquire) {
        s.emit_now(ReceiverEvent::WalReceiverStopped {
            session: s.session,
            flushed,
        });
    }
}

struct Session {
    cfg: ReceiverConfig,
    control: Arc<Control>,
    shared: Arc<ReceiverShared>,
    /// Queues events for the startup process.
    emit: Emit,
    /// The current session id (a restart changes it).
    session: u64,
    /// Where the current START_REPLICATION started (a segment start).
    start: Lsn,
    /// The timeline being streamed.
    tli: TimelineId,
    /// Writes received bytes into segment files of `tli`.
    writer: SegmentWriter,
    /// The upstream connection (kept across a timeline end).
    client: Option<ReplicationClient>,
    /// When hot standby feedback was last sent.
    last_feedback: Option<Instant>,
    /// Last time anything arrived; the wal_receiver_timeout clock.
    last_recv: Instant,
    /// The half-timeout ping was sent for this silence.
    pinged: bool,
    /// The flush position last reported in WalFlushed.
    reported_flush: Lsn,
    /// A WalFlushed the full event queue did not take yet.
    pending_flush: Option<(TimelineId, Lsn)>,
    /// The confirmed-flush file and the published flush position, moved
    /// after each fsync by whichever thread made it. Its `confirmed` is
    /// `None` if the file could not be written: the upstream is then
    /// asked for flushed WAL only, as PostgreSQL's walreceiver does.
    durability: Arc<Mutex<Durability>>,
    /// The fsync thread while streaming.
    flusher: Option<Flusher>,
    /// The upstream agreed to say in keepalives when fsyncs may be spaced.
    flush_hint: bool,
    /// What its last keepalive said: no commit there may wait for this
    /// standby's flush (or write) position.
    deferrable: bool,
    /// What its last keepalive said: a commit there waited lately for
    /// this standby's written position alone (`remote_write`).
    write_wanted: bool,
    /// What the last flush request covered: the written position and the
    /// upstream's told flush position (which limits what is exposed).
    requested: (Lsn, Lsn),
}

impl Session {
    fn new(
        cfg: ReceiverConfig,
        control: Arc<Control>,
        shared: Arc<ReceiverShared>,
        emit: Emit,
    ) -> Session {
        let seg = cfg.segdir.seg_size();
        let start = cfg.start.segment_start(seg);
        let mark = if cfg.archive_always {
            CompletedMark::Ready
        } else {
            CompletedMark::Done
        };
        let writer = SegmentWriter::new(Arc::clone(&cfg.segdir), cfg.tli, start, mark);
        // This session's stream starts over: nothing older may be mixed in.
        shared.buffer.clear();
        shared.publish_exposed_early(Lsn::INVALID);
        let published_flush = publish_start(&shared, cfg.tli, start);
        let confirmed = match ConfirmedFlush::open(&cfg.segdir, cfg.tli, start) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("could not keep the upstream's flush position on disk ({e}); streaming only WAL the upstream has flushed");
                None
            }
        };
        let durability = Durability {
            confirmed,
            published_flush,
            start,
        };
        Session {
            durability: Arc::new(Mutex::new(durability)),
            flusher: None,
            flush_hint: false,
            deferrable: false,
            write_wanted: false,
            requested: (start, Lsn::INVALID),
            session: control.session.load(Ordering::Acquire),
            tli: cfg.tli,
            start,
            writer,
            cfg,
            control,
            shared,
            emit,
            client: None,
            last_feedback: None,
            last_recv: Instant::now(),
            pinged: false,
            reported_flush: start,
            pending_flush: None,
        }
    }

    fn main(&mut self) -> End {
        if let Err(end) = self.connect() {
            return end;
        }
        loop {
            let outcome = self.identify().and_then(|id| {
                self.check_history_ids(id.timeline)?;
                self.fetch_histories(id.timeline)?;
                self.start_streaming(&id)
            });
            match outcome {
                Ok(StreamEnd::Stop) => return End::Stopped,
                Err(end) => return end,
                Ok(StreamEnd::TimelineEnded {
                    next_tli,
                    switch_point,
                }) => {
                    if let Err(end) = self.end_of_timeline(next_tli, switch_point) {
                        return end;
                    }
                }
            }
        }
    }

    fn client(&mut self) -> Result<&mut ReplicationClient, End> {
        self.client.as_mut().ok_or_else(|| lost("not connected"))
    }

    fn connect(&mut self) -> Result<(), End> {
        self.back_off();
        if self.control.stopping() {
            return Err(End::Stopped);
        }
        let info = ConnInfo::parse(&self.cfg.conninfo)
            .map_err(|e| lost(format!("invalid primary_conninfo: {e}")))?;
        // We honour the flush position the upstream tells (`walEnd`): a
        // walrep upstream may send WAL before it flushes it.
        let extra: Vec<(String, String)> = self
            .cfg
            .status_url
            .iter()
            .map(|u| (STATUS_URL_STARTUP_PARAMETER.to_string(), u.clone()))
            .chain(
                (self.cfg.receive_unflushed && flusher::lock(&self.durability).confirmed.is_some())
                    .then(|| (RECEIVE_UNFLUSHED_PARAMETER.to_string(), "on".to_string())),
            )
            .chain(std::iter::once((
                APPLY_FEEDBACK_PARAMETER.to_string(),
                APPLY_FEEDBACK_ON_REQUEST.to_string(),
            )))
            .chain(std::iter::once((
                FLUSH_HINT_PARAMETER.to_string(),
                "on".to_string(),
            )))
            .collect();
        let client = self.connect_interruptibly(info.clone(), extra)?;
        // Only an upstream that echoes the parameter flags its keepalives;
        // any other one (PostgreSQL) is told every replay progress.
        let apply_on_request =
            client.parameter(APPLY_FEEDBACK_PARAMETER) == Some(APPLY_FEEDBACK_ON_REQUEST);
        // Only an upstream that echoes it says when fsyncs may be spaced;
        // with any other one (PostgreSQL) every fsync starts at once.
        self.flush_hint = client.parameter(FLUSH_HINT_PARAMETER) == Some("on");
        *self.shared.lock_replies() = Some(Replies::new(
            client.status_sender(),
            self.cfg.status_interval,
            apply_on_request,
        ));
        *self
            .control
            .socket
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = client.socket_handle().ok();
        if client.instance_id() == Some(self.cfg.instance_id) {
            return Err(lost(format!(
                "primary_conninfo points at this node itself (instance {}): a node cannot stream from itself",
                format_instance_id(self.cfg.instance_id)
            )));
        }
        let chain: Vec<u64> = client
            .instance_id()
            .into_iter()
            .chain(client.upstream_chain())
            .collect();
        if let Some(at) = chain.iter().position(|id| *id == self.cfg.instance_id) {
            return Err(lost(loop_message(self.cfg.instance_id, &chain[..at])));
        }
        if self.control.stopping() {
            return Err(End::Stopped);
        }
        self.shared.set_upstream(
            Some(super::Upstream {
                host: info.host.clone(),
                port: info.port,
                application_name: info.application_name.clone().unwrap_or_default(),
                instance_id: client.instance_id(),
                status_url: client.status_url().map(|u| resolve(&u, &info.host)),
            }),
            chain,
        );
        self.client = Some(client);
        Ok(())
    }

    /// Connect on a short-lived thread and wait for it here, so that a
    /// stop is obeyed at once: a connect to an unreachable upstream (a
    /// partition drops the SYN) blocks for `connect_timeout`, and a
    /// promotion waiting on this session's stop would wait as long. On a
    /// stop the thread is left to finish its bounded connect alone and its
    /// connection is dropped.
    fn connect_interruptibly(
        &self,
        info: ConnInfo,
        extra: Vec<(String, String)>,
    ) -> Result<ReplicationClient, End> {
        let timeout = info.connect_timeout.unwrap_or(self.cfg.connect_timeout);
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("walreceiver-connect".into())
            .spawn(move || {
                // Capacity 1, one send: never blocks, even if nobody waits.
                let _ = tx.try_send(ReplicationClient::connect_with(&info, timeout, &extra));
            })
            .map_err(|e| lost(format!("could not start a connect thread: {e}")))?;
        // The connect's own bounds (TCP, TLS, startup) each stop at
        // `timeout`; this one only guards against a thread that never ends.
        let deadline = Instant::now() + timeout * 3 + Duration::from_secs(1);
        let wake = self.control.wake_rx.clone();
        loop {
            if self.control.stopping() || self.control.dropped.load(Ordering::Acquire) {
                return Err(End::Stopped);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(lost(
                    "could not connect to the primary server: no answer in time",
                ));
            }
            select! {
                recv(rx) -> r => {
                    return match r {
                        Ok(Ok(client)) => Ok(client),
                        Ok(Err(e)) => Err(lost(format!("could not connect to the primary server: {e}"))),
                        Err(_) => Err(lost("could not connect to the primary server: the connect thread ended")),
                    };
                }
                recv(wake) -> _ => {}
                default(left) => {}
            }
        }
    }

    /// Wait out the connect back-off; a stop or drop ends it early.
    fn back_off(&self) {
        let until = Instant::now() + self.cfg.connect_delay;
        while !self.control.stopping() && !self.control.dropped.load(Ordering::Acquire) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let _ = self.control.wake_rx.recv_timeout(left);
        }
    }

    /// IDENTIFY_SYSTEM: same system, timeline not behind ours.
    fn identify(&mut self) -> Result<IdentifySystem, End> {
        let id = self.client()?.identify_system().map_err(|e| {
            lost(format!(
                "could not receive database system identifier and timeline ID from the primary server: {e}"
            ))
        })?;
        if id.system_id != self.cfg.system_id {
            return Err(lost(format!(
                "database system identifier differs between the primary and standby: the primary's identifier is {}, the standby's identifier is {}",
                id.system_id, self.cfg.system_id
            )));
        }
        if id.timeline < self.tli {
            return Err(lost(format!(
                "highest timeline {} of the primary is behind recovery timeline {}",
                id.timeline.0, self.tli.0
            )));
        }
        Ok(id)
    }

    /// Refuse an upstream whose history names a timeline we know with a
    /// different history id: it reached that timeline number by another
    /// promotion, and its WAL past the fork is not ours to follow.
    fn check_history_ids(&mut self, upstream: TimelineId) -> Result<(), End> {
        let wal_dir = self.cfg.segdir.path().to_path_buf();
        let known = newest_timeline(&wal_dir, self.tli);
        let Ok(Some(local)) = read_history_text(&wal_dir, known) else {
            return Ok(());
        };
        let ours = history_ids(&local);
        if upstream.0 < 2 || ours.is_empty() {
            return Ok(());
        }
        // The id announced at connection: the same id for the upstream's
        // timeline means the same history file, ancestors included.
        let announced = self
            .client()?
            .parameter(HISTORY_ID_PARAMETER)
            .and_then(parse_history_id_parameter);
        if let Some((tli, id)) = announced {
            if tli == upstream && ours.get(&tli) == Some(&id) {
                return Ok(());
            }
        }
        let (_, content) = self.client()?.timeline_history(upstream).map_err(|e| {
            lost(format!(
                "could not fetch timeline history file for timeline {} from the primary server: {e}",
                upstream.0
            ))
        })?;
        let theirs = String::from_utf8_lossy(&content);
        compare_history_ids(&local, &theirs).map_err(|m| {
            lost(format!(
                "the primary server's timeline {} is not the one this standby knows: history id {} here, {} on the primary; the histories fork at {}\n  this standby's history (timeline {}):\n{}  the primary's history (timeline {}):\n{}",
                m.tli.0,
                format_history_id(m.local_id),
                format_history_id(m.upstream_id),
                m.fork,
                known.0,
                indent(&local),
                upstream.0,
                indent(&theirs),
            ))
        })
    }

    /// TIMELINE_HISTORY for every timeline from ours to the upstream's
    /// whose history file `wal/` lacks (WalRcvFetchTimeLineHistoryFiles).
    fn fetch_histories(&mut self, upstream: TimelineId) -> Result<(), End> {
        let wal_dir = self.cfg.segdir.path().to_path_buf();
        for t in self.tli.0.max(2)..=upstream.0 {
            let tli = TimelineId(t);
            if history_path(&wal_dir, tli).exists() {
                continue;
            }
            if self.control.stopping() {
                return Err(End::Stopped);
            }
            tracing::info!("fetching timeline history file for timeline {t} from primary server");
            let (name, content) = self.client()?.timeline_history(tli).map_err(|e| {
                lost(format!(
                    "could not fetch timeline history file for timeline {t} from the primary server: {e}"
                ))
            })?;
            let text = String::from_utf8(content)
                .map_err(|_| lost(format!("timeline history file {name} is not UTF-8")))?;
            let storage = self.cfg.segdir.storage();
            let history = write_history_text(&**storage, &wal_dir, tli, &text)
                .map_err(|e| lost(format!("could not store timeline history file {name}: {e}")))?;
            let marked = if self.cfg.archive_always {
                self.cfg.segdir.mark_ready(&name)
            } else {
                self.cfg.segdir.mark_done(&name)
            };
            marked.map_err(|e| lost(format!("could not mark {name}: {e}")))?;
            self.emit_now(ReceiverEvent::HistoryReceived {
                session: self.session,
                tli,
                history,
            });
        }
        Ok(())
    }

    fn start_streaming(&mut self, id: &IdentifySystem) -> Result<StreamEnd, End> {
        let (slot, start, tli) = (self.cfg.slot_name.clone(), self.start, self.tli);
        let outcome = self
            .client()?
            .start_replication(slot.as_deref(), start, Some(tli))
            .map_err(|e| lost(format!("could not start WAL streaming: {e}")))?;
        match outcome {
            StartOutcome::TimelineEnded {
                next_tli,
                next_start,
            } => {
                tracing::info!(
                    "primary server contains no more WAL on requested timeline {}",
                    tli.0
                );
                Ok(StreamEnd::TimelineEnded {
                    next_tli,
                    switch_point: next_start,
                })
            }
            StartOutcome::Streaming => {
                tracing::info!(
                    session = self.session,
                    "started streaming WAL from primary at {start} on timeline {}",
                    tli.0
                );
                self.shared
                    .upstream_flush
                    .store(id.xlogpos.0, Ordering::Release);
                if id.timeline == tli {
                    self.truncate_held(id.xlogpos)?;
                }
                self.emit_now(ReceiverEvent::StreamConnected {
                    session: self.session,
                    upstream_tli: id.timeline,
                    upstream_flush: id.xlogpos,
                });
                self.stream()
            }
        }
    }

    /// One START_REPLICATION, read on this thread; the connection stays
    /// here (in command mode again after a timeline end).
    fn stream(&mut self) -> Result<StreamEnd, End> {
        let mut client = self.client.take().ok_or_else(|| lost("not connected"))?;
        let result = self.receive_loop(&mut client);
        self.client = Some(client);
        result
    }

    /// The receive loop with its fsync thread; the thread is stopped
    /// (after the fsync in progress) however the loop ends, and what it
    /// did not fsync is left to the flush at the timeline's or session's
    /// end.
    fn receive_loop(&mut self, client: &mut ReplicationClient) -> Result<StreamEnd, End> {
        self.shared.publish_durable(self.writer.flushed());
        self.requested = (self.writer.written(), self.shared.upstream_flush());
        let flusher = Flusher::start(
            Arc::clone(&self.shared),
            Arc::clone(&self.durability),
            Arc::clone(&self.cfg.segdir),
            Arc::clone(&self.control),
        )
        .map_err(|e| {
            lost(format!(
                "could not start the walreceiver's fsync thread: {e}"
            ))
        })?;
        self.flusher = Some(flusher);
        // Until the upstream says otherwise, fsyncs start at once (on the
        // thread: nothing is known of what commits wait for).
        self.deferrable = false;
        self.write_wanted = true;
        self.shared.write_reports.store(false, Ordering::Release);
        let result = self.stream_batches(client);
        if self.control.stopping() {
            // Before waiting for the fsync thread's fsync in progress.
            self.report_writes_ended();
        }
        if let Some(f) = self.flusher.take() {
            tracing::debug!(fsyncs = f.fsyncs(), "walreceiver: fsync thread stopped");
        }
        result
    }

    /// Read the upstream with the wait bounded by the next timer; write
    /// each drained batch, let redo apply what the upstream flushed, and
    /// hand the fsync to the fsync thread.
    fn stream_batches(&mut self, client: &mut ReplicationClient) -> Result<StreamEnd, End> {
        self.shared.set_state(ReceiverState::Streaming);
        self.shared.streamed_sessions.fetch_add(1, Ordering::AcqRel);
        self.last_recv = Instant::now();
        self.pinged = false;
        self.send_status(true, false)?;
        self.send_feedback(true)?;
        loop {
            self.check_flusher()?;
            if self.control.stopping() {
                return Ok(StreamEnd::Stop);
            }
            self.deliver_pending_flush()?;
            let first = match client.recv(self.next_wakeup()) {
                Ok(StreamEvent::Timeout) => {
                    self.on_tick()?;
                    continue;
                }
                Ok(ev) => ev,
                Err(e) => {
                    // The fsync thread shut the read side after a failure.
                    self.check_flusher()?;
                    // stop() shut the read side to wake this thread.
                    if self.control.stopping() {
                        return Ok(StreamEnd::Stop);
                    }
                    return Err(lost(format!("could not receive data from WAL stream: {e}")));
                }
            };
            let (end, reply_requested) = self.receive_batch(first, client)?;
            self.check_flusher()?;
            if self.fsync_inline() {
                // Redo may apply what the primary flushed before this
                // node's own fsync (see `expose_written`): the startup
                // thread does, beside this fsync; this thread applies what
                // is left only after the status a commit at `on` waits for.
                self.expose_written(false)?;
                self.flush_inline(reply_requested)?;
                self.apply_inline();
                self.report_apply()?;
                if let Some(end) = end {
                    return Ok(end);
                }
                continue;
            }
            if end.is_none()
                && self.flush_hint
                && !self.deferrable
                && self.writer.written() > self.requested.0
            {
                // Commits at `remote_write` wait for the written position
                // only: report it first, right after the write, before
                // waking redo and the fsync thread (the flush position
                // follows the fsync in a second status update). Not after
                // a timeline end: the COPY is over, and a status update
                // now would reach the upstream as a stray message between
                // commands.
                self.send_status(false, false)?;
            }
            self.expose_written(true)?;
            let asked = self.request_flush(reply_requested || end.is_some());
            if reply_requested && !asked {
                // Nothing new to fsync: answer now.
                self.send_status(true, false)?;
            }
            // A flagged keepalive may ask for replay progress already made
            // (redo reports only what it publishes afterwards).
            self.report_apply()?;
            if let Some(end) = end {
                return Ok(end);
            }
            if self.next_wakeup() <= Duration::from_millis(1) {
                // A steady stream never lets the read time out.
                self.on_tick()?;
            }
        }
    }

    /// Write `first` and whatever else can be read without waiting
    /// (bounded in bytes and time); returns a timeline end and whether the
    /// upstream asked for a reply.
    fn receive_batch(
        &mut self,
        first: StreamEvent,
        client: &mut ReplicationClient,
    ) -> Result<(Option<StreamEnd>, bool), End> {
        let mut bytes = 0u64;
        let mut reply_requested = false;
        let started = Instant::now();
        // What could be read when the batch began (what arrived during the
        // last fsync): all of it goes into this batch.
        let buffered = client.buffered_bytes() as u64;
        let queued = client.readable_bytes() as u64;
        // The socket held nothing more when the batch began: the batch is
        // what the last read brought in (one commit's XLogData and
        // keepalive, read together), and it ends when that is used up,
        // without asking the socket again. What arrived since is the next
        // batch's.
        let socket_was_empty = queued <= buffered;
        let read_bound = self.cfg.timeout.unwrap_or(self.cfg.connect_timeout);
        let mut ev = first;
        loop {
            match ev {
                StreamEvent::XLogData {
                    start,
                    wal_end,
                    data,
                    ..
                } => {
                    self.write(start, &data)?;
                    self.note_upstream(wal_end);
                    bytes += data.len() as u64;
                }
                StreamEvent::Keepalive {
                    wal_end,
                    reply_requested: r,
                    apply_feedback,
                    flush_deferrable,
                    write_wanted,
                    ..
                } => {
                    self.note_upstream(wal_end);
                    if let Some(f) = self.flusher.as_ref().filter(|_| self.flush_hint) {
                        self.write_wanted = write_wanted;
                        self.shared
                            .write_reports
                            .store(write_wanted, Ordering::Release);
                        self.deferrable = flush_deferrable;
                        f.set_deferrable(flush_deferrable);
                    }
                    reply_requested |= r;
                    if apply_feedback {
                        self.shared.request_apply(wal_end);
                    }
                }
                StreamEvent::EndOfTimeline {
                    next_tli,
                    next_start,
                } => {
                    let end = StreamEnd::TimelineEnded {
                        next_tli,
                        switch_point: next_start,
                    };
                    return Ok((Some(end), reply_requested));
                }
                StreamEvent::ServerShutdown => {
                    return Err(lost(format!(
                        "replication terminated by primary server: end of WAL reached on timeline {} at {}",
                        self.tli.0,
                        self.writer.written()
                    )))
                }
                // The read bound passed inside a message: write what we have.
                StreamEvent::Timeout => return Ok((None, reply_requested)),
            }
            self.last_recv = Instant::now();
            self.pinged = false;
            let drained = if socket_was_empty {
                client.buffered_bytes() == 0
            } else {
                !client.has_readable()
            };
            if drained
                || bytes >= MAX_BATCH_BYTES
                || (bytes >= queued && started.elapsed() >= MAX_BATCH_TIME)
            {
                return Ok((None, reply_requested));
            }
            ev = client
                .recv(read_bound)
                .map_err(|e| lost(format!("could not receive data from WAL stream: {e}")))?;
        }
    }

    /// Hand what was written (and the upstream's newest told flush
    /// position) to the fsync thread if either moved since the last
    /// request; `urgent` skips the spacing and forces the status after
    /// the fsync (the upstream asked for a reply). Returns whether a
    /// request was made.
    fn request_flush(&mut self, urgent: bool) -> bool {
        let now = (self.writer.written(), self.shared.upstream_flush());
        if now == self.requested {
            return false;
        }
        let Some(flusher) = self.flusher.as_ref() else {
            return false;
        };
        self.requested = now;
        let req = FlushRequest {
            tli: self.writer.timeline(),
            upto: now.0,
            segment: self.writer.current_segment(),
            opened: self.writer.opened(),
        };
        flusher.request(req, urgent, urgent);
        true
    }

    /// Whether this batch is fsynced here rather than on the fsync thread:
    /// a walrep upstream said a commit may wait for this standby's flush
    /// and none waited lately for its written position alone (`on`,
    /// `remote_apply`). Then the status update after the fsync is the only
    /// one a commit needs, and handing the fsync over would cost a wake-up
    /// of the thread here and a second status update (a second wake-up)
    /// on the primary per commit. With `remote_write` commits (the written
    /// position reported before the fsync, which must not hold up the
    /// next read) and for an asynchronous standby (spaced fsyncs) the
    /// thread does it.
    fn fsync_inline(&self) -> bool {
        self.flush_hint && !self.deferrable && !self.write_wanted
    }

    /// The fsync of [`Session::fsync_inline`], if anything moved since the
    /// last request; a reply asked for is sent after it.
    fn flush_inline(&mut self, reply_requested: bool) -> Result<(), End> {
        self.check_flusher()?;
        let now = (self.writer.written(), self.shared.upstream_flush());
        if now != self.requested {
            let fsync = now.0 > self.requested.0;
            self.requested = now;
            self.flush_and_report()?;
            if fsync {
                self.shared.fsyncs.fetch_add(1, Ordering::AcqRel);
            }
        }
        if reply_requested {
            self.send_status(true, false)?;
        }
        Ok(())
    }

    /// An fsync of the fsync thread failed: the session ends (the failure
    /// is recorded for the node; nothing retries an fsync).
    fn check_flusher(&mut self) -> Result<(), End> {
        match self.flusher.as_ref().and_then(Flusher::failed) {
            Some(msg) => {
                // The stream's end must not fsync again what failed.
                self.writer.poison(msg.clone());
                Err(End::Lost(msg))
            }
            None => Ok(()),
        }
    }

    fn note_upstream(&self, wal_end: Lsn) {
        if wal_end.is_valid() {
            self.shared
                .upstream_flush
                .store(wal_end.0, Ordering::Release);
        }
    }

    /// Write received WAL; it must continue exactly where the stream is.
    fn write(&mut self, start: Lsn, data: &[u8]) -> Result<(), End> {
        let at = self.writer.written();
        if start != at {
            return Err(lost(format!(
                "the primary sent WAL at {start} but the stream is at {at}"
            )));
        }
        self.writer
            .write(start, data)
            .map_err(|e| self.io_failure(e))?;
        // Redo reads it from here; how far is still the flush position.
        self.shared
            .buffer
            .append(self.writer.timeline(), start, data);
        self.shared.publish_written(self.writer.written());
        Ok(())
    }

    /// An fsync failure is final: recorded so that no new session starts
    /// (nothing retries an fsync). Any other write failure (a full disk)
    /// ends this session only: nothing past the last fsync was reported,
    /// so the next session rewrites from there, from files reopened from
    /// disk, once the recovery machine retries.
    fn io_failure(&self, e: SegmentError) -> End {
        let msg = format!("could not write received WAL: {e}");
        if sync_failed(&e) {
            self.shared.set_io_failure(Arc::new(e));
            tracing::error!("{msg}");
        } else {
            tracing::error!("{msg}; streaming stops and resumes from the last flushed position when WAL can be written again (reads go on)");
        }
        End::Lost(msg)
    }

    /// A restarted upstream flushed only up to `upstream` on our timeline
    /// and an earlier session left WAL here past that: zero it before
    /// anything is streamed (nobody was acknowledged a write there, since
    /// acknowledgements wait for the upstream's own flush), so it is never
    /// read as records. What the upstream has is rewritten by the stream.
    fn truncate_held(&mut self, upstream: Lsn) -> Result<(), End> {
        let Some(held) = self.shared.held().filter(|h| h.tli == self.tli) else {
            return Ok(());
        };
        if upstream >= held.to {
            return Ok(());
        }
        let from = upstream.max(held.from);
        tracing::warn!(
            "the primary has WAL only up to {upstream} on timeline {}; truncating the WAL received past it ({from} to {}), which the primary never confirmed flushed",
            self.tli.0, held.to
        );
        self.writer
            .zero_range(from, held.to)
            .map_err(|e| self.io_failure(e))?;
        let rest = HeldWal { to: from, ..held };
        self.shared.set_held((rest.to > rest.from).then_some(rest));
        self.emit_now(ReceiverEvent::UnconfirmedWalTruncated {
            session: self.session,
            tli: self.tli,
            from,
        });
        Ok(())
    }

    /// The flush position that may be exposed: what is durable here and
    /// was told flushed upstream (the primary flush position).
    fn exposable(&self, flushed: Lsn) -> Lsn {
        flushed.min(self.shared.upstream_flush())
    }

    /// Before this node's own fsync of a batch: let redo apply what is
    /// written here and was told flushed upstream. Visibility does not
    /// need this node's fsync: the upstream has that WAL durably, and a
    /// standby that crashes before its own fsync streams it again. What
    /// this node *reports* (its flush and apply positions) and what
    /// cascading walsenders send stay behind its own fsync; the machine's
    /// `WalFlushed` is its replay limit. The fsync follows at once; if it
    /// fails the node stops (nothing retries an fsync).
    ///
    /// `apply`: with the recovery machine's leave, apply it here first,
    /// before `WalFlushed` wakes the startup thread (which then finds
    /// nothing left to apply): the record is readable one thread hop
    /// sooner. Not when a commit waits for this thread's fsync and status
    /// (see [`Session::apply_inline`]).
    fn expose_written(&mut self, apply: bool) -> Result<(), End> {
        let tli = self.writer.timeline();
        let early = self.exposable(self.writer.written());
        if early <= self.reported_flush {
            return Ok(());
        }
        self.shared.publish_exposed_early(early);
        if apply {
            self.shared.inline().try_apply(self.session, tli, early);
        }
        self.reported_flush = early;
        self.pending_flush = Some((tli, early));
        self.deliver_pending_flush()
    }

    /// With the recovery machine's leave, apply what this session exposed
    /// if redo is free (the startup thread, woken by `WalFlushed`, may be
    /// applying it: then nothing is done here). After the fsync and status
    /// of a synchronous standby, and only while a `remote_apply` commit
    /// waits for the apply report (which then needs no other thread's
    /// turn): for `on` the startup thread keeps applying beside this
    /// thread's next read and fsync, which an apply here would delay.
    fn apply_inline(&self) {
        let wanted = self
            .shared
            .with_replies(|r, _| Ok(r.apply_report_wanted()))
            .unwrap_or(false);
        if !wanted {
            return;
        }
        let tli = self.writer.timeline();
        self.shared
            .inline()
            .try_apply(self.session, tli, self.reported_flush);
    }

    /// On this thread (the fsync thread is stopped: a timeline's end; or
    /// idle: see [`Session::fsync_inline`]): fsync what was written,
    /// publish and report it, reply upstream.
    /// Redo and cascading walsenders get only what the upstream told it
    /// flushed; the status update carries the real flush position.
    /// The status update goes right after the fsync, before the
    /// confirmed-flush record is written and redo is told: a commit on
    /// the primary waits for it, and neither of those needs to come first
    /// (a crash before the record leaves an older, still true one).
    fn flush_and_report(&mut self) -> Result<(), End> {
        let flushed = self.writer.flush().map_err(|e| self.io_failure(e))?;
        self.shared.raise_durable(flushed);
        self.send_status(false, false)?;
        let tli = self.writer.timeline();
        let exposed = flusher::lock(&self.durability).made_durable(&self.shared, tli, flushed);
        if exposed > self.reported_flush {
            self.reported_flush = exposed;
            self.pending_flush = Some((tli, exposed));
            self.deliver_pending_flush()?;
        }
        Ok(())
    }

    /// Queue the latest WalFlushed if the queue has room (it is replaced by
    /// a newer one otherwise); a gone runtime stops the session.
    fn deliver_pending_flush(&mut self) -> Result<(), End> {
        let Some((tli, upto)) = self.pending_flush else {
            return Ok(());
        };
        let ev = ReceiverEvent::WalFlushed {
            session: self.session,
            tli,
            upto,
        };
        match (self.emit)(ev, &self.control, false) {
            super::Sent::Queued => self.pending_flush = None,
            super::Sent::Full => {}
            super::Sent::Gone => return Err(End::Stopped),
        }
        Ok(())
    }

    /// Queue an event that must not be coalesced (after any pending flush).
    fn emit_now(&mut self, ev: ReceiverEvent) {
        if let Some((tli, upto)) = self.pending_flush.take() {
            let flush = ReceiverEvent::WalFlushed {
                session: self.session,
                tli,
                upto,
            };
            (self.emit)(flush, &self.control, true);
        }
        (self.emit)(ev, &self.control, true);
    }

    /// Standby status update `r` (see `Replies::send_status`), with the
    /// written position published first so that redo's replies, computed
    /// from it under the same lock, never go back (the flush position is
    /// published by whoever fsyncs).
    fn send_status(&mut self, force: bool, reply_requested: bool) -> Result<(), End> {
        self.shared.publish_written(self.writer.written());
        self.shared
            .with_replies(|r, now| r.send_status(now, force, reply_requested))
            .map_err(|e| lost(e.to_string()))
    }

    /// Replay progress a flagged keepalive asked for, if made already.
    fn report_apply(&mut self) -> Result<(), End> {
        self.shared
            .with_replies(|r, now| r.report_apply(now))
            .map(|_owed| ())
            .map_err(|e| lost(e.to_string()))
    }

    /// Hot standby feedback `h`: each status interval when enabled; once
    /// with invalid values at the start when disabled (clears an xmin a
    /// slot may still hold), as PostgreSQL does.
    fn send_feedback(&mut self, first: bool) -> Result<(), End> {
        let xmin = if self.cfg.hot_standby_feedback {
            let due = self
                .cfg
                .status_interval
                .is_some_and(|i| self.last_feedback.is_none_or(|t| t.elapsed() >= i));
            if !first && !due {
                return Ok(());
            }
            self.shared.feedback_xmin.load(Ordering::Acquire)
        } else if first {
            0
        } else {
            return Ok(());
        };
        self.shared
            .with_replies(|r, _| r.send_feedback(xmin))
            .map_err(|e| lost(e.to_string()))?;
        self.last_feedback = Some(Instant::now());
        Ok(())
    }

    /// When the next timer (status, feedback, ping, timeout) is due.
    fn next_wakeup(&self) -> Duration {
        let mut wait = MAX_NAP;
        let last_status = self.shared.with_replies(|r, _| Ok(r.last_status()));
        if let (Some(i), Ok(Some(t))) = (self.cfg.status_interval, last_status) {
            wait = wait.min(i.saturating_sub(t.elapsed()));
        }
        if let Some(t) = self.cfg.timeout {
            let silent = self.last_recv.elapsed();
            let next = if self.pinged { t } else { t / 2 };
            wait = wait.min(next.saturating_sub(silent));
        }
        wait.max(Duration::from_millis(1))
    }

    /// Timers: wal_receiver_timeout (ping at half, give up at full),
    /// periodic status and feedback.
    fn on_tick(&mut self) -> Result<(), End> {
        if let Some(t) = self.cfg.timeout {
            let silent = self.last_recv.elapsed();
            if silent >= t {
                return Err(lost("terminating walreceiver due to timeout"));
            }
            if silent >= t / 2 && !self.pinged {
                self.send_status(true, true)?;
                self.pinged = true;
            }
        }
        self.send_status(false, false)?;
        self.send_feedback(false)
    }

    /// After a timeline end: flush, report, then wait for a new start.
    fn end_of_timeline(&mut self, next_tli: TimelineId, switch_point: Lsn) -> Result<(), End> {
        self.flush_and_report()?;
        tracing::info!(
            "replication terminated by primary server: end of WAL reached on timeline {} at {switch_point}; next timeline {}",
            self.tli.0,
            next_tli.0
        );
        // Waiting before the machine hears of the end: it may order the
        // restart as soon as it has the event, and an order that finds the
        // session not yet waiting opens a new connection instead.
        self.control.lock_restart().waiting = true;
        self.shared.set_state(ReceiverState::Waiting);
        self.emit_now(ReceiverEvent::TimelineEnded {
            session: self.session,
            tli: self.tli,
            next_tli,
            switch_point,
        });
        let order = self.wait_for_restart()?;
        self.session = order.session;
        self.control.session.store(order.session, Ordering::Release);
        let from = order.from.segment_start(self.cfg.segdir.seg_size());
        self.writer
            .switch_timeline(order.tli, from)
            .map_err(|e| self.io_failure(e))?;
        self.shared.buffer.clear();
        self.shared.publish_exposed_early(Lsn::INVALID);
        let published_flush = publish_start(&self.shared, order.tli, from);
        self.shared.publish_written(from);
        // Flush reports start over on the new timeline's files.
        self.reported_flush = from;
        {
            let mut d = flusher::lock(&self.durability);
            d.published_flush = published_flush;
            d.start = from;
        }
        self.pending_flush = None;
        self.tli = order.tli;
        self.start = from;
        self.shared.set_state(ReceiverState::Restarting);
        Ok(())
    }

    /// PostgreSQL's WAITING: connected, until `restart`, `stop` or
    /// `restart_wait`. As in PostgreSQL (WalRcvWaitForStartPosition waits
    /// on its latch only), the connection is not watched meanwhile: if the
    /// upstream closed it, the next command fails and the session ends.
    fn wait_for_restart(&mut self) -> Result<RestartOrder, End> {
        let deadline = Instant::now() + self.cfg.restart_wait;
        loop {
            {
                let mut slot = self.control.lock_restart();
                if let Some(order) = slot.order.take() {
                    slot.waiting = false;
                    return Ok(order);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if self.control.stopping() || left.is_zero() {
                    slot.waiting = false;
                    if self.control.stopping() {
                        return Err(End::Stopped);
                    }
                    return Err(lost(format!(
                        "no new streaming start requested within {:?} after the end of timeline {}",
                        self.cfg.restart_wait, self.tli.0
                    )));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = self.control.wake_rx.recv_timeout(left.min(MAX_NAP));
        }
    }

    /// Stopped for a promotion (`ReceiverHandle::stop_writing`), on this
    /// thread once its last write is done: nothing more is written, so the
    /// end of the received WAL is fixed. Queue now what [`Session::finish`]
    /// would report after its fsync: the WAL held unconfirmed and
    /// `WalReceiverStopped` at the exposed position, both computed from
    /// the written position (which the fsync makes the flushed one; if it
    /// fails, the promotion fails when it waits for it). Nothing is
    /// published as flushed here: cascading walsenders and the upstream
    /// still learn of this WAL only after the fsync, in `finish`. Once.
    fn report_writes_ended(&mut self) {
        let c = &self.control;
        if !c.early.load(Ordering::Acquire)
            || c.dropped.load(Ordering::Acquire)
            || c.reported.load(Ordering::Acquire)
        {
            return;
        }
        let written = self.writer.written();
        let tli = self.writer.timeline();
        let exposed = self.exposable(written).max(self.start);
        if written > exposed {
            self.hold_unconfirmed(tli, exposed, written);
        }
        self.emit_now(ReceiverEvent::WalReceiverStopped {
            session: self.session,
            flushed: exposed,
        });
        self.control.reported.store(true, Ordering::Release);
        tracing::debug!(session = self.session, %written, "walreceiver: last write done; its fsync follows");
    }

    /// Flush what was written, close the connection; returns the flush
    /// position. A WalFlushed is reported first unless stopping (the
    /// final WalReceiverStopped carries it).
    fn finish(&mut self, end: &End) -> Lsn {
        self.shared.set_state(ReceiverState::Stopping);
        let flushed = if self.shared.io_failure().is_some() {
            // An fsync failed (here or on the fsync thread): nothing
            // retries it.
            self.writer.flushed()
        } else if self.synced_by_flusher() {
            self.writer.written()
        } else {
            match self.writer.flush() {
                Ok(f) => f,
                Err(e) => {
                    let _ = self.io_failure(e);
                    self.writer.flushed()
                }
            }
        };
        self.shared.publish_durable(flushed);
        let tli = self.writer.timeline();
        let exposed = self.exposable(flushed);
        {
            let mut d = flusher::lock(&self.durability);
            d.record_confirmed(tli, exposed);
            if exposed > d.published_flush {
                d.published_flush = exposed;
                self.shared.publish_flushed(tli, exposed);
            }
        }
        if matches!(end, End::Lost(_)) && exposed > self.reported_flush {
            self.reported_flush = exposed;
            self.pending_flush = Some((tli, exposed));
        }
        if flushed > exposed.max(self.start) {
            self.hold_unconfirmed(tli, exposed.max(self.start), flushed);
        }
        *self.shared.lock_replies() = None;
        if let Some(c) = self.client.take() {
            c.close();
        }
        *self
            .control
            .socket
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        exposed.max(self.start)
    }

    /// Whether the fsync thread already made everything written durable:
    /// its last fsync covered the written position (`durable` is raised
    /// only after its fdatasync and, for a segment opened since its
    /// previous one, the fsync of `wal/`; its requests are made after the
    /// writes they cover, so that request saw the writer's last opened
    /// segment; it is the flush position this standby reports upstream,
    /// so it is already trusted as durable). The writer's own `flush`
    /// would then repeat both syncs (its `flushed` follows only its
    /// own), which every stop paid, a promotion's on its history stage.
    fn synced_by_flusher(&self) -> bool {
        let durable = Lsn(self.shared.durable.load(Ordering::Acquire));
        self.writer.flushed() < self.writer.written() && durable >= self.writer.written()
    }

    /// The session ends with WAL in `[from, to)` the upstream never told
    /// flushed: keep it (promotion replays it: the upstream may have
    /// acknowledged some before its flush position reached us) but record
    /// it, merged with what earlier sessions left, and tell the machine.
    fn hold_unconfirmed(&mut self, tli: TimelineId, from: Lsn, to: Lsn) {
        let held = match self.shared.held().filter(|h| h.tli == tli) {
            Some(h) => HeldWal {
                tli,
                from: h.from.min(from),
                to: h.to.max(to),
            },
            None => HeldWal { tli, from, to },
        };
        self.shared.set_held(Some(held));
        tracing::info!(
            "WAL received from {from} to {to} on timeline {} was not confirmed flushed by the primary; it is kept but not replayed unless this standby is promoted",
            tli.0
        );
        let reported = self.control.reported.load(Ordering::Acquire);
        if !self.control.dropped.load(Ordering::Acquire) && !reported {
            self.emit_now(ReceiverEvent::UnconfirmedWalHeld {
                session: self.session,
                tli,
                from: held.from,
                to: held.to,
            });
        }
    }
}

/// A stream of `tli` starts at `start` (a segment start): publish it as
/// flushed, as PostgreSQL's RequestXLogStreaming sets `flushedUpto` to
/// the start point. What lies before it is durable here already: read
/// from this node's `wal/` (fsynced by an earlier session, or by the
/// writer that completed its segment) or restored from the archive,
/// which keeps it. So once a stream starts, the flush position is on the
/// stream's timeline, and WAL redo applies early (before this session's
/// first fsync) lies past it: never trusted as durable (see
/// `StandbyProgress::flush_point`). On the same timeline the position
/// never goes back: a session restarted below the last flush position
/// (a segment start) keeps it, since that WAL was fsynced here.
/// Returns the flush position published (`start` or the higher one kept).
fn publish_start(shared: &ReceiverShared, tli: TimelineId, start: Lsn) -> Lsn {
    let mut published = start;
    shared.flushed.update(|f| {
        if f.tli == tli && f.lsn >= start {
            published = f.lsn;
            return false;
        }
        *f = crate::replication::source::FlushPoint { tli, lsn: start };
        true
    });
    published
}

/// The refusal of an upstream whose chain leads back to this node:
/// `loop_chain` is the upstream and its upstreams up to (not including)
/// this node again.
fn loop_message(me: u64, loop_chain: &[u64]) -> String {
    let me = format_instance_id(me);
    let path: Vec<String> = loop_chain
        .iter()
        .map(|id| format_instance_id(*id))
        .collect();
    format!(
        "replication loop: primary_conninfo leads back to this node through its upstreams: \
         {me} (this node) -> {} -> {me}; a standby cannot stream from its own downstream",
        path.join(" -> ")
    )
}

/// Whether a received-WAL failure was an fsync of any kind (after which
/// the kernel may have dropped what was written).
fn sync_failed(e: &SegmentError) -> bool {
    matches!(e, SegmentError::Io { op, .. } if op.contains("fsync") || op.contains("fdatasync"))
}
