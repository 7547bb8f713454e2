//! START_REPLICATION: the walsender proper. Streams WAL in XLogData
//! messages of at most 128 kB (ends rounded down to an 8 kB page, as
//! PostgreSQL does) and only up to the source's flush point; wakes when the
//! source flushes more (a token of its flush subscription), when the
//! client sends something, or when a keepalive or timeout is due.
//! A walrep standby that asked for it (`walrep.receive_unflushed`) is told
//! the flush position as `walEnd` in every message, and a keepalive tells
//! the new one as soon as it passes what that standby was told, so it can
//! expose (and apply) the WAL. While commits here may wait for it (a
//! candidate synchronous standby) it is sent WAL up to the source's
//! written position, in parallel with the source's fdatasync; otherwise
//! (an asynchronous standby) only flushed WAL, as PostgreSQL: one wake-up
//! and one message per flush instead of two, and no wake-up of this
//! thread on the writer's path between its write and its fdatasync.
//! A walrep standby that reports its apply position on request
//! (`walrep.apply_feedback`) is flagged a keepalive whenever a commit here
//! waits for its apply position (`remote_apply`), up to the flush
//! position that keepalive carries.
//! A walrep standby that asked for the flush hint (`walrep.flush_hint`) is
//! told in every keepalive whether no commit here may wait for its flush
//! (`flush_deferrable`: it is not a candidate synchronous standby), with a
//! keepalive at the stream's start and whenever that changes; it may then
//! space its fsyncs. Such keepalives also say whether a commit here waited
//! lately for its written position alone (`write_wanted`, `remote_write`):
//! only then does a synchronous standby report that before its fsync.
//! Ends the COPY at the switch point of a historic timeline and answers
//! with the next timeline; at server shutdown sends what is left, waits for
//! the client to confirm it and ends with `COPY 0`.
//! It waits by parking, not in `select!` (see `crate::watch`): one
//! sleep and one wake-up per event on a commit's path.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::TryRecvError;
use walrep_states::{Lsn, TimelineHistory, TimelineId};

use super::conn::ClientEvent;
use super::exec::{result_set, source_error, text, INT8, TEXT};
use super::session::{Failure, Session};
use crate::replication::pgwire::{
    pg_epoch_micros, BackendMessage, FieldDescription, FrontendMessage, PrimaryKeepalive,
    ReplicationMessage, StandbyMessage, StandbyStatusUpdate, XLogDataHeader, XLOGDATA_HEADER_LEN,
};
use crate::replication::registry::WalSenderState;
use crate::replication::source::ReplicationSource;
use crate::replication::sqlstate::{self as code, PgError};
use crate::watch::Subscription;

/// PostgreSQL's XLOG_BLCKSZ: a message cut by the size limit ends on a page.
pub const XLOG_BLCKSZ: u64 = 8192;
/// PostgreSQL's MAX_SEND_SIZE: 16 pages.
pub const MAX_SEND_SIZE: u64 = XLOG_BLCKSZ * 16;
/// Longest idle wait when no keepalive is due (wal_sender_timeout off).
const IDLE_WAIT: Duration = Duration::from_secs(10);
/// How often a walsender of a walrep standby looks again whether commits
/// may wait for it (`synchronous_standby_names` reloaded): sending written
/// or only flushed WAL is a matter of speed, not of safety, so a reload
/// may take this long to change it.
const EARLY_REVIEW_INTERVAL: Duration = Duration::from_millis(100);
/// [`AsyncSpacing`] holds a send only while less than this much flushed
/// WAL waits for it: a one-client commit stream flushes a few hundred
/// bytes at a time (one SET and its commit), which the hold gathers into
/// one message; a busy primary's flushes carry several kB each (64
/// clients at `off`: 5-8 kB at the tenth percentile, 11-18 kB at the
/// median, see docs/benchmarks/async-standby.md, "the walsender's hold
/// limited to small flushes"), which go at once, so the hold costs them
/// no replay lag or key visibility.
const ASYNC_HOLD_MAX_BYTES: u64 = XLOG_BLCKSZ / 2;

/// Which timeline is streamed and, for a historic one, where it ends.
#[derive(Debug, Clone, Copy)]
struct Plan {
    tli: TimelineId,
    /// The switch point of a historic timeline (`sendTimeLineValidUpto`).
    valid_upto: Option<Lsn>,
    next_tli: Option<TimelineId>,
}

