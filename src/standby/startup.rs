//! The startup process: one thread owns the recovery core, feeds it events
//! from the fetcher, the redo loop, the walreceiver, the trigger watcher,
//! its one timer and shutdown, and executes the actions it returns.
//!
//! The loop is the quinn-proto shape of STYLE.md: handle an event, drain the
//! actions and the trace, re-arm one timer at `poll_timeout()`. It waits on
//! its event queue alone: shutdown arrives as `ShutdownRequested` on it,
//! and a reload that changes the upstream as `UpstreamReloaded` from the
//! reload watcher ([`spawn_reload_watcher`]). A `select!` over several
//! channels cost every event an extra sleep and wake-up: woken by a sender
//! still holding the channel's waker lock, the thread slept again on that
//! lock to unregister (one per synchronous commit, twice). A one-channel
//! `Select` still did, on about one wake-up in ten: the thread now parks
//! and every sender unparks it ([`super::events`]). After each
//! drain it publishes the machine's status (the node reads it for INFO,
//! `/status` and `/metrics`). A short `Replay` (a streaming standby's
//! batch) runs here when the redo thread is idle, and its answer is
//! handled before the next wait: no hand-off to the redo thread and back
//! per received batch (see `redo::RedoLink`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender};

use super::events::{EventReceiver, EventSender};
use super::fetcher::FetchRequest;
use super::progress::{LastTransition, StandbyStatus};
use super::promote;
use super::receiver::Sessions;
use super::receiver::APPLY_REPORT_SPACING;
use super::redo::{RedoLink, RedoRequest};
use super::tracelog::TraceLog;
use super::{StandbyError, StandbyHandles};
use crate::states::recovery::{
    Action, Event, ExitReason, PromotionStep, Recovery, Severity, StateKind, Transition,
};
use crate::states::time::Millis;
use crate::store::control::now_ms;
use crate::Lsn;

/// The longest the loop sleeps when the core has no timer armed (a bound,
/// not a poll: every event wakes it at once).
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// The channels between the startup process and its workers.
pub struct Channels {
    /// Events from every worker; the startup thread waits for them by
    /// parking (see [`super::events`]).
    pub events: EventReceiver<Event>,
    /// For the executor's own answers (promotion steps).
    pub events_tx: EventSender<Event>,
    pub fetch: Sender<FetchRequest>,
    /// Redo: its thread, or this one for a short request.
    pub redo: RedoLink,
}

/// Longest wait to queue an event from outside the workers (shutdown, a
/// reload): the queue is bounded.
pub(crate) const EVENT_SEND_BOUND: Duration = Duration::from_secs(10);

/// Follow reloads of the configuration on a thread of its own: a change of
/// the upstream settings becomes `UpstreamReloaded` on the startup queue
/// (whose handling reconnects the walreceiver). Ends when `stop` is
/// dropped (or sent to).
pub(crate) fn spawn_reload_watcher(
    config: crate::config::LiveConfig,
    events: EventSender<Event>,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    // Subscribed before the settings are read: a reload in between still
    // leaves a token.
    let reloads = config.subscribe();
    let mut upstream = upstream_settings(&config.get());
    std::thread::Builder::new()
        .name("standby-reload".into())
        .spawn(move || loop {
            select! {
                recv(stop) -> _ => return,
                recv(reloads.receiver()) -> _ => {
                    let now = upstream_settings(&config.get());
                    if now != upstream {
                        let stream_configured = !now.0.trim().is_empty();
                        upstream = now;
                        let ev = Event::UpstreamReloaded { stream_configured };
                        if events.send_timeout(ev, EVENT_SEND_BOUND).is_err() {
                            tracing::warn!("the startup process did not take a reload of primary_conninfo");
                        }
                    }
                }
                default(IDLE_WAIT) => {}
            }
        })
}

/// What a walreceiver session connects with: a reload changing either
/// reconnects it.
fn upstream_settings(c: &crate::config::Config) -> (String, String) {
    (c.primary_conninfo.clone(), c.primary_slot_name.clone())
}

