//! Tests of the seam: the order of every durable helper's calls, fault
//! targeting by path, and poisoning.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Mutex};

use super::*;

/// Storage that does the real calls and records each one with its path.
#[derive(Debug, Default)]
struct Recording {
    calls: Mutex<Vec<(Op, PathBuf)>>,
}

impl Recording {
    fn note(&self, op: Op, path: &Path) {
        self.calls.lock().unwrap().push((op, path.to_path_buf()));
    }

    fn take(&self) -> Vec<(Op, PathBuf)> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl Storage for Recording {
    fn open(&self, path: &Path, how: OpenFor) -> io::Result<File> {
        self.note(Op::Open, path);
        StdStorage.open(path, how)
    }
    fn write_at(&self, file: &File, path: &Path, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.note(Op::Write, path);
        StdStorage.write_at(file, path, offset, buf)
    }
    fn allocate(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        self.note(Op::Allocate, path);
        StdStorage.allocate(file, path, len)
    }
    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        self.note(Op::SyncData, path);
        StdStorage.sync_data(file, path)
    }
    fn sync_all(&self, file: &File, path: &Path) -> io::Result<()> {
        self.note(Op::SyncAll, path);
        StdStorage.sync_all(file, path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.note(Op::SyncDir, dir);
        StdStorage.sync_dir(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.note(Op::Rename, from);
        StdStorage.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.note(Op::RemoveFile, path);
        StdStorage.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.note(Op::RemoveDir, path);
        StdStorage.remove_dir_all(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.note(Op::CreateDir, path);
        StdStorage.create_dir(path)
    }
}

fn calls(list: &[(Op, &Path)]) -> Vec<(Op, PathBuf)> {
    list.iter().map(|(op, p)| (*op, p.to_path_buf())).collect()
}

#[test]
fn durable_replace_syncs_the_file_before_the_rename_and_the_directory_after() {
    let d = tempfile::tempdir().unwrap();
    let st = Recording::default();
    let path = d.path().join("control");
    let tmp = d.path().join("control.tmp");
    durable_replace(&st, &path, b"one").unwrap();
    assert_eq!(
        st.take(),
        calls(&[
            (Op::Open, &tmp),
            (Op::Write, &tmp),
            (Op::SyncAll, &tmp),
            (Op::Rename, &tmp),
            (Op::SyncDir, d.path()),
        ])
    );
    durable_replace(&st, &path, b"two").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"two");
    assert!(!tmp.exists());
}

#[test]
fn durable_create_syncs_the_file_then_its_directory() {
    let d = tempfile::tempdir().unwrap();
    let st = Recording::default();
    let path = d.path().join("standby.signal");
    durable_create(&st, &path, b"").unwrap();
    assert_eq!(
        st.take(),
        calls(&[
            (Op::Open, &path),
            (Op::SyncAll, &path),
            (Op::SyncDir, d.path()),
        ])
    );
    assert!(path.exists());
}

#[test]
fn durable_rename_syncs_the_file_then_both_directories() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let (from, to) = (a.join("f"), b.join("f"));
    fs::write(&from, b"x").unwrap();
    let st = Recording::default();
    durable_rename(&st, &from, &to).unwrap();
    assert_eq!(
        st.take(),
        calls(&[
            (Op::Open, &from),
            (Op::SyncAll, &from),
            (Op::Rename, &from),
            (Op::SyncDir, &b),
            (Op::SyncDir, &a),
        ])
    );
    // Within one directory, one directory fsync.
    let to2 = b.join("g");
    durable_rename(&st, &to, &to2).unwrap();
    assert_eq!(
        st.take(),
        calls(&[
            (Op::Open, &to),
            (Op::SyncAll, &to),
            (Op::Rename, &to),
            (Op::SyncDir, &b),
        ])
    );
    assert_eq!(fs::read(&to2).unwrap(), b"x");
}

#[test]
fn durable_removals_sync_the_parent_after_removing() {
    let d = tempfile::tempdir().unwrap();
    let st = Recording::default();
    let file = d.path().join("f");
    fs::write(&file, b"x").unwrap();
    assert!(durable_remove(&st, &file).unwrap());
    assert_eq!(
        st.take(),
        calls(&[(Op::RemoveFile, &file), (Op::SyncDir, d.path())])
    );
    // Nothing removed, nothing to sync.
    assert!(!durable_remove(&st, &file).unwrap());
    assert_eq!(st.take(), calls(&[(Op::RemoveFile, &file)]));

    let dir = d.path().join("0000000000000001");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("chunk_0000"), b"x").unwrap();
    assert!(durable_remove_dir(&st, &dir).unwrap());
    assert_eq!(
        st.take(),
        calls(&[(Op::RemoveDir, &dir), (Op::SyncDir, d.path())])
    );
    assert!(!dir.exists());
}