pub(super) fn start_replication<S: ReplicationSource>(
    s: &mut Session<S>,
    slot: Option<&str>,
    start: Lsn,
    timeline: Option<TimelineId>,
) -> Result<(), Failure> {
    let src = Arc::clone(&s.ctx.source);
    let guard = match slot {
        Some(name) => Some(
            s.ctx
                .slots
                .acquire(name, s.handle.id())
                .map_err(|e| e.to_pg())?,
        ),
        None => None,
    };
    let fp = src.flush_point();
    let mut plan = plan_timeline(&*src, fp.tli, start, timeline)?;
    if plan.valid_upto.is_none_or(|end| start < end) {
        s.handle.set_slot(slot.map(str::to_string));
        s.conn.send(&BackendMessage::CopyBothResponse {
            format: 0,
            columns: vec![],
        });
        s.conn.flush()?;
        check_start(&*src, fp.lsn, start, plan.tli)?;
        let mut st = Streamer::new(s, src, plan, start, slot.map(str::to_string));
        // Status updates wait for this thread's next wake-up (see
        // `StatusWake`), until the shutdown handshake.
        st.s.status_wake.set_slot(slot);
        st.s.status_wake.set_every(false);
        let outcome = st.run();
        st.s.status_wake.set_every(true);
        st.s.status_wake.set_slot(None);
        plan = st.plan;
        st.s.handle.set_state(WalSenderState::Startup);
        st.s.handle.set_slot(None);
        outcome?;
    }
    drop(guard);
    if let (Some(end), Some(next)) = (plan.valid_upto, plan.next_tli) {
        let fields = vec![
            FieldDescription::new("next_tli", INT8),
            FieldDescription::new("next_tli_startpos", TEXT),
        ];
        result_set(&mut s.conn, fields, vec![vec![text(next.0), text(end)]]);
    }
    s.conn
        .send(&BackendMessage::CommandComplete("START_STREAMING".into()));
    Ok(())
}

/// The requested timeline: the current one, or a historic one with its
/// switch point (PostgreSQL's checks and messages).
fn plan_timeline<S: ReplicationSource>(
    src: &S,
    current: TimelineId,
    start: Lsn,
    requested: Option<TimelineId>,
) -> Result<Plan, PgError> {
    let tli = requested.unwrap_or(current);
    if tli == current {
        return Ok(Plan {
            tli,
            valid_upto: None,
            next_tli: None,
        });
    }
    let history = src.timeline_history().map_err(source_error)?;
    let plan = historic_plan(&history, tli)?;
    let end = plan.valid_upto.unwrap_or(Lsn::INVALID);
    if start > end {
        return Err(PgError::error(
            code::INTERNAL_ERROR,
            format!("requested starting point {start} on timeline {tli} is not in this server's history"),
        )
        .with_detail(format!("This server's history forked from timeline {tli} at {end}.")));
    }
    Ok(plan)
}

fn historic_plan(history: &TimelineHistory, tli: TimelineId) -> Result<Plan, PgError> {
    let spans = history.spans();
    let not_in = || {
        PgError::error(
            code::INTERNAL_ERROR,
            format!("requested timeline {tli} is not in this server's history"),
        )
    };
    let i = spans.iter().position(|s| s.tli == tli).ok_or_else(not_in)?;
    match (spans[i].end, spans.get(i + 1)) {
        (Some(end), Some(next)) => Ok(Plan {
            tli,
            valid_upto: Some(end),
            next_tli: Some(next.tli),
        }),
        _ => Ok(Plan {
            tli,
            valid_upto: None,
            next_tli: None,
        }),
    }
}

/// After CopyBothResponse, as PostgreSQL: a start beyond the flush point
/// or in a removed segment is an ERROR.
fn check_start<S: ReplicationSource>(
    src: &S,
    flush: Lsn,
    start: Lsn,
    tli: TimelineId,
) -> Result<(), PgError> {
    if start > flush {
        return Err(PgError::error(
            code::INTERNAL_ERROR,
            format!("requested starting point {start} is ahead of the WAL flush position of this server {flush}"),
        ));
    }
    let seg = src.wal_segment_size();
    let oldest = src.oldest_lsn();
    if start < oldest {
        return Err(removed_error(start, oldest, tli, seg));
    }
    Ok(())
}

/// PostgreSQL's "requested WAL segment ... has already been removed", with
/// the oldest position this server still has in the detail, so the
/// operator knows at once how far back the archive must reach.
pub fn removed_error(start: Lsn, oldest: Lsn, tli: TimelineId, seg: crate::WalSegSize) -> PgError {
    let name = start.segno(seg).file_name(tli, seg);
    let detail = if oldest == Lsn::INVALID {
        "This server has no WAL segment left.".to_string()
    } else {
        format!(
            "The oldest WAL this server still has starts at {oldest} (segment {}).",
            oldest.segno(seg).file_name(tli, seg)
        )
    };
    PgError::error(
        code::UNDEFINED_FILE,
        format!("requested WAL segment {name} has already been removed"),
    )
    .with_detail(detail)
    .with_hint("Fetch the missing WAL from the archive (restore_command), or take a new base backup; a replication slot (primary_slot_name) keeps the WAL a standby still needs.")
}

