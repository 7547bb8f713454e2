//! The recovery machine's shared storage (positions, timelines, the
//! walreceiver session, outstanding requests, counters) and the outbox
//! context its handlers write actions to, with the bookkeeping every state
//! uses.

use serde::{Deserialize, Serialize};

use super::action::{Action, Report, WalSource};
use super::config::RecoveryConfig;
use super::event::{Event, RecordCheck, SessionId, WalFile};
use super::kind::StateKind;
use super::round_state::{Location, Round};
use super::timelines::Timelines;
use crate::history::TimelineHistory;
use crate::lsn::{Lsn, SegNo, TimelineId, WalSegSize};
use crate::time::Millis;

/// The outbox a handler writes to: the time of the event, the actions to
/// run, why (for the trace), and the transition statig performed.
#[derive(Debug, Default)]
pub struct Ctx {
    /// The time of the event being handled.
    pub now: Millis,
    /// Actions, in the order the runtime must execute them.
    pub actions: Vec<Action>,
    /// Why the machine did what it did (or why it ignored the event).
    pub causes: Vec<String>,
    /// Source and target of the transition, set by `after_transition`.
    pub moved: Option<(StateKind, StateKind)>,
}

impl Ctx {
    /// A context for an event at `now`.
    pub fn at(now: Millis) -> Ctx {
        Ctx {
            now,
            ..Ctx::default()
        }
    }

    pub(crate) fn act(&mut self, action: Action) {
        self.actions.push(action);
    }

    pub(crate) fn report(&mut self, report: Report) {
        self.actions.push(Action::Report { report });
    }

    pub(crate) fn because(&mut self, cause: impl Into<String>) {
        self.causes.push(cause.into());
    }
}

/// Where the walreceiver session is (PostgreSQL's WalRcvState, reduced to
/// what the startup process distinguishes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReceiverStatus {
    /// Started, not yet connected.
    Connecting,
    /// Connected and streaming.
    Streaming,
    /// The upstream ended the timeline; the session waits to be restarted
    /// (WAITING): its connection may be reused by the next start.
    Ended,
}

/// The current walreceiver session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receiver {
    /// Which `StartWalReceiver` this is.
    pub session: SessionId,
    /// The timeline it was asked to stream.
    pub tli: TimelineId,
    /// When it was started (its connect deadline counts from here).
    pub started_at: Millis,
    /// Connecting, streaming or waiting after a timeline end.
    pub status: ReceiverStatus,
}

/// What the latest walreceiver session flushed to `wal/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// The session that wrote it.
    pub session: SessionId,
    /// The timeline of the files it wrote.
    pub tli: TimelineId,
    /// Flushed up to here (starts at the segment start it streams from).
    pub upto: Lsn,
    /// The upstream ended `tli` here (`TimelineEnded`).
    pub ended_at: Option<Lsn>,
    /// Redo applied everything complete below this limit (a stream replay
    /// up to it ended): asking again before more is flushed would find
    /// the same incomplete record.
    pub drained_to: Lsn,
}

/// WAL a walreceiver session left in `wal/` past the last flush position
/// its upstream told ([`Event::UnconfirmedWalHeld`]): replayed only by
/// promotion, or once a stream rewrote and confirmed it.
///
/// [`Event::UnconfirmedWalHeld`]: super::event::Event::UnconfirmedWalHeld
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unconfirmed {
    /// The timeline of the files.
    pub tli: TimelineId,
    /// The upstream's last told flush position: confirmed WAL ends here.
    pub from: Lsn,
    /// The end of the WAL held.
    pub to: Lsn,
}

/// The walreceiver's leave to apply, on its own thread, WAL it exposed
/// (wrote here, told flushed upstream) without a `Replay`: one thread hop
/// fewer between a primary's flush and the record being readable here.
/// Granted by [`Action::AllowInlineApply`] only while nothing but the
/// stream decides how far replay goes (see [`Machine::inline_leave`]);
/// withdrawn by [`Action::WithdrawInlineApply`], whose answer
/// ([`Event::InlineApplyWithdrawn`]) says how far the session applied.
///
/// [`Event::InlineApplyWithdrawn`]: super::event::Event::InlineApplyWithdrawn
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InlineLeave {
    /// The session that may apply.
    pub session: SessionId,
    /// The timeline of its WAL (the replay position's).
    pub tli: TimelineId,
    /// It may apply records ending at or before this (the end of `tli` on
    /// the recovery timeline's history, if known).
    pub upto: Lsn,
}

