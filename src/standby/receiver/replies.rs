//! Standby status updates and hot standby feedback while a session is
//! connected. Two threads send them: the session (its flush reports,
//! timers and pings) and redo (the apply position a `remote_apply` commit
//! waits for, sent by whichever thread applied it, the redo thread or the
//! startup thread for a short request, right after it publishes, so the
//! reply costs no wake-up of the session). Both send under one lock, and
//! every status is computed under it from the positions the session
//! published before taking it, so the upstream sees write, flush and apply
//! in order, never going back.

use std::time::{Duration, Instant};

use crate::replication::client::{ClientError, StatusSender};
use crate::Lsn;

/// Replay progress nobody waits for (no `remote_apply` commit) is
/// reported at most this often by itself; write and flush reports carry it
/// too. One status message and one wake-up of the upstream's reader each.
pub(crate) const APPLY_REPORT_SPACING: Duration = Duration::from_millis(1);

/// Why a reply was not sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplyError {
    /// No session is connected.
    #[error("not connected")]
    NotConnected,
    /// Writing to the upstream failed.
    #[error("could not send data to WAL stream: {0}")]
    Send(#[from] ClientError),
}

/// What to do with replay progress (see [`Replies::report_apply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApplyReport {
    /// Nothing new to report (or status updates are off).
    Nothing,
    /// Send a status update now.
    Now,
    /// Unreported, but a status went out less than
    /// [`APPLY_REPORT_SPACING`] ago: ask again after it.
    Later,
}

/// The decision of [`Replies::report_apply`]: `reported` is the apply
/// position last sent, `wanted` whether a commit waits for it,
/// `periodic` whether status updates are on, `since_status` the time since
/// the last one.
fn apply_report(
    now: Positions,
    reported: Lsn,
    wanted: bool,
    periodic: bool,
    since_status: Option<Duration>,
) -> ApplyReport {
    // Never past what is durable here.
    if now.apply.min(now.flush) <= reported {
        return ApplyReport::Nothing;
    }
    if wanted {
        return ApplyReport::Now;
    }
    if !periodic {
        return ApplyReport::Nothing;
    }
    match since_status {
        Some(d) if d < APPLY_REPORT_SPACING => ApplyReport::Later,
        _ => ApplyReport::Now,
    }
}

/// The reply state of one connection.
pub(crate) struct Replies {
    sender: StatusSender,
    /// `wal_receiver_status_interval`; `None` (0) sends status only when
    /// asked or forced.
    status_interval: Option<Duration>,
    /// Status last sent (write, flush, apply) and when.
    last_sent: (Lsn, Lsn, Lsn),
    last_status: Option<Instant>,
    /// The upstream agreed to flag keepalives when a commit waits for our
    /// apply position: replay progress is reported at once only then (and
    /// with every flush report, and at the status interval).
    apply_on_request: bool,
    /// Replay progress up to here is reported at once (the `walEnd` of the
    /// last keepalive that asked).
    apply_report_upto: Lsn,
}

/// The positions a status update carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Positions {
    /// Received and written (maybe not durable).
    pub write: Lsn,
    /// fsynced here (not necessarily exposed).
    pub flush: Lsn,
    /// Replayed; never past `flush` (after a reconnect the stream
    /// restarts below what was replayed).
    pub apply: Lsn,
}

impl std::fmt::Debug for Replies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replies")
            .field("last_sent", &self.last_sent)
            .field("apply_on_request", &self.apply_on_request)
            .field("apply_report_upto", &self.apply_report_upto)
            .finish_non_exhaustive()
    }
}

impl Replies {
    pub(crate) fn new(
        sender: StatusSender,
        status_interval: Option<Duration>,
        apply_on_request: bool,
    ) -> Replies {
        Replies {
            sender,
            status_interval,
            last_sent: (Lsn::INVALID, Lsn::INVALID, Lsn::INVALID),
            last_status: None,
            apply_on_request,
            apply_report_upto: Lsn::INVALID,
        }
    }

    /// When the last status update went out.
    pub(crate) fn last_status(&self) -> Option<Instant> {
        self.last_status
    }

