//! The HA decision rule by rule: each test builds one cluster view and one
//! local state and checks what one cycle does (and says why).

use walrep_states::ha::{
    ClusterConfigRecord, ClusterView, DcsReadError, FailoverKind, FailoverRecord, HaAction,
    HaConfig, HaDecision, HaInput, HaState, HistoryEntry, Lease, LocalRole, LocalState,
    MemberRecord, MemberRole, ReplicaProgress, ReplicaSyncState, Severity, SyncRecord, Versioned,
};
use walrep_states::{Lsn, Millis, TimelineId};

const SYSID: u64 = 7_000_000_000_000_000_001;
const LEASE: i64 = 42;

fn v<T>(value: T, mod_revision: i64, lease: i64) -> Versioned<T> {
    Versioned {
        value,
        mod_revision,
        lease,
    }
}

fn member(name: &str, role: MemberRole, flush: u64) -> Versioned<MemberRecord> {
    v(
        MemberRecord {
            name: name.into(),
            role,
            system_identifier: SYSID,
            timeline: TimelineId(1),
            flush_lsn: Lsn(flush),
            replay_lsn: Lsn(flush),
            repl_addr: format!("{name}:5433"),
            client_addr: format!("{name}:6379"),
            status_url: None,
            nofailover: false,
            healthy: true,
            ha_paused_seen: false,
            version: "t".into(),
        },
        5,
        100,
    )
}

fn sync(leader: &str, standbys: &[&str]) -> Option<Versioned<SyncRecord>> {
    Some(v(
        SyncRecord {
            leader: leader.into(),
            sync_standbys: standbys.iter().map(|s| s.to_string()).collect(),
        },
        7,
        0,
    ))
}

fn view() -> ClusterView {
    ClusterView {
        initialize: Some(v(SYSID, 2, 0)),
        revision: 10,
        ..ClusterView::default()
    }
}

fn local(role: LocalRole, flush: u64) -> LocalState {
    LocalState {
        role,
        system_identifier: SYSID,
        timeline: TimelineId(1),
        timeline_start_lsn: Lsn(0),
        flush_lsn: Lsn(flush),
        replay_lsn: Lsn(flush),
        healthy: true,
        following: None,
        replicas: Vec::new(),
        sync_count: 1,
        sync_any: false,
        sync_allowed: Vec::new(),
        gate_open: false,
    }
}

fn input(now: u64, view: ClusterView, local: LocalState) -> HaInput {
    HaInput {
        now: Millis(now),
        wall_clock_ms: 1_700_000_000_000 + now,
        lease: Some(Lease {
            id: LEASE,
            sent_at: Millis(now.saturating_sub(10)),
            ttl_ms: 10_000,
        }),
        view: Ok(view),
        local,
    }
}

fn machine(name: &str) -> HaState {
    let mut c = HaConfig::with_defaults(name);
    c.repl_addr = format!("{name}:5433");
    HaState::new(c).unwrap()
}

/// The actions other than the member key, which most rules do not care about.
fn acts(d: &HaDecision) -> Vec<HaAction> {
    d.actions
        .iter()
        .filter(|a| !matches!(a, HaAction::PublishMember(_)))
        .cloned()
        .collect()
}

fn write_sync(leader: &str, standbys: &[&str], rev: i64) -> HaAction {
    HaAction::WriteSync {
        record: SyncRecord {
            leader: leader.into(),
            sync_standbys: standbys.iter().map(|s| s.to_string()).collect(),
        },
        expected_mod_revision: rev,
    }
}

fn leader_view(owner: &str, lease: i64) -> ClusterView {
    let mut vw = view();
    vw.leader = Some(v(owner.to_string(), 9, lease));
    vw
}