/// The outstanding `Replay` request (at most one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRequest {
    /// Where the WAL came from.
    pub source: WalSource,
    /// Timeline of the files it reads.
    pub tli: TimelineId,
    /// The limit.
    pub upto: Lsn,
    /// For stream replays: the session that wrote the WAL.
    pub session: Option<SessionId>,
    /// Issued by the source round (archive/local) rather than the stream.
    pub for_round: bool,
}

impl ReplayRequest {
    /// For a round replay: the segment whose file the request made
    /// available, the one holding its last byte (its limit is that
    /// segment's end or its timeline's end inside it).
    pub fn segno(&self, seg_size: WalSegSize) -> SegNo {
        Lsn(self.upto.0.saturating_sub(1)).segno(seg_size)
    }
}

/// The outstanding archive-fetcher request (at most one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FetchRequest {
    /// The file asked for.
    pub file: WalFile,
    /// Asked of the archive (restore_command) or of `wal/`.
    pub at: Location,
}

/// What an answer of the archive fetcher said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The file is there (history files come with their contents).
    Found(Option<TimelineHistory>),
    /// The file is not there.
    Missing,
    /// restore_command failed (not the same as missing).
    Failed(String),
}

/// The last invalid record: it is never applied, and the copy it came
/// from is not read again at that position until a fresh copy replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRecord {
    /// Where the invalid record is (the replay position when found).
    pub at: Lsn,
    /// The failed check.
    pub check: RecordCheck,
    /// The source the copy came from.
    pub source: WalSource,
    /// Timeline of the file holding it.
    pub tli: TimelineId,
    /// A segment of the copy: the one holding the replay position, or
    /// (a second record) the one a round replay made available when the
    /// record spans into it, since either file may hold the bad bytes.
    pub segno: SegNo,
    /// For stream copies: the session that wrote it.
    pub session: Option<SessionId>,
}

/// Invalid records found at one position, from any source: the
/// archive/stream ping-pong detector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stall {
    /// The position.
    pub at: Lsn,
    /// How many times a record there was invalid.
    pub count: u32,
}

/// How a `Replay` request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayEnd {
    /// Everything valid below the limit was applied.
    Done(ReplayRequest),
    /// An invalid record stopped it.
    Invalid(ReplayRequest),
}

impl ReplayEnd {
    /// The request that ended.
    pub fn request(&self) -> &ReplayRequest {
        match self {
            ReplayEnd::Done(r) | ReplayEnd::Invalid(r) => r,
        }
    }
}

/// At most this many copies are remembered as holding an invalid record at
/// the replay position (one per timeline and source is all there can be).
pub const MAX_BAD_COPIES: usize = 16;

/// The shared storage of the recovery machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Parameters.
    pub config: RecoveryConfig,
    /// End of the last record applied: where replay continues.
    pub replay_lsn: Lsn,
    /// minRecoveryPoint: reads and promotion need replay to reach it.
    pub min_recovery_point: Lsn,
    /// Replay has reached `min_recovery_point`.
    pub consistent: bool,
    /// Target timeline, its history and newer timelines seen.
    pub timelines: Timelines,
    /// The current walreceiver session, if any.
    pub receiver: Option<Receiver>,
    /// What the latest session flushed (kept after it stops: promotion
    /// replays it).
    pub received: Option<Received>,
    /// Session numbers are never reused.
    pub next_session: u64,
    /// The outstanding `Replay`.
    pub replay_req: Option<ReplayRequest>,
    /// The outstanding archive-fetcher request.
    pub fetch_req: Option<FetchRequest>,
    /// The current round over archive and local `wal/`.
    pub round: Option<Round>,
    /// When the current or last round began (rounds are at least
    /// `wal_retrieve_retry_interval` apart).
    pub round_started_at: Millis,
    /// Invalid records at the replay position, one per copy that held
    /// one, until replay passes them or a fresh copy replaces the file
    /// (at most [`MAX_BAD_COPIES`]).
    pub bad: Vec<BadRecord>,
    /// Invalid records at one position (ping-pong detection).
    pub stall: Stall,
    /// restore_command failures in a row (back-off; reset by any answer).
    pub restore_failures: u32,
    /// Promotion was requested before recovery started.
    pub promote_pending: bool,
    /// A rescan for newer timelines completed once (PostgreSQL resolves
    /// `recovery_target_timeline = latest` before recovery begins).
    pub timeline_resolved: bool,
    /// The timeline promotion chose, once chosen.
    pub promoted_tli: Option<TimelineId>,
    /// WAL held in `wal/` that the upstream had not confirmed flushed.
    #[serde(default)]
    pub unconfirmed: Option<Unconfirmed>,
    /// How far a walreceiver applied under a withdrawn inline leave, told
    /// while a `Replay` was outstanding: the replay position once it ends.
    #[serde(default)]
    pub applied_inline: Lsn,
}