    /// A flagged keepalive asked for replay progress up to `wal_end`.
    pub(crate) fn request_apply(&mut self, wal_end: Lsn) {
        self.apply_report_upto = self.apply_report_upto.max(wal_end);
    }

    /// Whether replay progress is reported as it happens: always to an
    /// upstream that does not flag keepalives, else while the last report
    /// is short of what a flagged keepalive asked for.
    pub(crate) fn apply_report_wanted(&self) -> bool {
        !self.apply_on_request || self.last_sent.2 < self.apply_report_upto
    }

    /// The apply position moved past the last report: report it now if
    /// someone waits for it, else if no status went out in the last
    /// [`APPLY_REPORT_SPACING`] (the upstream's `replay_lag` then follows
    /// replay, not the next flush report). Returns whether progress is
    /// left unreported for the spacing: the caller asks again after it.
    /// Never past the flush position (redo may apply before this node's
    /// fsync; it reports only what is durable here).
    pub(crate) fn report_apply(&mut self, now: Positions) -> Result<bool, ReplyError> {
        let report = apply_report(
            now,
            self.last_sent.2,
            self.apply_report_wanted(),
            self.status_interval.is_some(),
            self.last_status.map(|t| t.elapsed()),
        );
        match report {
            ApplyReport::Nothing => Ok(false),
            ApplyReport::Later => Ok(true),
            ApplyReport::Now => {
                self.send_status(now, true, false)?;
                Ok(false)
            }
        }
    }

    /// Standby status update `r`. Unforced ones go when a position moved
    /// or the interval passed, and never with `wal_receiver_status_interval` 0.
    pub(crate) fn send_status(
        &mut self,
        now: Positions,
        force: bool,
        reply_requested: bool,
    ) -> Result<(), ReplyError> {
        let now = (now.write, now.flush, now.apply.min(now.flush));
        if !force {
            let Some(interval) = self.status_interval else {
                return Ok(());
            };
            let fresh = self.last_status.is_some_and(|t| t.elapsed() < interval);
            // Replay progress alone is news only if a commit waits for it.
            let moved = if self.apply_report_wanted() {
                now != self.last_sent
            } else {
                (now.0, now.1) != (self.last_sent.0, self.last_sent.1)
            };
            if !moved && fresh {
                return Ok(());
            }
        }
        self.sender
            .send_status(now.0, now.1, now.2, reply_requested)?;
        self.last_sent = now;
        self.last_status = Some(Instant::now());
        Ok(())
    }

    /// Hot standby feedback `h`.
    pub(crate) fn send_feedback(&self, xmin: u32) -> Result<(), ReplyError> {
        self.sender.send_feedback(xmin, 0, 0, 0)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(write: u64, flush: u64, apply: u64) -> Positions {
        Positions {
            write: Lsn(write),
            flush: Lsn(flush),
            apply: Lsn(apply),
        }
    }

    #[test]
    fn replay_progress_is_reported_by_itself_at_most_every_spacing_and_never_past_the_flush() {
        let long_ago = Some(APPLY_REPORT_SPACING * 2);
        let just_now = Some(Duration::ZERO);
        // Applied past this node's fsync (redo ran ahead of it): nothing
        // to report beyond the flush position already reported.
        assert_eq!(
            apply_report(at(300, 100, 200), Lsn(100), true, true, long_ago),
            ApplyReport::Nothing
        );
        // Nobody waits: at once if no status went out within the
        // spacing, else later; never with status updates off.
        assert_eq!(
            apply_report(at(300, 300, 200), Lsn(100), false, true, long_ago),
            ApplyReport::Now
        );
        assert_eq!(
            apply_report(at(300, 300, 200), Lsn(100), false, true, None),
            ApplyReport::Now
        );
        assert_eq!(
            apply_report(at(300, 300, 200), Lsn(100), false, true, just_now),
            ApplyReport::Later
        );
        assert_eq!(
            apply_report(at(300, 300, 200), Lsn(100), false, false, long_ago),
            ApplyReport::Nothing
        );
        // A commit waits for it: at once, whatever the spacing.
        assert_eq!(
            apply_report(at(300, 300, 200), Lsn(100), true, false, just_now),
            ApplyReport::Now
        );
    }
}
