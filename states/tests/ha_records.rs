//! The JSON of the HA keys: the exact encoding every writer and reader of
//! the store relies on, and how bad values are refused.

use walrep_states::ha::{
    ClusterConfigRecord, FailoverKind, FailoverRecord, HaConfig, HaConfigError, HistoryEntry,
    MemberRecord, MemberRole, SyncRecord,
};
use walrep_states::{Lsn, TimelineId};

fn member() -> MemberRecord {
    MemberRecord {
        name: "n1".into(),
        role: MemberRole::Primary,
        system_identifier: 7_312_345_678_901_234_567,
        timeline: TimelineId(2),
        flush_lsn: Lsn(0x1_0000_0028),
        replay_lsn: Lsn(0x1_0000_0028),
        repl_addr: "10.0.0.1:5433".into(),
        client_addr: "10.0.0.1:6379".into(),
        status_url: None,
        nofailover: false,
        healthy: true,
        ha_paused_seen: false,
        version: "0.1.0".into(),
    }
}

#[test]
fn member_record_json_is_stable() {
    let json = serde_json::to_string(&member()).unwrap();
    assert_eq!(
        json,
        r#"{"name":"n1","role":"primary","system_identifier":7312345678901234567,"timeline":2,"flush_lsn":"1/28","replay_lsn":"1/28","repl_addr":"10.0.0.1:5433","client_addr":"10.0.0.1:6379","nofailover":false,"healthy":true,"ha_paused_seen":false,"version":"0.1.0"}"#
    );
    let back: MemberRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back, member());
}

#[test]
fn every_record_round_trips() {
    let sync = SyncRecord {
        leader: "n1".into(),
        sync_standbys: vec!["n2".into()],
    };
    let json = serde_json::to_string(&sync).unwrap();
    assert_eq!(json, r#"{"leader":"n1","sync_standbys":["n2"]}"#);
    assert_eq!(serde_json::from_str::<SyncRecord>(&json).unwrap(), sync);
    assert!(sync.allows("n1") && sync.allows("n2") && !sync.allows("n3"));

    let failover = FailoverRecord {
        leader: Some("n1".into()),
        candidate: Some("n2".into()),
        kind: FailoverKind::Switchover,
        requested_at_ms: 1_700_000_000_000,
    };
    let json = serde_json::to_string(&failover).unwrap();
    assert_eq!(
        json,
        r#"{"leader":"n1","candidate":"n2","kind":"switchover","requested_at_ms":1700000000000}"#
    );
    assert_eq!(
        serde_json::from_str::<FailoverRecord>(&json).unwrap(),
        failover
    );

    let config: ClusterConfigRecord = serde_json::from_str("{}").unwrap();
    assert!(!config.paused, "an empty config means not paused");

    let history = vec![HistoryEntry {
        timeline: TimelineId(2),
        switch_lsn: Lsn(0x300_0000),
        leader: "n2".into(),
        at_ms: 5,
    }];
    let json = serde_json::to_string(&history).unwrap();
    assert_eq!(
        json,
        r#"[{"timeline":2,"switch_lsn":"0/3000000","leader":"n2","at_ms":5}]"#
    );
    assert_eq!(
        serde_json::from_str::<Vec<HistoryEntry>>(&json).unwrap(),
        history
    );
}

#[test]
fn bad_values_are_errors_not_panics() {
    for bad in [
        r#"{"leader":1}"#,
        r#"{"sync_standbys":["n2"]}"#,
        "not json",
        r#"{"leader":"n1","sync_standbys":"n2"}"#,
    ] {
        assert!(serde_json::from_str::<SyncRecord>(bad).is_err(), "{bad}");
    }
    let mut json = serde_json::to_value(member()).unwrap();
    json["role"] = "king".into();
    assert!(serde_json::from_value::<MemberRecord>(json).is_err());
    let mut json = serde_json::to_value(member()).unwrap();
    json["flush_lsn"] = "zz".into();
    assert!(serde_json::from_value::<MemberRecord>(json).is_err());
}

#[test]
fn config_enforces_the_timing_rule() {
    let ok = HaConfig::with_defaults("n1");
    assert_eq!(ok.validate(), Ok(()));
    let mut c = ok.clone();
    c.retry_timeout_ms = 5_000;
    let err = c.validate().unwrap_err();
    assert!(matches!(err, HaConfigError::TimingRule { .. }));
    assert!(err.to_string().contains("must not exceed ha_ttl"), "{err}");
    let mut c = ok.clone();
    c.ttl_ms = 1_000;
    assert!(matches!(
        c.validate(),
        Err(HaConfigError::TtlTooShort { .. })
    ));
    let mut c = ok.clone();
    c.fence_margin_ms = c.ttl_ms;
    assert!(matches!(
        c.validate(),
        Err(HaConfigError::MarginTooLarge { .. })
    ));
    let mut c = ok.clone();
    c.name = "a/b".into();
    assert!(matches!(c.validate(), Err(HaConfigError::BadName { .. })));
    let mut c = ok;
    c.loop_wait_ms = 0;
    assert!(matches!(
        c.validate(),
        Err(HaConfigError::ZeroInterval { .. })
    ));
}
