//! Parser tests: every command in the forms PostgreSQL's tools send, and
//! errors with their SQLSTATEs.

use super::*;

fn ok(s: &str) -> ReplicationCommand {
    parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn code(s: &str) -> &'static str {
    parse(s).expect_err(s).code
}

#[test]
fn commands_pg_receivewal_sends() {
    assert_eq!(ok("IDENTIFY_SYSTEM"), ReplicationCommand::IdentifySystem);
    assert_eq!(ok("identify_system;"), ReplicationCommand::IdentifySystem);
    assert_eq!(
        ok("SHOW wal_segment_size"),
        ReplicationCommand::Show("wal_segment_size".into())
    );
    assert_eq!(
        ok("TIMELINE_HISTORY 2"),
        ReplicationCommand::TimelineHistory(TimelineId(2))
    );
    assert_eq!(
        ok("READ_REPLICATION_SLOT s1"),
        ReplicationCommand::ReadReplicationSlot("s1".into())
    );
    assert_eq!(
        ok("START_REPLICATION SLOT \"s1\" 0/4000000 TIMELINE 1"),
        ReplicationCommand::StartReplication {
            slot: Some("s1".into()),
            start: Lsn(0x400_0000),
            timeline: Some(TimelineId(1)),
        }
    );
    assert_eq!(
        ok("start_replication physical 1/0"),
        ReplicationCommand::StartReplication {
            slot: None,
            start: Lsn(1 << 32),
            timeline: None,
        }
    );
}

#[test]
fn slot_commands_old_and_new_forms() {
    let created = |temporary, reserve_wal| ReplicationCommand::CreateReplicationSlot {
        name: "s1".into(),
        temporary,
        reserve_wal,
    };
    assert_eq!(
        ok("CREATE_REPLICATION_SLOT \"s1\" PHYSICAL"),
        created(false, false)
    );
    assert_eq!(
        ok("CREATE_REPLICATION_SLOT S1 PHYSICAL RESERVE_WAL"),
        created(false, true)
    );
    assert_eq!(
        ok("CREATE_REPLICATION_SLOT \"s1\" TEMPORARY PHYSICAL ( RESERVE_WAL)"),
        created(true, true)
    );
    assert_eq!(
        ok("CREATE_REPLICATION_SLOT s1 PHYSICAL (reserve_wal false)"),
        created(false, false)
    );
    assert_eq!(
        ok("DROP_REPLICATION_SLOT \"s1\" WAIT"),
        ReplicationCommand::DropReplicationSlot {
            name: "s1".into(),
            wait: true
        }
    );
    assert_eq!(
        code("CREATE_REPLICATION_SLOT s1 PHYSICAL (reserve_wal, reserve_wal)"),
        "42601"
    );
    assert_eq!(
        code("CREATE_REPLICATION_SLOT s1 PHYSICAL (snapshot 'export')"),
        "XX000"
    );
    assert_eq!(
        code("CREATE_REPLICATION_SLOT s1 LOGICAL test_decoding"),
        "0A000"
    );
}

#[test]
fn base_backup_options() {
    let ReplicationCommand::BaseBackup(o) = ok(
        "BASE_BACKUP ( LABEL 'pg_basebackup base backup',  PROGRESS,  CHECKPOINT 'fast',  WAIT 0,  MANIFEST 'yes',  TARGET 'client')",
    ) else {
        panic!("not a base backup")
    };
    assert_eq!(o.label, "pg_basebackup base backup");
    assert!(o.progress && !o.wait);
    assert_eq!(o.checkpoint, CheckpointMode::Fast);
    assert_eq!(o.target.as_deref(), Some("client"));
    assert_eq!(code("BASE_BACKUP (LABEL 'a', LABEL 'b')"), "42601");
    assert_eq!(code("BASE_BACKUP (FROB)"), "42601");
    assert_eq!(code("BASE_BACKUP (CHECKPOINT 'sometime')"), "22023");
    assert_eq!(code("BASE_BACKUP (MAX_RATE 1)"), "22003");
    let ReplicationCommand::BaseBackup(o) = ok("BASE_BACKUP LABEL 'x' FAST NOWAIT") else {
        panic!("not a base backup")
    };
    assert!(!o.wait && o.checkpoint == CheckpointMode::Fast);
}

#[test]
fn errors_have_postgres_sqlstates() {
    assert_eq!(code("SELECT 1"), "0A000");
    assert_eq!(code(""), "0A000");
    assert_eq!(code("IDENTIFY_SYSTEM extra"), "42601");
    assert_eq!(code("TIMELINE_HISTORY 0"), "42601");
    assert_eq!(code("TIMELINE_HISTORY"), "42601");
    assert_eq!(code("START_REPLICATION SLOT slot 0/0"), "42601");
    assert_eq!(code("START_REPLICATION 0/0 TIMELINE 0"), "42601");
    assert_eq!(code("START_REPLICATION SLOT s LOGICAL 0/0"), "0A000");
    assert_eq!(code("SHOW 'x'"), "42601");
    assert_eq!(code("DROP_REPLICATION_SLOT"), "42601");
    assert_eq!(code("IDENTIFY_SYSTEM;;"), "42601");
}

#[test]
fn resumable_backup_options() {
    let ReplicationCommand::BaseBackup(o) =
        ok("BASE_BACKUP (RESUME 'ab', SKIP_CHUNKS '0-3,7,9-10', CHECKPOINT 'last')")
    else {
        panic!("not a base backup")
    };
    let r = o.resume.as_deref().unwrap();
    assert_eq!(r.id, "ab");
    assert_eq!(r.skip_chunks, vec![0, 1, 2, 3, 7, 9, 10]);
    assert_eq!(o.checkpoint, CheckpointMode::Last);
    assert_eq!(
        super::chunk_list_text(&r.skip_chunks),
        "0-3,7,9-10".to_string()
    );
    let ReplicationCommand::BaseBackup(o) = ok("BASE_BACKUP (RESUMABLE)") else {
        panic!("not a base backup")
    };
    assert!(o.resumable);
    assert_eq!(code("BASE_BACKUP (SKIP_CHUNKS '1')"), "42601");
    assert_eq!(code("BASE_BACKUP (JOIN 'a', PART 1, RESUMABLE)"), "42601");
    for bad in ["3-1", "1,1", "x", "1-", "-1", "0-4294967295", "99999999999"] {
        let q = format!("BASE_BACKUP (RESUME 'a', SKIP_CHUNKS '{bad}')");
        assert_eq!(code(&q), "22023", "{bad}");
    }
}

proptest::proptest! {
    /// Any SKIP_CHUNKS text is a list or a clear error, never a panic;
    /// a list's text parses back to it.
    #[test]
    fn skip_chunks_never_panic(text in "[0-9,\\-]{0,40}") {
        if let Ok(list) = super::chunk_list(&text) {
            proptest::prop_assert_eq!(super::chunk_list(&super::chunk_list_text(&list)).ok(), Some(list));
        }
    }
}

#[test]
fn confirm_base_backup_takes_one_quoted_id() {
    assert_eq!(
        ok("CONFIRM_BASE_BACKUP 'ab12'"),
        ReplicationCommand::ConfirmBaseBackup("ab12".into())
    );
    assert_eq!(
        ok("confirm_base_backup 'x';"),
        ReplicationCommand::ConfirmBaseBackup("x".into())
    );
    for bad in [
        "CONFIRM_BASE_BACKUP",
        "CONFIRM_BASE_BACKUP ab12",
        "CONFIRM_BASE_BACKUP 'a' 'b'",
    ] {
        assert_eq!(code(bad), SYNTAX_ERROR, "{bad}");
    }
}