/// The state of one COPY (PostgreSQL's WalSndLoop variables).
struct Streamer<'a, S: ReplicationSource> {
    s: &'a mut Session<S>,
    src: Arc<S>,
    plan: Plan,
    /// Everything before this was sent (`sentPtr`).
    sent: Lsn,
    slot: Option<String>,
    done_sending: bool,
    done_receiving: bool,
    caught_up: bool,
    /// Server shutdown seen: finish with COPY 0 once confirmed.
    stopping: Option<Instant>,
    last_reply: Instant,
    waiting_for_ping: bool,
    /// Last positions the client reported (for the shutdown handshake).
    reported: StandbyStatusUpdate,
    /// One CopyData(XLogData) frame, reused.
    frame: Vec<u8>,
    /// A token whenever the source's flush point (and, while `early`, its
    /// written position) may have moved.
    flushed: Subscription,
    /// The client honours `walEnd` as the source's flush position (the
    /// session's `receive_unflushed`): it may be sent WAL early.
    unflushed_ok: bool,
    /// Send WAL up to the written position, not the flush point: while
    /// `unflushed_ok` and commits here may wait for this standby.
    early: bool,
    /// The client's `application_name` (whether commits wait for it).
    application_name: String,
    /// When to look again whether to send early.
    early_review_at: Instant,
    /// The flush position last told the client (`walEnd`): a walrep
    /// standby exposes nothing past it.
    told_flush: Lsn,
    /// The client reports replay progress at once only when a keepalive
    /// asks (`apply_feedback`).
    apply_on_request: bool,
    /// How far it was last asked to (the `walEnd` of that keepalive).
    apply_asked: Lsn,
    /// The client is told in keepalives whether it may space its fsyncs.
    flush_hint: bool,
    /// No commit here may wait for this standby's flush position (it is
    /// not a candidate synchronous standby): reviewed with `early`.
    flush_deferrable: bool,
    /// A commit here waited lately for this standby's written position
    /// alone (`remote_write`): reviewed with `early`.
    write_wanted: bool,
    /// What the last keepalive said of both (`None`: none sent yet).
    told_deferrable: Option<(bool, bool)>,
    /// Spaces the messages of an asynchronous walrep standby.
    spacing: AsyncSpacing,
}

impl<'a, S: ReplicationSource> Streamer<'a, S> {
    fn new(
        s: &'a mut Session<S>,
        src: Arc<S>,
        plan: Plan,
        start: Lsn,
        slot: Option<String>,
    ) -> Self {
        // Before the first look at the flush point (in `send_some`).
        let unflushed_ok = s.receive_unflushed;
        let application_name = s
            .handle
            .status()
            .map(|st| st.application_name)
            .unwrap_or_default();
        let candidate = commits_may_wait_for(&*src, &application_name);
        let early = unflushed_ok && candidate;
        let apply_on_request = s.apply_feedback_on_request;
        let flush_hint = s.flush_hint;
        let flushed = subscribe(&*src, early, apply_on_request, unflushed_ok);
        let write_wanted = candidate && src.write_reports_wanted();
        s.handle.set_state(WalSenderState::Catchup);
        s.handle.set_cascading(src.in_recovery());
        s.handle.set_sent(start);
        let spacing = AsyncSpacing::new(s.ctx.options.wal_sender_async_delay);
        Streamer {
            s,
            src,
            plan,
            sent: start,
            slot,
            done_sending: false,
            done_receiving: false,
            caught_up: false,
            stopping: None,
            last_reply: Instant::now(),
            waiting_for_ping: false,
            reported: StandbyStatusUpdate {
                write: Lsn::INVALID,
                flush: Lsn::INVALID,
                apply: Lsn::INVALID,
                client_time: 0,
                reply_requested: false,
            },
            frame: Vec::with_capacity(5 + XLOGDATA_HEADER_LEN + MAX_SEND_SIZE as usize),
            flushed,
            unflushed_ok,
            early,
            application_name,
            early_review_at: Instant::now() + EARLY_REVIEW_INTERVAL,
            told_flush: Lsn::INVALID,
            apply_on_request,
            apply_asked: Lsn::INVALID,
            flush_hint,
            flush_deferrable: !candidate,
            write_wanted,
            told_deferrable: None,
            spacing,
        }
    }