impl Machine {
    /// Shared storage before `RecoveryStarted`.
    pub fn new(config: RecoveryConfig) -> Machine {
        Machine {
            config,
            replay_lsn: Lsn::INVALID,
            min_recovery_point: Lsn::INVALID,
            consistent: false,
            timelines: Timelines::new(TimelineHistory::root(TimelineId::FIRST)),
            receiver: None,
            received: None,
            next_session: 1,
            replay_req: None,
            fetch_req: None,
            round: None,
            round_started_at: Millis::ZERO,
            bad: Vec::new(),
            stall: Stall::default(),
            restore_failures: 0,
            promote_pending: false,
            timeline_resolved: false,
            promoted_tli: None,
            unconfirmed: None,
            applied_inline: Lsn::INVALID,
        }
    }

    /// Take the start point from `RecoveryStarted`.
    pub(crate) fn start(
        &mut self,
        ctx: &mut Ctx,
        redo_lsn: Lsn,
        history: &TimelineHistory,
        min_recovery_point: Lsn,
    ) {
        self.replay_lsn = redo_lsn;
        self.min_recovery_point = min_recovery_point;
        self.timelines = Timelines::new(history.clone());
        self.stall = Stall {
            at: redo_lsn,
            count: 0,
        };
        ctx.act(Action::SetTargetTimeline {
            tli: history.timeline(),
            history: history.clone(),
        });
        self.check_consistency(ctx);
    }

    /// Segment start and timeline the stream starts from: the start of
    /// the segment holding the first byte no source had, as PostgreSQL's
    /// RequestXLogStreaming asks for the segment of the page it could not
    /// read. That is the replay position's segment, or the next one when
    /// the record there spans into a segment neither archive nor `wal/`
    /// has (`missing`, given only when the replay position's segment was
    /// restored whole from the archive): the upstream may already have
    /// removed that one (it was archived), so asking for it would fail
    /// for ever.
    pub(crate) fn start_receiver(&mut self, ctx: &mut Ctx, missing: Option<SegNo>) {
        let from = self.stream_start(missing);
        self.start_receiver_at(ctx, from);
    }

    /// Start a walreceiver session streaming from `from` on the replay
    /// position's timeline.
    pub(crate) fn start_receiver_at(&mut self, ctx: &mut Ctx, from: Lsn) {
        let session = SessionId(self.next_session);
        self.next_session += 1;
        let tli = self.timelines.timeline_of(self.replay_lsn);
        self.receiver = Some(Receiver {
            session,
            tli,
            started_at: ctx.now,
            status: ReceiverStatus::Connecting,
        });
        self.received = Some(Received {
            session,
            tli,
            upto: from,
            ended_at: None,
            drained_to: from,
        });
        ctx.act(Action::StartWalReceiver { session, from, tli });
    }