#[test]
fn a_primary_starts_fenced_and_opens_only_with_key_and_sync() {
    let mut m = machine("n1");
    // No leader key, no sync record (a fresh cluster): take the key, gate shut.
    let d = m.decide(&input(1_000, view(), local(LocalRole::Primary, 100)));
    assert_eq!(acts(&d), vec![HaAction::AcquireLeader], "{}", d.why);
    assert_eq!(d.next_cycle_ms, 0);
    // The key is ours but sync does not name us yet: write it, gate still shut.
    let d = m.decide(&input(
        1_010,
        leader_view("n1", LEASE),
        local(LocalRole::Primary, 100),
    ));
    assert_eq!(acts(&d), vec![write_sync("n1", &[], 0)], "{}", d.why);
    // Key and sync: open until keepalive send time + ttl - margin.
    let mut vw = leader_view("n1", LEASE);
    vw.sync = sync("n1", &[]);
    let d = m.decide(&input(1_020, vw, local(LocalRole::Primary, 100)));
    assert_eq!(
        acts(&d),
        vec![HaAction::OpenGate {
            until: Millis(1_010 + 10_000 - 2_000)
        }],
        "{}",
        d.why
    );
    assert!(d.why.contains("leader with the lock"), "{}", d.why);
}

#[test]
fn the_gate_closes_when_the_last_renewal_is_too_old() {
    let mut m = machine("n1");
    let mut vw = leader_view("n1", LEASE);
    vw.sync = sync("n1", &[]);
    let mut inp = input(20_000, vw, local(LocalRole::Primary, 100));
    inp.lease = Some(Lease {
        id: LEASE,
        sent_at: Millis(11_000),
        ttl_ms: 10_000,
    });
    inp.local.gate_open = true;
    let d = m.decide(&inp);
    assert_eq!(acts(&d), vec![HaAction::CloseGate], "{}", d.why);
    assert_eq!(d.severity, Severity::Warn);
}

#[test]
fn a_failed_read_never_extends_the_gate_nor_promotes() {
    let mut m = machine("n1");
    let mut vw = leader_view("n1", LEASE);
    vw.sync = sync("n1", &[]);
    let d = m.decide(&input(1_000, vw, local(LocalRole::Primary, 100)));
    let until = Millis(990 + 8_000);
    assert!(acts(&d).contains(&HaAction::OpenGate { until }));
    // Store down: keep the deadline, no new OpenGate even though a later
    // keepalive "succeeded".
    let mut inp = input(
        5_000,
        ClusterView::default(),
        local(LocalRole::Primary, 100),
    );
    inp.view = Err(DcsReadError {
        message: "timeout".into(),
    });
    inp.local.gate_open = true;
    let d = m.decide(&inp);
    assert_eq!(acts(&d), vec![], "{}", d.why);
    assert!(d.why.contains("not deciding leadership"), "{}", d.why);
    inp.now = until;
    let d = m.decide(&inp);
    assert_eq!(acts(&d), vec![HaAction::CloseGate], "{}", d.why);
    // A standby with a failed read does nothing.
    let mut s = machine("n2");
    let mut inp = input(
        5_000,
        ClusterView::default(),
        local(LocalRole::Standby, 100),
    );
    inp.view = Err(DcsReadError {
        message: "no leader".into(),
    });
    let d = s.decide(&inp);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.severity, Severity::Warn);
}