    fn run(&mut self) -> Result<(), Failure> {
        loop {
            while let Ok(ev) = self.s.rx.try_recv() {
                self.on_event(ev)?;
            }
            if let Some(e) = self.s.ctx.terminated.get() {
                // After a crash: no shutdown handshake, the FATAL at once.
                return Err(Failure::Error(e.clone()));
            }
            if self.stopping.is_none() && self.s.ctx.stopping.load(Ordering::SeqCst) {
                self.stopping = Some(Instant::now() + self.s.ctx.options.shutdown_timeout);
                self.s.handle.set_state(WalSenderState::Stopping);
                // The handshake waits for the client's last confirmation.
                self.s.status_wake.set_every(true);
            }
            if !self.done_sending {
                self.review_early();
                self.tell_flush_policy()?;
                self.check_slot()?;
                self.follow_timeline_switch()?;
                self.send_some()?;
                self.ask_for_apply()?;
            }
            if self.done_sending && self.done_receiving {
                return Ok(());
            }
            if self.caught_up && self.stopping.is_none() {
                self.s.handle.set_state(WalSenderState::Streaming);
            }
            if self.stopping.is_some() && self.try_finish_shutdown()? {
                return Err(Failure::Gone("server shutdown".into()));
            }
            self.check_timeouts()?;
            if self.caught_up || self.done_sending {
                self.wait()?;
            }
        }
    }

    /// Every [`EARLY_REVIEW_INTERVAL`]: send written WAL only while commits
    /// may wait for this standby, and be woken by writes only then.
    /// Either way every message's `walEnd` is the flush position, so
    /// switching is safe at any point (what was sent early is told
    /// durable by the keepalive of [`Streamer::tell_flush`]).
    /// The flush hint is reviewed with it: whether commits may wait for
    /// this standby's flush.
    fn review_early(&mut self) {
        if !self.unflushed_ok && !self.flush_hint {
            return;
        }
        let now = Instant::now();
        if now < self.early_review_at {
            return;
        }
        self.early_review_at = now + EARLY_REVIEW_INTERVAL;
        let candidate = commits_may_wait_for(&*self.src, &self.application_name);
        self.flush_deferrable = !candidate;
        let early = self.unflushed_ok && candidate;
        if early != self.early {
            tracing::debug!(early, "walsender: sending written WAL changed");
            self.early = early;
            // Subscribed before the next look at the positions (the loop
            // goes on to `send_some`), so no move is missed.
            self.flushed = subscribe(&*self.src, early, self.apply_on_request, true);
        }
    }

    /// A standby that asked for the flush hint and was not told the
    /// current one yet (the stream's start, or a change of
    /// `synchronous_standby_names`): tell it with a keepalive.
    fn tell_flush_policy(&mut self) -> Result<(), Failure> {
        if !self.flush_hint {
            return Ok(());
        }
        // Looked at on every wake-up (not only at the review): the first
        // `remote_write` commit after `on` ones must not wait for the
        // standby's fsync longer than one status update.
        self.write_wanted = !self.flush_deferrable && self.src.write_reports_wanted();
        let now = (self.flush_deferrable, self.write_wanted);
        if self.told_deferrable != Some(now) {
            self.keepalive(false)?;
        }
        Ok(())
    }

    fn check_slot(&self) -> Result<(), PgError> {
        match &self.slot {
            Some(name) if self.s.ctx.slots.is_invalidated(name) => {
                Err(crate::replication::slots::SlotError::Invalidated(name.clone()).to_pg())
            }
            _ => Ok(()),
        }
    }

    /// A cascading source promoted (or its upstream switched): the
    /// timeline we stream became historic; stream to its end, then stop.
    fn follow_timeline_switch(&mut self) -> Result<(), PgError> {
        if self.plan.valid_upto.is_some() || self.src.flush_point().tli == self.plan.tli {
            return Ok(());
        }
        let history = self.src.timeline_history().map_err(source_error)?;
        self.plan = historic_plan(&history, self.plan.tli)?;
        tracing::info!(tli = self.plan.tli.0, end = ?self.plan.valid_upto, "streamed timeline became historic");
        Ok(())
    }

    /// Send one XLogData message if there is WAL to send (XLogSendPhysical).
    fn send_some(&mut self) -> Result<(), Failure> {
        self.space_async_send();
        // The flush position is read before the written one: `walEnd`
        // never claims more than is durable.
        let (limit, wal_end) = match self.plan.valid_upto {
            Some(end) => (end, end),
            None if self.early => {
                let flush = self.src.flush_point().lsn;
                (self.src.written_lsn().max(flush), flush)
            }
            None => {
                let flush = self.src.flush_point().lsn;
                (flush, flush)
            }
        };
        if self.sent >= limit {
            self.caught_up = true;
            if self.plan.valid_upto.is_some() {
                self.s.conn.send(&BackendMessage::CopyDone);
                self.s.conn.flush()?;
                self.done_sending = true;
            } else {
                self.tell_flush(wal_end)?;
            }
            return Ok(());
        }
        let mut end = self.sent.0.saturating_add(MAX_SEND_SIZE);
        if limit.0 <= end {
            end = limit.0;
            self.caught_up = self.plan.valid_upto.is_none();
        } else {
            end -= end % XLOG_BLCKSZ;
            self.caught_up = false;
        }
        self.build_frame(Lsn(end), wal_end)?;
        // Recorded before the write: the reader thread checks replies
        // against it, and the standby may answer before this thread runs
        // again.
        self.s.handle.record_sent(Lsn(end), Instant::now());
        self.s.conn.write_now(&self.frame)?;
        self.spacing.sent();
        self.told_flush = wal_end;
        self.sent = Lsn(end);
        Ok(())
    }

