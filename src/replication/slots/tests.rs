//! Slot tests: persistence across reopen, crash leftovers, names, activity,
//! temporary slots, retention and invalidation.

use super::*;
use crate::storage::StdStorage;

fn seg() -> WalSegSize {
    WalSegSize::new(1 << 20).unwrap()
}

#[test]
fn persistent_slots_survive_reopen_and_temporary_do_not() {
    let d = tempfile::tempdir().unwrap();
    let m = SlotManager::open(Arc::new(StdStorage), d.path(), 10, None).unwrap();
    m.create("keep", false, 1, Lsn::INVALID).unwrap();
    m.create("temp", true, 1, Lsn(42)).unwrap();
    {
        let _g = m.acquire("keep", 7).unwrap();
        m.confirm_flush("keep", Lsn(0x300_0000));
        m.confirm_flush("keep", Lsn(0x100_0000)); // never backwards
    }
    assert_eq!(m.min_restart_lsn(), Some(Lsn(42)));
    m.drop_temporary_of(1);
    assert_eq!(m.min_restart_lsn(), Some(Lsn(0x300_0000)));
    drop(m);
    let m = SlotManager::open(Arc::new(StdStorage), d.path(), 10, None).unwrap();
    let names: Vec<_> = m
        .list()
        .into_iter()
        .map(|s| (s.name, s.restart_lsn))
        .collect();
    assert_eq!(names, vec![("keep".to_string(), Lsn(0x300_0000))]);
}

#[test]
fn crash_leftovers_are_cleaned_and_corruption_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let m = SlotManager::open(Arc::new(StdStorage), d.path(), 10, None).unwrap();
    m.create("a", false, 1, Lsn(5)).unwrap();
    drop(m);
    // A creation interrupted before its rename leaves a .tmp directory.
    fs::create_dir(d.path().join("slots/b.tmp")).unwrap();
    let m = SlotManager::open(Arc::new(StdStorage), d.path(), 10, None).unwrap();
    assert_eq!(m.list().len(), 1);
    assert!(!d.path().join("slots/b.tmp").exists());
    drop(m);
    let state = d.path().join("slots/a/state");
    let mut bytes = fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    fs::write(&state, &bytes).unwrap();
    let err = SlotManager::open(Arc::new(StdStorage), d.path(), 10, None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[test]
fn names_follow_postgres_rules() {
    assert!(validate_name("pg_basebackup_123").is_ok());
    assert_eq!(validate_name("").unwrap_err().to_pg().code, "42602");
    assert_eq!(validate_name("Upper").unwrap_err().to_pg().code, "42602");
    assert_eq!(validate_name("a-b").unwrap_err().to_pg().code, "42602");
    assert_eq!(
        validate_name(&"x".repeat(64)).unwrap_err().to_pg().code,
        "42622"
    );
    assert!(validate_name(&"x".repeat(63)).is_ok());
}

#[test]
fn active_slots_refuse_others_and_drop_waits() {
    let d = tempfile::tempdir().unwrap();
    let m = SlotManager::open(Arc::new(StdStorage), d.path(), 2, None).unwrap();
    m.create("s", false, 1, Lsn::INVALID).unwrap();
    assert_eq!(
        m.create("s", false, 1, Lsn::INVALID)
            .unwrap_err()
            .to_pg()
            .code,
        "42710"
    );
    m.create("t", false, 1, Lsn::INVALID).unwrap();
    assert_eq!(
        m.create("u", false, 1, Lsn::INVALID)
            .unwrap_err()
            .to_pg()
            .code,
        "53400"
    );
    let g = m.acquire("s", 9).unwrap();
    assert_eq!(m.acquire("s", 10).err().unwrap().to_pg().code, "55006");
    assert_eq!(m.drop_slot("s", 1, None).unwrap_err().to_pg().code, "55006");
    let m2 = Arc::clone(&m);
    let t = std::thread::spawn(move || m2.drop_slot("s", 1, Some(Duration::from_secs(30))));
    std::thread::sleep(Duration::from_millis(50));
    drop(g);
    t.join().unwrap().unwrap();
    assert!(m.get("s").is_none());
    assert!(!d.path().join("slots/s").exists());
    assert_eq!(m.drop_slot("s", 1, None).unwrap_err().to_pg().code, "42704");
}

#[test]
fn slots_past_max_slot_wal_keep_size_are_lost() {
    let d = tempfile::tempdir().unwrap();
    let m = SlotManager::open(Arc::new(StdStorage), d.path(), 10, Some(2 << 20)).unwrap();
    m.create("old", false, 1, Lsn(1 << 20)).unwrap();
    m.create("new", false, 1, Lsn(9 << 20)).unwrap();
    let lost = m.invalidate_obsolete(Lsn(10 << 20), seg()).unwrap();
    assert_eq!(lost, vec!["old".to_string()]);
    assert_eq!(m.min_restart_lsn(), Some(Lsn(9 << 20)));
    let e = m.acquire("old", 3).err().unwrap().to_pg();
    assert_eq!(e.code, "55000");
    assert!(e.message.contains("can no longer get changes"));
    drop(m);
    let m = SlotManager::open(Arc::new(StdStorage), d.path(), 10, Some(2 << 20)).unwrap();
    assert!(m.get("old").unwrap().invalidated);
}

#[test]
fn a_failed_write_poisons_and_is_never_retried() {
    let d = tempfile::tempdir().unwrap();
    let m = SlotManager::open(Arc::new(StdStorage), d.path(), 10, None).unwrap();
    m.create("s", false, 1, Lsn::INVALID).unwrap();
    m.confirm_flush("s", Lsn(0x100));
    // Make the slot's directory unusable so the save fails.
    fs::remove_dir_all(d.path().join("slots/s")).unwrap();
    fs::write(d.path().join("slots/s"), b"not a directory").unwrap();
    assert!(matches!(m.checkpoint(), Err(SlotError::Storage(_))));
    fs::remove_file(d.path().join("slots/s")).unwrap();
    fs::create_dir(d.path().join("slots/s")).unwrap();
    // The next attempt is refused, not retried.
    assert!(matches!(m.checkpoint(), Err(SlotError::Poisoned)));
    assert!(matches!(
        m.create("t", false, 1, Lsn::INVALID),
        Err(SlotError::Poisoned)
    ));
    assert_eq!(m.get("s").unwrap().restart_lsn, Lsn(0x100));
}