/// A standby's race, one row per rule: (what changes, may it race, words in why).
#[test]
fn who_may_take_a_free_key() {
    type Tweak = fn(&mut ClusterView, &mut HaInput, &mut HaConfig);
    let rows: Vec<(&str, Tweak, bool, &str)> = vec![
        ("listed in sync", |_, _, _| {}, true, "healthiest confirmed"),
        (
            "not listed",
            |vw, _, _| vw.sync = sync("n1", &["n3"]),
            false,
            "not a confirmed",
        ),
        (
            "no sync record",
            |vw, _, _| vw.sync = None,
            false,
            "no sync record",
        ),
        (
            "old leader as standby",
            |vw, _, _| vw.sync = sync("n2", &[]),
            true,
            "healthiest",
        ),
        (
            "paused",
            |vw, _, _| vw.config = Some(v(ClusterConfigRecord { paused: true }, 3, 0)),
            false,
            "paused",
        ),
        (
            "unhealthy",
            |_, i, _| i.local.healthy = false,
            false,
            "not healthy",
        ),
        (
            "nofailover",
            |_, _, c| c.nofailover = true,
            false,
            "nofailover",
        ),
        (
            "behind in history",
            |vw, _, _| {
                vw.history = Some(v(
                    vec![HistoryEntry {
                        timeline: TimelineId(2),
                        switch_lsn: Lsn(50),
                        leader: "n3".into(),
                        at_ms: 0,
                    }],
                    4,
                    0,
                ));
            },
            false,
            "behind",
        ),
        (
            "a listed peer is ahead",
            |vw, _, _| {
                vw.sync = sync("n1", &["n2", "n3"]);
                vw.members.push(member("n3", MemberRole::Standby, 200));
            },
            false,
            "n3 is at least as healthy",
        ),
        (
            "a listed peer ties and sorts first",
            |vw, _, _| {
                vw.sync = sync("n9", &["n2", "n1"]);
                vw.members.push(member("n1", MemberRole::Standby, 100));
            },
            false,
            "n1 is at least as healthy",
        ),
        (
            "an unlisted peer ahead does not count",
            |vw, _, _| {
                vw.members.push(member("n3", MemberRole::Standby, 500));
            },
            true,
            "healthiest",
        ),
        (
            "a member still reports an open primary",
            |vw, _, _| {
                vw.members.push(member("n3", MemberRole::Primary, 100));
            },
            false,
            "open primary",
        ),
        (
            "a stranger wrote sync",
            |vw, _, _| {
                vw.sync = None;
                vw.unparsed
                    .push(("sync".into(), "expected value at line 1 column 1".into()));
            },
            false,
            "not ours",
        ),
        (
            "a stranger key elsewhere is only reported",
            |vw, _, _| {
                vw.unparsed
                    .push(("somebody/else".into(), "not a walrep key".into()));
            },
            true,
            "healthiest",
        ),
        (
            "async failover, nobody listed alive",
            |vw, _, c| {
                vw.sync = sync("n1", &["n3"]);
                c.allow_async_failover = true;
            },
            true,
            "acknowledged writes may be lost",
        ),
        (
            "async failover, a listed member alive",
            |vw, _, c| {
                vw.sync = sync("n1", &["n3"]);
                vw.members.push(member("n3", MemberRole::Standby, 10));
                c.allow_async_failover = true;
            },
            false,
            "not a confirmed",
        ),
        (
            "another candidate was requested",
            |vw, _, _| {
                vw.members.push(member("n3", MemberRole::Standby, 10));
                vw.failover = Some(v(
                    FailoverRecord {
                        leader: None,
                        candidate: Some("n3".into()),
                        kind: FailoverKind::Failover,
                        requested_at_ms: 1_700_000_000_000,
                    },
                    8,
                    0,
                ));
            },
            false,
            "n3 is the requested candidate",
        ),
        (
            "forced failover to me, unlisted",
            |vw, _, _| {
                vw.sync = sync("n1", &["n3"]);
                vw.failover = Some(v(
                    FailoverRecord {
                        leader: None,
                        candidate: Some("n2".into()),
                        kind: FailoverKind::Failover,
                        requested_at_ms: 1_700_000_000_000,
                    },
                    8,
                    0,
                ));
            },
            true,
            "forced failover names me",
        ),
    ];
    for (name, tweak, races, words) in rows {
        let mut vw = view();
        vw.sync = sync("n1", &["n2"]);
        vw.members.push(member("n2", MemberRole::Standby, 100));
        let mut inp = input(
            1_000,
            ClusterView::default(),
            local(LocalRole::Standby, 100),
        );
        let mut config = HaConfig::with_defaults("n2");
        tweak(&mut vw, &mut inp, &mut config);
        let rev = vw.sync.as_ref().map_or(0, |s| s.mod_revision);
        inp.view = Ok(vw);
        let mut m = HaState::new(config).unwrap();
        let d = m.decide(&inp);
        let expected = if races {
            vec![
                HaAction::AcquireLeader,
                write_sync("n2", &[], rev),
                HaAction::Promote,
            ]
        } else {
            vec![]
        };
        assert_eq!(acts(&d), expected, "{name}: {}", d.why);
        assert!(d.why.contains(words), "{name}: {:?} lacks {words:?}", d.why);
    }
}

