//! Redis commands, parsed into a [`Command`] before anything runs: the
//! parser does every arity and syntax check and answers with Redis's error
//! texts, so an executor only ever sees a well-formed command.
//!
//! # Layout
//! - this file: [`Command`], [`Command::from_frame`] (name to parser), and
//!   what the connection and executor ask of a command: is it a write,
//!   does it read data, which keys does it touch.
//! - [`parse`]: shared helpers (name lookup on the stack, arity, integers).
//! - [`error`]: [`CommandError`], Redis's error texts.
//! - [`exec`]: [`execute`]: rules around every command (LOADING while a
//!   standby recovers) and the write path (READONLY on a standby).
//! - one file per family, with its parsers and executors: [`strings`],
//!   [`keyspace`], [`connection`], [`admin`], [`auth`] (AUTH, ACL, and
//!   who may run what).
//! - [`glob`]: Redis's glob patterns; [`scan`]: SCAN's cursor table.
//!
//! Adding a command: a variant here (and its arm in `is_write`,
//! `reads_data`, `keys`), a name in [`Command::from_frame`] and [`NAMES`],
//! a parser and an executor in its family, a line in
//! docs/redis-commands.md.

pub mod admin;
pub mod auth;
pub mod connection;
pub mod debug;
pub mod error;
pub mod exec;
pub mod glob;
pub mod keyspace;
pub mod parse;
pub mod scan;
pub mod strings;

pub use admin::{ConfigChange, Wait, WaitRequest};
pub use auth::AclCommand;
pub use connection::{ClientCommand, Hello};
pub use error::CommandError;
pub use exec::Flow;
pub use keyspace::Scan;
pub use strings::Set;