    /// See `start_receiver`: only the segment right after the replay
    /// position's, and only on the same timeline (a timeline switch in
    /// between leaves the stream to start where replay is).
    fn stream_start(&self, missing: Option<SegNo>) -> Lsn {
        let seg_size = self.config.wal_segment_size;
        let here = self.replay_lsn.segment_start(seg_size);
        let next = self.replay_lsn.segno(seg_size).checked_next(seg_size);
        match (missing, next) {
            (Some(m), Some(n)) if m == n => {
                let start = n.start_lsn(seg_size);
                let tli = self.timelines.timeline_of(self.replay_lsn);
                if self.timelines.timeline_of(start) == tli {
                    start
                } else {
                    here
                }
            }
            _ => here,
        }
    }

    /// Stop the current session, if any; returns it.
    pub(crate) fn stop_receiver(&mut self, ctx: &mut Ctx) -> Option<SessionId> {
        let r = self.receiver.take()?;
        ctx.act(Action::StopWalReceiver { session: r.session });
        Some(r.session)
    }

    /// Whether `session` is the current walreceiver session.
    pub(crate) fn is_current(&self, session: SessionId) -> bool {
        self.receiver.as_ref().is_some_and(|r| r.session == session)
    }

    /// A session's event that is not the current one's is stale.
    pub(crate) fn stale(&self, ctx: &mut Ctx, session: SessionId) -> bool {
        if self.is_current(session) {
            return false;
        }
        ctx.because(format!("stale walreceiver session {session}"));
        true
    }

    /// `WalFlushed`: WAL of `tli` may be replayed up to `upto` (written here,
    /// flushed upstream). Returns whether
    /// it moved what the current session received.
    pub(crate) fn note_flush(
        &mut self,
        ctx: &mut Ctx,
        session: SessionId,
        tli: TimelineId,
        upto: Lsn,
    ) -> bool {
        self.timelines.saw(tli);
        let Some(rec) = self.received.as_mut().filter(|r| r.session == session) else {
            ctx.because(format!("flush of stale session {session}"));
            return false;
        };
        if rec.tli != tli {
            ctx.because(format!(
                "flush on timeline {} but session {session} streams {}",
                tli.0, rec.tli.0
            ));
            return false;
        }
        if upto <= rec.upto {
            return false;
        }
        rec.upto = upto;
        self.confirm_held(ctx, tli, upto);
        if let Some(r) = self.receiver.as_mut().filter(|r| r.session == session) {
            if r.status == ReceiverStatus::Connecting {
                r.status = ReceiverStatus::Streaming;
            }
        }
        // A new session rewrote the segment holding an invalid record.
        let before = self.bad.len();
        self.bad
            .retain(|b| !(b.tli == tli && upto > b.at && b.session != Some(session)));
        if self.bad.len() < before {
            ctx.because(format!(
                "session {session} rewrote the WAL at {}",
                self.replay_lsn
            ));
        }
        true
    }

    /// A stream flushed (and its upstream confirmed) WAL up to `upto` on
    /// `tli`: held WAL below it was rewritten by the stream.
    fn confirm_held(&mut self, ctx: &mut Ctx, tli: TimelineId, upto: Lsn) {
        // Past the end of `tli` nothing is replayed from its files anyway.
        let end = self.timelines.end_of(tli).unwrap_or(Lsn(u64::MAX));
        if self
            .unconfirmed
            .is_some_and(|u| u.tli == tli && upto >= u.to.min(end))
        {
            self.unconfirmed = None;
            ctx.because(format!("the stream confirmed the WAL held up to {upto}"));
        }
    }

    /// [`Event::UnconfirmedWalHeld`]: from now on rounds outside
    /// promotion stop at `from` on `tli`.
    ///
    /// [`Event::UnconfirmedWalHeld`]: super::event::Event::UnconfirmedWalHeld
    pub(crate) fn note_unconfirmed_held(
        &mut self,
        ctx: &mut Ctx,
        tli: TimelineId,
        from: Lsn,
        to: Lsn,
    ) {
        if to <= from {
            return;
        }
        // An older hold on the same timeline starts no later than this one.
        let from = match self.unconfirmed {
            Some(u) if u.tli == tli => u.from.min(from),
            _ => from,
        };
        self.unconfirmed = Some(Unconfirmed { tli, from, to });
        ctx.because(format!(
            "WAL {from}..{to} is not confirmed flushed upstream: not replayed before promotion or a stream confirms it"
        ));
    }

