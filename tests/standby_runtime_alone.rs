//! The standby runtime is usable alone: built from its handles (control
//! file owner, segment directory, store, configuration, progress watches)
//! and a double of the node's hooks, with no `Node`, it runs archive
//! recovery from a `restore_command` archive to consistency, then promotes
//! to timeline 2; the double records what the runtime asked of the node.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use support::wal::seg;
use support::{file_names, DEADLINE};
use walrep::config::Config;
use walrep::standby::{
    NodeHooks, StandbyError, StandbyHandles, StandbyProgress, StandbyRuntime, StandbyStatus,
};
use walrep::states::recovery::StateKind;
use walrep::storage::{StdStorage, Storage};
use walrep::store::record::{encode, KvCommand, Op, RM_KV};
use walrep::store::{ClusterState, ControlFileOwner, Reader, Store, Value};
use walrep::wal::{ReaderConfig, SegmentDir, Wal, WalConfig, WalReader};
use walrep::{Lsn, TimelineHistory, TimelineId};

/// Keys written to the archived WAL; every tenth is deleted again.
const KEYS: usize = 2500;
/// Big enough that the WAL spans several 1 MiB segments.
const VALUE_LEN: usize = 1000;

/// What the runtime asked of the node, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    Consistent(Lsn),
    WakeArchiver,
    HoldPromotion(Lsn),
    AttachWal { tli: TimelineId, inserted: Lsn },
    ReleasePromotion(bool),
    AcceptWrites,
    Checkpoint,
    Fatal(String),
}

/// The node's side, recorded instead of done. It keeps the WAL writer it
/// is handed, as the node would.
#[derive(Default)]
struct Recorder {
    asked: Mutex<Vec<Asked>>,
    wal: Mutex<Option<Arc<Wal>>>,
    /// The WAL writer's flushed position when the hold was released.
    flushed_at_release: Mutex<Option<Lsn>>,
}

impl Recorder {
    fn push(&self, a: Asked) {
        self.asked.lock().unwrap().push(a);
    }

    fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }
}

impl NodeHooks for Recorder {
    fn reached_consistency(&self, at: Lsn) {
        self.push(Asked::Consistent(at));
    }
    fn wake_archiver(&self) {
        self.push(Asked::WakeArchiver);
    }
    fn attach_wal(&self, wal: Arc<Wal>) -> std::io::Result<()> {
        self.push(Asked::AttachWal {
            tli: wal.timeline(),
            inserted: wal.inserted(),
        });
        *self.wal.lock().unwrap() = Some(wal);
        Ok(())
    }
    fn hold_promotion(&self, at: Lsn) {
        self.push(Asked::HoldPromotion(at));
    }
    fn release_promotion(&self, ok: bool) {
        let flushed = self.wal.lock().unwrap().as_ref().map(|w| w.flushed());
        *self.flushed_at_release.lock().unwrap() = flushed;
        self.push(Asked::ReleasePromotion(ok));
    }
    fn accept_writes(&self) {
        self.push(Asked::AcceptWrites);
    }
    fn request_checkpoint(&self) {
        self.push(Asked::Checkpoint);
    }
    fn fatal(&self, error: StandbyError) {
        self.push(Asked::Fatal(error.to_string()));
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i:05}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("v{i}:").into_bytes();
    v.resize(VALUE_LEN, b'x');
    v
}

/// The end of the WAL `walrep init` wrote (after its checkpoint record).
fn end_of_init_wal(datadir: &Path, owner: &ControlFileOwner) -> Lsn {
    let c = owner.get();
    let cfg = ReaderConfig {
        dir: datadir.join("wal"),
        system_id: c.system_identifier,
        seg_size: c.wal_segment_size,
        history: TimelineHistory::root(TimelineId(1)),
    };
    let mut r = WalReader::new(cfg, c.checkpoint_lsn);
    let rec = r.read_record().expect("the checkpoint record");
    assert_eq!(rec.lsn, c.checkpoint_lsn);
    r.next_lsn()
}

/// Write the keys as a primary would after the checkpoint; returns the end
/// of the last key-value record. The last segment is switched (complete),
/// as archive_timeout would.
fn write_primary_wal(datadir: &Path, owner: &ControlFileOwner) -> Lsn {
    let c = owner.get();
    let start = end_of_init_wal(datadir, owner);
    let wal = Wal::start(WalConfig::new(
        datadir.join("wal"),
        c.system_identifier,
        TimelineId(1),
        c.wal_segment_size,
        start,
        c.checkpoint_lsn,
    ))
    .unwrap();
    let mut end = start;
    for i in 0..KEYS {
        let (k, v) = (key(i), value(i));
        let set = encode(
            i as u64,
            &[Op::Set {
                key: k[..].into(),
                value: v[..].into(),
            }],
        );
        end = wal.insert(RM_KV, KvCommand::Set as u8, &set).unwrap();
        if i % 10 == 0 {
            let del = encode(i as u64, &[Op::Del { key: k[..].into() }]);
            end = wal.insert(RM_KV, KvCommand::Del as u8, &del).unwrap();
        }
    }
    wal.wait_flushed(end).unwrap();
    wal.switch_segment().unwrap();
    wal.shutdown().unwrap();
    end
}

