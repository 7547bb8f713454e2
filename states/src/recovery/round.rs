//! One round over the archive and local `wal/`: PostgreSQL's ARCHIVE and
//! PG_WAL sources. A round optionally rescans for newer timelines (history
//! files, archive then `wal/`), then for each segment tries every candidate
//! timeline newest first, the archive before `wal/`, replays what it found
//! and moves to the next segment, until nothing is found or a record is
//! invalid: the round is then exhausted and the caller picks the next source.

use super::action::{Action, Report, WalSource};
use super::config::TargetTimeline;
use super::event::WalFile;
use super::round_state::{
    Exhaustion, Location, Round, RoundMode, RoundOutcome, Step, MAX_TIMELINE_PROBES,
};
use super::shared::{Ctx, FetchOutcome, FetchRequest, Machine, ReplayEnd};
use crate::lsn::{Lsn, SegNo, TimelineId, WalSegSize};

impl Machine {
    /// Begin a round at the replay position's segment.
    pub(crate) fn round_start(&mut self, ctx: &mut Ctx, mode: RoundMode) -> RoundOutcome {
        let segno = self.replay_lsn.segno(self.config.wal_segment_size);
        if mode != RoundMode::Promotion {
            self.round_started_at = ctx.now;
        }
        self.round = Some(Round {
            mode,
            segno,
            step: Step::Fetch {
                tli: self.timelines.target,
                at: Location::Local,
            },
            skip_archive: mode == RoundMode::LocalOnly || !self.config.archive_configured,
            previous_complete: false,
        });
        // Standby rounds rescan (PostgreSQL rescans after every stream
        // failure); any round rescans until `latest` was resolved once, as
        // PostgreSQL resolves it before recovery begins.
        let rescan = mode == RoundMode::Standby || !self.timeline_resolved;
        match (rescan, self.scan_bound()) {
            (true, Some(_)) => self.scan_next(ctx, self.timelines.target.checked_next(), 0),
            _ => {
                self.timeline_resolved = true;
                self.fetch_after(ctx, None)
            }
        }
    }

    /// The highest timeline a rescan may look for: none with `current`.
    fn scan_bound(&self) -> Option<TimelineId> {
        match self.config.target_timeline {
            TargetTimeline::Latest => Some(TimelineId(u32::MAX)),
            TargetTimeline::Current => None,
            TargetTimeline::Id(n) => (n > self.timelines.target).then_some(n),
        }
    }

    fn scan_next(&mut self, ctx: &mut Ctx, tli: Option<TimelineId>, probes: u32) -> RoundOutcome {
        let bound = self.scan_bound().unwrap_or(self.timelines.target);
        let mut tli = tli;
        while let Some(t) = tli.filter(|t| self.timelines.knows(*t) && *t < bound) {
            tli = t.checked_next();
        }
        let Some(tli) = tli else {
            return self.finish_scan(ctx);
        };
        if tli > bound || self.timelines.knows(tli) || probes >= MAX_TIMELINE_PROBES {
            return self.finish_scan(ctx);
        }
        let at = self.first_location();
        self.set_step(Step::Scan {
            tli,
            at,
            probes: probes + 1,
        });
        self.request(ctx, WalFile::History { tli }, at);
        RoundOutcome::Waiting
    }

    fn first_location(&self) -> Location {
        match &self.round {
            Some(r) if !r.skip_archive => Location::Archive,
            _ => Location::Local,
        }
    }

    fn set_step(&mut self, step: Step) {
        if let Some(r) = self.round.as_mut() {
            r.step = step;
        }
    }

    /// The rescan is over: follow the newest known timeline if PostgreSQL's
    /// rules allow, then look for the segment.
    fn finish_scan(&mut self, ctx: &mut Ctx) -> RoundOutcome {
        self.timeline_resolved = true;
        let limit = match self.config.target_timeline {
            TargetTimeline::Id(n) => Some(n),
            _ => None,
        };
        let newest = self
            .timelines
            .newest_known(limit)
            .filter(|n| limit.is_none_or(|l| *n == l));
        if let Some(newest) = newest {
            self.follow(ctx, newest);
        }
        self.fetch_after(ctx, None)
    }

    /// Try to make `tli` the target (rescanLatestTimeLine).
    pub(crate) fn follow(&mut self, ctx: &mut Ctx, tli: TimelineId) -> bool {
        match self.timelines.switch_to(tli, self.replay_lsn) {
            Ok(report) => {
                ctx.act(Action::SetTargetTimeline {
                    tli,
                    history: self.timelines.expected.clone(),
                });
                ctx.report(report);
                true
            }
            Err(report) => {
                ctx.report(report);
                false
            }
        }
    }

