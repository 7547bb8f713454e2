//! Named scenarios of the recovery machine: an event list in, a trace of
//! states and actions out (one line per event), snapshot-tested with insta.
//! Each also asserts the facts it is about, so a snapshot update cannot
//! silently accept a wrong behaviour.

mod common;

use common::*;
use walrep_states::history::TimelineHistory;
use walrep_states::recovery::{
    Action, Event, PromotionStep, RecordCheck, RecoveryConfig, Report, StateKind,
};
use walrep_states::{Lsn, TimelineId};

/// The scenarios, each returning its played trace.
pub mod play {
    use super::*;

    pub fn both() -> RecoveryConfig {
        RecoveryConfig::default()
    }

    /// Start at 0/2000028 on timeline 1 and finish the timeline rescan
    /// (no 00000002.history anywhere).
    pub fn standby_started(config: RecoveryConfig) -> Scenario {
        let mut s = Scenario::new(config);
        s.ev(started(at(2, 0x28), 1, at(2, 0x28), false));
        s.ev(no_history(2)).ev(no_local_history(2));
        s
    }

    /// Streaming from segment 2, connected, nothing replayed beyond the start.
    pub fn streaming(config: RecoveryConfig) -> Scenario {
        let mut s = standby_started(config);
        s.ev(not_in_archive(1, 2)).ev(not_local(1, 2));
        let sid = s.session();
        s.ev(connected(sid, 1, at(3, 0x1000)));
        s
    }

    /// A two-phase base backup's standby: the bulk is still being copied.
    pub fn awaiting_base_backup(config: RecoveryConfig) -> Scenario {
        let mut s = Scenario::new(config);
        s.ev(Event::BaseBackupPending {
            start: at(2, 0x28),
            tli: TimelineId(1),
        });
        s
    }

    /// WAL streams and is flushed while the copy runs; nothing is replayed
    /// and promotion is refused; a lost session is started again from what
    /// was flushed; completion starts redo on the stream at once.
    pub fn two_phase_backup_streams_before_redo() -> Scenario {
        let mut s = awaiting_base_backup(both());
        assert_eq!(s.state(), StateKind::AwaitingBaseBackup);
        assert!(
            s.emitted(|a| matches!(a, Action::StartWalReceiver { from, .. } if *from == seg(2)))
        );
        let sid = s.session();
        s.ev(connected(sid, 1, at(4, 0x100)));
        s.ev(flushed(sid, 1, at(3, 0x8000)));
        assert!(
            s.actions.is_empty(),
            "nothing is replayed before the copy is complete"
        );
        assert_eq!(s.core.status().receive_lsn, at(3, 0x8000));
        s.ev(promote());
        assert_eq!(s.state(), StateKind::AwaitingBaseBackup);
        assert!(s.emitted(|a| matches!(
            a,
            Action::Report { report: Report::PromotionRefused { why } } if why == "base backup not complete"
        )));
        s.ev(lost(sid));
        assert_eq!(s.state(), StateKind::AwaitingBaseBackup);
        s.timer();
        assert!(
            s.emitted(|a| matches!(a, Action::StartWalReceiver { from, .. } if *from == seg(3))),
            "streams again from the segment holding what was flushed"
        );
        let sid = s.session();
        s.ev(connected(sid, 1, at(4, 0x100)));
        s.ev(flushed(sid, 1, at(3, 0x9000)));
        s.ev(started(at(2, 0x28), 1, at(3, 0x100), false));
        assert_eq!(s.state(), StateKind::Streaming);
        assert!(s.emitted(|a| matches!(a, Action::Replay { upto, .. } if *upto == at(3, 0x9000))));
        s.ev(eow(at(3, 0x9000)));
        assert!(s.core.status().consistent);
        s
    }

    /// A standby whose copy completes while its session is still
    /// connecting starts redo with a round over archive and `wal/`.
    pub fn two_phase_backup_completes_before_the_stream_connects() -> Scenario {
        let mut s = awaiting_base_backup(both());
        s.ev(started(at(2, 0x28), 1, at(2, 0x28), false));
        assert_eq!(s.state(), StateKind::ArchiveRecovery);
        assert!(s.emitted(|a| matches!(a, Action::StopWalReceiver { .. })));
        s
    }

    pub fn archive_only_to_end() -> Scenario {
        let mut s = standby_started(archive_only());
        s.ev(restored(1, 2)).ev(eow(seg(3)));
        s.ev(restored(1, 3)).ev(eow(at(3, SEG - 0x18)));
        assert!(s.emitted(|a| matches!(a, Action::RestoreSegment { segno, .. } if segno.0 == 4)));
        s.ev(not_in_archive(1, 4)).ev(not_local(1, 4));
        assert_eq!(s.state(), StateKind::RetryingArchive);
        assert!(
            !s.emitted(|a| matches!(a, Action::StartWalReceiver { .. })),
            "no stream configured"
        );
        s.wait(5000).timer();
        assert_eq!(s.state(), StateKind::ArchiveRecovery);
        s.ev(no_history(2)).ev(no_local_history(2));
        // The record crossing into segment 4 needs segment 3 again: rounds
        // start at the replay position's segment.
        s.ev(restored(1, 3)).ev(eow(at(3, SEG - 0x18)));
        s.ev(restored(1, 4)).ev(eow(seg(5)));
        assert_eq!(s.core.status().replay_lsn, seg(5));
        s
    }

