//! Consecutive pipelined writes of one connection as one WAL record.
//!
//! A client that pipelines 32 SETs would otherwise cost 32 write locks, 32
//! WAL insertions (each a lock, a CRC and a header) and 32 clock reads.
//! Here a run of simple writes read in one pass shares one transaction:
//! one write lock, one record (its operations in request order, as an
//! MSET's are), one commit, one pending wait. The record is atomic, which
//! only strengthens what each command promised; every reply is still held
//! until the record meets the connection's level.
//!
//! Only writes whose reply is small and fixed (OK, null, an integer) and
//! whose executor refuses before its first operation join a run, so a
//! refused command never undoes the others: it gets its error, the run
//! goes on. The run ends at any other command (before it runs, so a read
//! sees the run's writes settled first), at [`MAX_RUN`] commands or
//! [`MAX_RUN_BYTES`] of arguments, or when the record type would change.

use super::exec::{bounded, commit_level, data, info_of, reply_error, write};
use super::{Command, CommandError};
use crate::server::backend::{Backend, Role};
use crate::server::session::Session;
use crate::store::record::{self, KvCommand};
use crate::store::WriteTxn;

/// Most commands in one run (one record).
pub const MAX_RUN: usize = 64;
/// Most argument bytes in one run (a record stays well below the WAL's
/// record size limit).
pub const MAX_RUN_BYTES: usize = 256 << 10;
/// Below this `client_output_buffer_limit` nothing is batched (a reply of
/// a batched command could then be refused after it applied).
const MIN_REPLY_LIMIT: usize = 64;

/// A run of writes being built (see the module's documentation).
pub struct Run<'s, 'a> {
    t: Option<WriteTxn<'s, 'a>>,
    info: KvCommand,
    /// Where the run's first reply starts in the output.
    mark: usize,
    /// Each command's reply (start, end) and whether it logged anything.
    parts: Vec<(usize, usize, bool)>,
    bytes: usize,
    now_us: u64,
}

impl Default for Run<'_, '_> {
    fn default() -> Self {
        Run {
            t: None,
            info: KvCommand::Set,
            mark: 0,
            parts: Vec::new(),
            bytes: 0,
            now_us: 0,
        }
    }
}

/// Whether `cmd` may join a run: a write with a small, fixed reply.
pub fn batchable(cmd: &Command<'_>) -> bool {
    use Command as C;
    match cmd {
        C::Set(set) => !set.get,
        C::MSet(_) | C::IncrBy { .. } | C::Del(_) | C::HSet { .. } | C::SAdd { .. } => true,
        C::Push { .. } => true,
        _ => false,
    }
}

/// Names of the commands [`batchable`] may admit (ASCII, any case): a
/// connection frames requests ahead only while they may join a run, so a
/// read that stalls the connection costs no framing of what follows it.
pub fn may_join(name: &[u8]) -> bool {
    const NAMES: &[&[u8]] = &[
        b"set", b"mset", b"incr", b"decr", b"incrby", b"decrby", b"del", b"hset", b"hmset",
        b"lpush", b"rpush", b"lpushx", b"rpushx", b"sadd",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

impl<'s, 'a> Run<'s, 'a> {
    /// Whether `cmd` (batchable, arguments `bytes` long) joins this run
    /// on session `s`: outside MULTI, on a primary.
    pub fn admits(&self, s: &Session, backend: &dyn Backend, cmd: &Command<'_>) -> bool {
        batchable(cmd)
            && !s.in_multi()
            && s.ctx.settings.max_reply_bytes >= MIN_REPLY_LIMIT
            && backend.role() == Role::Primary
    }

    /// Run `cmd` (admitted) as part of the run, opening one if none is.
    pub fn execute(
        &mut self,
        s: &mut Session,
        backend: &'s dyn Backend,
        cmd: Command<'a>,
        bytes: usize,
    ) {
        let info = info_of(&cmd);
        let full = self.parts.len() >= MAX_RUN || self.bytes + bytes > MAX_RUN_BYTES;
        if self.t.is_some() && (full || info != self.info) {
            self.finish(s, backend);
        }
        let t = match &mut self.t {
            Some(t) => t,
            None => {
                self.now_us = crate::store::control::now_us();
                self.info = info;
                self.mark = s.out.len();
                self.t.insert(backend.store().write_at(self.now_us / 1000))
            }
        };
        self.bytes += bytes;
        let (start, ops) = (s.out.len(), t.ops().len());
        let store = backend.store();
        let result = write(t, &mut data(s, store, self.now_us / 1000), cmd);
        let result = bounded(s, start, result);
        let logged = t.ops().len() > ops;
        match result {
            Ok(()) => self.parts.push((start, s.out.len(), logged)),
            Err(e) if !logged => {
                reply_error(s, &e);
                self.parts.push((start, s.out.len(), false));
            }
            Err(e) => {
                // An executor refused after applying (never expected):
                // nothing of the run is logged, every write of it fails.
                debug_assert!(false, "a batched write failed after applying: {e}");
                s.out.truncate(start);
                self.parts.push((start, start, true));
                self.t = None;
                self.abort(s, &e);
            }
        }
    }

    /// Log the run as one record and hold its replies until the record
    /// meets the level (or fail each write of it with the WAL's error).
    pub fn finish(&mut self, s: &mut Session, backend: &dyn Backend) {
        let Some(t) = self.t.take() else {
            return;
        };
        let own = commit_level(s.synchronous_commit, backend);
        let read = t.read_pending();
        let level = read.map_or(own, |(_, l)| own.max(l));
        if t.ops().is_empty() {
            drop(t);
            if let Some((lsn, _)) = read {
                s.note_write(self.mark, lsn, level, Vec::new());
            }
        } else {
            let payload = record::encode(self.now_us, t.ops());
            match backend.insert(self.info as u8, &payload) {
                Ok(end) => {
                    let compact = t.commit(end, level);
                    s.note_write(self.mark, end, level, compact);
                }
                Err(e) => {
                    drop(t);
                    self.abort(s, &e.into());
                }
            }
        }
        self.parts.clear();
        self.bytes = 0;
    }

    /// Nothing of the run was logged: every write that logged something
    /// gets `e` instead of its reply; the others keep theirs.
    fn abort(&mut self, s: &mut Session, e: &CommandError) {
        let tail = s.out.split_off(self.mark);
        for (start, end, logged) in self.parts.drain(..) {
            if logged {
                reply_error(s, e);
            } else {
                s.out
                    .extend_from_slice(&tail[start - self.mark..end - self.mark]);
            }
        }
        self.bytes = 0;
    }
}
