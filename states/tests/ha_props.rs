//! Property tests of one HA cycle: for arbitrary views and local states
//! (small name and number alphabets so that coincidences happen), the
//! decision never panics and every action list keeps the local safety rules,
//! whatever the machine did in earlier cycles.

use proptest::prelude::*;
use walrep_states::ha::{
    ClusterConfigRecord, ClusterView, DcsReadError, FailoverKind, FailoverRecord, HaAction,
    HaConfig, HaInput, HaState, HistoryEntry, Lease, LocalRole, LocalState, MemberRecord,
    MemberRole, ReplicaProgress, ReplicaSyncState, SyncRecord, Versioned,
};
use walrep_states::{Lsn, Millis, TimelineId};

const NAMES: [&str; 4] = ["n1", "n2", "n3", "x"];
const ME: &str = "n1";

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(&NAMES[..]).prop_map(str::to_string)
}

/// A name, this node's half of the time (so it often leads or is listed).
fn mostly_me() -> impl Strategy<Value = String> {
    prop_oneof![Just(ME.to_string()), name()]
}

fn versioned<T: std::fmt::Debug>(
    value: impl Strategy<Value = T>,
) -> impl Strategy<Value = Versioned<T>> {
    (value, 0i64..6, 0i64..2).prop_map(|(value, mod_revision, lease)| Versioned {
        value,
        mod_revision,
        lease,
    })
}

fn role() -> impl Strategy<Value = MemberRole> {
    prop::sample::select(vec![
        MemberRole::Primary,
        MemberRole::Standby,
        MemberRole::Fenced,
        MemberRole::Starting,
        MemberRole::Demoting,
        MemberRole::Promoting,
    ])
}

fn member() -> impl Strategy<Value = MemberRecord> {
    (
        name(),
        role(),
        1u32..4,
        0u64..5,
        any::<bool>(),
        any::<bool>(),
        0u64..2,
    )
        .prop_map(
            |(name, role, tli, flush, healthy, nofailover, sysid)| MemberRecord {
                repl_addr: format!("{name}:1"),
                client_addr: format!("{name}:2"),
                name,
                role,
                system_identifier: 7 + sysid,
                timeline: TimelineId(tli),
                flush_lsn: Lsn(flush),
                replay_lsn: Lsn(flush),
                status_url: None,
                nofailover,
                healthy,
                ha_paused_seen: false,
                version: String::new(),
            },
        )
}

fn view() -> impl Strategy<Value = ClusterView> {
    (
        prop::option::of(versioned(mostly_me())),
        prop::collection::vec(versioned(member()), 0..4),
        prop::option::of(versioned(
            (mostly_me(), prop::collection::vec(name(), 0..3)).prop_map(
                |(leader, sync_standbys)| SyncRecord {
                    leader,
                    sync_standbys,
                },
            ),
        )),
        prop::option::of(versioned(
            (
                prop::option::of(name()),
                prop::option::of(name()),
                any::<bool>(),
                0u64..3,
            )
                .prop_map(|(leader, candidate, forced, age)| FailoverRecord {
                    leader,
                    candidate,
                    kind: if forced {
                        FailoverKind::Failover
                    } else {
                        FailoverKind::Switchover
                    },
                    requested_at_ms: 100_000 - age * 15_000,
                }),
        )),
        prop::option::of(versioned(
            any::<bool>().prop_map(|paused| ClusterConfigRecord { paused }),
        )),
        prop::option::of(versioned((1u32..4).prop_map(|t| {
            vec![HistoryEntry {
                timeline: TimelineId(t),
                switch_lsn: Lsn(1),
                leader: "n2".into(),
                at_ms: 0,
            }]
        }))),
        prop::option::of(versioned(7u64..9)),
        prop::option::of(prop::sample::select(vec![
            "leader",
            "sync",
            "members/x",
            "junk",
        ])),
    )
        .prop_map(
            |(leader, members, sync, failover, config, history, initialize, unparsed)| {
                ClusterView {
                    leader,
                    members,
                    sync,
                    failover,
                    config,
                    history,
                    initialize,
                    unparsed: unparsed
                        .map(|k| vec![(k.to_string(), "does not parse".to_string())])
                        .unwrap_or_default(),
                    revision: 9,
                }
            },
        )
}

fn local() -> impl Strategy<Value = LocalState> {
    (
        prop_oneof![
            3 => Just(LocalRole::Primary),
            3 => Just(LocalRole::Standby),
            1 => Just(LocalRole::Promoting),
            1 => Just(LocalRole::Demoting),
            1 => Just(LocalRole::Starting),
        ],
        (
            1u32..4,
            0u64..5,
            any::<bool>(),
            any::<bool>(),
            0usize..3,
            any::<bool>(),
        ),
        prop::collection::vec(
            (name(), 0u8..4, 0u64..5).prop_map(|(name, state, flush)| ReplicaProgress {
                name,
                sync_state: [
                    ReplicaSyncState::Sync,
                    ReplicaSyncState::Potential,
                    ReplicaSyncState::Quorum,
                    ReplicaSyncState::Async,
                ][state as usize],
                flush_lsn: Lsn(flush),
            }),
            0..3,
        ),
        prop::collection::vec(name(), 0..3),
        prop::option::of(name()),
    )
        .prop_map(
            |(
                role,
                (tli, flush, healthy, gate_open, sync_count, sync_any),
                replicas,
                allowed,
                following,
            )| {
                let mut sync_allowed = allowed;
                sync_allowed.sort();
                sync_allowed.dedup();
                LocalState {
                    role,
                    system_identifier: 7,
                    timeline: TimelineId(tli),
                    timeline_start_lsn: Lsn(0),
                    flush_lsn: Lsn(flush),
                    replay_lsn: Lsn(flush),
                    healthy,
                    following,
                    replicas,
                    sync_count,
                    sync_any,
                    sync_allowed,
                    gate_open,
                }
            },
        )
}