    /// An archive-only standby waiting for the archive is given an
    /// upstream by a reload: the walreceiver starts at once, no restart;
    /// a second reload takes the upstream away again.
    pub fn reload_gives_an_archive_only_standby_an_upstream() -> Scenario {
        let mut s = standby_started(archive_only());
        s.ev(restored(1, 2)).ev(eow(seg(3)));
        s.ev(not_in_archive(1, 3)).ev(not_local(1, 3));
        assert_eq!(s.state(), StateKind::RetryingArchive);
        assert!(s.core.shared().receiver.is_none(), "no stream configured");
        s.ev(Event::UpstreamReloaded {
            stream_configured: true,
        });
        assert!(
            s.emitted(|a| matches!(a, Action::StartWalReceiver { from, .. } if *from == seg(3)))
        );
        let sid = s.session();
        s.ev(connected(sid, 1, at(4, 0x2000)));
        s.ev(flushed(sid, 1, at(3, 0x8000))).ev(eow(at(3, 0x8000)));
        assert_eq!(s.state(), StateKind::Streaming);
        assert_eq!(s.core.status().replay_lsn, at(3, 0x8000));
        // Taken away: the walreceiver stops and no round starts another.
        s.ev(Event::UpstreamReloaded {
            stream_configured: false,
        });
        assert!(s.emitted(|a| matches!(a, Action::StopWalReceiver { session } if *session == sid)));
        assert_eq!(s.state(), StateKind::RetryingArchive);
        s.wait(5000).timer();
        s.ev(no_history(2)).ev(no_local_history(2));
        s.ev(not_in_archive(1, 3)).ev(local(1, 3));
        s.ev(eow(at(3, 0x8000)));
        s.ev(not_in_archive(1, 4)).ev(not_local(1, 4));
        assert_eq!(s.state(), StateKind::RetryingArchive);
        assert!(
            !s.emitted(|a| matches!(a, Action::StartWalReceiver { .. })),
            "no upstream any more"
        );
        s
    }

    /// A reload changing the upstream while streaming: the walreceiver is
    /// stopped, what it received is replayed, and the next round connects
    /// with the new settings (a new session; the old one's news is stale).
    pub fn reload_repoints_a_streaming_standby() -> Scenario {
        let mut s = streaming(both());
        let first = s.session();
        s.ev(flushed(first, 1, at(2, 0x9000)));
        s.ev(Event::UpstreamReloaded {
            stream_configured: true,
        });
        assert_eq!(s.state(), StateKind::RetryingArchive);
        assert!(
            s.emitted(|a| matches!(a, Action::StopWalReceiver { session } if *session == first))
        );
        s.ev(eow(at(2, 0x9000)));
        s.wait(5000).timer();
        s.ev(no_history(2)).ev(no_local_history(2));
        s.ev(not_in_archive(1, 2)).ev(local(1, 2));
        s.ev(invalid(at(2, 0x9000), RecordCheck::Zeroes));
        let second = s.session();
        assert_ne!(first, second);
        s.ev(flushed(first, 1, at(2, 0xA000)));
        assert!(s.actions.is_empty(), "the old upstream's WAL is stale");
        s.ev(connected(second, 1, at(3, 0)));
        s.ev(flushed(second, 1, at(2, 0xB000)))
            .ev(eow(at(2, 0xB000)));
        assert_eq!(s.core.status().replay_lsn, at(2, 0xB000));
        s
    }

    pub fn archive_gap_then_streaming() -> Scenario {
        let mut s = standby_started(both());
        s.ev(restored(1, 2)).ev(eow(seg(3)));
        s.ev(not_in_archive(1, 3)).ev(not_local(1, 3));
        assert!(s.emitted(
            |a| matches!(a, Action::StartWalReceiver { from, tli, .. } if *from == seg(3) && *tli == TimelineId(1))
        ));
        let sid = s.session();
        s.ev(connected(sid, 1, at(4, 0x2000)));
        assert_eq!(s.state(), StateKind::Streaming);
        s.ev(flushed(sid, 1, at(3, 0x8000)));
        assert!(s.emitted(|a| matches!(a, Action::Replay { upto, .. } if *upto == at(3, 0x8000))));
        s.ev(flushed(sid, 1, at(3, 0x9000)));
        assert!(s.actions.is_empty(), "one replay at a time");
        s.ev(eow(at(3, 0x8000)));
        assert!(s.emitted(|a| matches!(a, Action::Replay { upto, .. } if *upto == at(3, 0x9000))));
        s.ev(eow(at(3, 0x9000)));
        s
    }

    pub fn stream_lost_and_regained() -> Scenario {
        let mut s = streaming(both());
        let first = s.session();
        s.ev(flushed(first, 1, at(2, 0x9000)))
            .ev(eow(at(2, 0x9000)));
        s.wait(60_000).ev(lost(first));
        assert_eq!(s.state(), StateKind::RetryingArchive);
        // The last round began long ago: the archive is retried at once.
        s.timer();
        s.ev(no_history(2)).ev(no_local_history(2));
        // wal/ has what the walreceiver wrote; its end is zeroes.
        s.ev(not_in_archive(1, 2)).ev(local(1, 2));
        s.ev(invalid(at(2, 0x9000), RecordCheck::Zeroes));
        let second = s.session();
        assert_ne!(first, second);
        // A late event of the old session changes nothing.
        s.ev(flushed(first, 1, at(2, 0xA000)));
        assert!(s.actions.is_empty());
        s.ev(connected(second, 1, at(3, 0)));
        s.ev(flushed(second, 1, at(2, 0xB000)))
            .ev(eow(at(2, 0xB000)));
        assert_eq!(s.core.status().replay_lsn, at(2, 0xB000));
        s
    }

    pub fn upstream_timeline_switch_followed() -> Scenario {
        let mut s = streaming(both());
        let sid = s.session();
        let switch = at(2, 0x7000);
        s.ev(flushed(sid, 1, switch));
        s.ev(Event::TimelineEnded {
            session: sid,
            tli: TimelineId(1),
            next_tli: TimelineId(2),
            switch_point: switch,
        });
        s.ev(Event::HistoryReceived {
            session: sid,
            tli: TimelineId(2),
            history: history_after(&TimelineHistory::root(TimelineId(1)), 2, switch),
        });
        s.ev(eow(switch));
        assert_eq!(s.state(), StateKind::ArchiveRecovery);
        assert_eq!(s.core.status().target_tli, TimelineId(2));
        s.ev(no_history(3)).ev(no_local_history(3));
        // The fork segment is read from the new timeline's copy.
        assert!(s.emitted(
            |a| matches!(a, Action::RestoreSegment { tli, segno } if tli.0 == 2 && segno.0 == 2)
        ));
        s.ev(not_in_archive(2, 2)).ev(not_local(2, 2));
        assert!(s.emitted(|a| matches!(a, Action::StartWalReceiver { tli, from, .. } if tli.0 == 2 && *from == seg(2))));
        let next = s.session();
        s.ev(connected(next, 2, at(2, 0x9000)));
        s.ev(flushed(next, 2, at(2, 0x9000))).ev(eow(at(2, 0x9000)));
        assert_eq!(s.core.status().replay_lsn, at(2, 0x9000));
        s
    }