#[test]
fn another_system_identifier_halts_for_good() {
    let mut m = machine("n2");
    let mut inp = input(1_000, view(), local(LocalRole::Primary, 100));
    inp.local.system_identifier = 1;
    inp.local.gate_open = true;
    let d = m.decide(&inp);
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(d.actions[0], HaAction::CloseGate);
    assert!(
        matches!(d.actions[1], HaAction::Halt { .. }),
        "{:?}",
        d.actions
    );
    assert!(d.why.contains("another cluster"), "{}", d.why);
    inp.local.system_identifier = SYSID;
    inp.local.gate_open = false;
    let d = m.decide(&inp);
    assert_eq!(acts(&d), vec![], "a halted machine stays halted");
    assert!(m.halted().is_some());
}

#[test]
fn an_identifier_not_known_yet_neither_halts_nor_takes_the_key() {
    // A demoted node entering standby mode after rejoin reports 0 for a
    // cycle: it must go on (and follow the leader later), not halt.
    let mut m = machine("n2");
    let mut inp = input(1_000, view(), local(LocalRole::Standby, 500));
    inp.local.system_identifier = 0;
    let d = m.decide(&inp);
    assert!(m.halted().is_none(), "{}", d.why);
    assert!(
        !acts(&d)
            .iter()
            .any(|a| matches!(a, HaAction::AcquireLeader | HaAction::Promote)),
        "{:?}",
        d.actions
    );
    inp.local.system_identifier = SYSID;
    m.decide(&inp);
    assert!(m.halted().is_none());
}

#[test]
fn a_standby_holding_the_key_promotes_only_if_sync_names_it() {
    let mut m = machine("n2");
    let mut vw = leader_view("n2", LEASE);
    vw.sync = sync("n1", &["n2"]);
    let d = m.decide(&input(1_000, vw.clone(), local(LocalRole::Standby, 100)));
    assert_eq!(acts(&d), vec![HaAction::ReleaseLeader], "{}", d.why);
    vw.sync = sync("n2", &[]);
    let d = m.decide(&input(1_000, vw.clone(), local(LocalRole::Standby, 100)));
    assert_eq!(acts(&d), vec![HaAction::Promote], "{}", d.why);
    // On a lease of a previous run: re-attach first.
    vw.leader = Some(v("n2".to_string(), 9, 7));
    let d = m.decide(&input(1_000, vw, local(LocalRole::Standby, 100)));
    assert_eq!(acts(&d), vec![HaAction::UpdateLeader], "{}", d.why);
}

#[test]
fn a_primary_without_the_key_is_fenced_and_demotes() {
    let mut m = machine("n1");
    let mut vw = leader_view("n2", 77);
    vw.members.push(member("n2", MemberRole::Primary, 300));
    let mut l = local(LocalRole::Primary, 100);
    l.gate_open = true;
    let d = m.decide(&input(1_000, vw.clone(), l.clone()));
    assert_eq!(
        acts(&d),
        vec![
            HaAction::CloseGate,
            HaAction::Demote {
                leader: Some("n2".into()),
                repl_addr: Some("n2:5433".into())
            }
        ],
        "{}",
        d.why
    );
    let published = d.actions.iter().find_map(|a| match a {
        HaAction::PublishMember(r) => Some(r.role),
        _ => None,
    });
    assert_eq!(published, Some(MemberRole::Demoting));
    // Paused: fenced all the same, but no demotion.
    vw.config = Some(v(ClusterConfigRecord { paused: true }, 3, 0));
    let d = m.decide(&input(1_000, vw, l));
    assert_eq!(acts(&d), vec![HaAction::CloseGate], "{}", d.why);
}

#[test]
fn standbys_follow_the_leader() {
    let mut m = machine("n3");
    let mut vw = leader_view("n2", 77);
    vw.members.push(member("n2", MemberRole::Primary, 300));
    let mut l = local(LocalRole::Standby, 100);
    l.following = Some("n1".into());
    let d = m.decide(&input(1_000, vw.clone(), l.clone()));
    assert_eq!(
        acts(&d),
        vec![HaAction::Follow {
            leader: "n2".into(),
            repl_addr: "n2:5433".into()
        }]
    );
    l.following = Some("n2".into());
    assert_eq!(acts(&m.decide(&input(1_000, vw, l))), vec![]);
}

