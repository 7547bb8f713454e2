//! BASE_BACKUP on the client side (pg_basebackup's ReceiveArchiveStream for
//! a PostgreSQL 15 server): the command with its options, the start and
//! tablespace result sets, the COPY OUT stream's `n`/`d`/`p`/`m` messages
//! and the end position.

use walrep_states::{Lsn, TimelineId};

use super::{protocol, ClientError, QueryResult, ReplicationClient};
use crate::replication::pgwire::{BackendMessage, FrontendMessage};

/// The options of a BASE_BACKUP command (PostgreSQL 15 syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupRequest {
    /// LABEL (in backup_label).
    pub label: String,
    /// Ask for the size estimate and progress messages.
    pub progress: bool,
    /// `CHECKPOINT 'fast'` (else 'spread').
    pub fast_checkpoint: bool,
    /// Include the WAL needed to make the copy consistent (`-X fetch`).
    pub wal: bool,
    /// Wait for the WAL to be archived (`WAIT`); pointless with `wal`.
    pub wait: bool,
    /// kB/s, 0 = unlimited.
    pub max_rate_kbps: u64,
    /// Ask for a backup manifest.
    pub manifest: bool,
    /// walrep's PARALLEL: split the snapshot in this many parts (0 or 1:
    /// one stream, PostgreSQL's BASE_BACKUP).
    pub parallel: u32,
    /// walrep's JOIN/PART: send part `.1` of parallel backup `.0`.
    pub join: Option<(String, u32)>,
    /// walrep's `CHECKPOINT 'last'`: copy the last completed checkpoint,
    /// take no new one (overrides `fast_checkpoint`).
    pub last_checkpoint: bool,
    /// walrep's RESUMABLE: a `backup_id` comes back, and a failed backup
    /// can be finished with `resume`.
    pub resumable: bool,
    /// walrep's RESUME: finish interrupted backup `id`.
    pub resume: Option<String>,
    /// walrep's SKIP_CHUNKS with `resume`: chunks already held intact.
    pub skip_chunks: Vec<u32>,
}

impl Default for BaseBackupRequest {
    fn default() -> Self {
        BaseBackupRequest {
            label: "walrep base backup".into(),
            progress: false,
            fast_checkpoint: true,
            wal: true,
            wait: false,
            max_rate_kbps: 0,
            manifest: false,
            parallel: 0,
            join: None,
            last_checkpoint: false,
            resumable: false,
            resume: None,
            skip_chunks: Vec::new(),
        }
    }
}

/// A string literal of the replication grammar (`'it''s'`).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl BaseBackupRequest {
    /// `BASE_BACKUP ( LABEL '...', PROGRESS, ... )` as pg_basebackup 15 sends it.
    pub(crate) fn to_command(&self) -> String {
        if let Some((token, part)) = &self.join {
            return self.join_command(token, *part);
        }
        let mut opts = vec![format!("LABEL {}", literal(&self.label))];
        if self.parallel > 1 {
            opts.push(format!("PARALLEL {}", self.parallel));
        }
        if self.progress {
            opts.push("PROGRESS".into());
        }
        if self.last_checkpoint {
            opts.push("CHECKPOINT 'last'".into());
        } else if self.fast_checkpoint {
            opts.push("CHECKPOINT 'fast'".into());
        }
        if self.resumable {
            opts.push("RESUMABLE".into());
        }
        if let Some(id) = &self.resume {
            opts.push(format!("RESUME {}", literal(id)));
            if !self.skip_chunks.is_empty() {
                let list = crate::replication::command::chunk_list_text(&self.skip_chunks);
                opts.push(format!("SKIP_CHUNKS {}", literal(&list)));
            }
        }
        if self.wal {
            opts.push("WAL".into());
        }
        if !self.wait {
            opts.push("WAIT 0".into());
        }
        if self.max_rate_kbps > 0 {
            opts.push(format!("MAX_RATE {}", self.max_rate_kbps));
        }
        opts.push(format!(
            "MANIFEST {}",
            literal(if self.manifest { "yes" } else { "no" })
        ));
        opts.push("TARGET 'client'".into());
        format!("BASE_BACKUP ( {} )", opts.join(", "))
    }

    /// `BASE_BACKUP ( JOIN '...', PART k, ... )`: one part of a parallel
    /// backup (no checkpoint, no WAL, no manifest of its own).
    fn join_command(&self, token: &str, part: u32) -> String {
        let mut opts = vec![format!("JOIN {}", literal(token)), format!("PART {part}")];
        if self.progress {
            opts.push("PROGRESS".into());
        }
        if self.max_rate_kbps > 0 {
            opts.push(format!("MAX_RATE {}", self.max_rate_kbps));
        }
        format!("BASE_BACKUP ( {} )", opts.join(", "))
    }
}