    pub fn timeline_forked_before_replay_is_not_followed() -> Scenario {
        let mut s = Scenario::new(both());
        s.ev(started(at(2, 0x28), 1, at(2, 0x28), false));
        let forked_early = history_after(&TimelineHistory::root(TimelineId(1)), 2, at(2, 0x10));
        s.ev(Event::HistoryRestored {
            tli: TimelineId(2),
            history: forked_early,
        });
        s.ev(no_history(3)).ev(no_local_history(3));
        assert!(s.emitted(|a| matches!(
            a,
            Action::Report {
                report: Report::TimelineForkedBeforeReplay { .. }
            }
        )));
        assert_eq!(s.core.status().target_tli, TimelineId(1));
        assert_eq!(s.core.status().highest_seen_tli, TimelineId(2));
        s
    }

    pub fn corrupt_segment_from_the_archive() -> Scenario {
        let mut s = standby_started(both());
        s.ev(restored(1, 2)).ev(Event::WalReplayed {
            upto: at(2, 0x4000),
        });
        s.ev(invalid(at(2, 0x4000), RecordCheck::Crc));
        assert_eq!(s.state(), StateKind::RetryingArchive);
        assert_eq!(s.core.status().replay_lsn, at(2, 0x4000));
        // The stream re-sends the segment from its start; its copy is good.
        let sid = s.session();
        s.ev(connected(sid, 1, at(3, 0)));
        s.ev(flushed(sid, 1, at(2, 0x3000)));
        assert!(s.actions.is_empty(), "not past the replay position yet");
        s.ev(flushed(sid, 1, at(2, 0x6000)));
        assert!(s.emitted(|a| matches!(
            a,
            Action::Replay {
                source: walrep_states::recovery::WalSource::Stream,
                ..
            }
        )));
        s.ev(eow(at(2, 0x6000)));
        assert_eq!(s.core.status().replay_lsn, at(2, 0x6000));
        s
    }

    /// Found by the simulator (SIM_SEED=127935): the newest timeline's
    /// copy of the fork segment is corrupt before the fork point; the
    /// parent timeline's copy holds the same WAL up to the fork, so it is
    /// read next instead of giving up.
    pub fn corrupt_fork_segment_falls_back_to_the_parent_copy() -> Scenario {
        let mut s = Scenario::new(archive_only());
        let fork = at(3, 0x80_0000);
        let h2 = history_after(&TimelineHistory::root(TimelineId(1)), 2, fork);
        s.ev(Event::RecoveryStarted {
            redo_lsn: at(3, 0x28),
            tli: TimelineId(2),
            history: h2,
            min_recovery_point: at(3, 0x28),
            crash_recovery_first: false,
        });
        s.ev(no_history(3)).ev(no_local_history(3));
        s.ev(restored(2, 3))
            .ev(invalid(at(3, 0x40_0000), RecordCheck::Crc));
        assert_eq!(s.state(), StateKind::ArchiveRecovery, "not exhausted yet");
        assert!(s.emitted(|a| matches!(a, Action::RestoreSegment { tli, .. } if tli.0 == 1)));
        s.ev(not_in_archive(1, 3)).ev(local(1, 3));
        assert!(s.emitted(
            |a| matches!(a, Action::Replay { tli, upto, .. } if tli.0 == 1 && *upto == fork)
        ));
        s.ev(eow(fork));
        // Past the fork: the new timeline's copy again, fetched afresh.
        assert!(s.emitted(|a| matches!(a, Action::RestoreSegment { tli, .. } if tli.0 == 2)));
        s.ev(restored(2, 3)).ev(eow(seg(4)));
        assert_eq!(s.core.status().replay_lsn, seg(4));
        s
    }

    /// Found by the property test (proptest-regressions seed 7cc4a253):
    /// WAL that reaches the last segment of the LSN space. A record still
    /// incomplete there never completes, so the round ends instead of
    /// asking for a segment past FFFFFFFF/FFFFFFFF (whose "local copy" used
    /// to be the copy already known bad, read again); and the copy of the
    /// last segment that failed is not read again from `wal/`.
    pub fn last_segment_of_the_lsn_space() -> Scenario {
        let last = u64::MAX / SEG;
        let redo = at(last, 0xFF_6F4C);
        assert_eq!(redo.to_string(), "FFFFFFFF/FFFF6F4C");
        let mut s = Scenario::new(archive_only());
        s.ev(started(redo, 1, redo, false));
        s.ev(no_history(2)).ev(no_local_history(2));
        s.ev(restored(1, last));
        assert!(s.emitted(|a| matches!(a, Action::Replay { upto, .. } if *upto == Lsn(u64::MAX))));
        s.ev(eow(redo));
        assert_eq!(
            s.state(),
            StateKind::RetryingArchive,
            "no segment follows the last one"
        );
        assert!(!s.emitted(|a| matches!(
            a,
            Action::RestoreSegment { .. } | Action::FindLocalSegment { .. }
        )));
        s.timer();
        s.ev(no_history(2)).ev(no_local_history(2));
        s.ev(restored(1, last)).ev(invalid(redo, RecordCheck::Crc));
        // wal/ holds the copy just restored, known bad: not read again.
        assert_eq!(s.state(), StateKind::RetryingArchive);
        assert!(!s.emitted(|a| matches!(a, Action::FindLocalSegment { .. })));
        assert_eq!(s.core.status().replay_lsn, redo);
        s
    }