    /// Ask for the next (timeline, location) after `after` for the round's
    /// segment: candidates newest first, archive before `wal/`.
    fn fetch_after(
        &mut self,
        ctx: &mut Ctx,
        after: Option<(TimelineId, Location)>,
    ) -> RoundOutcome {
        let Some(round) = self.round.clone() else {
            return RoundOutcome::Exhausted(Exhaustion::NotFound {
                segno: self.replay_lsn.segno(self.config.wal_segment_size),
                previous_complete: false,
            });
        };
        let seg_size = self.config.wal_segment_size;
        let pos = self
            .replay_lsn
            .max(Lsn(round.segno.0.saturating_mul(seg_size.bytes())));
        let mut options = Vec::new();
        for tli in self.timelines.candidates(round.segno, pos, seg_size) {
            options.push((tli, Location::Archive));
            options.push((tli, Location::Local));
        }
        let start = match after {
            Some(a) => options.iter().position(|o| *o == a).map_or(0, |i| i + 1),
            None => 0,
        };
        let next = options[start..].iter().copied().find(|(tli, at)| match at {
            Location::Archive => !round.skip_archive,
            Location::Local => !self.local_is_bad(*tli, round.segno),
        });
        let Some((tli, at)) = next else {
            self.round = None;
            return RoundOutcome::Exhausted(Exhaustion::NotFound {
                segno: round.segno,
                previous_complete: round.previous_complete,
            });
        };
        self.set_step(Step::Fetch { tli, at });
        self.request(
            ctx,
            WalFile::Segment {
                tli,
                segno: round.segno,
            },
            at,
        );
        RoundOutcome::Waiting
    }

    /// The local file of (`tli`, `segno`) holds the invalid record at the
    /// replay position: reading it again would fail at once.
    pub(crate) fn local_is_bad(&self, tli: TimelineId, segno: SegNo) -> bool {
        self.bad
            .iter()
            .any(|b| b.tli == tli && b.segno == segno && b.at == self.replay_lsn)
    }

    /// An answer to the round's outstanding request.
    pub(crate) fn round_on_fetch(
        &mut self,
        ctx: &mut Ctx,
        req: FetchRequest,
        outcome: FetchOutcome,
    ) -> RoundOutcome {
        let Some(round) = self.round.clone() else {
            return RoundOutcome::Waiting;
        };
        match (round.step, outcome) {
            (Step::Scan { tli, probes, .. }, FetchOutcome::Found(Some(h)))
                if h.timeline() == tli =>
            {
                self.scan_next(ctx, tli.checked_next(), probes)
            }
            (Step::Scan { tli, at, probes }, FetchOutcome::Failed(reason)) => {
                self.restore_failed(ctx, req.file, reason);
                self.scan_on_missing(ctx, tli, at, probes)
            }
            (Step::Scan { tli, at, probes }, _) => self.scan_on_missing(ctx, tli, at, probes),
            (Step::Fetch { tli, at }, FetchOutcome::Found(_)) => self.replay_found(ctx, tli, at),
            (Step::Fetch { tli, .. }, FetchOutcome::Failed(reason)) => {
                self.restore_failed(ctx, req.file, reason);
                self.fetch_after(ctx, Some((tli, Location::Archive)))
            }
            (Step::Fetch { tli, at }, FetchOutcome::Missing) => {
                self.fetch_after(ctx, Some((tli, at)))
            }
            (Step::Replay { .. }, _) => RoundOutcome::Waiting,
        }
    }

    fn scan_on_missing(
        &mut self,
        ctx: &mut Ctx,
        tli: TimelineId,
        at: Location,
        probes: u32,
    ) -> RoundOutcome {
        if at == Location::Local {
            return self.finish_scan(ctx);
        }
        self.set_step(Step::Scan {
            tli,
            at: Location::Local,
            probes,
        });
        self.request(ctx, WalFile::History { tli }, Location::Local);
        RoundOutcome::Waiting
    }

    /// restore_command failed: count it, report it, skip the archive for
    /// the rest of the round.
    fn restore_failed(&mut self, ctx: &mut Ctx, file: WalFile, reason: String) {
        let Some(round) = self.round.as_mut() else {
            return;
        };
        round.skip_archive = true;
        if round.mode == RoundMode::Promotion {
            ctx.report(Report::RestoreFailedDuringPromotion { file, reason });
            return;
        }
        self.restore_failures = self.restore_failures.saturating_add(1);
        ctx.report(Report::RestoreCommandFailing {
            file,
            failures: self.restore_failures,
            reason,
        });
    }