/// One row of the tablespace result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    /// NULL for the main data directory.
    pub oid: Option<String>,
    /// NULL for the main data directory.
    pub location: Option<String>,
    /// Estimated size in kB (NULL without PROGRESS).
    pub size_kb: Option<u64>,
}

/// What the server answered before the archive stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStart {
    /// Where redo of the copy starts.
    pub start: Lsn,
    /// Timeline of `start`.
    pub tli: TimelineId,
    /// One row per archive to come (one for walrep).
    pub tablespaces: Vec<Tablespace>,
    /// With PARALLEL: the id the other parts join with.
    pub backup_id: Option<String>,
}

/// One message of the archive stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupMessage {
    /// `n`: a new archive for a tablespace (`location` empty for the main one).
    NewArchive {
        /// Archive file name, e.g. `base.tar`.
        name: String,
        /// The tablespace's path on the server.
        location: String,
    },
    /// `d`: archive (or manifest) bytes.
    Data(Vec<u8>),
    /// `p`: bytes the server has sent so far.
    Progress(u64),
    /// `m`: the manifest follows in `d` messages.
    Manifest,
    /// CopyDone: the stream is over; call [`ReplicationClient::backup_end`].
    End,
}

/// What [`ReplicationClient::backup_read`] read.
#[derive(Debug)]
pub enum BackupRead {
    /// This many archive (or manifest) bytes, at the start of the buffer.
    Data(usize),
    /// Any other message of the stream (never [`BackupMessage::Data`]
    /// from walrep's or PostgreSQL's server, whose data messages are
    /// read as bytes).
    Message(BackupMessage),
}

fn parse_position(r: &QueryResult, what: &str) -> Result<(Lsn, TimelineId), ClientError> {
    if r.rows.len() != 1 || r.columns.len() < 2 {
        return Err(protocol(format!(
            "{what}: got {} rows and {} fields, expected 1 row and 2 fields",
            r.rows.len(),
            r.columns.len()
        )));
    }
    let lsn = r
        .text(0, 0)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| protocol(format!("{what}: invalid position")))?;
    let tli = r
        .text(0, 1)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| protocol(format!("{what}: invalid timeline")))?;
    Ok((lsn, TimelineId(tli)))
}

/// A NUL-terminated string of a CopyData payload.
fn cstr(b: &[u8], at: &mut usize) -> Result<String, ClientError> {
    let rest = b.get(*at..).unwrap_or_default();
    let n = rest
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| protocol("unterminated string in archive stream message"))?;
    let s = String::from_utf8_lossy(&rest[..n]).into_owned();
    *at += n + 1;
    Ok(s)
}

fn decode_copy(mut payload: Vec<u8>) -> Result<BackupMessage, ClientError> {
    let Some(&kind) = payload.first() else {
        return Err(protocol("empty CopyData message in archive stream"));
    };
    match kind {
        b'n' => {
            let mut at = 1;
            let name = cstr(&payload, &mut at)?;
            let location = cstr(&payload, &mut at)?;
            if at != payload.len() {
                return Err(protocol("trailing bytes after new-archive message"));
            }
            Ok(BackupMessage::NewArchive { name, location })
        }
        b'd' => {
            payload.remove(0);
            Ok(BackupMessage::Data(payload))
        }
        b'p' => {
            let b: [u8; 8] = payload
                .get(1..9)
                .and_then(|s| s.try_into().ok())
                .filter(|_| payload.len() == 9)
                .ok_or_else(|| protocol("progress message is not 8 bytes"))?;
            Ok(BackupMessage::Progress(u64::from_be_bytes(b)))
        }
        b'm' if payload.len() == 1 => Ok(BackupMessage::Manifest),
        other => Err(protocol(format!(
            "unrecognized archive stream message type \"{}\"",
            other.escape_ascii()
        ))),
    }
}

