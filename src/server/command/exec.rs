//! Running a parsed [`Command`]: the dispatch to the families' executors,
//! and the read and write paths they share ([`super::dispatch`] decides
//! whether a request runs at all, and when).
//!
//! - A read runs against a [`ReadView`]: released states, one read lock.
//! - A write runs against a [`WriteTxn`]: the newest states under the
//!   write lock; its operations become one WAL record, inserted and
//!   applied under that lock (WAL order is apply order), and its reply is
//!   held back until the record meets the connection's level.
//! - MULTI queues, EXEC runs the queue in one transaction ([`super::multi`]).
//!
//! The connection settles its pending writes before any command that is
//! not a write ([`Command::is_write`]) and runs WAIT off its worker thread
//! ([`Flow::Wait`]), so nothing here blocks on the WAL.

use super::data::{Data, Done};
use super::flow::Flow;
use super::{
    admin, auth, connection, debug, hashes, introspection, keyspace, lists, sets, strings, Command,
    CommandError, ConfigCommand,
};
use crate::config::SynchronousCommit;
use crate::server::backend::{Backend, Role, WriteError};
use crate::server::protocol::reply::{self, Reply};
use crate::server::session::Session;
use crate::store::control::{now_ms, now_us};
use crate::store::record::{self, KvCommand};
use crate::store::{Level, ReadView, Reader, Stepping, Store, WriteTxn};

/// A [`Data`] over a session's output, for one command's reply.
pub fn data<'x>(s: &'x mut Session, store: &'x Store, now_ms: u64) -> Data<'x> {
    let start = s.out.len();
    data_within(s, store, now_ms, start)
}

/// A [`Data`] for a reply that started at `start` of the output (EXEC's
/// array: its commands share one limit).
pub fn data_within<'x>(
    s: &'x mut Session,
    store: &'x Store,
    now_ms: u64,
    start: usize,
) -> Data<'x> {
    let reply_limit = s.ctx.settings.max_reply_bytes;
    let max_bulk_len = s.ctx.settings.max_bulk_len;
    Data {
        reply: Reply {
            out: &mut s.out,
            resp3: s.resp3,
        },
        now_ms,
        store,
        scans: &s.ctx.scans,
        reply_limit,
        reply_end: start.saturating_add(reply_limit),
        max_bulk_len,
    }
}

/// A reply that started at `mark` ended (`result`): past the limit it is
/// refused; refused or failed, what it wrote is dropped (so the error
/// reply stands alone).
pub fn bounded(s: &mut Session, mark: usize, result: Done) -> Done {
    let limit = s.ctx.settings.max_reply_bytes;
    let result = result.and_then(|()| match s.out.len().saturating_sub(mark) > limit {
        true => Err(CommandError::ReplyTooLarge(limit)),
        false => Ok(()),
    });
    if result.is_err() {
        s.out.truncate(mark);
    }
    result
}

/// Append `e` as an error reply.
pub fn reply_error(s: &mut Session, e: &CommandError) {
    reply::error(&mut s.out, &e.to_string());
}

/// Whether `cmd` reads the keyspace (and so runs against a reader).
pub fn is_data_read(cmd: &Command<'_>) -> bool {
    cmd.reads_data() && !matches!(cmd, Command::Watch(_))
}

/// Commands about the connection or the server, not the data.
pub fn run_session(s: &mut Session, cmd: Command<'_>) -> Result<Flow, CommandError> {
    use Command as C;
    match cmd {
        C::Quit => {
            reply::ok(&mut s.out);
            return Ok(Flow::Close);
        }
        C::Wait(w) => return Ok(Flow::Wait(admin::wait_request(s, w)?)),
        C::Ping(msg) => connection::ping(s, msg),
        C::Echo(msg) => reply::bulk(&mut s.out, msg),
        C::Select => reply::ok(&mut s.out),
        C::Hello(h) => connection::hello(s, h)?,
        C::Client(c) => return connection::client(s, c),
        C::Info(sections) => admin::info(s, sections),
        C::Config(ConfigCommand::Get(patterns)) => admin::config_get(s, patterns)?,
        C::Config(ConfigCommand::Set(change)) => admin::config_set(s, change),
        C::Config(ConfigCommand::Help) => admin::config_help(s),
        C::Commands(q) => introspection::command(s, q)?,
        C::Time => admin::time(s),
        C::Auth { user, password } => auth::auth(s, user, password)?,
        C::Acl(c) => auth::acl(s, c),
        C::DebugDigest => debug::digest(s)?,
        other => {
            // Every data command is dispatched before this.
            debug_assert!(false, "not a session command: {other:?}");
            return Err(CommandError::Syntax);
        }
    }
    Ok(Flow::Continue)
}