    /// An asynchronous walrep standby (no commit here may wait for it,
    /// reviewed with `early`), caught up on the current timeline, with new
    /// WAL flushed, less than [`ASYNC_HOLD_MAX_BYTES`] of it: hold the
    /// send until [`AsyncSpacing`]'s delay passed since the previous one
    /// (see there). Not while catching up, at a timeline's end or at
    /// shutdown.
    fn space_async_send(&mut self) {
        let paced = !self.spacing.delay.is_zero()
            && (self.flush_hint || self.unflushed_ok)
            && self.flush_deferrable
            && !self.early
            && self.caught_up
            && self.plan.valid_upto.is_none()
            && self.stopping.is_none();
        if !paced {
            return;
        }
        let waiting = self.src.flush_point().lsn.0.saturating_sub(self.sent.0);
        if waiting > 0 && waiting < ASYNC_HOLD_MAX_BYTES {
            self.spacing.hold();
        }
    }

    /// CopyData + XLogData header + the WAL of `[sent, end)`, read per
    /// segment from the right timeline's file.
    fn build_frame(&mut self, end: Lsn, wal_end: Lsn) -> Result<(), PgError> {
        let n = (end.0 - self.sent.0) as usize;
        let payload = XLOGDATA_HEADER_LEN + n;
        // Every byte is written below: only a frame longer than any before
        // is zero-filled (its new part), not 128 kB per message.
        self.frame.resize(5 + payload, 0);
        self.frame[0] = b'd';
        self.frame[1..5].copy_from_slice(&((4 + payload) as u32).to_be_bytes());
        let header = XLogDataHeader {
            wal_start: self.sent,
            wal_end,
            send_time: pg_epoch_micros(SystemTime::now()),
        };
        let mut h = [0u8; XLOGDATA_HEADER_LEN];
        header.write(&mut h);
        self.frame[5..5 + XLOGDATA_HEADER_LEN].copy_from_slice(&h);
        let seg = self.src.wal_segment_size();
        let mut pos = self.sent;
        let mut off = 5 + XLOGDATA_HEADER_LEN;
        while pos < end {
            let chunk_end = pos.segno(seg).next().start_lsn(seg).min(end);
            let len = (chunk_end.0 - pos.0) as usize;
            let tli = self.file_timeline(pos);
            self.src
                .read_wal(tli, pos, &mut self.frame[off..off + len])
                .map_err(source_error)?;
            if tli != self.plan.tli && pos.segment_offset(seg) == 0 {
                restamp_header(&mut self.frame[off..off + len], self.plan.tli);
            }
            off += len;
            pos = chunk_end;
        }
        Ok(())
    }

    /// The segment holding a historic timeline's switch point is read from
    /// the next timeline's file (it has the same bytes up to there, but its
    /// header names the next timeline: see [`restamp_header`]).
    fn file_timeline(&self, pos: Lsn) -> TimelineId {
        let seg = self.src.wal_segment_size();
        match (self.plan.valid_upto, self.plan.next_tli) {
            (Some(end), Some(next)) if pos.segno(seg) == end.segno(seg) => next,
            _ => self.plan.tli,
        }
    }

    /// A walrep standby holds WAL past the flush position it was told and
    /// the flush moved: tell it at once (a keepalive), so it exposes and
    /// applies what is durable here (`remote_apply` commits wait on this).
    fn tell_flush(&mut self, flush: Lsn) -> Result<(), Failure> {
        if self.unflushed_ok && self.told_flush < self.sent && flush > self.told_flush {
            self.keepalive(false)?;
        }
        Ok(())
    }

    /// A commit waits for this standby's apply position beyond what it
    /// was last asked to report (and it has that WAL): ask, with a
    /// keepalive, unless the one just sent asked already.
    fn ask_for_apply(&mut self) -> Result<(), Failure> {
        if self.apply_on_request && self.apply_wanted_upto(self.wal_end_now()) > self.apply_asked {
            self.keepalive(false)?;
        }
        Ok(())
    }