    /// A record spanning segments 2 and 3 fails its CRC when read with the
    /// archive's copy of segment 3. That copy is now the file in `wal/`
    /// (a restored segment replaces the local one), so it is not "found
    /// locally" and read again: the round gives up. The next round reads
    /// fresh copies of both segments.
    pub fn corrupt_record_spanning_into_the_next_segment() -> Scenario {
        let mut s = standby_started(archive_only());
        let start = at(2, SEG - 0x18);
        s.ev(restored(1, 2)).ev(eow(start));
        assert!(s.emitted(|a| matches!(a, Action::RestoreSegment { segno, .. } if segno.0 == 3)));
        s.ev(restored(1, 3)).ev(invalid(start, RecordCheck::Crc));
        assert_eq!(
            s.state(),
            StateKind::RetryingArchive,
            "wal/ holds the copy that failed"
        );
        assert!(!s.emitted(|a| matches!(a, Action::FindLocalSegment { .. })));
        s.timer();
        s.ev(no_history(2)).ev(no_local_history(2));
        s.ev(restored(1, 2)).ev(eow(start));
        s.ev(restored(1, 3)).ev(eow(at(3, 0x100)));
        assert_eq!(s.core.status().replay_lsn, at(3, 0x100));
        s
    }

    /// Found by the simulator (SIM_SEED=67014 of 200,000): a record
    /// spanning from a partial local segment 2 into segment 3 failed, so
    /// both files were marked. Restoring 2 whole from the archive makes
    /// the pair a new combination: 3's mark goes with 2's, and the local 3
    /// is read again (before, it stayed marked and promotion ended short
    /// of WAL that was in `wal/`).
    pub fn restoring_one_file_of_a_failed_spanning_read_clears_both_marks() -> Scenario {
        let mut s = standby_started(archive_only());
        let start = at(2, SEG - 0x18);
        s.ev(not_in_archive(1, 2)).ev(local(1, 2)).ev(eow(start));
        s.ev(restored(1, 3)).ev(invalid(start, RecordCheck::Zeroes));
        assert_eq!(s.state(), StateKind::RetryingArchive);
        s.timer();
        s.ev(no_history(2)).ev(no_local_history(2));
        s.ev(restored(1, 2)).ev(eow(start));
        s.ev(not_in_archive(1, 3));
        assert!(
            s.emitted(|a| matches!(a, Action::FindLocalSegment { segno, .. } if segno.0 == 3)),
            "segment 3 stayed marked after segment 2 was replaced"
        );
        s.ev(local(1, 3)).ev(eow(at(3, 0x100)));
        assert_eq!(s.core.status().replay_lsn, at(3, 0x100));
        s
    }

    /// Found by the property test (proptest-regressions seed 71c508d0):
    /// the walreceiver streams timeline 1, which on the recovery
    /// timeline's history (2) ends at 0/3000028, while the upstream ends
    /// its timeline 1 later, at 0/3800000 (a branch recovery does not
    /// follow). Once replay reaches 0/3000028 nothing the session flushed
    /// can be replayed and it sends nothing more: the stream counts as
    /// exhausted, and the next round starts a session on timeline 2,
    /// instead of `Streaming` waiting for nothing.
    pub fn stream_timeline_ends_later_upstream_than_on_our_history() -> Scenario {
        let stream_only = RecoveryConfig {
            archive_configured: false,
            ..both()
        };
        let mut s = Scenario::new(stream_only);
        let fork = at(3, 0x28);
        let upstream_end = at(3, 0x80_0000);
        s.ev(started(at(2, 0x28), 1, at(2, 0x28), false));
        s.ev(Event::HistoryFoundLocally {
            tli: TimelineId(2),
            history: history_after(&TimelineHistory::root(TimelineId(1)), 2, fork),
        });
        s.ev(no_local_history(3));
        assert_eq!(s.core.status().target_tli, TimelineId(2));
        s.ev(not_local(1, 2));
        let sid = s.session();
        s.ev(connected(sid, 1, upstream_end));
        s.ev(flushed(sid, 1, upstream_end));
        assert!(
            s.emitted(|a| matches!(a, Action::Replay { upto, .. } if *upto == fork)),
            "stream replay stops where timeline 1 ends on our history"
        );
        s.ev(Event::TimelineEnded {
            session: sid,
            tli: TimelineId(1),
            next_tli: TimelineId(3),
            switch_point: upstream_end,
        });
        s.ev(eow(fork));
        assert_eq!(s.state(), StateKind::RetryingArchive, "stream exhausted");
        s.timer();
        s.ev(no_local_history(3)).ev(not_local(2, 3));
        assert!(s.emitted(|a| matches!(
            a,
            Action::StartWalReceiver { from, tli, .. } if *from == seg(3) && tli.0 == 2
        )));
        s
    }

    /// Found by the property test (proptest-regressions seed 28d1722f):
    /// a walreceiver stopped for not connecting reports a flush after
    /// promotion has drained everything and is probing for timelines. A
    /// stopped session writes no more, so the flush is stale: it is
    /// ignored, as in the recovering states, and the new timeline is
    /// chosen with nothing received left unreplayed.
    pub fn flush_of_a_stopped_session_while_promoting_is_stale() -> Scenario {
        let mut s = Scenario::new(RecoveryConfig {
            target_timeline: walrep_states::recovery::TargetTimeline::Current,
            ..both()
        });
        s.ev(started(at(2, 0x28), 1, at(2, 0x28), false));
        s.ev(not_in_archive(1, 2)).ev(not_local(1, 2));
        let old = s.session();
        s.timer();
        assert!(s.emitted(|a| matches!(a, Action::StopWalReceiver { session } if *session == old)));
        s.ev(promote());
        assert_eq!(s.state(), StateKind::Promoting);
        s.ev(not_in_archive(1, 2)).ev(not_local(1, 2));
        assert!(s.emitted(|a| matches!(a, Action::RestoreHistoryFile { tli } if tli.0 == 2)));
        s.ev(flushed(old, 1, at(5, 0)));
        assert!(s.actions.is_empty());
        s.ev(no_history(2)).ev(no_local_history(2));
        assert!(s.emitted(|a| matches!(
            a,
            Action::WriteHistoryFile { switch_point, .. } if *switch_point == at(2, 0x28)
        )));
        s
    }