/// A read: one read lock (KEYS and SCAN: one per step), then, on a
/// primary, the deletion of expired keys it met.
pub fn read_one(s: &mut Session, cmd: Command<'_>) -> Done {
    let backend = s.ctx.backend.clone();
    let store = backend.store();
    let now = now_ms();
    let mark = s.out.len();
    if matches!(cmd, Command::Keys(_) | Command::Scan(_)) {
        let mut r = Stepping { store, now_ms: now };
        let result = read(&mut r, &mut data(s, store, now), cmd);
        return bounded(s, mark, result);
    }
    let mut view = store.read_view(now);
    let result = read(&mut view, &mut data(s, store, now), cmd);
    let expired = view.into_expired();
    if !expired.is_empty() {
        expire_on_access(&*backend, &expired);
    }
    bounded(s, mark, result)
}

/// The primary deletes keys a read found expired (Redis's expiry on
/// access); errors are left to the next access or the expiry cycle.
fn expire_on_access(backend: &dyn Backend, keys: &[Vec<u8>]) {
    if let Err(e) = crate::server::expire::delete_expired(backend, keys) {
        tracing::debug!(error = %e, "could not delete expired keys on access");
    }
}

/// A single write command: one transaction, one record.
pub fn write_one(s: &mut Session, cmd: Command<'_>) -> Done {
    let backend = s.ctx.backend.clone();
    if backend.role() != Role::Primary {
        return Err(WriteError::ReadOnly.into());
    }
    let info = info_of(&cmd);
    let store = backend.store();
    // One clock read: the command's "now" and its record's timestamp.
    let now_us = now_us();
    let now = now_us / 1000;
    let mark = s.out.len();
    let mut t = store.write_at(now);
    let result = write(&mut t, &mut data(s, store, now), cmd);
    // A reply too large refuses the write: nothing is logged.
    if let Err(e) = bounded(s, mark, result) {
        drop(t);
        return Err(e);
    }
    finish_at(s, &*backend, t, info, mark, now_us)
}

/// Log a transaction's operations as one record and apply them at its
/// level, holding its replies (from `mark` on) until the level is met.
/// A transaction that read a state still waiting for its level waits for
/// that too. Nothing to log and nothing pending read: replies go at once.
pub fn finish(
    s: &mut Session,
    backend: &dyn Backend,
    t: WriteTxn<'_, '_>,
    info: KvCommand,
    mark: usize,
) -> Done {
    finish_at(s, backend, t, info, mark, now_us())
}

/// [`finish`] with the record's timestamp (Unix µs) already read.
fn finish_at(
    s: &mut Session,
    backend: &dyn Backend,
    t: WriteTxn<'_, '_>,
    info: KvCommand,
    mark: usize,
    now_us: u64,
) -> Done {
    let own = commit_level(s.synchronous_commit, backend);
    let read = t.read_pending();
    let level = read.map_or(own, |(_, l)| own.max(l));
    if t.ops().is_empty() {
        drop(t);
        if let Some((lsn, _)) = read {
            s.note_write(mark, lsn, level, Vec::new());
        }
        return Ok(());
    }
    let payload = record::encode(now_us, t.ops());
    match backend.insert(info as u8, &payload) {
        Ok(end) => {
            let compact = t.commit(end, level);
            s.note_write(mark, end, level, compact);
            Ok(())
        }
        Err(e) => {
            drop(t);
            s.out.truncate(mark);
            Err(e.into())
        }
    }
}

/// The level a commit at `sc` waits for. `off` and `local` do not depend
/// on the synchronous standbys, so only the remote levels ask whether any
/// is configured (a shared lock the hot path of `off` need not take).
pub fn commit_level(sc: SynchronousCommit, backend: &dyn Backend) -> Level {
    match sc {
        SynchronousCommit::Off => Level::Immediate,
        SynchronousCommit::Local => Level::LocalFlush,
        remote => Level::for_commit(remote, backend.sync_standbys_defined()),
    }
}

/// The `info` byte of a write's record (for waldump and traces).
pub fn info_of(cmd: &Command<'_>) -> KvCommand {
    use Command as C;
    match cmd {
        C::Set(_) | C::SetNx { .. } | C::Append { .. } | C::GetSet { .. } => KvCommand::Set,
        C::MSet(_) => KvCommand::MSet,
        C::IncrBy { .. } => KvCommand::Incr,
        C::Del(_) | C::Unlink(_) | C::GetDel(_) => KvCommand::Del,
        C::GetEx(_) | C::Expire(_) | C::Persist(_) => KvCommand::Expire,
        C::Rename { .. } => KvCommand::Rename,
        C::Flush => KvCommand::Flush,
        C::HSet { .. } | C::HSetNx { .. } | C::HDel { .. } | C::HIncrBy { .. } => {
            KvCommand::HashWrite
        }
        C::SAdd { .. } | C::SRem { .. } | C::SPop { .. } => KvCommand::SetWrite,
        _ => KvCommand::ListWrite,
    }
}

