//! The startup process: one thread owns the recovery core, feeds it events
//! from the fetcher, the redo loop, the walreceiver, the trigger watcher,
//! its one timer and shutdown, and executes the actions it returns.
//!
//! The loop is the quinn-proto shape of STYLE.md: handle an event, drain the
//! actions and the trace, re-arm one timer at `poll_timeout()`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use super::fetcher::FetchRequest;
use super::promote;
use super::receiver::{ReceiverShared, Sessions};
use super::redo::RedoRequest;
use super::tracelog::TraceLog;
use crate::node::{ExitRequest, Node};
use crate::states::recovery::{Action, Event, ExitReason, PromotionStep, Recovery, Severity};
use crate::states::time::Millis;
use crate::store::control::now_ms;

/// The longest the loop sleeps when the core has no timer armed (a bound,
/// not a poll: every event wakes it at once).
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// The startup thread's state.
pub struct Startup {
    pub core: Recovery,
    pub node: Arc<Node>,
    pub events: Receiver<Event>,
    /// For the executor's own answers (promotion steps).
    pub events_tx: Sender<Event>,
    pub fetch: Sender<FetchRequest>,
    pub redo: Sender<RedoRequest>,
    pub receivers: Sessions<Event>,
    /// Positions the walreceiver shares (its fsync failures too).
    pub receiver_shared: Arc<ReceiverShared>,
    pub shutdown: Receiver<()>,
    pub trace: TraceLog,
    pub epoch: Instant,
    /// Set once the end-of-recovery record is written: the old timeline's
    /// segment to rename to `.partial` after opening for writes.
    pub partial: Option<promote::PartialSegment>,
    /// `standby.signal` was removed and the data directory not fsynced
    /// since: the history file step does it (see
    /// [`promote::remove_standby_signal`]).
    pub standby_signal_unsynced: bool,
}

impl Startup {
    fn now(&self) -> Millis {
        Millis(self.epoch.elapsed().as_millis() as u64)
    }

    /// Run until the machine reaches a final state.
    pub fn run(mut self, first: Event) {
        let _span = tracing::info_span!("startup").entered();
        self.handle(first);
        let mut shutdown = self.shutdown.clone();
        loop {
            self.drain();
            if self.core.state().is_final() {
                break;
            }
            let timeout = self
                .core
                .poll_timeout()
                .map(|t| Duration::from_millis(t.since_ms(self.now())))
                .unwrap_or(IDLE_WAIT);
            select! {
                recv(self.events) -> ev => match ev {
                    Ok(ev) => self.handle(ev),
                    Err(_) => break,
                },
                recv(shutdown) -> _ => {
                    self.handle(Event::ShutdownRequested);
                    shutdown = crossbeam_channel::never();
                }
                default(timeout) => self.handle(Event::TimerFired),
            }
        }
        self.receivers.stop_all();
        tracing::info!(state = %self.core.state(), "startup process ends");
    }

    fn handle(&mut self, ev: Event) {
        self.note_positions(&ev);
        if let (Event::StreamLost { .. }, Some(failure)) = (&ev, self.receiver_shared.io_failure())
        {
            // A failed fsync of received WAL is PostgreSQL's PANIC: never retried.
            tracing::error!("walreceiver could not make received WAL durable: {failure}");
            self.node.request_exit(ExitRequest::Fatal(format!(
                "walreceiver IO failure: could not write received WAL: {failure}"
            )));
        }
        let now = self.now();
        self.core.handle(now, ev);
        if cfg!(debug_assertions) {
            if let Err(v) = self.core.check_invariants() {
                tracing::error!(violation = ?v, "recovery invariant broken");
            }
        }
    }