/// The startup thread's state.
pub struct Startup {
    core: Recovery,
    h: StandbyHandles,
    ch: Channels,
    receivers: Sessions<Event>,
    trace: TraceLog,
    epoch: Instant,
    /// What is published after each drain besides the machine's status.
    status: StandbyStatus,
    /// Set once the end-of-recovery record is written: the old timeline's
    /// segment to rename to `.partial` after opening for writes.
    partial: Option<promote::PartialSegment>,
    /// `standby.signal` was removed and the data directory not fsynced
    /// since: the next promotion step does it (see
    /// [`promote::remove_standby_signal`]).
    standby_signal_unsynced: bool,
    /// `standby.signal` is to be removed once the walreceiver stopped for
    /// the promotion has made its WAL durable (the history stage does it).
    standby_signal_to_remove: bool,
    /// What the history-file step prepared for the end-of-recovery step.
    prepared: Option<promote::PreparedTimeline>,
    /// The promotion's control file update, run once writes are accepted
    /// (the node holds their acknowledgements until it is durable).
    control_update: Option<promote::ControlUpdate>,
    /// Redo's answers to a request run on this thread, handled before the
    /// next wait (in order, before anything queued meanwhile).
    answers: VecDeque<Event>,
    /// An inline replay left progress unreported upstream: report it at
    /// this time unless another replay does first.
    apply_owed_at: Option<Instant>,
}

impl Startup {
    pub fn new(
        core: Recovery,
        receivers: Sessions<Event>,
        ch: Channels,
        trace: TraceLog,
        h: StandbyHandles,
    ) -> Startup {
        Startup {
            core,
            h,
            ch,
            receivers,
            trace,
            epoch: Instant::now(),
            status: StandbyStatus::default(),
            partial: None,
            standby_signal_unsynced: false,
            standby_signal_to_remove: false,
            prepared: None,
            control_update: None,
            answers: VecDeque::new(),
            apply_owed_at: None,
        }
    }

    fn now(&self) -> Millis {
        Millis(self.epoch.elapsed().as_millis() as u64)
    }