    pub fn corrupt_record_on_the_stream() -> Scenario {
        let mut s = streaming(both());
        let sid = s.session();
        s.ev(flushed(sid, 1, at(2, 0x9000)));
        s.ev(invalid(at(2, 0x5000), RecordCheck::PrevLink));
        assert_eq!(s.state(), StateKind::RetryingArchive);
        assert!(s.emitted(|a| matches!(a, Action::StopWalReceiver { .. })));
        s.timer();
        s.ev(no_history(2)).ev(no_local_history(2));
        // The archive now has segment 2 (the upstream archived it): its copy
        // replaces the bad one.
        s.ev(restored(1, 2)).ev(eow(seg(3)));
        assert_eq!(s.core.status().replay_lsn, seg(3));
        s
    }

    pub fn restore_command_failing_backs_off() -> Scenario {
        let mut s = Scenario::new(archive_only());
        s.ev(started(at(2, 0x28), 1, at(2, 0x28), false));
        let mut delays = Vec::new();
        for _ in 0..5 {
            s.ev(Event::RestoreCommandFailed {
                file: walrep_states::recovery::WalFile::History { tli: TimelineId(2) },
                reason: "restore_command killed by signal 9".into(),
            });
            s.ev(no_local_history(2));
            s.ev(not_local(1, 2));
            let delay = s.actions.iter().find_map(|a| match a {
                Action::ArmRetry { delay_ms } => Some(*delay_ms),
                _ => None,
            });
            delays.push(delay.expect("a retry is armed"));
            s.timer();
        }
        assert_eq!(delays, vec![5_000, 10_000, 20_000, 40_000, 60_000]);
        assert_eq!(s.core.status().restore_failures, 5);
        // One good answer resets the count.
        s.ev(no_history(2));
        assert_eq!(s.core.status().restore_failures, 0);
        s
    }

    pub fn segment_missing_retries_at_the_interval() -> Scenario {
        let mut s = Scenario::new(archive_only());
        s.ev(started(at(2, 0x28), 1, at(2, 0x28), false));
        let mut delays = Vec::new();
        for _ in 0..4 {
            s.ev(no_history(2)).ev(no_local_history(2));
            s.ev(not_in_archive(1, 2)).ev(not_local(1, 2));
            delays.push(s.actions.iter().find_map(|a| match a {
                Action::ArmRetry { delay_ms } => Some(*delay_ms),
                _ => None,
            }));
            s.timer();
        }
        assert_eq!(delays, vec![Some(5_000); 4]);
        assert_eq!(s.core.status().restore_failures, 0);
        s
    }

    pub fn ping_pong_between_archive_and_stream_is_detected() -> Scenario {
        let mut s = standby_started(both());
        let bad = at(2, 0x4000);
        let mut pingpong_reported = false;
        for round in 0..3 {
            if round > 0 {
                s.ev(no_history(2)).ev(no_local_history(2));
            }
            s.ev(restored(1, 2)).ev(Event::WalReplayed { upto: bad });
            s.ev(invalid(bad, RecordCheck::Crc));
            let sid = s.session();
            s.ev(connected(sid, 1, at(3, 0)));
            s.ev(flushed(sid, 1, at(2, 0x8000)));
            s.ev(invalid(bad, RecordCheck::Crc));
            pingpong_reported |= s.emitted(|a| {
                matches!(a, Action::Report { report: Report::PingPong { at, .. } } if *at == bad)
            });
            s.timer();
        }
        assert!(pingpong_reported, "ping-pong reported\n{}", s.render());
        assert_eq!(
            s.core.status().replay_lsn,
            bad,
            "nothing past the bad record"
        );
        assert_eq!(s.core.status().invalid_at_replay, 6);
        s
    }

    /// Drive promotion from the first probe to `Promoted`.
    pub fn finish_promotion(s: &mut Scenario, new: u32) {
        s.ev(no_history(new)).ev(no_local_history(new));
        assert!(s.emitted(|a| matches!(a, Action::WriteHistoryFile { tli, .. } if tli.0 == new)));
        s.ev(Event::HistoryFileWritten {
            tli: TimelineId(new),
        });
        let end = s.core.status().replay_lsn;
        s.ev(Event::EndOfRecoveryWritten {
            tli: TimelineId(new),
            end: Lsn(end.0 + 0x28),
        });
        assert_eq!(s.state(), StateKind::Promoted);
        assert!(s.emitted(|a| matches!(a, Action::AcceptWrites { tli } if tli.0 == new)));
    }

    pub fn promote_in_archive_recovery() -> Scenario {
        let mut s = standby_started(both());
        s.ev(restored(1, 2));
        s.ev(promote());
        assert_eq!(s.state(), StateKind::Promoting);
        // The segment being replayed is finished, then the archive is asked
        // once more for what follows.
        s.ev(eow(seg(3)));
        s.ev(not_in_archive(1, 3)).ev(not_local(1, 3));
        finish_promotion(&mut s, 2);
        s
    }

