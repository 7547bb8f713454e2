//! Redis commands, parsed into a [`Command`] before anything runs: the
//! parser does every arity and syntax check and answers with Redis's error
//! texts, so an executor only ever sees a well-formed command.
//!
//! # Layout, from the connection down (each file uses only those below it)
//! - [`dispatch`]: what the connection asks of every request: may this
//!   session run it (NOAUTH, NOPERM), must it wait for the pending writes,
//!   then [`dispatch::respond`]: queued inside a MULTI, LOADING while a
//!   standby recovers, or run.
//! - [`multi`]: MULTI, EXEC, DISCARD, WATCH; [`batch`]: consecutive
//!   pipelined writes as one record.
//! - [`exec`]: the dispatch to the families' executors, and the read path
//!   and the write path (one WAL record per command or EXEC; READONLY on a
//!   standby).
//! - [`introspection`]: COMMAND, the table read back.
//! - [`table`]: every command's name, arity, parser and documentation
//!   (COMMAND DOCS, COMMAND INFO), the families walrep refuses, and
//!   [`Command::from_frame`] (name to parser).
//! - this file: [`Command`], and what the connection and executor ask of
//!   a command: is it a write, does it read data, which keys does it
//!   touch, which access does it need.
//! - one file per family, with its argument types, the parsers of its
//!   arguments and its executors: [`strings`], [`keyspace`] (and expiry),
//!   [`hashes`], [`lists`], [`sets`], [`connection`], [`admin`], [`auth`]
//!   (AUTH, ACL, the login; the levels are [`Command::required_access`]),
//!   [`debug`].
//! - what the families share: [`data`] (what an executor works with and
//!   answers), [`parse`] (name lookup on the stack, arity, integers),
//!   [`error`] ([`CommandError`], Redis's error texts), [`flow`] (what the
//!   connection does next), [`queued`] (a MULTI's queue), [`glob`]
//!   (Redis's glob patterns), [`scan`] (SCAN's cursor table).
//!
//! Adding a command: a variant here (and its arm in `is_write`,
//! `reads_data`, `keys`), a row in [`table`] with its parser, an executor
//! in its family and its arm in [`exec`], a line in
//! docs/redis-commands.md.

pub mod admin;
pub mod auth;
pub mod batch;
pub mod connection;
pub mod data;
pub mod debug;
pub mod dispatch;
pub mod error;
pub mod exec;
pub mod flow;
pub mod glob;
pub mod hashes;
pub mod introspection;
pub mod keyspace;
pub mod lists;
pub mod multi;
pub mod parse;
pub mod queued;
pub mod scan;
pub mod sets;
pub mod strings;
pub mod table;

pub use admin::{CommandQuery, ConfigCommand, Wait};
pub use auth::AclCommand;
pub use connection::{ClientCommand, Hello};
pub use error::CommandError;
pub use flow::{Flow, WaitRequest};
pub use keyspace::{ExpireCmd, Scan, TtlQuery};
pub use parse::{Args, CollScan};
pub use strings::{GetEx, Set};

use crate::config::RedisAccess;