    /// [`Event::UnconfirmedWalTruncated`]: nothing is held past `from`.
    ///
    /// [`Event::UnconfirmedWalTruncated`]: super::event::Event::UnconfirmedWalTruncated
    pub(crate) fn note_unconfirmed_truncated(&mut self, ctx: &mut Ctx, tli: TimelineId, from: Lsn) {
        let Some(u) = self.unconfirmed.as_mut().filter(|u| u.tli == tli) else {
            return;
        };
        u.to = u.to.min(from);
        ctx.because(format!(
            "the upstream has WAL only up to {from}: the WAL held past it was truncated"
        ));
        if u.to <= u.from {
            self.unconfirmed = None;
        }
    }

    /// Where a round replaying `tli` must stop, outside promotion: the
    /// start of WAL held unconfirmed.
    pub(crate) fn unconfirmed_cap(&self, tli: TimelineId, promoting: bool) -> Option<Lsn> {
        self.unconfirmed
            .filter(|u| !promoting && u.tli == tli)
            .map(|u| u.from)
    }

    /// `TimelineEnded` from the current session. Returns whether it was
    /// about the session's timeline (else it is ignored).
    pub(crate) fn note_timeline_end(
        &mut self,
        ctx: &mut Ctx,
        session: SessionId,
        tli: TimelineId,
        next_tli: TimelineId,
        switch_point: Lsn,
    ) -> bool {
        let Some(rec) = self
            .received
            .as_mut()
            .filter(|r| r.session == session && r.tli == tli)
        else {
            ctx.because(format!(
                "timeline {} is not what session {session} streams",
                tli.0
            ));
            return false;
        };
        rec.ended_at = Some(switch_point);
        self.timelines.saw(next_tli);
        if let Some(r) = self.receiver.as_mut().filter(|r| r.session == session) {
            r.status = ReceiverStatus::Ended;
        }
        true
    }

    /// Facts a history file carries, whoever asked: the timeline exists.
    pub(crate) fn note_history(&mut self, ctx: &mut Ctx, tli: TimelineId, h: &TimelineHistory) {
        if let Err(report) = self.timelines.learn(tli, h) {
            ctx.report(report);
        }
    }

    /// Replay applied everything up to `upto` (clamped to the request).
    pub(crate) fn note_replayed(&mut self, ctx: &mut Ctx, upto: Lsn) {
        let Some(req) = &self.replay_req else {
            ctx.because("replay progress without a replay request");
            return;
        };
        let upto = upto.min(req.upto);
        self.advance_replay(ctx, upto);
    }

    /// The replay position moves to `upto` if that is ahead.
    fn advance_replay(&mut self, ctx: &mut Ctx, upto: Lsn) {
        if upto <= self.replay_lsn {
            return;
        }
        self.replay_lsn = upto;
        self.bad.retain(|b| b.at >= upto);
        if self.stall.at < upto {
            self.stall = Stall { at: upto, count: 0 };
        }
        self.check_consistency(ctx);
    }

    /// Announce consistency once replay reaches the minimum recovery point.
    pub(crate) fn check_consistency(&mut self, ctx: &mut Ctx) {
        if !self.consistent && self.replay_lsn >= self.min_recovery_point {
            self.consistent = true;
            ctx.act(Action::ReachedConsistency {
                at: self.replay_lsn,
            });
        }
    }

    /// A terminal redo event: ends the outstanding `Replay`. `None` when
    /// there is none (stale).
    pub(crate) fn finish_replay(&mut self, ctx: &mut Ctx, event: &Event) -> Option<ReplayEnd> {
        let (at, check) = match event {
            Event::EndOfWalReached { at } => (*at, None),
            Event::InvalidRecord { at, check } => (*at, Some(*check)),
            _ => return None,
        };
        if self.replay_req.is_none() {
            ctx.because("redo result without a replay request");
            return None;
        }
        self.note_replayed(ctx, at);
        let req = self.replay_req.take()?;
        let Some(check) = check else {
            // A walreceiver applied further on its own meanwhile.
            let inline = std::mem::take(&mut self.applied_inline);
            self.advance_replay(ctx, inline);
            if let Some(rec) = self
                .received
                .as_mut()
                .filter(|r| Some(r.session) == req.session)
            {
                rec.drained_to = rec.drained_to.max(req.upto);
            }
            return Some(ReplayEnd::Done(req));
        };
        self.mark_bad(ctx, &req, check);
        Some(ReplayEnd::Invalid(req))
    }