impl ReplicationClient {
    /// Send BASE_BACKUP and read up to the start of the archive stream.
    pub fn base_backup(&mut self, request: &BaseBackupRequest) -> Result<BackupStart, ClientError> {
        if self.streaming || self.copy_out {
            return Err(protocol("cannot start a base backup while streaming"));
        }
        self.send(&FrontendMessage::Query(request.to_command()))?;
        let start = self.read_result_set("could not initiate base backup")?;
        let backup_id = start.text(0, 2);
        let (start, tli) = parse_position(&start, "could not initiate base backup")?;
        let ts = self.read_result_set("could not get backup header")?;
        let tablespaces = (0..ts.rows.len())
            .map(|i| Tablespace {
                oid: ts.text(i, 0),
                location: ts.text(i, 1),
                size_kb: ts.text(i, 2).and_then(|t| t.parse().ok()),
            })
            .collect();
        match self.read(self.io_timeout)? {
            BackendMessage::CopyOutResponse { .. } => {}
            BackendMessage::ErrorResponse(e) => return self.fail(e),
            other => {
                return Err(protocol(format!(
                    "could not get COPY data stream: got {other:?}"
                )))
            }
        }
        self.copy_out = true;
        Ok(BackupStart {
            start,
            tli,
            tablespaces,
            backup_id,
        })
    }

    /// An ErrorResponse: read to ReadyForQuery, then return it.
    fn fail<T>(&mut self, e: crate::replication::pgwire::ErrorFields) -> Result<T, ClientError> {
        self.copy_out = false;
        let _ = self.collect_results(QueryResult::default());
        Err(ClientError::Server(Box::new(e)))
    }

    /// RowDescription, DataRows, CommandComplete: one result set of a
    /// multi-result command (an ErrorResponse ends the command).
    fn read_result_set(&mut self, what: &str) -> Result<QueryResult, ClientError> {
        let mut r = QueryResult::default();
        loop {
            match self.read(self.io_timeout)? {
                BackendMessage::RowDescription(c) => r.columns = c,
                BackendMessage::DataRow(row) => r.rows.push(row),
                BackendMessage::CommandComplete(t) => {
                    r.tags.push(t);
                    return Ok(r);
                }
                BackendMessage::NoticeResponse(_) | BackendMessage::ParameterStatus { .. } => {}
                BackendMessage::ErrorResponse(e) => return self.fail(e),
                other => return Err(protocol(format!("{what}: unexpected message {other:?}"))),
            }
        }
    }

    /// The next piece of the archive stream (waits at most the I/O
    /// timeout): archive (or manifest) bytes of a `d` message read
    /// straight from the socket into `out` — at most `out.len()`, the rest
    /// of that message comes with the next calls — or the next other
    /// message. The bytes are copied nowhere else on their way to `out`.
    pub fn backup_read(&mut self, out: &mut [u8]) -> Result<BackupRead, ClientError> {
        if !self.copy_out {
            return Err(protocol("no base backup stream in progress"));
        }
        self.set_read_timeout(self.io_timeout)?;
        if self.copy_data_left == 0 {
            // A CopyData ('d', length) holding archive data ('d'): only
            // its header is taken here, the bytes are read into `out`.
            // Five bytes make a message header; the sixth, the kind of a
            // CopyData, usually comes in the same read.
            let head = self.reader.peek_upto(5, 6)?;
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if head[0] != b'd' || len < 5 {
                return Ok(BackupRead::Message(self.backup_message()?));
            }
            if self.reader.peek(6)?[5] != b'd' {
                return Ok(BackupRead::Message(self.backup_message()?));
            }
            self.reader.consume(6);
            self.copy_data_left = len - 5;
            if self.copy_data_left == 0 {
                return Ok(BackupRead::Data(0));
            }
        }
        let want = out.len().min(self.copy_data_left);
        let n = self.reader.read_into(&mut out[..want])?;
        self.copy_data_left -= n;
        Ok(BackupRead::Data(n))
    }

    /// The next message of the archive stream (waits at most the I/O timeout).
    pub fn backup_message(&mut self) -> Result<BackupMessage, ClientError> {
        if !self.copy_out {
            return Err(protocol("no base backup stream in progress"));
        }
        if self.copy_data_left > 0 {
            // The rest of a data message begun by backup_read, as large
            // as a message read whole may be.
            if self.copy_data_left > crate::replication::pgwire::DEFAULT_MAX_MESSAGE_LEN {
                return Err(protocol(format!(
                    "archive data message of {} more bytes is longer than {} bytes",
                    self.copy_data_left,
                    crate::replication::pgwire::DEFAULT_MAX_MESSAGE_LEN
                )));
            }
            let mut rest = vec![0u8; self.copy_data_left];
            let mut at = 0;
            while at < rest.len() {
                match self.backup_read(&mut rest[at..])? {
                    BackupRead::Data(n) => at += n,
                    BackupRead::Message(_) => {
                        return Err(protocol("a message inside an archive data message"))
                    }
                }
            }
            return Ok(BackupMessage::Data(rest));
        }
        match self.read(self.io_timeout)? {
            BackendMessage::CopyData(p) => decode_copy(p),
            BackendMessage::CopyDone => {
                self.copy_out = false;
                Ok(BackupMessage::End)
            }
            BackendMessage::ErrorResponse(e) => self.fail(e),
            BackendMessage::NoticeResponse(_) => self.backup_message(),
            other => Err(protocol(format!(
                "unexpected message in archive stream: {other:?}"
            ))),
        }
    }