    /// How far a keepalive carrying `wal_end` asks for apply reports
    /// (`INVALID`: it does not ask).
    fn apply_wanted_upto(&self, wal_end: Lsn) -> Lsn {
        if !self.apply_on_request {
            return Lsn::INVALID;
        }
        self.src.apply_wanted().min(wal_end).min(self.sent)
    }

    /// What a keepalive says now: PostgreSQL's `sentPtr`, or for a walrep
    /// standby sent WAL early the flush position (its exposure limit).
    fn wal_end_now(&self) -> Lsn {
        match self.plan.valid_upto {
            None if self.unflushed_ok => self.src.flush_point().lsn,
            _ => self.sent,
        }
    }

    /// PostgreSQL's keepalive says `sentPtr`; a walrep standby sent WAL
    /// early is told the flush position instead (its exposure limit).
    /// It asks for apply reports if a commit waits for them.
    fn keepalive(&mut self, reply_requested: bool) -> Result<(), Failure> {
        let wal_end = self.wal_end_now();
        self.told_flush = wal_end;
        let asked = self.apply_wanted_upto(wal_end);
        let apply_feedback = asked > self.apply_asked;
        if apply_feedback {
            self.apply_asked = asked;
        }
        let k = PrimaryKeepalive {
            wal_end,
            send_time: pg_epoch_micros(SystemTime::now()),
            reply_requested,
            apply_feedback,
            flush_deferrable: self.flush_hint && self.flush_deferrable,
            write_wanted: self.flush_hint && self.write_wanted,
        };
        if self.flush_hint {
            self.told_deferrable = Some((self.flush_deferrable, self.write_wanted));
        }
        self.s.conn.send(&BackendMessage::CopyData(
            ReplicationMessage::Keepalive(k).encode(),
        ));
        self.s.conn.flush()?;
        Ok(())
    }

    fn on_event(&mut self, ev: ClientEvent) -> Result<(), Failure> {
        self.last_reply = Instant::now();
        self.waiting_for_ping = false;
        let msg = match ev {
            ClientEvent::Gone(why) => return Err(Failure::Gone(why)),
            ClientEvent::Status { .. } if self.done_receiving => {
                return Err(protocol_violation("unexpected CopyData after CopyDone"))
            }
            ClientEvent::Status {
                update,
                at,
                recorded,
            } => return self.on_status(update, at, recorded),
            ClientEvent::Message(m) => m,
        };
        match msg {
            FrontendMessage::CopyData(_) if self.done_receiving => {
                Err(protocol_violation("unexpected CopyData after CopyDone"))
            }
            FrontendMessage::CopyData(p) => match StandbyMessage::decode(&p) {
                // The reader thread records status updates; this one
                // came some other way: record it here.
                Ok(StandbyMessage::Status(r)) => {
                    let recorded = self.s.handle.recorder().record(&r);
                    self.on_status(r, Instant::now(), recorded)
                }
                Ok(StandbyMessage::Feedback(h)) => {
                    self.s.handle.record_feedback(&h);
                    if let Some(slot) = &self.slot {
                        self.s.ctx.slots.set_xmin(slot, h.xmin, h.catalog_xmin);
                    }
                    Ok(())
                }
                Err(e) => Err(protocol_violation(&format!("invalid standby message: {e}"))),
            },
            FrontendMessage::CopyDone => {
                if !self.done_sending {
                    self.s.conn.send(&BackendMessage::CopyDone);
                    self.s.conn.flush()?;
                    self.done_sending = true;
                }
                self.done_receiving = true;
                Ok(())
            }
            FrontendMessage::Terminate => Err(Failure::Gone("client terminated".into())),
            other => Err(protocol_violation(&format!(
                "invalid standby message {other:?}"
            ))),
        }
    }

    /// A status update read at `at`, whose positions the reader thread
    /// already recorded (released commits) unless `recorded` is false.
    fn on_status(
        &mut self,
        mut r: StandbyStatusUpdate,
        at: Instant,
        recorded: bool,
    ) -> Result<(), Failure> {
        // A client cannot have written or flushed WAL this node does not
        // have; a report that says so is a lie that could release
        // synchronous commits no standby holds.
        let beyond = |lsn: Lsn, bound: Lsn| lsn.is_valid() && lsn > bound;
        let have = self.sent.max(self.src.flush_point().lsn);
        if beyond(r.write, have) || beyond(r.flush, have) || beyond(r.apply, have) {
            tracing::warn!(
                write = %r.write, flush = %r.flush, apply = %r.apply, sent = %self.sent,
                "standby reported a position beyond the WAL sent to it; closing the connection"
            );
            return Err(protocol_violation(&format!(
                "standby reported a position beyond the WAL sent to it ({})",
                self.sent
            )));
        }
        // Past what this stream sent but within this node's WAL: the client
        // kept it from an earlier stream (pg_receivewal starts a new
        // timeline at its segment's start, after receiving the old
        // timeline up to the switch). It confirms nothing past what was
        // sent here: the reader did not record it (`recorded` is false),
        // and the slot and lags see it cut at `sent`.
        let _ = recorded;
        for lsn in [&mut r.write, &mut r.flush, &mut r.apply] {
            if beyond(*lsn, self.sent) {
                *lsn = self.sent;
            }
        }
        self.reported = r;
        self.s.handle.record_lags(&r, at);
        if let Some(slot) = &self.slot {
            self.s.ctx.slots.confirm_flush(slot, r.flush);
        }
        if r.reply_requested {
            self.keepalive(false)?;
        }
        Ok(())
    }