/// Move the segments of `wal/` up to the one holding `end` into
/// `archive` (the pre-allocated ones after it hold no WAL and go):
/// recovery must restore them.
fn archive_segments(datadir: &Path, archive: &Path, end: Lsn) -> Vec<String> {
    std::fs::create_dir_all(archive).unwrap();
    let last = end.segno(seg()).file_name(TimelineId(1), seg());
    let mut moved = Vec::new();
    for name in support::wal::segment_file_names(&datadir.join("wal")) {
        let from = datadir.join("wal").join(&name);
        if name <= last {
            std::fs::copy(&from, archive.join(&name)).unwrap();
            moved.push(name);
        }
        std::fs::remove_file(&from).unwrap();
    }
    moved
}

/// The handles, made as a node makes them, and the double.
fn handles(datadir: &Path, archive: &Path) -> (StandbyHandles, Arc<Recorder>) {
    let overrides = [
        format!("restore_command=cp {}/%f %p", archive.display()),
        "wal_retrieve_retry_interval=100ms".to_string(),
    ];
    let config = Config::load(&datadir.join("walrep.toml"), &overrides).unwrap();
    let storage: Arc<dyn Storage> = Arc::new(StdStorage);
    let control = Arc::new(ControlFileOwner::open(storage.clone(), datadir).unwrap());
    let c = control.get();
    let store = Arc::new(Store::new());
    walrep::store::checkpoint::load_snapshot(datadir, c.checkpoint_id, c.checkpoint_chunks, &store)
        .unwrap();
    let segdir = Arc::new(
        SegmentDir::open(&datadir.join("wal"), c.wal_segment_size, storage.clone()).unwrap(),
    );
    let hooks = Arc::new(Recorder::default());
    let h = StandbyHandles {
        datadir: datadir.to_path_buf(),
        storage,
        config: Arc::new(walrep::watch::Watch::new(Arc::new(config))),
        control,
        segdir,
        store,
        progress: StandbyProgress::new(),
        instance_id: 0x5eed,
        hooks: hooks.clone(),
    };
    (h, hooks)
}

fn wait_status(
    progress: &StandbyProgress,
    what: &str,
    pred: impl FnMut(&StandbyStatus) -> bool,
) -> StandbyStatus {
    progress
        .status
        .wait_until(pred, DEADLINE)
        .unwrap_or_else(|s| panic!("timed out waiting for {what}; status: {s:?}"))
}

fn state_of(s: &StandbyStatus) -> Option<StateKind> {
    s.machine.as_ref().map(|m| m.state)
}

