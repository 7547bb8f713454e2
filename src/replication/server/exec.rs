//! The replication commands that answer with a result set:
//! IDENTIFY_SYSTEM, SHOW, TIMELINE_HISTORY and the slot commands, with
//! PostgreSQL 15's column names, types and errors.

use std::io;
use std::time::Duration;

use walrep_states::{Lsn, TimelineId};

use super::conn::Conn;
use super::session::{Failure, Session};
use crate::config::format_size;
use crate::replication::command::BaseBackupOptions;
use crate::replication::pgwire::{BackendMessage, FieldDescription};
use crate::replication::registry::WalSenderState;
use crate::replication::source::{BackupOutput, ReplicationSource, SourceError};
use crate::replication::sqlstate::{self as code, PgError};

/// Type OIDs of the columns we send.
pub(super) const TEXT: i32 = 25;
pub(super) const INT4: i32 = 23;
pub(super) const INT8: i32 = 20;

/// RowDescription + DataRows (text format); the caller sends the tag.
pub(super) fn result_set(
    conn: &mut Conn,
    fields: Vec<FieldDescription>,
    rows: Vec<Vec<Option<Vec<u8>>>>,
) {
    conn.send(&BackendMessage::RowDescription(fields));
    for r in rows {
        conn.send(&BackendMessage::DataRow(r));
    }
}

pub(super) fn text(s: impl ToString) -> Option<Vec<u8>> {
    Some(s.to_string().into_bytes())
}

fn cols(spec: &[(&str, i32)]) -> Vec<FieldDescription> {
    spec.iter()
        .map(|(n, t)| FieldDescription::new(n, *t))
        .collect()
}

pub(super) fn source_error(e: SourceError) -> PgError {
    match e {
        SourceError::SegmentRemoved { .. } => PgError::error(code::UNDEFINED_FILE, e.to_string()),
        other => PgError::error(code::INTERNAL_ERROR, other.to_string()),
    }
}

/// systemid (decimal text), timeline, xlogpos, dbname (NULL: physical).
pub(super) fn identify_system<S: ReplicationSource>(s: &mut Session<S>) -> Result<(), Failure> {
    let fp = s.ctx.source.flush_point();
    let fields = cols(&[
        ("systemid", TEXT),
        ("timeline", INT4),
        ("xlogpos", TEXT),
        ("dbname", TEXT),
    ]);
    let row = vec![
        text(s.ctx.source.system_identifier()),
        text(fp.tli.0),
        text(fp.lsn),
        None,
    ];
    result_set(&mut s.conn, fields, vec![row]);
    Ok(())
}

/// The parameters a replication client asks for; others are "unrecognized".
pub(super) fn show<S: ReplicationSource>(s: &mut Session<S>, name: &str) -> Result<(), Failure> {
    let src = &s.ctx.source;
    let opts = &s.ctx.options;
    let value = match name {
        "wal_segment_size" => format_size(Some(src.wal_segment_size().bytes())),
        "data_directory_mode" => data_directory_mode(src.data_directory()),
        "server_version" => opts.server_version.clone(),
        "server_version_num" => "150000".into(),
        "server_encoding" | "client_encoding" => "UTF8".into(),
        "integer_datetimes" => "on".into(),
        "max_wal_senders" => opts.max_wal_senders.to_string(),
        "wal_sender_timeout" => match opts.wal_sender_timeout {
            None => "0".into(),
            Some(d) => format!("{}ms", d.as_millis()),
        },
        "in_hot_standby" | "transaction_read_only" => {
            if src.in_recovery() { "on" } else { "off" }.into()
        }
        _ => {
            return Err(PgError::error(
                code::UNDEFINED_OBJECT,
                format!("unrecognized configuration parameter \"{name}\""),
            )
            .into())
        }
    };
    result_set(&mut s.conn, cols(&[(name, TEXT)]), vec![vec![text(value)]]);
    Ok(())
}

/// Permission bits of the data directory, as `0700`.
fn data_directory_mode(dir: std::path::PathBuf) -> String {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o700);
    format!("{mode:04o}")
}

/// filename + content (text, typmod 0 as PostgreSQL 15 sends).
pub(super) fn timeline_history<S: ReplicationSource>(
    s: &mut Session<S>,
    tli: TimelineId,
) -> Result<(), Failure> {
    let name = tli.history_file_name();
    let bytes = s
        .ctx
        .source
        .history_file(tli)
        .map_err(source_error)?
        .ok_or_else(|| {
            PgError::error(
                code::UNDEFINED_FILE,
                format!("could not open file \"wal/{name}\": No such file or directory"),
            )
        })?;
    let mut fields = cols(&[("filename", TEXT), ("content", TEXT)]);
    for f in &mut fields {
        f.type_modifier = 0;
    }
    result_set(&mut s.conn, fields, vec![vec![text(&name), Some(bytes)]]);
    Ok(())
}

