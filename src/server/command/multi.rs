//! Transactions: MULTI, EXEC, DISCARD, WATCH and UNWATCH, with Redis's
//! semantics, and one WAL record per EXEC.
//!
//! - MULTI starts queuing: every command but EXEC, DISCARD, MULTI, WATCH
//!   and QUIT is parsed (an error, or a write on a standby, marks the
//!   transaction so EXEC answers EXECABORT), kept, and answered `QUEUED`.
//! - EXEC runs the queue under one lock: the write lock when it holds a
//!   write (its reads see its own earlier writes, and every operation goes
//!   into one record, so a standby's reader sees all of the transaction or
//!   none of it, and `synchronous_commit` applies to the EXEC as to one
//!   write), the read lock otherwise. A command that fails at run time
//!   (WRONGTYPE) answers its error in the array and the others run, as in
//!   Redis: there is no rollback.
//! - WATCH remembers each key's identity (the LSN of its newest version,
//!   and whether it had expired); EXEC compares under its lock and
//!   answers a null array if any changed.

use super::data::Done;
use super::exec::{self, data_within, finish, is_data_read, run_session};
use super::queued::Multi;
use super::{Args, Command, CommandError};
use crate::server::backend::{Role, WriteError};
use crate::server::protocol::reply::{self, Reply};
use crate::server::session::Session;
use crate::store::control::now_ms;
use crate::store::record::KvCommand;
use crate::store::{Reader, Stamp};

/// Commands one transaction may queue at most.
pub const MAX_QUEUED: usize = 1_000_000;
/// Argument bytes one transaction may queue at most (its record must also
/// fit in a WAL record, 1 GiB).
pub const MAX_QUEUED_BYTES: usize = 256 << 20;
/// Keys one connection may watch at most.
pub const MAX_WATCHED: usize = 100_000;

/// Whether a command runs at once inside MULTI instead of being queued.
pub fn runs_at_once(cmd: &Command<'_>) -> bool {
    matches!(
        cmd,
        Command::Exec | Command::Discard | Command::Multi | Command::Watch(_) | Command::Quit
    )
}

/// Queue `cmd` (its request is `args`), or refuse it and mark the
/// transaction.
pub fn queue(s: &mut Session, args: Args<'_>, cmd: &Command<'_>) {
    let role = s.ctx.backend.role();
    let refused = match cmd {
        Command::Wait(_) => Some(CommandError::NotInMulti),
        c if c.is_write() && role != Role::Primary => Some(WriteError::ReadOnly.into()),
        _ => None,
    };
    let size: usize = args.iter().map(|a| a.len()).sum();
    let m = s.multi.as_mut().expect("in a MULTI");
    let refused = refused.or_else(|| {
        (m.queue.len() >= MAX_QUEUED || m.bytes + size > MAX_QUEUED_BYTES)
            .then_some(CommandError::MultiTooLarge(MAX_QUEUED))
    });
    if let Some(e) = refused {
        m.aborted = true;
        exec::reply_error(s, &e);
        return;
    }
    m.queue.push(args.iter().map(|a| a.to_vec()).collect());
    m.bytes += size;
    m.has_write |= cmd.is_write();
    s.client.set_multi(Some(m.queue.len()));
    reply::simple(&mut s.out, "QUEUED");
}

/// A queuing error: EXEC will answer EXECABORT.
pub fn abort(s: &mut Session) {
    if let Some(m) = s.multi.as_mut() {
        m.aborted = true;
    }
}

pub fn multi(s: &mut Session) -> Result<(), CommandError> {
    if s.in_multi() {
        return Err(CommandError::NestedMulti);
    }
    s.multi = Some(Multi::default());
    s.client.set_multi(Some(0));
    reply::ok(&mut s.out);
    Ok(())
}

pub fn discard(s: &mut Session) -> Result<(), CommandError> {
    s.multi.take().ok_or(CommandError::DiscardWithoutMulti)?;
    s.client.set_multi(None);
    s.watched.clear();
    reply::ok(&mut s.out);
    Ok(())
}

pub fn watch(s: &mut Session, keys: Args<'_>) -> Result<(), CommandError> {
    if s.in_multi() {
        return Err(CommandError::WatchInMulti);
    }
    if s.watched.len() + keys.len() > MAX_WATCHED {
        return Err(CommandError::OutOfRange);
    }
    let store = s.ctx.backend.store();
    let now = now_ms();
    for k in keys {
        if !s.watched.iter().any(|(w, _)| w.as_slice() == *k) {
            let stamp = store.stamp(k, now);
            s.watched.push((k.to_vec(), stamp));
        }
    }
    reply::ok(&mut s.out);
    Ok(())
}