    /// An invalid record at the replay position: the copy that held it is
    /// not read there again. For a round replay of a later segment (a
    /// record spanning into it) both files are remembered: `wal/` now holds
    /// the very file the request read (a restored segment replaces the
    /// local one), so reading "its local copy" would read the same bytes.
    fn mark_bad(&mut self, ctx: &mut Ctx, req: &ReplayRequest, check: RecordCheck) {
        let at = self.replay_lsn;
        let seg_size = self.config.wal_segment_size;
        let here = at.segno(seg_size);
        self.remember_bad(req, check, here);
        if req.source != WalSource::Stream && req.segno(seg_size) != here {
            self.remember_bad(req, check, req.segno(seg_size));
        }
        if self.stall.at == at {
            self.stall.count = self.stall.count.saturating_add(1);
        } else {
            self.stall = Stall { at, count: 1 };
        }
        ctx.report(Report::InvalidRecord {
            at,
            source: req.source,
            check,
        });
    }

    fn remember_bad(&mut self, req: &ReplayRequest, check: RecordCheck, segno: SegNo) {
        self.bad
            .retain(|b| !(b.tli == req.tli && b.segno == segno && b.session == req.session));
        if self.bad.len() >= MAX_BAD_COPIES {
            self.bad.remove(0);
        }
        self.bad.push(BadRecord {
            at: self.replay_lsn,
            check,
            source: req.source,
            tli: req.tli,
            segno,
            session: req.session,
        });
    }

    /// An archive-fetcher answer: records its facts and, if it answers the
    /// outstanding request, takes it. `None` for stale answers.
    pub(crate) fn take_fetch(
        &mut self,
        ctx: &mut Ctx,
        event: &Event,
    ) -> Option<(FetchRequest, FetchOutcome)> {
        let (file, at, outcome) = fetch_answer(event)?;
        self.fetch_facts(ctx, &file, at, &outcome);
        let req = FetchRequest { file, at };
        if self.fetch_req != Some(req) {
            ctx.because(format!("no outstanding request for {file} ({at:?})"));
            return None;
        }
        self.fetch_req = None;
        if at == Location::Archive && !matches!(outcome, FetchOutcome::Failed(_)) {
            self.restore_failures = 0;
        }
        Some((req, outcome))
    }

    fn fetch_facts(&mut self, ctx: &mut Ctx, file: &WalFile, at: Location, outcome: &FetchOutcome) {
        if let (WalFile::History { tli }, FetchOutcome::Found(Some(h))) = (file, outcome) {
            self.note_history(ctx, *tli, h);
        }
        // A restored copy replaced the file holding the invalid record. A
        // record spanning two segments marked both files (either may hold
        // the bad bytes): replacing one of them makes the pair a new
        // combination, so both marks of that read go (simulator seed
        // 67014: the bad bytes were in the first file; once it was
        // restored whole, the second, good, file stayed marked and
        // promotion ended before WAL that was there).
        let restored = at == Location::Archive && matches!(outcome, FetchOutcome::Found(_));
        if let (true, WalFile::Segment { tli, segno }) = (restored, file) {
            let reads: Vec<Lsn> = self
                .bad
                .iter()
                .filter(|b| b.tli == *tli && b.segno == *segno)
                .map(|b| b.at)
                .collect();
            self.bad
                .retain(|b| !(b.tli == *tli && (b.segno == *segno || reads.contains(&b.at))));
        }
    }

