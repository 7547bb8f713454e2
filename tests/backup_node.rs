//! Base backups, node side and client safety, in-process: a backup's pin
//! keeps its snapshot and WAL through later checkpoints and releases them
//! when dropped; options the node cannot honour are refused with
//! PostgreSQL's SQLSTATE; an archive with an unsafe member is refused by
//! `walrep basebackup` and nothing is written outside (or left in) the
//! target.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use support::node::InProcessNode;
use support::wal::{seg, SYSTEM_ID};
use support::DEADLINE;
use walrep::backup::client::{run, BasebackupError, BasebackupOptions, NoProgress};
use walrep::node::checkpoint::CheckpointCause;
use walrep::replication::client::{ConnInfo, ReplicationClient};
use walrep::replication::command::BaseBackupOptions;
use walrep::replication::fake::FakeSource;
use walrep::replication::registry::WalSenderRegistry;
use walrep::replication::server::{self, ServerOptions};
use walrep::replication::slots::SlotManager;
use walrep::replication::source::{BackupOutput, FlushPoint, ReplicationSource, SourceError};
use walrep::replication::sqlstate::PgError;
use walrep::watch::Subscription;
use walrep::{Lsn, TimelineId, WalSegSize};

/// A node running in this process that keeps no spare segments and
/// checkpoints only when asked.
fn start_node(dir: &Path) -> InProcessNode {
    InProcessNode::start(dir, &["min_wal_size=0", "checkpoint_timeout=1h"])
}

#[test]
fn a_pin_keeps_its_snapshot_and_wal_through_checkpoints_until_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let guard = start_node(&dir);
    let node = guard.node();
    let wal = node.wal().unwrap();
    let seg = wal.seg_size();
    node.checkpoint(CheckpointCause::Requested).unwrap();
    let (pin, control) = node.pin_last_checkpoint().unwrap();
    let snapshot = walrep::store::checkpoint::snapshot_dir(&dir, control.checkpoint_id);
    let redo_segment = dir
        .join("wal")
        .join(control.redo_lsn.segno(seg).file_name(control.timeline, seg));
    assert!(snapshot.is_dir() && redo_segment.is_file());
    for _ in 0..3 {
        wal.switch_segment().unwrap();
        let done = node.checkpoint(CheckpointCause::Requested).unwrap();
        assert!(done.id > control.checkpoint_id);
        assert!(
            snapshot.is_dir(),
            "a checkpoint removed the pinned snapshot"
        );
        assert!(redo_segment.is_file(), "a checkpoint removed pinned WAL");
    }
    drop(pin);
    wal.switch_segment().unwrap();
    node.checkpoint(CheckpointCause::Requested).unwrap();
    assert!(!snapshot.exists(), "the snapshot outlived its pin");
    assert!(!redo_segment.exists(), "the WAL outlived its pin");
}

#[test]
fn options_the_node_cannot_honour_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let guard = start_node(&tmp.path().join("n"));
    let port = guard.replication_port();
    let info = ConnInfo::parse(&format!("host=127.0.0.1 port={port} user=walrep")).unwrap();
    let mut c = ReplicationClient::connect(&info, DEADLINE).unwrap();
    for (cmd, code, text) in [
        ("BASE_BACKUP ( TARGET 'server' )", "0A000", "backup target"),
        ("BASE_BACKUP ( COMPRESSION 'gzip' )", "0A000", "compression"),
        (
            "BASE_BACKUP ( MANIFEST_CHECKSUMS 'md5' )",
            "22023",
            "checksum algorithm",
        ),
        ("BASE_BACKUP ( LABEL 'two\nlines' )", "22023", "label"),
    ] {
        let e = c.simple_query(cmd).unwrap_err();
        assert_eq!(e.sqlstate(), Some(code), "{cmd}: {e}");
        assert!(e.to_string().contains(text), "{cmd}: {e}");
    }
    // The connection is still usable, and the node has no pin left.
    c.identify_system().unwrap();
    assert_eq!(guard.node().backup_pins.count(), 0);
}

/// A source whose backup archive tries to write outside the target.
struct Evil(FakeSource);

impl ReplicationSource for Evil {
    fn system_identifier(&self) -> u64 {
        self.0.system_identifier()
    }
    fn wal_segment_size(&self) -> WalSegSize {
        self.0.wal_segment_size()
    }
    fn flush_point(&self) -> FlushPoint {
        self.0.flush_point()
    }
    fn subscribe_flush(&self) -> Subscription {
        self.0.subscribe_flush()
    }
    fn read_wal(&self, tli: TimelineId, start: Lsn, buf: &mut [u8]) -> Result<(), SourceError> {
        self.0.read_wal(tli, start, buf)
    }
    fn history_file(&self, tli: TimelineId) -> Result<Option<Vec<u8>>, SourceError> {
        self.0.history_file(tli)
    }
    fn oldest_lsn(&self) -> Lsn {
        self.0.oldest_lsn()
    }
    fn redo_lsn(&self) -> Lsn {
        self.0.redo_lsn()
    }
    fn data_directory(&self) -> PathBuf {
        self.0.data_directory()
    }
    fn base_backup(
        &self,
        _: &BaseBackupOptions,
        out: &mut dyn BackupOutput,
    ) -> Result<(), PgError> {
        let io = |e: std::io::Error| PgError::error("58030", e.to_string());
        let pos = [vec![Some("0/2000028".to_string()), Some("1".to_string())]];
        out.result_set(&[("recptr", 25), ("tli", 20)], &pos)
            .map_err(io)?;
        out.result_set(
            &[("spcoid", 26), ("spclocation", 25), ("size", 20)],
            &[vec![None, None, None]],
        )
        .map_err(io)?;
        out.begin_copy().map_err(io)?;
        out.new_archive("base.tar", "").map_err(io)?;
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        let name = b"../evil";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(4);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, &b"evil"[..]).map_err(io)?;
        out.data(&tar.into_inner().map_err(io)?).map_err(io)?;
        out.end_copy().map_err(io)?;
        out.result_set(&[("recptr", 25), ("tli", 20)], &pos)
            .map_err(io)
    }
}

#[test]
fn an_archive_member_escaping_the_target_is_refused_and_the_target_removed() {
    let src_dir = tempfile::tempdir().unwrap();
    let source = Arc::new(Evil(FakeSource::new(
        SYSTEM_ID,
        seg(),
        src_dir.path().to_path_buf(),
        Lsn(0x2000028),
    )));
    let slots = SlotManager::open(
        Arc::new(walrep::storage::StdStorage),
        src_dir.path(),
        4,
        None,
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _server = server::spawn(
        listener,
        source,
        slots,
        WalSenderRegistry::new(2),
        ServerOptions::default(),
    )
    .unwrap();
    let outer = tempfile::tempdir().unwrap();
    let target = outer.path().join("inner").join("copy");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let opts = BasebackupOptions {
        host: "127.0.0.1".into(),
        port,
        datadir: target.clone(),
        user: "walrep".into(),
        password: None,
        application_name: None,
        write_standby_config: false,
        label: "x".into(),
        max_rate_kbps: 0,
        timeout: DEADLINE,
        storage: Arc::new(walrep::storage::StdStorage),
        slot: None,
        jobs: 1,
        two_phase: false,
        resume: false,
    };
    let e = run(&opts, &mut NoProgress).unwrap_err();
    assert!(matches!(e, BasebackupError::Extract(_)), "{e}");
    assert!(e.to_string().contains("refusing tar member"), "{e}");
    assert!(!outer.path().join("inner").join("evil").exists());
    assert!(!target.exists(), "the target it created was not removed");
}