#[test]
fn a_standby_that_replayed_past_the_new_timelines_fork_rejoins() {
    let mut m = machine("n3");
    let mut vw = leader_view("n2", 77);
    vw.members.push(member("n2", MemberRole::Primary, 300));
    vw.history = Some(v(
        vec![HistoryEntry {
            timeline: TimelineId(2),
            switch_lsn: Lsn(200),
            leader: "n2".into(),
            at_ms: 1_700_000_000_000,
        }],
        8,
        0,
    ));
    // Replayed timeline 1 up to the fork: it can stream timeline 2.
    let mut l = local(LocalRole::Standby, 200);
    l.following = Some("n2".into());
    assert_eq!(
        acts(&m.decide(&input(1_000, vw.clone(), l.clone()))),
        vec![]
    );
    // Received past the fork but replayed only up to it: no sign yet.
    l.flush_lsn = Lsn(260);
    assert_eq!(
        acts(&m.decide(&input(1_000, vw.clone(), l.clone()))),
        vec![]
    );
    // Replayed past it (WAL the old primary never had acknowledged): it
    // cannot follow without a rejoin cutting that WAL.
    l.replay_lsn = Lsn(250);
    let d = m.decide(&input(1_000, vw.clone(), l.clone()));
    assert_eq!(
        acts(&d),
        vec![HaAction::Demote {
            leader: Some("n2".into()),
            repl_addr: Some("n2:5433".into())
        }]
    );
    assert_eq!(d.severity, Severity::Warn);
    assert!(d.why.contains("rejoining n2's timeline"), "{}", d.why);
    // Once on timeline 2, the same position is no divergence.
    l.timeline = TimelineId(2);
    assert_eq!(acts(&m.decide(&input(1_000, vw, l))), vec![]);
}

fn leading(replicas: Vec<ReplicaProgress>, listed: &[&str], allowed: &[&str]) -> HaInput {
    let mut vw = leader_view("n1", LEASE);
    vw.sync = sync("n1", listed);
    let mut l = local(LocalRole::Primary, 1_000);
    l.replicas = replicas;
    l.sync_allowed = allowed.iter().map(|s| s.to_string()).collect();
    l.gate_open = true;
    input(2_000, vw, l)
}

fn replica(name: &str, state: ReplicaSyncState, flush: u64) -> ReplicaProgress {
    ReplicaProgress {
        name: name.into(),
        sync_state: state,
        flush_lsn: Lsn(flush),
    }
}

fn without_gate(d: &HaDecision) -> Vec<HaAction> {
    acts(d)
        .into_iter()
        .filter(|a| !matches!(a, HaAction::OpenGate { .. }))
        .collect()
}

#[test]
fn a_standby_is_added_to_sync_only_once_confirmed_then_counted() {
    let mut m = machine("n1");
    // First seen sync at primary flush 1000 with flush 900: not confirmed.
    let d = m.decide(&leading(
        vec![replica("n2", ReplicaSyncState::Sync, 900)],
        &[],
        &[],
    ));
    assert_eq!(without_gate(&d), vec![], "{}", d.why);
    assert!(d.why.contains("not confirmed"), "{}", d.why);
    // The primary moved on to 1500; the target stays 1000, reached now.
    let mut inp = leading(vec![replica("n2", ReplicaSyncState::Sync, 1_000)], &[], &[]);
    inp.local.flush_lsn = Lsn(1_500);
    let d = m.decide(&inp);
    assert_eq!(
        without_gate(&d),
        vec![
            write_sync("n1", &["n2"], 7),
            HaAction::SetSyncAllowed(vec!["n2".into()])
        ],
        "{}",
        d.why
    );
    // Potential standbys are never added; nothing to do once counted.
    let d = m.decide(&leading(
        vec![
            replica("n2", ReplicaSyncState::Sync, 1_000),
            replica("n3", ReplicaSyncState::Potential, 1_000),
        ],
        &["n2"],
        &["n2"],
    ));
    assert_eq!(without_gate(&d), vec![], "{}", d.why);
    // Written but the count step was lost: count it now.
    let d = m.decide(&leading(
        vec![replica("n2", ReplicaSyncState::Sync, 1_000)],
        &["n2"],
        &[],
    ));
    assert_eq!(
        without_gate(&d),
        vec![HaAction::SetSyncAllowed(vec!["n2".into()])]
    );
}