#[test]
fn durable_create_dir_syncs_each_new_directorys_parent() {
    let d = tempfile::tempdir().unwrap();
    let st = Recording::default();
    let a = d.path().join("a");
    let ab = a.join("b");
    assert!(durable_create_dir(&st, &ab).unwrap());
    assert_eq!(
        st.take(),
        calls(&[
            (Op::CreateDir, &a),
            (Op::SyncDir, d.path()),
            (Op::CreateDir, &ab),
            (Op::SyncDir, &a),
        ])
    );
    assert!(!durable_create_dir(&st, &ab).unwrap());
    assert!(st.take().is_empty());
}

#[test]
fn seq_writer_writes_in_order_and_syncs_at_finish() {
    let d = tempfile::tempdir().unwrap();
    let st = Recording::default();
    let path = d.path().join("chunk_0000");
    let mut w = SeqWriter::open(&st, &path, OpenFor::CreateNew).unwrap();
    let big = vec![7u8; SEQ_BUFFER_BYTES + 10];
    w.write_all(b"head").unwrap();
    w.put(&big).unwrap();
    w.write_all(b"tail").unwrap();
    assert_eq!(w.finish().unwrap(), (big.len() + 8) as u64);
    let ops: Vec<Op> = st.take().into_iter().map(|c| c.0).collect();
    assert_eq!(
        ops,
        [Op::Open, Op::Write, Op::Write, Op::Write, Op::SyncAll]
    );
    let mut want = b"head".to_vec();
    want.extend_from_slice(&big);
    want.extend_from_slice(b"tail");
    assert_eq!(fs::read(&path).unwrap(), want);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        FILE_MODE
    );
}

#[test]
fn faults_target_files_by_path() {
    let d = tempfile::tempdir().unwrap();
    let st = FaultyStorage::new();
    let control = d.path().join("control");
    fs::write(&control, b"old").unwrap();
    // "The control file": its replacement is synced under the temporary name.
    let tmp = replace_temp_path(&control);
    st.fail_syncs_of(move |p| p == tmp);
    // "Any *.history".
    st.fail_syncs_of(|p| p.extension().is_some_and(|e| e == "history"));
    // "Anything under slots/": writes fail too.
    let slots = d.path().join("slots");
    let under = slots.clone();
    st.fail_writes_of(move |p| p.starts_with(&under));
    fs::create_dir(&slots).unwrap();

    let e = durable_replace(&st, &control, b"new").unwrap_err();
    assert!(e.to_string().contains("control.tmp"), "{e}");
    assert!(e.to_string().contains("injected fsync failure"), "{e}");
    assert_eq!(
        fs::read(&control).unwrap(),
        b"old",
        "the old file is intact"
    );

    let e = durable_create(&st, &d.path().join("00000002.history"), b"1\t0/5\tx\n").unwrap_err();
    assert!(e.to_string().contains("00000002.history"), "{e}");

    let e = durable_replace(&st, &slots.join("state"), b"slot").unwrap_err();
    assert!(e.to_string().contains("could not write"), "{e}");
    assert_eq!(st.injected(), 3);

    // Other files are untouched by the rules.
    durable_replace(&st, &d.path().join("other"), b"fine").unwrap();
    assert_eq!(st.injected(), 3);
    assert_eq!(st.count(Op::SyncAll), 3, "control.tmp, history, other");
    assert_eq!(st.count(Op::Write), 4);
    assert_eq!(st.count(Op::Rename), 1);

    st.clear_faults();
    durable_replace(&st, &control, b"new").unwrap();
    assert_eq!(fs::read(&control).unwrap(), b"new");
}