    /// Run until the machine reaches a final state.
    pub fn run(mut self, first: impl IntoIterator<Item = Event>) {
        let _span = tracing::info_span!("startup").entered();
        for ev in first {
            self.handle(ev);
        }
        loop {
            self.drain();
            if self.core.state().is_final() {
                break;
            }
            if let Some(ev) = self.answers.pop_front() {
                self.handle(ev);
                continue;
            }
            let core_timeout = self
                .core
                .poll_timeout()
                .map(|t| Duration::from_millis(t.since_ms(self.now())))
                .unwrap_or(IDLE_WAIT);
            let owed_timeout = self
                .apply_owed_at
                .map(|t| t.saturating_duration_since(Instant::now()));
            let timeout = owed_timeout.map_or(core_timeout, |o| o.min(core_timeout));
            match self.ch.events.recv_parked(timeout) {
                Ok(ev) => self.handle(ev),
                // The owed report first when both are due: the core's
                // timer fires on the next turn.
                Err(RecvTimeoutError::Timeout)
                    if owed_timeout.is_some_and(|o| o <= core_timeout) =>
                {
                    self.publish_owed();
                }
                Err(RecvTimeoutError::Timeout) => self.handle(Event::TimerFired),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.receivers.stop_all();
        // Run at AcceptWrites; here if the machine ended before that. The
        // old timeline's last segment is renamed and the checkpoint
        // requested only once the control file names the new timeline.
        if let Some(control) = self.control_update.take() {
            control.run();
        }
        if self.core.state() == StateKind::Promoted {
            promote::finish(&self.h, self.partial.take());
        }
        tracing::info!(state = %self.core.state(), "startup process ends");
    }

    fn handle(&mut self, ev: Event) {
        if let Event::UpstreamReloaded { .. } = &ev {
            // The next session connects with the new settings.
            self.receivers.upstream_changed();
        }
        if let Event::StreamLost { .. } | Event::WalReceiverStopped { .. } = &ev {
            if let Some(failure) = self.h.progress.received.io_failure() {
                // A failed fsync of received WAL is PostgreSQL's PANIC: never
                // retried. Also when the session was being stopped (for a
                // promotion): redo may have applied WAL of the failed
                // batch, which the primary has but this node does not.
                tracing::error!("walreceiver could not make received WAL durable: {failure}");
                self.h.hooks.fatal(StandbyError::ReceivedWal(failure));
            }
        }
        let now = self.now();
        self.core.handle(now, ev);
        if cfg!(debug_assertions) {
            if let Err(v) = self.core.check_invariants() {
                tracing::error!(violation = ?v, "recovery invariant broken");
            }
        }
    }

    /// Execute the actions, then record the transitions, each with the
    /// time its event was handled (taken before the actions, which may be
    /// slow promotion steps) but published after them, so a state seen in
    /// INFO has had its actions done (e.g. `Promoted` accepts writes).
    fn drain(&mut self) {
        let at = now_ms();
        let mut pending = Vec::new();
        while let Some(t) = self.core.poll_transition() {
            pending.push((t, at));
        }
        while let Some(action) = self.core.poll_action() {
            self.execute(action);
        }
        let at = now_ms();
        while let Some(t) = self.core.poll_transition() {
            pending.push((t, at));
        }
        for (t, at) in pending.into_iter().filter(|(t, _)| t.is_notable()) {
            self.record(&t, at);
        }
        self.status.machine = Some(self.core.status());
        self.h.progress.status.publish(self.status.clone());
        // After the actions: a promoted node's WAL writer runs by now, so
        // a woken walsender sees its timeline end.
        let signal = super::progress::CascadeSignal::of(self.status.machine.as_ref());
        self.h.progress.cascade.update(|s| {
            let changed = *s != signal;
            *s = signal;
            changed
        });
    }

    /// Log a notable transition, append it to the trace, keep it for the
    /// next publication.
    fn record(&mut self, t: &Transition, at: u64) {
        tracing::info!(
            from = %t.from,
            to = %t.to,
            event = %t.event.kind(),
            replay = %t.replay_lsn,
            receive = %t.receive_lsn,
            cause = t.cause.as_deref().unwrap_or(""),
            "recovery transition"
        );
        self.status.last_transition = Some(Arc::new(LastTransition::of(t, at)));
        self.status.transitions += 1;
        self.trace.append(t, at);
    }

    fn answer(&self, ev: Event) {
        let _ = self.ch.events_tx.send(ev);
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::RestoreSegment { tli, segno } => {
                self.fetch(FetchRequest::RestoreSegment { tli, segno })
            }
            // As the history lookup below: answered here, not through the
            // fetcher's thread (see `fetcher::find_local_segment` for why
            // the two cannot race on `wal/`).
            Action::FindLocalSegment { tli, segno } => {
                let wal_dir = crate::datadir::DataDir::new(&self.h.datadir).wal();
                let system = (
                    self.h.control.read(|c| c.system_identifier),
                    self.h.segdir.seg_size(),
                );
                let answer = super::fetcher::find_local_segment(&wal_dir, system, tli, segno);
                if self.ch.events_tx.try_send(answer).is_err() {
                    self.fetch(FetchRequest::FindLocalSegment { tli, segno });
                }
            }
            Action::RestoreHistoryFile { tli } => self.fetch(FetchRequest::RestoreHistory { tli }),
            // A stat and a small read: answered here rather than through
            // the fetcher's thread (two wake-ups saved on the way from a
            // promote request to the first write). The queue is this
            // thread's own, so it never waits on it: when it is full, the
            // fetcher answers, as it did before.
            Action::FindLocalHistoryFile { tli } => {
                let wal_dir = crate::datadir::DataDir::new(&self.h.datadir).wal();
                let answer = super::fetcher::find_local_history(&wal_dir, tli);
                if self.ch.events_tx.try_send(answer).is_err() {
                    self.fetch(FetchRequest::FindLocalHistory { tli });
                }
            }
            Action::Replay { source, upto, .. } => {
                self.status.source = Some(source);
                self.replay(upto);
            }
            Action::AllowInlineApply { session, tli, upto } => self
                .h
                .progress
                .received
                .inline()
                .allow(session.0, tli, upto),
            // Answered before anything queued: the machine learns how far
            // the session applied before it acts on its replay position.
            Action::WithdrawInlineApply { session } => {
                let applied = self.h.progress.received.inline().withdraw();
                self.answers
                    .push_front(Event::InlineApplyWithdrawn { session, applied });
            }
            Action::StartWalReceiver { session, from, tli } => {
                self.receivers.start(session.0, from, tli)
            }
            // Promoting: only the walreceiver's last write is waited for
            // (its report comes through the queue); its fsync runs beside
            // the promotion's next steps and is waited for in the history
            // stage (`promote::DataDirStep`).
            Action::StopWalReceiver { session } if self.core.state() == StateKind::Promoting => {
                self.receivers.stop_writing(session.0);
            }
            Action::StopWalReceiver { session } => {
                // Bounded; WalReceiverStopped reaches the queue.
                self.receivers.stop(session.0);
            }
            Action::ArmRetry { .. } => {}
            Action::SetTargetTimeline { tli, history } => {
                tracing::info!(tli = tli.0, "recovery follows timeline {}", tli.0);
                if !self.ch.redo.try_set_history_inline(&history) {
                    self.ch.redo.send(RedoRequest::SetHistory(history));
                }
            }
            Action::ReachedConsistency { at } => {
                tracing::info!(%at, "consistent recovery state reached; read-only connections are served");
                self.status.consistent_at = Some(at);
                self.h.hooks.reached_consistency(at);
            }
            // With a walreceiver still making its WAL durable, the removal
            // waits for it, in the history stage (`promote::DataDirStep`).
            Action::RemoveStandbySignal if self.receivers.has_stopping() => {
                self.standby_signal_to_remove = true;
            }
            Action::RemoveStandbySignal => {
                match promote::remove_standby_signal(&*self.h.storage, &self.h.datadir) {
                    Ok(removed) => self.standby_signal_unsynced |= removed,
                    Err(e) => tracing::error!(error = %e, "could not remove standby.signal"),
                }
            }
            Action::WriteHistoryFile {
                tli,
                parent,
                switch_point,
                reason,
                ..
            } => {
                let datadir_step = promote::DataDirStep {
                    receiver: self.receivers.take_stopping(),
                    remove_standby_signal: std::mem::take(&mut self.standby_signal_to_remove),
                    unsynced: std::mem::take(&mut self.standby_signal_unsynced),
                };
                match promote::write_history_file(
                    &self.h,
                    (tli, parent),
                    switch_point,
                    &reason,
                    datadir_step,
                ) {
                    Ok(prepared) => {
                        self.prepared = prepared;
                        self.answer(Event::HistoryFileWritten { tli })
                    }
                    Err(e) => self.answer(Event::PromotionStepFailed {
                        step: PromotionStep::WriteHistoryFile,
                        reason: e.to_string(),
                    }),
                }
            }
            Action::WriteEndOfRecovery { tli, prev_tli, at } => {
                let sync_datadir = std::mem::take(&mut self.standby_signal_unsynced);
                let prepared = self.prepared.take();
                match promote::write_end_of_recovery(
                    &self.h,
                    (tli, prev_tli),
                    at,
                    prepared,
                    sync_datadir,
                ) {
                    Ok((end, control)) => {
                        self.control_update = Some(control);
                        self.partial = Some(promote::PartialSegment { prev_tli, at });
                        self.answer(Event::EndOfRecoveryWritten { tli, end })
                    }
                    Err(e) => self.answer(Event::PromotionStepFailed {
                        step: PromotionStep::WriteEndOfRecovery,
                        reason: e.to_string(),
                    }),
                }
            }
            // Cascading walsenders subscribe to the cascade signal this
            // drain publishes (the state becomes Promoted): they wake, see
            // their timeline end and finish.
            Action::EndCascadingTimeline { .. } => {}
            Action::AcceptWrites { .. } => {
                self.h.hooks.accept_writes();
                tracing::info!("database system is ready to accept connections (promoted)");
                // The first writes come in while the new timeline's names,
                // the control file and the end-of-recovery record are made
                // durable; the node holds their acknowledgements until then.
                if let Some(control) = self.control_update.take() {
                    control.run();
                }
            }
            Action::Report { report } => match report.severity() {
                Severity::Info => tracing::info!("{report}"),
                Severity::Warning => tracing::warn!("{report}"),
            },
            Action::Exit { reason } => {
                if let ExitReason::Fatal { message } = reason {
                    tracing::error!("FATAL: {message}");
                    self.h.hooks.fatal(StandbyError::Recovery { message });
                }
            }
        }
    }

    /// Have redo apply up to `upto`: here if the redo thread is idle and
    /// the request short or found to end within its first bytes (its
    /// answers are handled before the next wait), else on the redo thread
    /// (its answers come through the queue).
    fn replay(&mut self, upto: Lsn) {
        match self.ch.redo.try_inline(upto) {
            Some(done) => {
                self.answers.extend(done.events);
                // Continued on the redo thread: it publishes what it
                // applies itself.
                self.apply_owed_at =
                    (done.owed && !done.continued).then(|| Instant::now() + APPLY_REPORT_SPACING);
            }
            None => {
                // The redo thread publishes what it applies itself.
                self.apply_owed_at = None;
                self.ch.redo.send(RedoRequest::Replay { upto });
            }
        }
    }

    /// The spacing after an inline replay passed: report its progress
    /// upstream if no status carried it meanwhile.
    fn publish_owed(&mut self) {
        self.apply_owed_at = self
            .ch
            .redo
            .publish_owed()
            .then(|| Instant::now() + APPLY_REPORT_SPACING);
    }

    fn fetch(&self, req: FetchRequest) {
        // Bounded channel; the fetcher takes one request at a time and the
        // machine never has more than one outstanding.
        let _ = self.ch.fetch.send(req);
    }
}