    /// Replay the segment just found, up to its end or its timeline's end.
    fn replay_found(&mut self, ctx: &mut Ctx, tli: TimelineId, at: Location) -> RoundOutcome {
        let Some(segno) = self.round.as_ref().map(|r| r.segno) else {
            return RoundOutcome::Waiting;
        };
        let seg_end = segment_end(segno, self.config.wal_segment_size);
        let mut limit = self
            .timelines
            .end_of(tli)
            .map_or(seg_end, |e| e.min(seg_end));
        if let Some(cap) = self.round_cap(tli).filter(|_| at == Location::Local) {
            let seg_start = segno.start_lsn(self.config.wal_segment_size);
            if cap <= self.replay_lsn.max(seg_start) {
                return self.stop_at_unconfirmed(ctx, cap);
            }
            limit = limit.min(cap);
        }
        let source = match at {
            Location::Archive => WalSource::Archive,
            Location::Local => WalSource::Local,
        };
        self.set_step(Step::Replay { source, tli, limit });
        self.replay(ctx, source, tli, limit, None);
        RoundOutcome::Waiting
    }

    /// A copy held an invalid record: it is not read again there. Before
    /// the round gives up, an older candidate timeline's file of the same
    /// segment may still hold the WAL up to that timeline's end (the new
    /// timeline's file starts with a copy of it). PostgreSQL would give up
    /// on the source at once; trying the remaining candidates is safe (each
    /// is read only within its own timeline's span) and keeps a corrupt
    /// copy of the newest file from ending recovery early.
    fn after_invalid_copy(
        &mut self,
        ctx: &mut Ctx,
        source: WalSource,
        tli: TimelineId,
    ) -> RoundOutcome {
        let at = match source {
            WalSource::Archive => Location::Archive,
            _ => Location::Local,
        };
        match self.fetch_after(ctx, Some((tli, at))) {
            RoundOutcome::Waiting => {
                ctx.because("trying an older timeline's copy of the segment");
                RoundOutcome::Waiting
            }
            RoundOutcome::Exhausted(_) => {
                self.round = None;
                RoundOutcome::Exhausted(Exhaustion::Invalid {
                    at: self.replay_lsn,
                })
            }
        }
    }

    /// The round's replay ended: on to the next segment, or exhausted.
    pub(crate) fn round_on_replay(&mut self, ctx: &mut Ctx, end: ReplayEnd) -> RoundOutcome {
        let Some(round) = self.round.clone() else {
            return RoundOutcome::Waiting;
        };
        let Step::Replay { limit, source, tli } = round.step else {
            return RoundOutcome::Waiting;
        };
        if let ReplayEnd::Invalid(_) = end {
            return self.after_invalid_copy(ctx, source, tli);
        }
        let seg_size = self.config.wal_segment_size;
        let local = source == WalSource::Local;
        if let Some(cap) = self.round_cap(tli).filter(|c| local && *c == limit) {
            if self.replay_lsn >= cap {
                return self.stop_at_unconfirmed(ctx, cap);
            }
        }
        let next = if limit >= segment_end(round.segno, seg_size) {
            // The segment was readable to its end. After the last one of
            // the LSN space (whose end saturates at FFFFFFFF/FFFFFFFF) there
            // is no file to ask for: a record incomplete there stays so.
            let Some(next) = round.segno.checked_next(seg_size) else {
                self.round = None;
                return RoundOutcome::Exhausted(Exhaustion::EndOfLsnSpace {
                    at: self.replay_lsn,
                });
            };
            next
        } else if self.replay_lsn >= limit {
            // The timeline ended inside the segment: its successor's copy.
            round.segno
        } else {
            self.round = None;
            return RoundOutcome::Exhausted(Exhaustion::EndedEarly {
                at: self.replay_lsn,
            });
        };
        if let Some(r) = self.round.as_mut() {
            r.previous_complete = next != r.segno && source == WalSource::Archive;
            r.segno = next;
        }
        self.fetch_after(ctx, None)
    }
}

impl Machine {
    /// The unconfirmed-WAL cap for this round's replays of `tli` from
    /// `wal/` (an archived segment is one the upstream completed: flushed).
    fn round_cap(&self, tli: TimelineId) -> Option<Lsn> {
        let promoting = self
            .round
            .as_ref()
            .is_some_and(|r| r.mode == RoundMode::Promotion);
        self.unconfirmed_cap(tli, promoting)
    }

    /// The round reached WAL held unconfirmed: it ends there, as at the
    /// end of local WAL (the stream is asked next).
    fn stop_at_unconfirmed(&mut self, ctx: &mut Ctx, cap: Lsn) -> RoundOutcome {
        self.round = None;
        ctx.because(format!(
            "WAL past {cap} is held unconfirmed: the round ends there"
        ));
        RoundOutcome::Exhausted(Exhaustion::EndedEarly {
            at: self.replay_lsn,
        })
    }
}

/// The first position after segment `segno` (saturating at the end of the
/// LSN space, so no input can overflow it).
pub fn segment_end(segno: SegNo, seg_size: WalSegSize) -> Lsn {
    Lsn(segno.0.saturating_add(1).saturating_mul(seg_size.bytes()))
}