    pub fn promote_in_retrying_archive_while_backing_off() -> Scenario {
        let mut s = Scenario::new(archive_only());
        s.ev(started(at(2, 0x28), 1, at(2, 0x28), false));
        s.ev(Event::RestoreCommandFailed {
            file: walrep_states::recovery::WalFile::History { tli: TimelineId(2) },
            reason: "timed out after 60s".into(),
        });
        s.ev(no_local_history(2)).ev(not_local(1, 2));
        assert_eq!(s.state(), StateKind::RetryingArchive);
        s.wait(1000).ev(promote());
        assert_eq!(
            s.state(),
            StateKind::Promoting,
            "no waiting for the back-off"
        );
        s.ev(Event::RestoreCommandFailed {
            file: walrep_states::recovery::WalFile::Segment {
                tli: TimelineId(1),
                segno: walrep_states::SegNo(2),
            },
            reason: "timed out after 60s".into(),
        });
        s.ev(not_local(1, 2));
        finish_promotion(&mut s, 2);
        s
    }

    pub fn promote_in_streaming() -> Scenario {
        let mut s = streaming(both());
        let sid = s.session();
        s.ev(flushed(sid, 1, at(2, 0x9000))).ev(eow(at(2, 0x9000)));
        s.ev(promote());
        assert!(s.emitted(|a| matches!(a, Action::StopWalReceiver { session } if *session == sid)));
        s.ev(stopped(sid, at(2, 0x9000)));
        // Then archive and wal/ once: wal/ has the streamed segment; its end
        // is zeroes.
        s.ev(not_in_archive(1, 2)).ev(local(1, 2));
        s.ev(invalid(at(2, 0x9000), RecordCheck::Zeroes));
        finish_promotion(&mut s, 2);
        s
    }

    pub fn promote_in_crash_recovery() -> Scenario {
        let mut s = Scenario::new(both());
        s.ev(started(at(2, 0x28), 1, at(2, 0x28), true));
        assert_eq!(s.state(), StateKind::CrashRecovery);
        // `latest` is resolved first (wal/ only in crash recovery).
        s.ev(no_local_history(2));
        s.ev(local(1, 2));
        s.ev(promote());
        s.ev(eow(seg(3)));
        s.ev(restored(1, 3)).ev(eow(at(3, 0x500)));
        s.ev(not_in_archive(1, 4)).ev(not_local(1, 4));
        assert_eq!(s.core.status().replay_lsn, at(3, 0x500));
        finish_promotion(&mut s, 2);
        s
    }

    pub fn promote_while_wal_is_still_arriving() -> Scenario {
        let mut s = streaming(both());
        let sid = s.session();
        s.ev(flushed(sid, 1, at(2, 0x9000)));
        s.ev(promote());
        // The walreceiver flushes more before it stops; all of it is replayed.
        s.ev(flushed(sid, 1, at(2, 0xA000)));
        s.ev(Event::WalReplayed {
            upto: at(2, 0x6000),
        });
        s.ev(stopped(sid, at(2, 0xC000)));
        assert!(s.actions.is_empty(), "redo is still busy");
        s.ev(eow(at(2, 0x9000)));
        assert!(s.emitted(|a| matches!(a, Action::Replay { upto, .. } if *upto == at(2, 0xC000))));
        s.ev(eow(at(2, 0xC000)));
        s.ev(not_in_archive(1, 2)).ev(local(1, 2));
        s.ev(invalid(at(2, 0xC000), RecordCheck::Zeroes));
        finish_promotion(&mut s, 2);
        assert_eq!(s.core.status().replay_lsn, at(2, 0xC000));
        s
    }

    /// Found by the simulator (SIM_SEED=26349): promotion right after a
    /// restart must still resolve `recovery_target_timeline = latest`
    /// first, or recovery ends on the old timeline below its consistent
    /// point although the newer timeline's WAL is there.
    pub fn promote_during_the_first_rescan_follows_latest() -> Scenario {
        let mut s = Scenario::new(archive_only());
        s.ev(started(at(2, 0x28), 1, at(3, 0x8000), false));
        s.ev(promote());
        let h2 = history_after(&TimelineHistory::root(TimelineId(1)), 2, seg(3));
        s.ev(Event::HistoryRestored {
            tli: TimelineId(2),
            history: h2,
        });
        s.ev(no_history(3)).ev(no_local_history(3));
        assert_eq!(s.core.status().target_tli, TimelineId(2));
        s.ev(restored(1, 2)).ev(eow(seg(3)));
        assert!(s.emitted(
            |a| matches!(a, Action::RestoreSegment { tli, segno } if tli.0 == 2 && segno.0 == 3)
        ));
        s.ev(restored(2, 3)).ev(eow(at(3, 0x9000)));
        s.ev(not_in_archive(2, 4)).ev(not_local(2, 4));
        finish_promotion(&mut s, 3);
        assert_eq!(s.core.status().replay_lsn, at(3, 0x9000));
        s
    }

    pub fn promotion_picks_a_timeline_above_the_archive() -> Scenario {
        let mut s = streaming(both());
        let sid = s.session();
        // The upstream knows timeline 2 exists (another standby promoted).
        s.ev(Event::HistoryReceived {
            session: sid,
            tli: TimelineId(2),
            history: history_after(&TimelineHistory::root(TimelineId(1)), 2, at(9, 0)),
        });
        s.ev(promote()).ev(stopped(sid, at(2, 0x28)));
        s.ev(not_in_archive(1, 2)).ev(not_local(1, 2));
        // Probing starts above timeline 2; the archive has 3.history.
        assert!(s.emitted(|a| matches!(a, Action::RestoreHistoryFile { tli } if tli.0 == 3)));
        let h3 = history_after(
            &history_after(&TimelineHistory::root(TimelineId(1)), 2, at(9, 0)),
            3,
            at(12, 0),
        );
        s.ev(Event::HistoryRestored {
            tli: TimelineId(3),
            history: h3,
        });
        finish_promotion(&mut s, 4);
        s
    }

    pub fn promotion_before_the_consistent_point_is_fatal() -> Scenario {
        let mut s = Scenario::new(archive_only());
        s.ev(started(at(2, 0x28), 1, at(5, 0), false));
        s.ev(no_history(2)).ev(no_local_history(2));
        s.ev(restored(1, 2));
        s.ev(promote()).ev(eow(seg(3)));
        s.ev(not_in_archive(1, 3)).ev(not_local(1, 3));
        assert_eq!(s.state(), StateKind::Stopped);
        assert!(s.emitted(|a| matches!(
            a,
            Action::Exit {
                reason: walrep_states::recovery::ExitReason::Fatal { .. }
            }
        )));
        s
    }