/// A request's arguments, the command name first, borrowed from the
/// connection's input buffer.
pub type Args<'a> = &'a [&'a [u8]];

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
    Client(ClientCommand<'a>),
    // Server.
    /// `INFO [section...]`.
    Info(Args<'a>),
    /// `CONFIG GET pattern...`.
    ConfigGet(Args<'a>),
    ConfigSet(ConfigChange),
    ConfigHelp,
    Wait(Wait),
    /// `COMMAND COUNT`.
    CountCommands,
    /// Any other form of `COMMAND` (redis-cli asks for `COMMAND DOCS` at
    /// start-up): answered with an empty list, so clients go without hints.
    DescribeCommands,
    /// `DEBUG DIGEST`: a digest of the visible data set.
    DebugDigest,
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
    // Keyspace.
    Exists(Args<'a>),
    Del(Args<'a>),
    Unlink(Args<'a>),
    DbSize,
    Type(&'a [u8]),
    /// `KEYS pattern`.
    Keys(&'a [u8]),
    Scan(Scan<'a>),
    // Authentication.
    /// `AUTH [username] password`.
    Auth {
        user: Option<&'a [u8]>,
        password: &'a [u8],
    },
    Acl(AclCommand),
}

/// Every command name walrep knows (COMMAND COUNT, tests, docs).
pub const NAMES: &[&str] = &[
    "ping", "echo", "quit", "select", "hello", "client", "info", "config", "wait", "command",
    "get", "mget", "set", "setnx", "mset", "incr", "decr", "incrby", "decrby", "append", "strlen",
    "exists", "del", "unlink", "dbsize", "type", "keys", "scan", "auth", "acl", "debug",
];

impl<'a> Command<'a> {
    /// Parse a request: `args[0]` is the name. (The connection skips an
    /// empty request, as Redis does; here it is a syntax error.)
    pub fn from_frame(args: Args<'a>) -> Result<Command<'a>, CommandError> {
        let first = args.first().ok_or(CommandError::Syntax)?;
        let mut buf = [0u8; parse::MAX_NAME_LEN];
        let Some(name) = parse::lower_name(first, &mut buf) else {
            return Err(parse::unknown_command(args));
        };
        let a = |n: &'static str, arity: i32| parse::arity(args, n, arity);
        Ok(match name {
            "get" => Command::Get(a("get", 2)?[1]),
            "set" => Command::Set(strings::parse_set(a("set", -3)?)?),
            "mget" => Command::MGet(&a("mget", -2)?[1..]),
            "mset" => Command::MSet(strings::parse_pairs(a("mset", -3)?)?),
            "setnx" => {
                let a = a("setnx", 3)?;
                Command::SetNx {
                    key: a[1],
                    value: a[2],
                }
            }
            "incr" => strings::parse_incr(a("incr", 2)?, 1),
            "decr" => strings::parse_incr(a("decr", 2)?, -1),
            "incrby" => strings::parse_incr_by(a("incrby", 3)?, false)?,
            "decrby" => strings::parse_incr_by(a("decrby", 3)?, true)?,
            "append" => {
                let a = a("append", 3)?;
                Command::Append {
                    key: a[1],
                    value: a[2],
                }
            }
            "strlen" => Command::Strlen(a("strlen", 2)?[1]),
            "exists" => Command::Exists(&a("exists", -2)?[1..]),
            "del" => Command::Del(&a("del", -2)?[1..]),
            "unlink" => Command::Unlink(&a("unlink", -2)?[1..]),
            "dbsize" => a("dbsize", 1).map(|_| Command::DbSize)?,
            "type" => Command::Type(a("type", 2)?[1]),
            "keys" => Command::Keys(a("keys", 2)?[1]),
            "scan" => Command::Scan(keyspace::parse_scan(a("scan", -2)?)?),
            "ping" => connection::parse_ping(args)?,
            "echo" => Command::Echo(a("echo", 2)?[1]),
            "quit" => Command::Quit,
            "select" => connection::parse_select(a("select", 2)?)?,
            "hello" => Command::Hello(connection::parse_hello(args)?),
            "client" => Command::Client(connection::parse_client(a("client", -2)?)?),
            "info" => Command::Info(&args[1..]),
            "config" => admin::parse_config(a("config", -2)?)?,
            "wait" => Command::Wait(admin::parse_wait(a("wait", 3)?)?),
            "command" => admin::parse_command(args)?,
            "auth" => auth::parse_auth(args)?,
            "acl" => auth::parse_acl(a("acl", -2)?)?,
            "debug" => debug::parse_debug(a("debug", -2)?)?,
            _ => return Err(parse::unknown_command(args)),
        })
    }

    /// Whether it writes: it inserts WAL, is refused on a standby, and does
    /// not wait for the connection's earlier writes (every other command
    /// does, so a client reads its own writes and is never told "OK" for a
    /// write that has not met its level).
    pub fn is_write(&self) -> bool {
        use Command::*;
        matches!(
            self,
            Set(_) | SetNx { .. } | MSet(_) | IncrBy { .. } | Append { .. } | Del(_) | Unlink(_)
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
                | Exists(_)
                | DbSize
                | Strlen(_)
                | Type(_)
                | Keys(_)
                | Scan(_)
                | DebugDigest
        )
    }

    /// The keys it names (what WATCH, MULTI and key-based routing look
    /// at). KEYS and SCAN name patterns, not keys. Transactions are its
    /// first user outside the tests.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn keys(&self) -> KeyArgs<'a> {
        use Command::*;
        match *self {
            Get(k)
            | Set(strings::Set { key: k, .. })
            | SetNx { key: k, .. }
            | IncrBy { key: k, .. } => KeyArgs::one(k),
            Append { key: k, .. } | Strlen(k) | Type(k) => KeyArgs::one(k),
            MGet(keys) | Exists(keys) | Del(keys) | Unlink(keys) => KeyArgs::every(keys, 1),
            MSet(pairs) => KeyArgs::every(pairs, 2),
            _ => KeyArgs::every(&[], 1),
        }
    }
}

/// The keys of a command, in argument order (an iterator, so no list is
/// built to answer the question).
#[derive(Debug, Clone)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct KeyArgs<'a> {
    one: Option<&'a [u8]>,
    rest: Args<'a>,
    step: usize,
}

#[cfg_attr(not(test), allow(dead_code))]
impl<'a> KeyArgs<'a> {
    fn one(key: &'a [u8]) -> KeyArgs<'a> {
        KeyArgs {
            one: Some(key),
            rest: &[],
            step: 1,
        }
    }

    fn every(args: Args<'a>, step: usize) -> KeyArgs<'a> {
        KeyArgs {
            one: None,
            rest: args,
            step,
        }
    }
}

impl<'a> Iterator for KeyArgs<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if let Some(k) = self.one.take() {
            return Some(k);
        }
        let (first, _) = self.rest.split_first()?;
        self.rest = self.rest.get(self.step..).unwrap_or(&[]);
        Some(first)
    }
}

#[cfg(test)]
mod tests;