/// A parsed request. Arguments are borrowed from the request, so parsing
/// allocates nothing on the hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    // Connection.
    Ping(Option<&'a [u8]>),
    Echo(&'a [u8]),
    Quit,
    /// `SELECT 0`: the only database.
    Select,
    Hello(Hello<'a>),
    /// `AUTH [username] password`.
    Auth {
        user: Option<&'a [u8]>,
        password: &'a [u8],
    },
    Client(ClientCommand<'a>),
    // Server.
    /// `INFO [section...]`.
    Info(Args<'a>),
    /// `CONFIG GET`, `CONFIG SET`, `CONFIG HELP`.
    Config(ConfigCommand<'a>),
    Wait(Wait),
    /// COMMAND and its subcommands.
    Commands(CommandQuery<'a>),
    Time,
    // Transactions.
    Multi,
    Exec,
    Discard,
    /// `WATCH key...`.
    Watch(Args<'a>),
    Unwatch,
    // Strings.
    Get(&'a [u8]),
    /// `MGET key...`: the keys.
    MGet(Args<'a>),
    Set(Set<'a>),
    SetNx {
        key: &'a [u8],
        value: &'a [u8],
    },
    /// `MSET key value...`: the pairs, flat.
    MSet(Args<'a>),
    /// INCR, DECR, INCRBY and DECRBY.
    IncrBy {
        key: &'a [u8],
        by: i64,
    },
    Append {
        key: &'a [u8],
        value: &'a [u8],
    },
    Strlen(&'a [u8]),
    GetSet {
        key: &'a [u8],
        value: &'a [u8],
    },
    GetDel(&'a [u8]),
    GetEx(GetEx<'a>),
    // Keyspace.
    Exists(Args<'a>),
    Del(Args<'a>),
    Unlink(Args<'a>),
    DbSize,
    Type(&'a [u8]),
    /// `KEYS pattern`.
    Keys(&'a [u8]),
    Scan(Scan<'a>),
    /// RENAME (`nx`: RENAMENX).
    Rename {
        from: &'a [u8],
        to: &'a [u8],
        nx: bool,
    },
    /// FLUSHDB, FLUSHALL.
    Flush,
    /// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT; SETEX's and PSETEX's time
    /// is in [`Set`].
    Expire(ExpireCmd<'a>),
    /// TTL, PTTL, EXPIRETIME, PEXPIRETIME.
    Ttl(TtlQuery<'a>),
    Persist(&'a [u8]),
    // Hashes.
    /// HSET, HMSET (`ok`: reply +OK).
    HSet {
        key: &'a [u8],
        pairs: Args<'a>,
        ok: bool,
    },
    HSetNx {
        key: &'a [u8],
        field: &'a [u8],
        value: &'a [u8],
    },
    HGet {
        key: &'a [u8],
        field: &'a [u8],
    },
    HMGet {
        key: &'a [u8],
        fields: Args<'a>,
    },
    HDel {
        key: &'a [u8],
        fields: Args<'a>,
    },
    HGetAll(&'a [u8]),
    HKeys(&'a [u8]),
    HVals(&'a [u8]),
    HLen(&'a [u8]),
    HExists {
        key: &'a [u8],
        field: &'a [u8],
    },
    HIncrBy {
        key: &'a [u8],
        field: &'a [u8],
        by: i64,
    },
    HStrlen {
        key: &'a [u8],
        field: &'a [u8],
    },
    HScan(CollScan<'a>),
    // Lists.
    /// LPUSH, RPUSH, LPUSHX, RPUSHX.
    Push {
        key: &'a [u8],
        elems: Args<'a>,
        front: bool,
        only_existing: bool,
    },
    /// LPOP, RPOP, with or without a count.
    Pop {
        key: &'a [u8],
        count: Option<u64>,
        front: bool,
    },
    LRange {
        key: &'a [u8],
        start: i64,
        stop: i64,
    },
    LLen(&'a [u8]),
    LIndex {
        key: &'a [u8],
        index: i64,
    },
    LSet {
        key: &'a [u8],
        index: i64,
        elem: &'a [u8],
    },
    LRem {
        key: &'a [u8],
        count: i64,
        elem: &'a [u8],
    },
    LTrim {
        key: &'a [u8],
        start: i64,
        stop: i64,
    },
    // Sets.
    SAdd {
        key: &'a [u8],
        members: Args<'a>,
    },
    SRem {
        key: &'a [u8],
        members: Args<'a>,
    },
    SMembers(&'a [u8]),
    SIsMember {
        key: &'a [u8],
        member: &'a [u8],
    },
    SMIsMember {
        key: &'a [u8],
        members: Args<'a>,
    },
    SCard(&'a [u8]),
    SPop {
        key: &'a [u8],
        count: Option<u64>,
    },
    SRandMember {
        key: &'a [u8],
        count: Option<i64>,
    },
    SScan(CollScan<'a>),
    // Access control.
    /// `ACL WHOAMI`, `ACL HELP`.
    Acl(AclCommand),
    // Introspection.
    /// `DEBUG DIGEST`: a digest of the visible data set.
    DebugDigest,
}

impl<'a> Command<'a> {
    /// The access a command needs.
    pub fn required_access(&self) -> RedisAccess {
        use Command as C;
        match self {
            C::Config(_) => RedisAccess::Admin,
            // Redis's @admin: other users' connections.
            C::Client(ClientCommand::List(_) | ClientCommand::Kill(_)) => RedisAccess::Admin,
            C::Wait(_) => RedisAccess::ReadWrite,
            c if c.is_write() => RedisAccess::ReadWrite,
            c if c.reads_data() => RedisAccess::ReadOnly,
            C::Info(_) | C::DebugDigest => RedisAccess::ReadOnly,
            _ => RedisAccess::None,
        }
    }

    /// Whether it writes: it inserts WAL, is refused on a standby, and does
    /// not wait for the connection's earlier writes (every other command
    /// does, so a client reads its own writes and is never told "OK" for a
    /// write that has not met its level).
    pub fn is_write(&self) -> bool {
        use Command::*;
        matches!(
            self,
            Set(_)
                | SetNx { .. }
                | MSet(_)
                | IncrBy { .. }
                | Append { .. }
                | GetSet { .. }
                | GetDel(_)
                | GetEx(_)
                | Del(_)
                | Unlink(_)
                | Rename { .. }
                | Flush
                | Expire(_)
                | Persist(_)
                | HSet { .. }
                | HSetNx { .. }
                | HDel { .. }
                | HIncrBy { .. }
                | Push { .. }
                | Pop { .. }
                | LSet { .. }
                | LRem { .. }
                | LTrim { .. }
                | SAdd { .. }
                | SRem { .. }
                | SPop { .. }
        )
    }

    /// Whether it reads the data: refused (LOADING) while a standby is not
    /// yet consistent.
    pub fn reads_data(&self) -> bool {
        use Command::*;
        matches!(
            self,
            Get(_)
                | MGet(_)
                | Strlen(_)
                | Exists(_)
                | DbSize
                | Type(_)
                | Keys(_)
                | Scan(_)
                | Ttl(_)
                | HGet { .. }
                | HMGet { .. }
                | HGetAll(_)
                | HKeys(_)
                | HVals(_)
                | HLen(_)
                | HExists { .. }
                | HStrlen { .. }
                | HScan(_)
                | LRange { .. }
                | LLen(_)
                | LIndex { .. }
                | SMembers(_)
                | SIsMember { .. }
                | SMIsMember { .. }
                | SCard(_)
                | SRandMember { .. }
                | SScan(_)
                | Watch(_)
        )
    }

    /// The keys it names (WATCH, `COMMAND GETKEYS`). KEYS and SCAN name
    /// patterns, not keys.
    pub fn keys(&self) -> KeyArgs<'a> {
        use Command::*;
        match *self {
            Get(k)
            | Set(strings::Set { key: k, .. })
            | SetNx { key: k, .. }
            | IncrBy { key: k, .. }
            | Append { key: k, .. }
            | Strlen(k)
            | Type(k)
            | GetSet { key: k, .. }
            | GetDel(k)
            | GetEx(strings::GetEx { key: k, .. })
            | Expire(keyspace::ExpireCmd { key: k, .. })
            | Ttl(keyspace::TtlQuery { key: k, .. })
            | Persist(k) => KeyArgs::one(k),
            HSet { key: k, .. }
            | HSetNx { key: k, .. }
            | HGet { key: k, .. }
            | HMGet { key: k, .. }
            | HDel { key: k, .. }
            | HGetAll(k)
            | HKeys(k)
            | HVals(k)
            | HLen(k)
            | HExists { key: k, .. }
            | HIncrBy { key: k, .. }
            | HStrlen { key: k, .. }
            | HScan(parse::CollScan { key: k, .. }) => KeyArgs::one(k),
            Push { key: k, .. }
            | Pop { key: k, .. }
            | LRange { key: k, .. }
            | LLen(k)
            | LIndex { key: k, .. }
            | LSet { key: k, .. }
            | LRem { key: k, .. }
            | LTrim { key: k, .. } => KeyArgs::one(k),
            SAdd { key: k, .. }
            | SRem { key: k, .. }
            | SMembers(k)
            | SIsMember { key: k, .. }
            | SMIsMember { key: k, .. }
            | SCard(k)
            | SPop { key: k, .. }
            | SRandMember { key: k, .. }
            | SScan(parse::CollScan { key: k, .. }) => KeyArgs::one(k),
            Rename { from, to, .. } => KeyArgs::two(from, to),
            MGet(keys) | Exists(keys) | Del(keys) | Unlink(keys) | Watch(keys) => {
                KeyArgs::every(keys, 1)
            }
            MSet(pairs) => KeyArgs::every(pairs, 2),
            _ => KeyArgs::every(&[], 1),
        }
    }
}

/// The keys of a command, in argument order (an iterator, so no list is
/// built to answer the question).
#[derive(Debug, Clone)]
pub struct KeyArgs<'a> {
    one: Option<&'a [u8]>,
    two: Option<&'a [u8]>,
    rest: Args<'a>,
    step: usize,
}

impl<'a> KeyArgs<'a> {
    fn one(key: &'a [u8]) -> KeyArgs<'a> {
        KeyArgs {
            one: Some(key),
            two: None,
            rest: &[],
            step: 1,
        }
    }

    fn two(a: &'a [u8], b: &'a [u8]) -> KeyArgs<'a> {
        KeyArgs {
            two: Some(b),
            ..KeyArgs::one(a)
        }
    }

    fn every(args: Args<'a>, step: usize) -> KeyArgs<'a> {
        KeyArgs {
            one: None,
            two: None,
            rest: args,
            step,
        }
    }
}

impl<'a> Iterator for KeyArgs<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if let Some(k) = self.one.take().or_else(|| self.two.take()) {
            return Some(k);
        }
        let (first, _) = self.rest.split_first()?;
        self.rest = self.rest.get(self.step..).unwrap_or(&[]);
        Some(first)
    }
}

#[cfg(test)]
mod tests;