    /// Ask the archive fetcher for `file` at `at`.
    pub(crate) fn request(&mut self, ctx: &mut Ctx, file: WalFile, at: Location) {
        self.fetch_req = Some(FetchRequest { file, at });
        ctx.act(match (file, at) {
            (WalFile::Segment { tli, segno }, Location::Archive) => {
                Action::RestoreSegment { tli, segno }
            }
            (WalFile::Segment { tli, segno }, Location::Local) => {
                Action::FindLocalSegment { tli, segno }
            }
            (WalFile::History { tli }, Location::Archive) => Action::RestoreHistoryFile { tli },
            (WalFile::History { tli }, Location::Local) => Action::FindLocalHistoryFile { tli },
        });
    }

    /// Ask redo to replay up to `upto`.
    pub(crate) fn replay(
        &mut self,
        ctx: &mut Ctx,
        source: WalSource,
        tli: TimelineId,
        upto: Lsn,
        session: Option<SessionId>,
    ) {
        self.replay_req = Some(ReplayRequest {
            source,
            tli,
            upto,
            session,
            for_round: session.is_none(),
        });
        ctx.act(Action::Replay { source, tli, upto });
    }

    /// How far received stream WAL may be replayed, if beyond the replay
    /// position: the flush position, cut at the timeline's end, on the
    /// timeline of the replay position, and not at a known invalid record
    /// of the same session. `live`: only while the session runs.
    pub(crate) fn stream_limit(&self, live: bool) -> Option<Lsn> {
        let rec = self.received.as_ref()?;
        if live && !self.is_current(rec.session) {
            return None;
        }
        if rec.tli != self.timelines.timeline_of(self.replay_lsn) {
            return None;
        }
        let blocked = self.bad.iter().any(|b| {
            b.source == WalSource::Stream
                && b.session == Some(rec.session)
                && b.at == self.replay_lsn
        });
        let mut limit = rec.upto;
        if let Some(end) = rec.ended_at {
            limit = limit.min(end);
        }
        if let Some(end) = self.timelines.end_of(rec.tli) {
            limit = limit.min(end);
        }
        (!blocked && limit > self.replay_lsn && limit > rec.drained_to).then_some(limit)
    }

    /// Replay received WAL if redo is idle and there is some. Returns
    /// whether a replay was issued.
    pub(crate) fn maybe_stream_replay(&mut self, ctx: &mut Ctx, live: bool) -> bool {
        if self.replay_req.is_some() {
            return false;
        }
        let Some(limit) = self.stream_limit(live) else {
            return false;
        };
        let Some(rec) = &self.received else {
            return false;
        };
        let (tli, session) = (rec.tli, rec.session);
        self.replay(ctx, WalSource::Stream, tli, limit, Some(session));
        true
    }

    /// The inline leave the machine gives now, if any: only in `Streaming`,
    /// consistent, to the current session while it streams the replay
    /// position's timeline with nothing ended, held unconfirmed or found
    /// invalid on it, and no request but stream replays outstanding. Then
    /// nothing but the stream decides how far replay goes: every record
    /// the walreceiver exposes (written here, flushed upstream) is one the
    /// machine would ask redo to apply next. Whatever else decides it
    /// (promotion, a timeline switch, a stopped or lost session, a
    /// reload, an archive round) leaves `Streaming` or ends the session's
    /// `Streaming` status, and the leave is withdrawn before the step's
    /// other actions run. walrep has no recovery target (other than the
    /// timeline), `recovery_min_apply_delay` or replay pause; each of
    /// those, when added, must withdraw the leave here too.
    pub fn inline_leave(&self, state: StateKind) -> Option<InlineLeave> {
        if state != StateKind::Streaming || !self.consistent || self.fetch_req.is_some() {
            return None;
        }
        let r = self.receiver.as_ref()?;
        let rec = self.received.as_ref().filter(|x| x.session == r.session)?;
        let clean = r.status == ReceiverStatus::Streaming
            && rec.ended_at.is_none()
            && rec.tli == self.timelines.timeline_of(self.replay_lsn)
            && self.unconfirmed.is_none_or(|u| u.tli != rec.tli)
            && !self.bad.iter().any(|b| b.source == WalSource::Stream);
        let round_replay = self.replay_req.as_ref().is_some_and(|q| q.for_round);
        (clean && !round_replay).then(|| InlineLeave {
            session: r.session,
            tli: rec.tli,
            upto: self.timelines.end_of(rec.tli).unwrap_or(Lsn(u64::MAX)),
        })
    }