#[test]
fn a_standby_leaves_syncrep_before_it_leaves_sync() {
    let mut m = machine("n1");
    let d = m.decide(&leading(
        vec![replica("n3", ReplicaSyncState::Sync, 1_000)],
        &["n2"],
        &["n2"],
    ));
    assert_eq!(
        without_gate(&d),
        vec![HaAction::SetSyncAllowed(vec![]), write_sync("n1", &[], 7)],
        "{}",
        d.why
    );
    // More listed than FIRST n asks for (n lowered): trimmed the same way.
    let mut inp = leading(
        vec![
            replica("n2", ReplicaSyncState::Sync, 1_000),
            replica("n3", ReplicaSyncState::Sync, 1_000),
        ],
        &["n2", "n3"],
        &["n2", "n3"],
    );
    inp.local.sync_count = 1;
    let d = m.decide(&inp);
    assert_eq!(
        without_gate(&d),
        vec![
            HaAction::SetSyncAllowed(vec!["n2".into()]),
            write_sync("n1", &["n2"], 7)
        ]
    );
    // Syncrep counting someone sync does not name is corrected first.
    let d = m.decide(&leading(
        vec![replica("n2", ReplicaSyncState::Sync, 1_000)],
        &["n2"],
        &["n2", "n3"],
    ));
    assert_eq!(
        without_gate(&d),
        vec![HaAction::SetSyncAllowed(vec!["n2".into()])]
    );
}

#[test]
fn a_listed_standby_outranked_by_a_newcomer_stays_listed() {
    let mut m = machine("n2");
    let mut inp = leading(
        vec![
            replica("n1", ReplicaSyncState::Sync, 1_000),
            replica("n3", ReplicaSyncState::Potential, 1_000),
        ],
        &["n3"],
        &["n3"],
    );
    inp.view = Ok({
        let mut vw = leader_view("n2", LEASE);
        vw.sync = sync("n2", &["n3"]);
        vw
    });
    let d = m.decide(&inp);
    assert_eq!(without_gate(&d), vec![], "{}", d.why);
}

#[test]
fn a_stranger_key_is_an_error_and_blocks_promotion() {
    let mut m = machine("n2");
    let mut vw = view();
    vw.unparsed
        .push(("leader".into(), "value is not UTF-8".into()));
    let d = m.decide(&input(1_000, vw, local(LocalRole::Standby, 100)));
    assert_eq!(acts(&d), vec![]);
    assert_eq!(d.severity, Severity::Error);
    assert!(
        d.why.contains("key leader under our prefix is not ours"),
        "{}",
        d.why
    );
}

#[test]
fn no_standby_is_added_while_no_slot_is_free() {
    let mut m = machine("n1");
    let d = m.decide(&leading(
        vec![
            replica("n2", ReplicaSyncState::Sync, 1_000),
            replica("n3", ReplicaSyncState::Sync, 1_000),
        ],
        &["n2"],
        &["n2"],
    ));
    assert_eq!(without_gate(&d), vec![], "{}", d.why);
}

#[test]
fn switchover_fences_waits_for_the_candidate_then_releases() {
    let mut m = machine("n1");
    let mut inp = leading(
        vec![replica("n2", ReplicaSyncState::Sync, 900)],
        &["n2"],
        &["n2"],
    );
    let vw = inp.view.as_mut().unwrap();
    vw.members.push(member("n2", MemberRole::Standby, 900));
    vw.failover = Some(v(
        FailoverRecord {
            leader: Some("n1".into()),
            candidate: Some("n2".into()),
            kind: FailoverKind::Switchover,
            requested_at_ms: 1_700_000_000_000,
        },
        11,
        0,
    ));
    let d = m.decide(&inp);
    assert_eq!(acts(&d), vec![HaAction::CloseGate], "{}", d.why);
    assert_eq!(m.handing_over_to(), Some("n2"));
    inp.local.gate_open = false;
    inp.now = Millis(2_100);
    let d = m.decide(&inp);
    assert_eq!(acts(&d), vec![], "{}", d.why);
    assert!(d.why.contains("has flushed 0/384 of 0/3E8"), "{}", d.why);
    inp.local.replicas[0].flush_lsn = Lsn(1_000);
    let d = m.decide(&inp);
    assert_eq!(acts(&d), vec![HaAction::ReleaseLeader], "{}", d.why);
    // A candidate that never catches up: give up after ttl and reopen.
    let mut m = machine("n1");
    inp.local.replicas[0].flush_lsn = Lsn(900);
    inp.local.gate_open = true;
    inp.now = Millis(2_000);
    m.decide(&inp);
    inp.local.gate_open = false;
    inp.now = Millis(2_000 + 10_001);
    inp.lease = Some(Lease {
        id: LEASE,
        sent_at: Millis(11_990),
        ttl_ms: 10_000,
    });
    let d = m.decide(&inp);
    assert_eq!(
        acts(&d),
        vec![
            HaAction::OpenGate {
                until: Millis(11_990 + 8_000)
            },
            HaAction::ClearFailover {
                expected_mod_revision: 11
            }
        ],
        "{}",
        d.why
    );
    assert!(d.why.contains("aborted"), "{}", d.why);
}