pub fn unwatch(s: &mut Session) {
    s.watched.clear();
    reply::ok(&mut s.out);
}

/// Whether a watched key changed since WATCH: another version, or its
/// expiry passed.
fn changed(watched: &[(Vec<u8>, Stamp)], now: impl Fn(&[u8]) -> Stamp) -> bool {
    watched.iter().any(|(k, then)| {
        let now = now(k);
        now.lsn != then.lsn || (now.expired && !then.expired)
    })
}

pub fn exec(s: &mut Session) -> Result<(), CommandError> {
    let m = s.multi.take().ok_or(CommandError::ExecWithoutMulti)?;
    s.client.set_multi(None);
    let watched = std::mem::take(&mut s.watched);
    if m.aborted {
        return Err(CommandError::ExecAbort);
    }
    let backend = s.ctx.backend.clone();
    let store = backend.store();
    let requests: Vec<Vec<&[u8]>> = m
        .queue
        .iter()
        .map(|a| a.iter().map(Vec::as_slice).collect())
        .collect();
    let commands = requests.iter().map(|args| Command::from_frame(args));
    if !m.has_write {
        let mut view = exec::read_view(store);
        if changed(&watched, |k| view.stamp(k)) {
            null_array(s);
            return Ok(());
        }
        let mark = s.out.len();
        reply::array_header(&mut s.out, requests.len());
        for cmd in commands {
            run_queued(s, &mut view, cmd, None, mark)?;
        }
        return Ok(());
    }
    if backend.role() != Role::Primary {
        return Err(CommandError::ExecAbortBecause(
            WriteError::ReadOnly.to_string(),
        ));
    }
    let now = now_ms();
    let mut t = store.write_at(now);
    if changed(&watched, |k| t.stamp(k)) {
        drop(t);
        null_array(s);
        return Ok(());
    }
    let mark = s.out.len();
    reply::array_header(&mut s.out, requests.len());
    for cmd in commands {
        let result = match cmd {
            Ok(c) if c.is_write() => {
                let at = s.out.len();
                let r = exec::write(&mut t, &mut data_within(s, store, now, mark), c);
                reply_result(s, at, mark, r)
            }
            other => run_queued(s, &mut t, other, Some(now), mark),
        };
        if let Err(e) = result {
            // Nothing of the transaction is logged.
            drop(t);
            return Err(e);
        }
    }
    finish(s, &*backend, t, KvCommand::Exec, mark)
}

/// Run one queued read or session command inside EXEC, whose reply
/// started at `mark`.
fn run_queued(
    s: &mut Session,
    r: &mut dyn Reader,
    cmd: Result<Command<'_>, CommandError>,
    now: Option<u64>,
    mark: usize,
) -> Result<(), CommandError> {
    let backend = s.ctx.backend.clone();
    let store = backend.store();
    let at = s.out.len();
    let result = match cmd {
        Ok(c) if is_data_read(&c) && backend.role() == Role::Recovering => {
            Err(WriteError::NotConsistent.into())
        }
        Ok(c) if is_data_read(&c) => {
            let now = now.unwrap_or_else(now_ms);
            exec::read(r, &mut data_within(s, store, now, mark), c)
        }
        // It parsed when queued; a write here is refused above.
        Ok(c) if c.is_write() => Err(WriteError::ReadOnly.into()),
        Ok(c) => run_session(s, c).map(|_| ()),
        Err(e) => Err(e),
    };
    reply_result(s, at, mark, result)
}

/// One command of EXEC ended (its reply started at `at`): a failure is
/// its element of the array, as in Redis, its partial reply dropped. But
/// an EXEC whose whole reply (from `mark`) grew past
/// `client_output_buffer_limit` is refused as a whole.
fn reply_result(s: &mut Session, at: usize, mark: usize, r: Done) -> Done {
    match r {
        Err(e @ CommandError::ReplyTooLarge(_)) => {
            s.out.truncate(mark);
            return Err(e);
        }
        Err(e) => {
            s.out.truncate(at);
            exec::reply_error(s, &e);
        }
        Ok(()) => {}
    }
    exec::bounded(s, mark, Ok(()))
}

fn null_array(s: &mut Session) {
    Reply {
        out: &mut s.out,
        resp3: s.resp3,
    }
    .null_array();
}