    /// walrep's CONFIRM_BASE_BACKUP: the copy of resumable backup `id`
    /// passed its end check, so the server may release the checkpoint it
    /// kept for it (until then a copy that fails its check is resumable).
    pub fn confirm_base_backup(&mut self, id: &str) -> Result<(), ClientError> {
        self.simple_query(&format!("CONFIRM_BASE_BACKUP {}", literal(id)))?;
        Ok(())
    }

    /// After [`BackupMessage::End`]: the end position, then the command's
    /// completion.
    pub fn backup_end(&mut self) -> Result<(Lsn, TimelineId), ClientError> {
        if self.copy_out {
            return Err(protocol("the archive stream has not ended"));
        }
        let r = self.read_result_set("could not get write-ahead log end position from server")?;
        let end = parse_position(&r, "no write-ahead log end position returned from server")?;
        let done = self.collect_results(QueryResult::default())?;
        if !done.tags.iter().any(|t| t == "BASE_BACKUP") {
            return Err(protocol(format!(
                "final receive failed: expected BASE_BACKUP, got {:?}",
                done.tags
            )));
        }
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::command::{parse, ReplicationCommand};

    #[test]
    fn command_parses_on_our_server() {
        let req = BaseBackupRequest {
            label: "it's mine".into(),
            progress: true,
            max_rate_kbps: 64,
            ..BaseBackupRequest::default()
        };
        let ReplicationCommand::BaseBackup(o) = parse(&req.to_command()).unwrap() else {
            panic!("not a base backup");
        };
        assert_eq!(o.label, "it's mine");
        assert!(o.progress && o.wal && !o.wait);
        assert_eq!(o.max_rate_kbps, 64);
        assert_eq!(o.manifest, "no");
        assert_eq!(o.target.as_deref(), Some("client"));
        assert_eq!(o.parallel, 1);
    }

    #[test]
    fn parallel_and_join_parse_on_our_server() {
        let req = BaseBackupRequest {
            parallel: 4,
            ..BaseBackupRequest::default()
        };
        let ReplicationCommand::BaseBackup(o) = parse(&req.to_command()).unwrap() else {
            panic!("not a base backup");
        };
        assert_eq!((o.parallel, o.join.as_deref(), o.part), (4, None, 0));
        let req = BaseBackupRequest {
            join: Some(("ab'c".into(), 3)),
            max_rate_kbps: 64,
            ..BaseBackupRequest::default()
        };
        let ReplicationCommand::BaseBackup(o) = parse(&req.to_command()).unwrap() else {
            panic!("not a base backup");
        };
        assert_eq!(
            (o.parallel, o.join.as_deref(), o.part),
            (1, Some("ab'c"), 3)
        );
        assert_eq!(o.max_rate_kbps, 64);
        for bad in [
            "BASE_BACKUP (PARALLEL 0)",
            "BASE_BACKUP (PARALLEL 65)",
            "BASE_BACKUP (JOIN 'x')",
            "BASE_BACKUP (PART 1)",
            "BASE_BACKUP (JOIN 'x', PART 1, PARALLEL 2)",
            "BASE_BACKUP (JOIN 'x', PART 0)",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stream_messages_decode_or_fail_cleanly() {
        assert_eq!(
            decode_copy(b"nbase.tar\0\0".to_vec()).unwrap(),
            BackupMessage::NewArchive {
                name: "base.tar".into(),
                location: String::new()
            }
        );
        assert_eq!(
            decode_copy(b"dxy".to_vec()).unwrap(),
            BackupMessage::Data(b"xy".to_vec())
        );
        let mut p = vec![b'p'];
        p.extend_from_slice(&77u64.to_be_bytes());
        assert_eq!(decode_copy(p).unwrap(), BackupMessage::Progress(77));
        assert_eq!(decode_copy(b"m".to_vec()).unwrap(), BackupMessage::Manifest);
        for bad in [&b""[..], b"nbase.tar", b"p1234", b"z", b"nname\0loc\0x"] {
            assert!(decode_copy(bad.to_vec()).is_err(), "{bad:?}");
        }
    }
}