fn input() -> impl Strategy<Value = HaInput> {
    (
        view(),
        local(),
        any::<bool>(),
        prop::option::of((0i64..2, 95_000u64..100_000)),
        99_000u64..106_000,
    )
        .prop_map(|(view, local, read_ok, lease, now)| HaInput {
            now: Millis(now),
            wall_clock_ms: now,
            lease: lease.map(|(id, sent)| Lease {
                id,
                sent_at: Millis(sent),
                ttl_ms: 10_000,
            }),
            view: if read_ok {
                Ok(view)
            } else {
                Err(DcsReadError {
                    message: "down".into(),
                })
            },
            local,
        })
}

/// The local safety rules of one decision.
fn check(input: &HaInput, actions: &[HaAction]) -> Result<(), String> {
    let lease = input.lease;
    let view = input.view.as_ref().ok();
    let mut written_sync: Option<&SyncRecord> = None;
    let mut acquired = false;
    for (i, action) in actions.iter().enumerate() {
        match action {
            HaAction::OpenGate { until } => {
                let l = lease.ok_or("gate opened without a lease")?;
                if *until > l.sent_at.after_ms(l.ttl_ms - 2_000) {
                    return Err(format!("gate {until} past the fence deadline"));
                }
                if *until <= input.now {
                    return Err("gate opened with a deadline already passed".into());
                }
                if input.local.role != LocalRole::Primary {
                    return Err("gate opened on a node that is not primary".into());
                }
                if i != 0 {
                    return Err("OpenGate is not the first action".into());
                }
            }
            HaAction::CloseGate if i != 0 => return Err("CloseGate is not first".into()),
            HaAction::AcquireLeader => {
                let v = view.ok_or("acquired from a failed read")?;
                if v.leader.is_some() {
                    return Err("acquired a key someone holds".into());
                }
                if v.paused() {
                    return Err("acquired while paused".into());
                }
                if v.blocking_unparsed().is_some() {
                    return Err("acquired with a stranger's key".into());
                }
                let listed = match &v.sync {
                    Some(s) => s.value.allows(ME),
                    None => input.local.role == LocalRole::Primary,
                };
                let forced = v.failover.as_ref().is_some_and(|f| {
                    f.value.kind == FailoverKind::Failover
                        && f.value.candidate.as_deref() == Some(ME)
                });
                if !listed && !forced {
                    return Err("acquired without being allowed by sync".into());
                }
                if !input.local.healthy {
                    return Err("acquired while unhealthy".into());
                }
                acquired = true;
            }
            HaAction::WriteSync { record, .. } => {
                if record.leader != ME {
                    return Err("wrote sync naming another leader".into());
                }
                written_sync = Some(record);
            }
            HaAction::SetSyncAllowed(names) => {
                let listed: Vec<String> = match written_sync {
                    Some(r) => r.sync_standbys.clone(),
                    None => view
                        .and_then(|v| v.sync.as_ref())
                        .map(|s| s.value.sync_standbys.clone())
                        .unwrap_or_default(),
                };
                let wider = names.iter().any(|n| !listed.contains(n))
                    && names.iter().any(|n| !input.local.sync_allowed.contains(n));
                if wider {
                    return Err(format!(
                        "syncrep may count {names:?}, sync lists {listed:?}"
                    ));
                }
            }
            HaAction::Promote => {
                let v = view.ok_or("promoted from a failed read")?;
                let fresh = acquired && written_sync.is_some_and(|r| r.sync_standbys.is_empty());
                let held = v.leader.as_ref().is_some_and(|l| l.value == ME)
                    && v.sync.as_ref().is_some_and(|s| s.value.leader == ME);
                if !(fresh || held) {
                    return Err("promoted without the key and sync naming me".into());
                }
                if input.local.role != LocalRole::Standby {
                    return Err("promoted a node that is not a standby".into());
                }
            }
            HaAction::Demote { .. } if view.is_some_and(|v| v.paused()) => {
                return Err("demoted while paused".into());
            }
            _ => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4_000, ..ProptestConfig::default() })]

    #[test]
    fn every_decision_keeps_the_local_rules(inputs in prop::collection::vec(input(), 1..6)) {
        let mut m = HaState::new(HaConfig::with_defaults(ME)).unwrap();
        for input in &inputs {
            let d = m.decide(input);
            prop_assert!(!d.why.is_empty());
            if let Err(e) = check(input, &d.actions) {
                prop_assert!(false, "{e}: {:?}\nwhy: {}\ninput: {input:#?}", d.actions, d.why);
            }
        }
    }
}