    /// The inline leave of `session` was withdrawn after it applied up to
    /// `applied`: that WAL was exposed (written here, flushed upstream),
    /// so the session received it, and it is replayed (once the
    /// outstanding `Replay`, if any, ends).
    pub(crate) fn note_applied_inline(&mut self, ctx: &mut Ctx, session: SessionId, applied: Lsn) {
        if let Some(rec) = self.received.as_mut().filter(|r| r.session == session) {
            rec.upto = rec.upto.max(applied);
        }
        if applied <= self.replay_lsn {
            return;
        }
        ctx.because(format!("session {session} applied up to {applied} itself"));
        if self.replay_req.is_some() {
            self.applied_inline = self.applied_inline.max(applied);
        } else {
            self.advance_replay(ctx, applied);
        }
    }

    /// The stream has nothing more at the replay position: its session
    /// ended its timeline (after a timeline end nothing more comes, what
    /// was flushed is all there is) and nothing it flushed can be replayed
    /// from here: all of it was, or the rest lies past the end of the
    /// streamed timeline on the recovery timeline's history (the upstream
    /// may end that timeline later, on a branch recovery does not follow).
    pub(crate) fn stream_exhausted_at_end(&self) -> bool {
        self.replay_req.is_none()
            && self
                .received
                .as_ref()
                .is_some_and(|r| self.is_current(r.session) && r.ended_at.is_some())
            && self.stream_limit(true).is_none()
    }

    /// The wait before the next round: the retry interval, longer after
    /// restore_command failures or a ping-pong (reported).
    pub(crate) fn retry_delay_ms(&self, ctx: &mut Ctx) -> u64 {
        let c = &self.config;
        let mut delay = c.wal_retrieve_retry_interval_ms;
        if self.restore_failures > 0 {
            delay = delay.max(c.backoff_ms(self.restore_failures));
        }
        if self.stall.count >= c.ping_pong_threshold {
            let over = self.stall.count - c.ping_pong_threshold;
            delay = delay.max(c.backoff_ms(over + 2));
            ctx.report(Report::PingPong {
                at: self.stall.at,
                count: self.stall.count,
                retry_in_ms: delay,
            });
        }
        delay
    }

    /// Whether there is WAL flushed by the walreceiver that replay has not
    /// applied and could (promotion must replay it first).
    pub(crate) fn unreplayed_received(&self) -> bool {
        self.stream_limit(false).is_some()
    }
}

/// Whether `event` is an answer of the archive fetcher.
pub fn is_fetch_answer(event: &Event) -> bool {
    fetch_answer(event).is_some()
}

/// The (file, location, outcome) an archive-fetcher event answers.
fn fetch_answer(event: &Event) -> Option<(WalFile, Location, FetchOutcome)> {
    use FetchOutcome::{Failed, Found, Missing};
    use Location::{Archive, Local};
    let seg = |tli: &TimelineId, segno: &SegNo| WalFile::Segment {
        tli: *tli,
        segno: *segno,
    };
    Some(match event {
        Event::SegmentRestored { tli, segno } => (seg(tli, segno), Archive, Found(None)),
        Event::SegmentNotInArchive { tli, segno } => (seg(tli, segno), Archive, Missing),
        Event::SegmentFoundLocally { tli, segno } => (seg(tli, segno), Local, Found(None)),
        Event::SegmentNotFoundLocally { tli, segno } => (seg(tli, segno), Local, Missing),
        Event::RestoreCommandFailed { file, reason } => (*file, Archive, Failed(reason.clone())),
        Event::HistoryRestored { tli, history } => (
            WalFile::History { tli: *tli },
            Archive,
            Found(Some(history.clone())),
        ),
        Event::HistoryNotInArchive { tli } => (WalFile::History { tli: *tli }, Archive, Missing),
        Event::HistoryFoundLocally { tli, history } => (
            WalFile::History { tli: *tli },
            Local,
            Found(Some(history.clone())),
        ),
        Event::HistoryNotFoundLocally { tli } => (WalFile::History { tli: *tli }, Local, Missing),
        _ => return None,
    })
}