/// The state changes of `log/transitions.jsonl`, in order.
fn state_changes(datadir: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(datadir.join("log/transitions.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["from"].as_str().unwrap().to_string(),
                v["to"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(from, to)| from != to)
        .collect()
}

/// Is `want` a subsequence of `got`?
fn in_order(got: &[(String, String)], want: &[(&str, &str)]) -> bool {
    let mut it = got.iter();
    want.iter()
        .all(|(f, t)| it.any(|(gf, gt)| gf == f && gt == t))
}

#[test]
fn archive_recovery_to_consistency_then_promotion_without_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir: PathBuf = tmp.path().join("standby");
    let archive = tmp.path().join("archive");
    walrep::node::init::init(&datadir, seg()).unwrap();
    let owner = ControlFileOwner::open(Arc::new(StdStorage), &datadir).unwrap();
    let end = write_primary_wal(&datadir, &owner);
    // As a base backup leaves it: consistent only once `end` is replayed.
    owner
        .update(|c| {
            c.min_recovery_point = end;
            c.state = ClusterState::InArchiveRecovery;
        })
        .unwrap();
    let archived = archive_segments(&datadir, &archive, end);
    assert!(archived.len() >= 3, "the WAL spans segments: {archived:?}");
    std::fs::write(datadir.join("standby.signal"), b"").unwrap();

    let (h, hooks) = handles(&datadir, &archive);
    let progress = h.progress.clone();
    let (store, control) = (h.store.clone(), h.control.clone());
    let runtime = StandbyRuntime::start(h).unwrap();

    // Archive recovery to consistency: every segment restored and replayed.
    let status = wait_status(&progress, "consistency", |s| s.consistent_at.is_some());
    assert!(status.consistent_at.unwrap() >= end);
    assert_eq!(
        status.source.map(|s| s.to_string()).as_deref(),
        Some("archive")
    );
    let replayed = progress.replayed.get();
    assert!(replayed.end >= end, "{replayed:?}");
    assert_eq!(replayed.tli, TimelineId(1));
    // The sets, the deletes, init's checkpoint record and the switch.
    assert_eq!(
        replayed.records as usize,
        KEYS + KEYS / 10 + 2,
        "{replayed:?}"
    );
    let mut view = store.read_view(u64::MAX / 2);
    for i in 0..KEYS {
        let got = view.slot(&key(i)).map(|slot| match slot.value {
            Value::Str(s) => s.to_vec(),
            other => panic!("key {i} holds {other:?}, not a string"),
        });
        if i % 10 == 0 {
            assert_eq!(got, None, "key {i} was deleted");
        } else {
            assert_eq!(got.as_deref(), Some(&value(i)[..]), "key {i}");
        }
    }
    drop(view);
    assert_eq!(store.len() as usize, KEYS - KEYS / 10);
    for name in &archived {
        assert!(datadir.join("wal").join(name).exists(), "{name} restored");
    }
    assert_eq!(
        hooks.asked().first(),
        Some(&Asked::Consistent(status.consistent_at.unwrap()))
    );
    // Nothing is accepted before promotion.
    assert!(!hooks.asked().contains(&Asked::AcceptWrites));

    // Promotion: timeline 2, its history file, the end-of-recovery record.
    walrep::standby::trigger::request_promotion(&StdStorage, &datadir).unwrap();
    let status = wait_status(&progress, "promotion", |s| {
        state_of(s) == Some(StateKind::Promoted)
    });
    assert_eq!(
        status.machine.as_ref().unwrap().promoted_tli,
        Some(TimelineId(2))
    );
    runtime.stop();

    let asked = hooks.asked();
    let attached = asked
        .iter()
        .find_map(|a| match a {
            Asked::AttachWal { tli, inserted } => Some((*tli, *inserted)),
            _ => None,
        })
        .expect("the promoted WAL writer was handed to the node");
    assert_eq!(attached.0, TimelineId(2));
    assert!(
        attached.1 > replayed.end,
        "the end-of-recovery record is inserted before writes are accepted"
    );
    // The new timeline's names, the control file's update and the
    // record's flush run beside the first writes: the node's hold on them
    // is released once all are durable, before the checkpoint.
    let flushed = *hooks.flushed_at_release.lock().unwrap();
    assert!(
        flushed.is_some_and(|f| f >= attached.1),
        "the hold was released before the end-of-recovery record was durable: {flushed:?}"
    );
    let released = asked
        .iter()
        .position(|a| *a == Asked::ReleasePromotion(true))
        .expect("the promotion's hold was released");
    let checkpoint = asked.iter().position(|a| *a == Asked::Checkpoint);
    assert!(
        checkpoint.is_some_and(|c| released < c),
        "the checkpoint was requested before the control file was durable: {asked:?}"
    );
    let asked: Vec<Asked> = asked
        .into_iter()
        .filter(|a| !matches!(a, Asked::ReleasePromotion(_)))
        .collect();
    // archive_mode is off: the archiver is never woken.
    assert_eq!(
        asked,
        vec![
            Asked::Consistent(status.consistent_at.unwrap()),
            Asked::HoldPromotion(replayed.end),
            Asked::AttachWal {
                tli: attached.0,
                inserted: attached.1,
            },
            Asked::AcceptWrites,
            Asked::Checkpoint,
        ],
        "what the runtime asked of the node"
    );
    let wal = hooks.wal.lock().unwrap().clone().unwrap();
    assert_eq!(wal.timeline(), TimelineId(2));
    let c = control.get();
    assert_eq!(
        (c.timeline, c.state, c.min_recovery_point),
        (TimelineId(2), ClusterState::InProduction, Lsn::INVALID)
    );
    assert!(!datadir.join("standby.signal").exists());
    let history = std::fs::read_to_string(datadir.join("wal/00000002.history")).unwrap();
    assert!(history.starts_with("1\t"), "{history}");
    assert!(file_names(&datadir.join("wal"))
        .iter()
        .any(|n| n.starts_with("00000002")));

    // The transitions, as the trace recorded them.
    let changes = state_changes(&datadir);
    assert!(
        in_order(
            &changes,
            &[
                ("Starting", "ArchiveRecovery"),
                ("ArchiveRecovery", "Promoting"),
                ("Promoting", "Promoted"),
            ]
        ) || in_order(
            &changes,
            &[
                ("Starting", "ArchiveRecovery"),
                ("RetryingArchive", "Promoting"),
                ("Promoting", "Promoted"),
            ]
        ),
        "state changes: {changes:?}"
    );
    assert_eq!(changes.last().map(|(_, to)| to.as_str()), Some("Promoted"));
    assert!(status.transitions >= changes.len() as u64);
    let last = status.last_transition.as_ref().unwrap();
    assert!(
        last.summary
            .ends_with("-> Promoted on EndOfRecoveryWritten"),
        "{last:?}"
    );
    wal.shutdown().unwrap();
}