/// Run a read command against `r`.
pub fn read(r: &mut dyn Reader, d: &mut Data<'_>, cmd: Command<'_>) -> Done {
    use Command as C;
    match cmd {
        C::Get(key) => strings::get(r, d, key),
        C::MGet(keys) => strings::mget(r, d, keys),
        C::Strlen(key) => strings::strlen(r, d, key),
        C::Exists(keys) => keyspace::exists(r, d, keys),
        C::DbSize => keyspace::dbsize(d),
        C::Type(key) => keyspace::key_type(r, d, key),
        C::Keys(pattern) => keyspace::keys(r, d, pattern),
        C::Scan(scan) => keyspace::scan(r, d, scan),
        C::Ttl(q) => keyspace::ttl(r, d, q),
        C::HGet { key, field } => hashes::hget(r, d, key, field),
        C::HMGet { key, fields } => hashes::hmget(r, d, key, fields),
        C::HGetAll(key) => hashes::hgetall(r, d, key),
        C::HKeys(key) => hashes::hkeys(r, d, key),
        C::HVals(key) => hashes::hvals(r, d, key),
        C::HLen(key) => hashes::hlen(r, d, key),
        C::HExists { key, field } => hashes::hexists(r, d, key, field),
        C::HStrlen { key, field } => hashes::hstrlen(r, d, key, field),
        C::HScan(scan) => hashes::hscan(r, d, scan),
        C::LRange { key, start, stop } => lists::lrange(r, d, key, start, stop),
        C::LLen(key) => lists::llen(r, d, key),
        C::LIndex { key, index } => lists::lindex(r, d, key, index),
        C::SMembers(key) => sets::smembers(r, d, key),
        C::SIsMember { key, member } => sets::sismember(r, d, key, member),
        C::SMIsMember { key, members } => sets::smismember(r, d, key, members),
        C::SCard(key) => sets::scard(r, d, key),
        C::SRandMember { key, count } => sets::srandmember(r, d, key, count),
        C::SScan(scan) => sets::sscan(r, d, scan),
        other => {
            debug_assert!(false, "not a read: {other:?}");
            Err(CommandError::Syntax)
        }
    }
}

/// Run a write command in `t`. An executor checks everything that can
/// fail before its first operation, so an error leaves nothing behind.
pub fn write<'a>(t: &mut WriteTxn<'_, 'a>, d: &mut Data<'_>, cmd: Command<'a>) -> Done {
    use Command as C;
    match cmd {
        C::Set(set) => strings::set(t, d, set),
        C::SetNx { key, value } => strings::setnx(t, d, key, value),
        C::MSet(pairs) => strings::mset(t, d, pairs),
        C::IncrBy { key, by } => strings::incr_by(t, d, key, by),
        C::Append { key, value } => strings::append(t, d, key, value),
        C::GetSet { key, value } => strings::getset(t, d, key, value),
        C::GetDel(key) => strings::getdel(t, d, key),
        C::GetEx(g) => strings::getex(t, d, g),
        C::Del(keys) | C::Unlink(keys) => keyspace::del(t, d, keys),
        C::Rename { from, to, nx } => keyspace::rename(t, d, from, to, nx),
        C::Flush => keyspace::flush(t, d),
        C::Expire(e) => keyspace::expire(t, d, e),
        C::Persist(key) => keyspace::persist(t, d, key),
        C::HSet { key, pairs, ok } => hashes::hset(t, d, key, pairs, ok),
        C::HSetNx { key, field, value } => hashes::hsetnx(t, d, key, field, value),
        C::HDel { key, fields } => hashes::hdel(t, d, key, fields),
        C::HIncrBy { key, field, by } => hashes::hincrby(t, d, key, field, by),
        C::Push {
            key,
            elems,
            front,
            only_existing,
        } => lists::push(t, d, key, elems, front, only_existing),
        C::Pop { key, count, front } => lists::pop(t, d, key, count, front),
        C::LSet { key, index, elem } => lists::lset(t, d, key, index, elem),
        C::LRem { key, count, elem } => lists::lrem(t, d, key, count, elem),
        C::LTrim { key, start, stop } => lists::ltrim(t, d, key, start, stop),
        C::SAdd { key, members } => sets::sadd(t, d, key, members),
        C::SRem { key, members } => sets::srem(t, d, key, members),
        C::SPop { key, count } => sets::spop(t, d, key, count),
        other => {
            debug_assert!(false, "not a write: {other:?}");
            Err(CommandError::Syntax)
        }
    }
}

/// A read-only EXEC's view, with its read lock.
pub fn read_view(store: &Store) -> ReadView<'_> {
    store.read_view(now_ms())
}