    pub fn promotion_step_failure_stops_recovery() -> Scenario {
        let mut s = Scenario::new(archive_only());
        s.ev(started(at(2, 0x28), 1, at(2, 0x28), false));
        s.ev(promote());
        // The first rescan (resolving `latest`) completes during promotion.
        s.ev(no_history(2)).ev(no_local_history(2));
        s.ev(not_in_archive(1, 2)).ev(not_local(1, 2));
        s.ev(no_history(2)).ev(no_local_history(2));
        s.ev(Event::PromotionStepFailed {
            step: PromotionStep::WriteEndOfRecovery,
            reason: "not being executed".into(),
        });
        assert_eq!(
            s.state(),
            StateKind::Promoting,
            "an unsolicited failure is ignored"
        );
        s.ev(Event::PromotionStepFailed {
            step: PromotionStep::WriteHistoryFile,
            reason: "fsync failed: EIO".into(),
        });
        assert_eq!(s.state(), StateKind::Stopped);
        s
    }

    pub fn restart_from_a_restartpoint() -> Scenario {
        // The standby stopped at 0/5000100 after a restartpoint whose redo is
        // 0/3000060; pages up to 0/5000100 may be on disk, so reads must wait
        // until replay is back there.
        let mut s = Scenario::new(both());
        s.ev(started(at(3, 0x60), 1, at(5, 0x100), false));
        assert!(!s.core.status().consistent);
        s.ev(no_history(2)).ev(no_local_history(2));
        assert!(s.emitted(|a| matches!(a, Action::RestoreSegment { segno, .. } if segno.0 == 3)));
        // The archive lags: wal/ still has the segments the walreceiver wrote.
        s.ev(not_in_archive(1, 3)).ev(local(1, 3)).ev(eow(seg(4)));
        s.ev(restored(1, 4)).ev(eow(seg(5)));
        assert!(!s.core.status().consistent);
        s.ev(not_in_archive(1, 5)).ev(local(1, 5));
        s.ev(Event::WalReplayed { upto: at(5, 0x100) });
        assert!(s.core.status().consistent);
        assert!(s.emitted(|a| matches!(a, Action::ReachedConsistency { .. })));
        s.ev(invalid(at(5, 0x180), RecordCheck::Zeroes));
        assert_eq!(s.state(), StateKind::RetryingArchive);
        s
    }

    pub fn crash_recovery_then_archive_recovery() -> Scenario {
        let mut s = Scenario::new(both());
        s.ev(started(at(2, 0x28), 1, at(2, 0x28), true));
        s.ev(no_local_history(2));
        s.ev(local(1, 2)).ev(eow(seg(3)));
        s.ev(local(1, 3))
            .ev(invalid(at(3, 0x7000), RecordCheck::Length));
        assert_eq!(s.state(), StateKind::ArchiveRecovery);
        s.ev(no_history(2)).ev(no_local_history(2));
        // The torn local file is not read again; the archive is asked.
        s.ev(not_in_archive(1, 3));
        assert_eq!(
            s.state(),
            StateKind::RetryingArchive,
            "local copy is known bad"
        );
        s
    }

    pub fn upstream_behind_our_timeline_is_refused() -> Scenario {
        let mut s = Scenario::new(both());
        let h2 = history_after(&TimelineHistory::root(TimelineId(1)), 2, at(2, 0));
        s.ev(Event::RecoveryStarted {
            redo_lsn: at(3, 0x28),
            tli: TimelineId(2),
            history: h2,
            min_recovery_point: at(3, 0x28),
            crash_recovery_first: false,
        });
        s.ev(no_history(3)).ev(no_local_history(3));
        s.ev(not_in_archive(2, 3)).ev(not_local(2, 3));
        let sid = s.session();
        s.ev(connected(sid, 1, at(9, 0)));
        assert_eq!(s.state(), StateKind::RetryingArchive);
        assert!(s.emitted(|a| matches!(a, Action::StopWalReceiver { .. })));
        s
    }

    /// Found by tests/standby_stream.rs under load: the primary had
    /// removed (archived) segment 3 and the record at the end of it spans
    /// into segment 4, which only the primary has. Streaming from the
    /// replay position's segment asked for the removed file for ever.
    pub fn record_spanning_into_a_segment_only_the_upstream_has() -> Scenario {
        let mut s = standby_started(both());
        s.ev(restored(1, 2)).ev(eow(seg(3)));
        s.ev(restored(1, 3)).ev(eow(at(3, SEG - 0x18)));
        s.ev(not_in_archive(1, 4)).ev(not_local(1, 4));
        assert_eq!(s.state(), StateKind::RetryingArchive);
        assert!(
            s.emitted(|a| matches!(a, Action::StartWalReceiver { from, .. } if *from == seg(4))),
            "the stream starts at the segment no source had"
        );
        let sid = s.session();
        s.ev(connected(sid, 1, at(4, 0x2000)));
        assert_eq!(s.state(), StateKind::Streaming);
        s.ev(flushed(sid, 1, at(4, 0x2000)));
        assert!(
            s.emitted(|a| matches!(a, Action::Replay { upto, .. } if *upto == at(4, 0x2000))),
            "the spanning record is replayed from wal/ and the stream"
        );
        s.ev(eow(at(4, 0x2000)));
        assert_eq!(s.core.status().replay_lsn, at(4, 0x2000));
        s
    }