#[test]
fn switchover_to_an_unlisted_standby_is_refused() {
    let mut m = machine("n1");
    let mut inp = leading(vec![], &["n2"], &["n2"]);
    let vw = inp.view.as_mut().unwrap();
    vw.members.push(member("n3", MemberRole::Standby, 900));
    vw.failover = Some(v(
        FailoverRecord {
            leader: Some("n1".into()),
            candidate: Some("n3".into()),
            kind: FailoverKind::Switchover,
            requested_at_ms: 1_700_000_000_000,
        },
        11,
        0,
    ));
    let d = m.decide(&inp);
    assert!(acts(&d).contains(&HaAction::ClearFailover {
        expected_mod_revision: 11
    }));
    assert!(
        d.why.contains("not a confirmed synchronous standby"),
        "{}",
        d.why
    );
}

#[test]
fn the_new_leader_records_history_and_clears_the_request() {
    let mut m = machine("n2");
    let mut vw = leader_view("n2", LEASE);
    vw.sync = sync("n2", &[]);
    vw.failover = Some(v(
        FailoverRecord {
            leader: Some("n1".into()),
            candidate: Some("n2".into()),
            kind: FailoverKind::Switchover,
            requested_at_ms: 1_700_000_000_000,
        },
        11,
        0,
    ));
    let mut l = local(LocalRole::Primary, 1_000);
    l.timeline = TimelineId(2);
    l.timeline_start_lsn = Lsn(900);
    let d = m.decide(&input(3_000, vw, l));
    let a = acts(&d);
    assert!(matches!(a[0], HaAction::OpenGate { .. }), "{a:?}");
    assert!(a.contains(&HaAction::ClearFailover {
        expected_mod_revision: 11
    }));
    assert!(
        a.contains(&HaAction::AppendHistory {
            entry: HistoryEntry {
                timeline: TimelineId(2),
                switch_lsn: Lsn(900),
                leader: "n2".into(),
                at_ms: 1_700_000_003_000,
            },
            expected_mod_revision: 0
        }),
        "{a:?}"
    );
}

#[test]
fn a_key_on_an_older_lease_is_reattached_before_the_gate_opens() {
    let mut m = machine("n1");
    let mut vw = leader_view("n1", 7);
    vw.sync = sync("n1", &[]);
    let d = m.decide(&input(1_000, vw, local(LocalRole::Primary, 100)));
    assert_eq!(acts(&d), vec![HaAction::UpdateLeader], "{}", d.why);
}

#[test]
fn the_member_key_is_published_when_it_changes() {
    let mut m = machine("n2");
    let mut vw = leader_view("n1", 77);
    vw.members.push(member("n1", MemberRole::Primary, 300));
    let mut l = local(LocalRole::Standby, 100);
    l.following = Some("n1".into());
    let d = m.decide(&input(1_000, vw.clone(), l.clone()));
    let record = match d.actions.last() {
        Some(HaAction::PublishMember(r)) => r.clone(),
        other => panic!("no member key published: {other:?}"),
    };
    assert_eq!(record.role, MemberRole::Standby);
    assert_eq!(record.flush_lsn, Lsn(100));
    vw.members.push(v(record, 12, LEASE));
    let d = m.decide(&input(1_000, vw, l));
    assert_eq!(d.actions, vec![], "unchanged: nothing to write");
}