pub(super) fn create_slot<S: ReplicationSource>(
    s: &mut Session<S>,
    name: &str,
    temporary: bool,
    reserve_wal: bool,
) -> Result<(), Failure> {
    let restart = if reserve_wal {
        s.ctx.source.redo_lsn().max(s.ctx.source.oldest_lsn())
    } else {
        Lsn::INVALID
    };
    s.ctx
        .slots
        .create(name, temporary, s.handle.id(), restart)
        .map_err(|e| e.to_pg())?;
    let fields = cols(&[
        ("slot_name", TEXT),
        ("consistent_point", TEXT),
        ("snapshot_name", TEXT),
        ("output_plugin", TEXT),
    ]);
    result_set(
        &mut s.conn,
        fields,
        vec![vec![text(name), text("0/0"), None, None]],
    );
    Ok(())
}

/// How long DROP_REPLICATION_SLOT ... WAIT waits for the slot's user.
const DROP_WAIT: Duration = Duration::from_secs(60);

pub(super) fn drop_slot<S: ReplicationSource>(
    s: &mut Session<S>,
    name: &str,
    wait: bool,
) -> Result<(), Failure> {
    let wait = wait.then_some(s.ctx.options.wal_sender_timeout.unwrap_or(DROP_WAIT));
    s.ctx
        .slots
        .drop_slot(name, s.handle.id(), wait)
        .map_err(|e| Failure::Error(e.to_pg()))
}

/// slot_type, restart_lsn, restart_tli (int8); a missing slot is a row of NULLs.
pub(super) fn read_slot<S: ReplicationSource>(
    s: &mut Session<S>,
    name: &str,
) -> Result<(), Failure> {
    let fields = cols(&[
        ("slot_type", TEXT),
        ("restart_lsn", TEXT),
        ("restart_tli", INT8),
    ]);
    let row = match s.ctx.slots.get(name) {
        None => vec![None, None, None],
        Some(info) if !info.restart_lsn.is_valid() => vec![text("physical"), None, None],
        Some(info) => {
            let history = s.ctx.source.timeline_history().map_err(source_error)?;
            let tli = history.timeline_of(info.restart_lsn);
            vec![text("physical"), text(info.restart_lsn), text(tli.0)]
        }
    };
    result_set(&mut s.conn, fields, vec![row]);
    Ok(())
}

/// [`BackupOutput`] over the session's connection.
struct ConnBackup<'a>(&'a mut Conn);

impl BackupOutput for ConnBackup<'_> {
    fn result_set(
        &mut self,
        columns: &[(&str, i32)],
        rows: &[Vec<Option<String>>],
    ) -> io::Result<()> {
        let rows = rows
            .iter()
            .map(|r| r.iter().map(|v| v.as_ref().and_then(text)).collect())
            .collect();
        result_set(self.0, cols(columns), rows);
        self.0
            .send(&BackendMessage::CommandComplete("SELECT".into()));
        self.0.flush()
    }
    fn begin_copy(&mut self) -> io::Result<()> {
        self.0.send(&BackendMessage::CopyOutResponse {
            format: 0,
            columns: vec![],
        });
        self.0.flush()
    }
    fn new_archive(&mut self, name: &str, tablespace: &str) -> io::Result<()> {
        let mut payload = vec![b'n'];
        for s in [name, tablespace] {
            payload.extend_from_slice(s.as_bytes());
            payload.push(0);
        }
        self.copy_data(payload)
    }
    fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        // CopyData framing by hand: the bytes go from the caller's buffer
        // to the socket with no copy in between (one writev).
        let len = u32::try_from(4 + 1 + bytes.len())
            .map_err(|_| io::Error::other("archive data message too long"))?;
        let mut header = [b'd', 0, 0, 0, 0, b'd'];
        header[1..5].copy_from_slice(&len.to_be_bytes());
        self.0.write_framed(&header, bytes)
    }
    fn progress(&mut self, done: u64) -> io::Result<()> {
        let mut payload = vec![b'p'];
        payload.extend_from_slice(&done.to_be_bytes());
        self.copy_data(payload)
    }
    fn manifest(&mut self) -> io::Result<()> {
        self.copy_data(vec![b'm'])
    }
    fn end_copy(&mut self) -> io::Result<()> {
        self.0.send(&BackendMessage::CopyDone);
        self.0.flush()
    }
}

impl ConnBackup<'_> {
    fn copy_data(&mut self, payload: Vec<u8>) -> io::Result<()> {
        self.0.send(&BackendMessage::CopyData(payload));
        self.0.flush()
    }
}

/// BASE_BACKUP: handed to the source; the walsender shows `backup` meanwhile.
pub(super) fn base_backup<S: ReplicationSource>(
    s: &mut Session<S>,
    options: &BaseBackupOptions,
) -> Result<(), Failure> {
    s.handle.set_state(WalSenderState::Backup);
    let result = s
        .ctx
        .source
        .base_backup(options, &mut ConnBackup(&mut s.conn));
    s.handle.set_state(WalSenderState::Startup);
    result.map_err(Failure::Error)
}

/// walrep's CONFIRM_BASE_BACKUP: the client's copy of backup `id` passed
/// its end check; the checkpoint kept for it is released.
pub(super) fn confirm_base_backup<S: ReplicationSource>(
    s: &mut Session<S>,
    id: &str,
) -> Result<(), Failure> {
    s.ctx.source.confirm_base_backup(id).map_err(Failure::Error)
}