#[test]
fn the_nth_fdatasync_fails_and_every_later_one() {
    let d = tempfile::tempdir().unwrap();
    let st = FaultyStorage::new();
    let p = d.path().join("seg");
    let f = st.open(&p, OpenFor::CreateNew).unwrap();
    st.fail_sync_data_after(2);
    st.sync_data(&f, &p).unwrap();
    assert!(st.sync_data(&f, &p).is_err());
    assert!(st.sync_data(&f, &p).is_err());
    assert_eq!(st.count(Op::SyncData), 3);
    assert_eq!(st.injected(), 2);
}

fn poisoned_storage() -> (
    tempfile::TempDir,
    Arc<FaultyStorage>,
    PoisonOnSyncFailure,
    Arc<Mutex<Vec<SyncFailure>>>,
) {
    let d = tempfile::tempdir().unwrap();
    let faulty = Arc::new(FaultyStorage::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let st = PoisonOnSyncFailure::new(faulty.clone(), move |f| {
        seen2.lock().unwrap().push(f.clone())
    });
    (d, faulty, st, seen)
}

#[test]
fn the_first_failed_sync_poisons_and_is_named_by_every_later_refusal() {
    let (d, faulty, st, seen) = poisoned_storage();
    let control = d.path().join("control");
    durable_replace(&st, &control, b"v1").unwrap();
    assert!(st.first_failure().is_none());

    faulty.fail_syncs_of(|p| p.ends_with("control.tmp"));
    let e = durable_replace(&st, &control, b"v2").unwrap_err();
    assert!(e.to_string().contains("injected fsync failure"), "{e}");
    let first = st.first_failure().cloned().expect("poisoned");
    assert_eq!(first.op, Op::SyncAll);
    assert_eq!(first.path, d.path().join("control.tmp"));
    assert_eq!(seen.lock().unwrap().clone(), vec![first.clone()]);

    // Nothing is retried, nothing else is written, even once the disk heals.
    faulty.clear_faults();
    let before = Op::ALL.map(|op| faulty.count(op));
    for e in [
        durable_replace(&st, &control, b"v3").unwrap_err(),
        durable_create(&st, &d.path().join("x.ready"), b"").unwrap_err(),
        durable_remove(&st, &control).map(|_| ()).unwrap_err(),
        durable_create_dir(&st, &d.path().join("slots"))
            .map(|_| ())
            .unwrap_err(),
    ] {
        let msg = e.to_string();
        assert!(msg.contains("earlier fsync failure"), "{msg}");
        assert!(
            msg.contains("control.tmp"),
            "names the first failure: {msg}"
        );
    }
    assert_eq!(
        Op::ALL.map(|op| faulty.count(op)),
        before,
        "a poisoned storage reaches the disk no more"
    );
    assert_eq!(fs::read(&control).unwrap(), b"v1");
    assert_eq!(seen.lock().unwrap().len(), 1, "the callback runs once");
}

#[test]
fn only_a_failed_sync_poisons() {
    let (d, faulty, st, seen) = poisoned_storage();
    // A failed write is the caller's error; the storage goes on.
    faulty.fail_writes_of(|p| p.ends_with("a.tmp"));
    assert!(durable_replace(&st, &d.path().join("a"), b"x").is_err());
    // A directory that is not there was not synced: nothing was lost.
    assert!(st.sync_dir(&d.path().join("missing")).is_err());
    assert!(st.first_failure().is_none());
    durable_replace(&st, &d.path().join("b"), b"y").unwrap();
    // Any kind of sync failure poisons: here fdatasync.
    let p = d.path().join("seg");
    let f = st.open(&p, OpenFor::CreateNew).unwrap();
    faulty.fail_sync_data_after(1);
    assert!(st.sync_data(&f, &p).is_err());
    assert_eq!(st.first_failure().map(|f| f.op), Some(Op::SyncData));
    assert!(st.write_at(&f, &p, 0, b"z").is_err());
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn a_healthy_wrapper_passes_each_call_through_once() {
    let (d, faulty, st, _) = poisoned_storage();
    let p = d.path().join("seg");
    let f = st.open(&p, OpenFor::CreateNew).unwrap();
    for i in 0..10u64 {
        st.write_at(&f, &p, i, b"x").unwrap();
        st.sync_data(&f, &p).unwrap();
    }
    assert_eq!(faulty.count(Op::Write), 10);
    assert_eq!(faulty.count(Op::SyncData), 10);
    assert_eq!(fs::read(&p).unwrap(), b"xxxxxxxxxx");
}
