//! Executing a parsed [`Command`]: the rules that hold around every
//! command, the dispatch to the families' executors, and the write path
//! they share.
//!
//! The connection settles its pending writes before any command that is
//! not a write ([`Command::is_write`]) and runs WAIT off its worker thread
//! ([`Flow::Wait`]), so nothing here blocks on the WAL.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{admin, auth, connection, keyspace, strings, Command, CommandError, WaitRequest};
use crate::server::protocol::reply;
use crate::server::session::Session;
use crate::server::{Role, WriteError};
use crate::store::map::WriteTxn;
use crate::store::record::{self, KvCommand};
use crate::store::Level;

/// What the connection does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// QUIT: send the replies, then close.
    Close,
    /// WAIT: run this off the worker thread; its reply comes later.
    Wait(WaitRequest),
}

/// An executor's result: `Err` becomes the error reply.
pub type Done = Result<(), CommandError>;

/// Execute `cmd`, appending its reply to the session's output.
pub fn execute(s: &mut Session, cmd: Command<'_>) -> Flow {
    if cmd.reads_data() && s.ctx.backend.role() == Role::Recovering {
        reply_error(s, &WriteError::NotConsistent.into());
        return Flow::Continue;
    }
    match run(s, cmd) {
        Ok(flow) => flow,
        Err(e) => {
            reply_error(s, &e);
            Flow::Continue
        }
    }
}

/// Execute a parsed request, or reply with why the parser refused it.
pub fn respond(s: &mut Session, parsed: Result<Command<'_>, CommandError>) -> Flow {
    match parsed {
        Ok(cmd) => execute(s, cmd),
        Err(e) => {
            reply_error(s, &e);
            Flow::Continue
        }
    }
}

/// Append `e` as an error reply.
pub fn reply_error(s: &mut Session, e: &CommandError) {
    reply::error(&mut s.out, &e.to_string());
}

fn run(s: &mut Session, cmd: Command<'_>) -> Result<Flow, CommandError> {
    use Command as C;
    match cmd {
        C::Quit => {
            reply::ok(&mut s.out);
            return Ok(Flow::Close);
        }
        C::Wait(w) => return Ok(Flow::Wait(admin::wait_request(s, w))),
        C::Ping(msg) => connection::ping(s, msg),
        C::Echo(msg) => reply::bulk(&mut s.out, msg),
        C::Select => reply::ok(&mut s.out),
        C::Hello(h) => connection::hello(s, h)?,
        C::Client(c) => connection::client(s, c)?,
        C::Info(sections) => admin::info(s, sections),
        C::ConfigGet(patterns) => admin::config_get(s, patterns)?,
        C::ConfigSet(change) => admin::config_set(s, change),
        C::ConfigHelp => admin::config_help(s),
        C::CountCommands => reply::integer(&mut s.out, super::NAMES.len() as i64),
        C::DescribeCommands => reply::array_header(&mut s.out, 0),
        C::DebugDigest => super::debug::digest(s),
        C::Get(key) => strings::get(s, key),
        C::MGet(keys) => strings::mget(s, keys)?,
        C::Set(set) => strings::set(s, set)?,
        C::SetNx { key, value } => strings::setnx(s, key, value)?,
        C::MSet(pairs) => strings::mset(s, pairs)?,
        C::IncrBy { key, by } => strings::incr_by(s, key, by)?,
        C::Append { key, value } => strings::append(s, key, value)?,
        C::Strlen(key) => strings::strlen(s, key),
        C::Exists(keys) => keyspace::exists(s, keys),
        C::Del(keys) | C::Unlink(keys) => keyspace::del(s, keys)?,
        C::DbSize => keyspace::dbsize(s),
        C::Type(key) => keyspace::key_type(s, key),
        C::Keys(pattern) => keyspace::keys(s, pattern)?,
        C::Scan(scan) => keyspace::scan(s, scan)?,
        C::Auth { user, password } => auth::auth(s, user, password)?,
        C::Acl(c) => auth::acl(s, c),
    }
    Ok(Flow::Continue)
}

/// The new value (or deletion) of each key a write plans.
pub type Ops<'a> = Vec<(&'a [u8], Option<Cow<'a, [u8]>>)>;

/// The write path: under the store's write lock, plan the blind writes from
/// the current (newest) values, insert one WAL record, apply it; then note
/// it as pending so its reply waits for its durability level. A plan with
/// no writes inserts nothing.
pub fn write<'a, R>(
    s: &mut Session,
    command: KvCommand,
    plan: impl FnOnce(&WriteTxn<'_>) -> Result<(Ops<'a>, R), CommandError>,
) -> Result<R, CommandError> {
    let backend = s.ctx.backend.clone();
    if backend.role() != Role::Primary {
        return Err(WriteError::ReadOnly.into());
    }
    let level = Level::for_commit(s.synchronous_commit, backend.sync_standbys_defined());
    let store = backend.store();
    let mut txn = store.write();
    let (ops, result) = plan(&txn)?;
    if ops.is_empty() {
        return Ok(result);
    }
    let borrowed: Vec<(&[u8], Option<&[u8]>)> =
        ops.iter().map(|(k, v)| (*k, v.as_deref())).collect();
    let payload = record::encode(now_us(), &borrowed);
    let end = backend.insert(command as u8, &payload)?;
    let mut compact = Vec::new();
    for (k, v) in &borrowed {
        if txn.apply(end, level, k, *v) {
            compact.push(k.to_vec());
        }
    }
    drop(txn);
    s.note_write(end, level, compact);
    Ok(result)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