    /// WalSndKeepaliveIfNecessary + WalSndCheckTimeOut.
    fn check_timeouts(&mut self) -> Result<(), Failure> {
        let Some(timeout) = self.s.ctx.options.wal_sender_timeout else {
            return Ok(());
        };
        let silent = self.last_reply.elapsed();
        if silent >= timeout {
            tracing::warn!("terminating walsender process due to replication timeout");
            return Err(Failure::Gone("replication timeout".into()));
        }
        if !self.waiting_for_ping && silent >= timeout / 2 {
            self.keepalive(true)?;
            self.waiting_for_ping = true;
        }
        Ok(())
    }

    /// WalSndDone: everything sent and confirmed (flush, or write if the
    /// client reports no flush) => `COPY 0`; else ask for a reply.
    fn try_finish_shutdown(&mut self) -> Result<bool, Failure> {
        let replicated = if self.reported.flush.is_valid() {
            self.reported.flush
        } else {
            self.reported.write
        };
        if self.done_sending || (self.caught_up && replicated >= self.sent) {
            self.s
                .conn
                .send(&BackendMessage::CommandComplete("COPY 0".into()));
            self.s.conn.flush()?;
            return Ok(true);
        }
        if self.stopping.is_some_and(|d| Instant::now() >= d) {
            return Err(Failure::Gone(
                "shutdown: client did not confirm the last WAL in time".into(),
            ));
        }
        if self.caught_up && !self.waiting_for_ping {
            self.keepalive(true)?;
            self.waiting_for_ping = true;
        }
        Ok(false)
    }

    /// Sleep until the client writes, WAL is written or flushed, shutdown
    /// begins or the next keepalive/timeout is due. Parks rather than
    /// `select!`s (see `crate::watch`): the reader thread, the WAL
    /// positions' watches and the server's shutdown unpark this thread,
    /// each after setting what it announces, so a wake-up between the
    /// checks below and the park is not lost (the park returns at once).
    fn wait(&mut self) -> Result<(), Failure> {
        let timeout = self.next_wakeup();
        match self.s.rx.try_recv() {
            Ok(ev) => return self.on_event(ev),
            Err(TryRecvError::Disconnected) => return Err(Failure::Gone("reader stopped".into())),
            Err(TryRecvError::Empty) => {}
        }
        let moved = self.flushed.take() && !self.done_sending;
        let shutdown = self.stopping.is_none() && self.s.ctx.stopping.load(Ordering::SeqCst);
        if moved || shutdown || self.s.ctx.terminated.get().is_some() {
            return Ok(());
        }
        std::thread::park_timeout(timeout);
        Ok(())
    }

    fn next_wakeup(&self) -> Duration {
        let mut at = Instant::now() + IDLE_WAIT;
        if let Some(t) = self.s.ctx.options.wal_sender_timeout {
            let due = if self.waiting_for_ping { t } else { t / 2 };
            at = at.min(self.last_reply + due);
        }
        if let Some(d) = self.stopping {
            at = at.min(d);
        }
        at.saturating_duration_since(Instant::now())
    }
}

/// The messages of an asynchronous standby (no commit waits for it) go
/// at most one per `delay` while they are small: a flush of less than
/// [`ASYNC_HOLD_MAX_BYTES`] within `delay` of the last send is held and
/// sent with the ones that follow it, instead of one message per commit;
/// a larger one goes at once (there is little to gather, and the hold
/// would cost a busy primary's standby its replay lag and key
/// visibility). Each message costs this thread a wake-up and a send, and
/// the standby a receive, a write, a wake-up of its startup thread and a
/// replay; at one client at `local` those ran per commit on the same
/// cores as the commit itself (see docs/benchmarks/async-standby.md,
/// "`local` at one client with an async standby attached"). The first
/// flush after a quiet `delay` goes at once, so replay lag grows by at
/// most `delay`.
/// PostgreSQL's walsender sends per flush it is woken for, and so does
/// this one by default (`wal_sender_async_delay` 0): the spacing halves
/// the standby's wake-ups, but below ~1,000 commits/s it has nothing to
/// batch, on a loaded machine it lowered one client's commits/s, and it
/// adds up to `delay` to replay lag and key visibility
/// (docs/benchmarks/async-standby.md, "the walsender's spacing measured").
struct AsyncSpacing {
    delay: Duration,
    last_send: Option<Instant>,
}