    /// Keep the receive position current for INFO, cascading and replies.
    fn note_positions(&self, ev: &Event) {
        if let Event::WalFlushed { tli, upto, .. } = ev {
            let st = &self.node.standby;
            st.receive_lsn.store(upto.0, Ordering::Release);
            st.receive_tli.store(tli.0, Ordering::Release);
            if *tli == st.replay_tli() || st.replay_tli().0 == 0 {
                self.node
                    .set_standby_flush(crate::node::replication::FlushPoint {
                        tli: *tli,
                        lsn: (*upto).max(st.replay_lsn()),
                    });
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
            tracing::info!(
                from = %t.from,
                to = %t.to,
                event = %t.event.kind(),
                replay = %t.replay_lsn,
                receive = %t.receive_lsn,
                cause = t.cause.as_deref().unwrap_or(""),
                "recovery transition"
            );
            self.node.standby.note_transition(&t, at);
            self.trace.append(&t, at);
        }
    }

    fn answer(&self, ev: Event) {
        let _ = self.events_tx.send(ev);
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::RestoreSegment { tli, segno } => {
                self.fetch(FetchRequest::RestoreSegment { tli, segno })
            }
            Action::FindLocalSegment { tli, segno } => {
                self.fetch(FetchRequest::FindLocalSegment { tli, segno })
            }
            Action::RestoreHistoryFile { tli } => self.fetch(FetchRequest::RestoreHistory { tli }),
            Action::FindLocalHistoryFile { tli } => {
                self.fetch(FetchRequest::FindLocalHistory { tli })
            }
            Action::Replay { source, upto, .. } => {
                self.node.standby.update(|s| s.source = Some(source));
                let _ = self.redo.send(RedoRequest::Replay { upto });
            }
            Action::StartWalReceiver { session, from, tli } => {
                self.receivers.start(session.0, from, tli)
            }
            Action::StopWalReceiver { session } => {
                // Bounded; WalReceiverStopped reaches the queue.
                self.receivers.stop(session.0);
            }
            Action::ArmRetry { .. } => {}
            Action::SetTargetTimeline { tli, history } => {
                tracing::info!(tli = tli.0, "recovery follows timeline {}", tli.0);
                self.node.standby.update(|s| s.target_tli = Some(tli));
                let _ = self.redo.send(RedoRequest::SetHistory(history));
            }
            Action::ReachedConsistency { at } => {
                tracing::info!(%at, "consistent recovery state reached; read-only connections are served");
                self.node.standby.update(|s| s.consistent_at = Some(at));
                self.node.set_consistent();
            }
            Action::RemoveStandbySignal => match promote::remove_standby_signal(&self.node) {
                Ok(removed) => self.standby_signal_unsynced |= removed,
                Err(e) => tracing::error!(error = %e, "could not remove standby.signal"),
            },
            Action::WriteHistoryFile {
                tli,
                parent,
                switch_point,
                reason,
                ..
            } => {
                let sync_datadir = std::mem::take(&mut self.standby_signal_unsynced);
                match promote::write_history_file(
                    &self.node,
                    tli,
                    parent,
                    switch_point,
                    &reason,
                    sync_datadir,
                ) {
                    Ok(()) => self.answer(Event::HistoryFileWritten { tli }),
                    Err(reason) => self.answer(Event::PromotionStepFailed {
                        step: PromotionStep::WriteHistoryFile,
                        reason,
                    }),
                }
            }
            Action::WriteEndOfRecovery { tli, prev_tli, at } => {
                match promote::write_end_of_recovery(&self.node, tli, prev_tli, at) {
                    Ok(end) => {
                        self.partial = Some(promote::PartialSegment { prev_tli, at });
                        self.answer(Event::EndOfRecoveryWritten { tli, end })
                    }
                    Err(reason) => self.answer(Event::PromotionStepFailed {
                        step: PromotionStep::WriteEndOfRecovery,
                        reason,
                    }),
                }
            }
            Action::EndCascadingTimeline { .. } => self.node.wake_walsenders(),
            Action::AcceptWrites { .. } => promote::accept_writes(&self.node, self.partial.take()),
            Action::Report { report } => match report.severity() {
                Severity::Info => tracing::info!("{report}"),
                Severity::Warning => tracing::warn!("{report}"),
            },
            Action::Exit { reason } => {
                if let ExitReason::Fatal { message } = &reason {
                    tracing::error!("FATAL: {message}");
                    self.node.request_exit(ExitRequest::Fatal(message.clone()));
                }
            }
        }
    }

    fn fetch(&self, req: FetchRequest) {
        // Bounded channel; the fetcher takes one request at a time and the
        // machine never has more than one outstanding.
        let _ = self.fetch.send(req);
    }
}