    pub fn walreceiver_that_never_connects_is_stopped() -> Scenario {
        let mut s = standby_started(both());
        s.ev(not_in_archive(1, 2)).ev(not_local(1, 2));
        // Retry at 5 s, but the walreceiver has until its 10 s connect timeout.
        assert_eq!(s.core.poll_timeout(), Some(walrep_states::Millis(10_000)));
        s.wait(5_000).ev(Event::TimerFired);
        assert_eq!(s.state(), StateKind::RetryingArchive, "timer not due");
        s.timer();
        assert_eq!(s.state(), StateKind::ArchiveRecovery);
        assert!(s.emitted(|a| matches!(a, Action::StopWalReceiver { .. })));
        s
    }
}

/// A machine in each state, then `ShutdownRequested`.
#[test]
fn shutdown_in_each_state() {
    let mut all = String::new();
    let mut reached = Vec::new();
    for target in StateKind::ALL {
        let mut s = machine_in(target);
        assert_eq!(s.state(), target);
        s.ev(Event::ShutdownRequested);
        assert_eq!(s.state(), StateKind::Stopped, "from {target}");
        let stops_receiver = s.emitted(|a| matches!(a, Action::StopWalReceiver { .. }));
        if matches!(
            target,
            StateKind::Streaming | StateKind::RetryingArchive | StateKind::AwaitingBaseBackup
        ) {
            assert!(stops_receiver, "{target} stops its walreceiver");
        }
        reached.push(target);
        all.push_str(&format!("== shutdown in {target}\n"));
        all.push_str(&s.trace.last().map(|t| t.to_string()).unwrap_or_default());
        all.push('\n');
    }
    assert_eq!(reached.len(), 9);
    insta::assert_snapshot!("shutdown_in_each_state", all);
}

/// A scenario that ends in `state`.
fn machine_in(state: StateKind) -> Scenario {
    match state {
        StateKind::Starting => Scenario::new(play::both()),
        StateKind::AwaitingBaseBackup => play::awaiting_base_backup(play::both()),
        StateKind::CrashRecovery => {
            let mut s = Scenario::new(play::both());
            s.ev(started(at(2, 0x28), 1, at(2, 0x28), true));
            s
        }
        StateKind::ArchiveRecovery => play::standby_started(play::both()),
        StateKind::RetryingArchive => {
            let mut s = play::standby_started(play::both());
            s.ev(not_in_archive(1, 2)).ev(not_local(1, 2));
            s
        }
        StateKind::Streaming => play::streaming(play::both()),
        StateKind::Promoting => {
            let mut s = play::streaming(play::both());
            s.ev(promote());
            s
        }
        StateKind::Promoted => {
            let mut s = Scenario::new(archive_only());
            s.ev(started(at(2, 0x28), 1, at(2, 0x28), false));
            s.ev(promote()).ev(no_history(2)).ev(no_local_history(2));
            s.ev(not_in_archive(1, 2)).ev(not_local(1, 2));
            play::finish_promotion(&mut s, 2);
            s
        }
        StateKind::Stopped => {
            let mut s = Scenario::new(play::both());
            s.ev(Event::ShutdownRequested);
            s
        }
    }
}

/// One snapshot test per scenario, and the list of all of them.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let s = play::$name();
                insta::assert_snapshot!(stringify!($name), s.render());
            }
        )*
        /// Every named scenario.
        pub const ALL: &[(&str, fn() -> Scenario)] = &[$((stringify!($name), play::$name)),*];
    };
}

scenarios!(
    archive_only_to_end,
    archive_gap_then_streaming,
    reload_gives_an_archive_only_standby_an_upstream,
    reload_repoints_a_streaming_standby,
    stream_lost_and_regained,
    upstream_timeline_switch_followed,
    timeline_forked_before_replay_is_not_followed,
    corrupt_segment_from_the_archive,
    corrupt_record_on_the_stream,
    corrupt_fork_segment_falls_back_to_the_parent_copy,
    last_segment_of_the_lsn_space,
    corrupt_record_spanning_into_the_next_segment,
    restoring_one_file_of_a_failed_spanning_read_clears_both_marks,
    stream_timeline_ends_later_upstream_than_on_our_history,
    flush_of_a_stopped_session_while_promoting_is_stale,
    restore_command_failing_backs_off,
    segment_missing_retries_at_the_interval,
    ping_pong_between_archive_and_stream_is_detected,
    promote_in_archive_recovery,
    promote_in_retrying_archive_while_backing_off,
    promote_in_streaming,
    promote_in_crash_recovery,
    promote_while_wal_is_still_arriving,
    promotion_picks_a_timeline_above_the_archive,
    promote_during_the_first_rescan_follows_latest,
    promotion_before_the_consistent_point_is_fatal,
    promotion_step_failure_stops_recovery,
    restart_from_a_restartpoint,
    crash_recovery_then_archive_recovery,
    upstream_behind_our_timeline_is_refused,
    walreceiver_that_never_connects_is_stopped,
    record_spanning_into_a_segment_only_the_upstream_has,
    two_phase_backup_streams_before_redo,
    two_phase_backup_completes_before_the_stream_connects,
);

/// The explored graph contains every state and every edge the scenarios
/// take: the diagrams drawn from it show everything the scenarios do.
#[test]
fn explored_graph_covers_every_scenario_edge() {
    let graph = walrep_states::recovery::explore::explore_standby();
    assert!(graph.violations.is_empty(), "{:#?}", graph.violations);
    assert_eq!(
        graph.states.len(),
        StateKind::ALL.len(),
        "{:?}",
        graph.states
    );
    let mut traces: Vec<(String, Scenario)> =
        ALL.iter().map(|(n, f)| (n.to_string(), f())).collect();
    for state in StateKind::ALL {
        let mut s = machine_in(state);
        s.ev(Event::ShutdownRequested);
        traces.push((format!("shutdown in {state}"), s));
    }
    let mut missing = Vec::new();
    for (name, s) in &traces {
        for t in &s.trace {
            if !graph.has_edge(t.from, t.event.kind(), t.to) {
                missing.push(format!("{name}: {t}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "edges not in the explored graph:\n{}",
        missing.join("\n")
    );
    assert!(ALL.len() >= 15);
}