impl AsyncSpacing {
    fn new(delay: Duration) -> AsyncSpacing {
        AsyncSpacing {
            delay,
            last_send: None,
        }
    }

    /// Sleep out what is left of the delay since the last send. A sleep,
    /// not a park: flushes meanwhile must not wake this thread (their
    /// unpark only leaves a token, which the next wait takes), and what
    /// the reader thread received waits at most `delay`.
    fn hold(&self) {
        let Some(last) = self.last_send else {
            return;
        };
        let left = (last + self.delay).saturating_duration_since(Instant::now());
        if !left.is_zero() {
            std::thread::sleep(left);
        }
    }

    /// A message went out. With no delay nothing is held, so the clock
    /// is not read (a vDSO call per message, for nothing).
    fn sent(&mut self) {
        if !self.delay.is_zero() {
            self.last_send = Some(Instant::now());
        }
    }
}

/// Whether commits of `src` may wait for the standby `application_name`:
/// a primary's candidate synchronous standby (the same test that lets it
/// report its apply position only on request).
fn commits_may_wait_for<S: ReplicationSource>(src: &S, application_name: &str) -> bool {
    src.apply_feedback_on_request(application_name)
}

/// What wakes a walsender: every flush, and with `early` every write; with
/// `apply_on_request` every rise of the apply position commits wait for.
/// It waits by parking (see `Streamer::wait`). A walrep standby's
/// (`walrep_standby`, early or not) also keeps the WAL writer at its
/// streaming flush spacing while it lives.
fn subscribe<S: ReplicationSource>(
    src: &S,
    early: bool,
    apply_on_request: bool,
    walrep_standby: bool,
) -> Subscription {
    let sub = if early {
        src.subscribe_written()
    } else {
        src.subscribe_flush()
    };
    if walrep_standby {
        src.also_follow_flushes(&sub);
    }
    if apply_on_request {
        src.also_apply_wanted(&sub);
    }
    sub.unpark_on_change();
    sub
}

fn protocol_violation(msg: &str) -> Failure {
    Failure::Error(PgError::fatal(code::PROTOCOL_VIOLATION, msg))
}

/// The switch segment of a historic timeline is read from the next
/// timeline's file, whose header names the next timeline; a standby
/// streaming the old timeline writes it into the old timeline's file and
/// reads it back expecting that timeline (PostgreSQL's copied segment keeps
/// the old timeline in its first page header, for the same reader). So the
/// header sent says the timeline streamed, with its CRC made anew. A chunk
/// too short to hold the whole header, or one that does not decode, is
/// sent as read: the receiver's own checks then say what is wrong.
fn restamp_header(chunk: &mut [u8], tli: TimelineId) {
    let len = crate::wal::SEG_HEADER_SIZE as usize;
    let Some(bytes) = chunk.get_mut(..len) else {
        return;
    };
    if let Ok(mut header) = crate::wal::SegmentHeader::decode(bytes) {
        header.tli = tli;
        bytes.copy_from_slice(&header.encode());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{SegmentHeader, SEG_HEADER_SIZE};

    #[test]
    fn the_switch_segment_header_is_sent_with_the_streamed_timeline() {
        let header = SegmentHeader {
            flags: 0,
            tli: TimelineId(2),
            rem_len: 0,
            pageaddr: Lsn(3 << 20),
            system_id: 7,
            seg_size: crate::WalSegSize::new(1 << 20).unwrap(),
        };
        let mut chunk = header.encode().to_vec();
        chunk.extend_from_slice(b"records after the header");
        restamp_header(&mut chunk, TimelineId(1));
        let sent = SegmentHeader::decode(&chunk).expect("a valid header, CRC included");
        assert_eq!(sent.tli, TimelineId(1));
        assert_eq!(
            SegmentHeader {
                tli: TimelineId(2),
                ..sent
            },
            header,
            "only the timeline changes"
        );
        assert!(chunk.ends_with(b"records after the header"));
        // Too short to hold a header: sent as read.
        let mut short = header.encode()[..SEG_HEADER_SIZE as usize - 1].to_vec();
        let before = short.clone();
        restamp_header(&mut short, TimelineId(1));
        assert_eq!(short, before);
    }
}
