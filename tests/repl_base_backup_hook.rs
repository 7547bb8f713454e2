//! The BASE_BACKUP hook: a source that implements `base_backup` gets its
//! options parsed and its output framed as PostgreSQL 15 does (result
//! sets, one COPY OUT with `n`/`d`/`p`/`m` messages, then the tag).

mod support;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use support::wal::{seg, SYSTEM_ID};
use support::DEADLINE;
use walrep::replication::command::BaseBackupOptions;
use walrep::replication::fake::FakeSource;
use walrep::replication::pgwire::{BackendMessage, FrontendMessage, MessageReader, StartupPacket};
use walrep::replication::registry::WalSenderRegistry;
use walrep::replication::server::{self, ServerOptions};
use walrep::replication::slots::SlotManager;
use walrep::replication::source::{BackupOutput, FlushPoint, ReplicationSource, SourceError};
use walrep::replication::sqlstate::PgError;
use walrep::watch::Subscription;
use walrep::{Lsn, TimelineId, WalSegSize};

/// The fake source plus a tiny base backup.
struct WithBackup(FakeSource);

impl ReplicationSource for WithBackup {
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
        o: &BaseBackupOptions,
        out: &mut dyn BackupOutput,
    ) -> Result<(), PgError> {
        let io = |e: std::io::Error| PgError::error("58030", e.to_string());
        out.result_set(
            &[("recptr", 25), ("tli", 20)],
            &[vec![Some("0/2000028".into()), Some("1".into())]],
        )
        .map_err(io)?;
        out.begin_copy().map_err(io)?;
        out.new_archive("base.tar", "").map_err(io)?;
        out.data(o.label.as_bytes()).map_err(io)?;
        out.progress(o.label.len() as u64).map_err(io)?;
        out.end_copy().map_err(io)?;
        out.result_set(
            &[("recptr", 25), ("tli", 20)],
            &[vec![Some("0/2000100".into()), Some("1".into())]],
        )
        .map_err(io)
    }
}

#[test]
fn base_backup_output_is_framed_like_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(WithBackup(FakeSource::new(
        SYSTEM_ID,
        seg(),
        dir.path().to_path_buf(),
        Lsn(0),
    )));
    let slots =
        SlotManager::open(Arc::new(walrep::storage::StdStorage), dir.path(), 4, None).unwrap();
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
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let startup = StartupPacket::startup(vec![
        ("user".into(), "walrep".into()),
        ("replication".into(), "true".into()),
    ]);
    sock.write_all(&startup.encode()).unwrap();
    let mut q = Vec::new();
    FrontendMessage::Query("BASE_BACKUP ( LABEL 'nightly', PROGRESS, CHECKPOINT 'fast', WAIT 0, MANIFEST 'yes', TARGET 'client')".into()).encode(&mut q);
    sock.write_all(&q).unwrap();
    let mut r = MessageReader::new(sock, 1 << 20);
    let mut seen = Vec::new();
    let mut ready = 0;
    while ready < 2 {
        let m = r.read_backend().unwrap();
        match &m {
            BackendMessage::ReadyForQuery(_) => ready += 1,
            BackendMessage::ParameterStatus { .. }
            | BackendMessage::BackendKeyData { .. }
            | BackendMessage::Authentication(_) => continue,
            _ => {}
        }
        if ready > 0 {
            seen.push(m);
        }
    }
    let kinds: Vec<String> = seen
        .iter()
        .map(|m| match m {
            BackendMessage::RowDescription(_) => "T".to_string(),
            BackendMessage::DataRow(_) => "D".into(),
            BackendMessage::CommandComplete(t) => format!("C {t}"),
            BackendMessage::CopyOutResponse { .. } => "H".into(),
            BackendMessage::CopyData(d) => format!("d{}", d[0] as char),
            BackendMessage::CopyDone => "c".into(),
            BackendMessage::ReadyForQuery(_) => "Z".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds.join(" "),
        "Z T D C SELECT H dn dd dp c T D C SELECT C BASE_BACKUP Z"
    );
    let data = seen
        .iter()
        .find_map(|m| match m {
            BackendMessage::CopyData(d) if d[0] == b'd' => Some(d[1..].to_vec()),
            _ => None,
        })
        .unwrap();
    assert_eq!(data, b"nightly");
}
