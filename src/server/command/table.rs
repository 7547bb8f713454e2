//! The command table: every command walrep answers, with its arity, its
//! parser and what `COMMAND INFO` and `COMMAND DOCS` say of it (redis-cli
//! builds its hints from the latter), and the command families walrep
//! refuses with one clear error.

use super::keyspace::TtlQuery;
use super::parse::{self, unknown_command};
use super::{admin, auth, connection, debug, hashes, keyspace, sets, strings};
use super::{Args, Command, CommandError};
use crate::server::protocol::reply::Reply;

impl<'a> Command<'a> {
    /// Parse a request: `args[0]` is the name. (The connection skips an
    /// empty request, as Redis does; here it is a syntax error.)
    pub fn from_frame(args: Args<'a>) -> Result<Command<'a>, CommandError> {
        let first = args.first().ok_or(CommandError::Syntax)?;
        let mut buf = [0u8; parse::MAX_NAME_LEN];
        let Some(name) = parse::lower_name(first, &mut buf) else {
            return Err(parse::unknown_command(args));
        };
        let spec = find(name).ok_or_else(|| refuse(name, args))?;
        let args = parse::arity(args, spec.arity_name(), spec.arity)?;
        (spec.parse)(args)
    }
}

/// One command.
pub struct Spec {
    /// Lower case, as `COMMAND` lists it.
    pub name: &'static str,
    /// Redis's arity: exact argument count (name included) when positive,
    /// the least when negative.
    pub arity: i32,
    /// `COMMAND INFO`'s flags, space-separated.
    pub flags: &'static str,
    /// First key, last key (negative: from the end), step.
    pub keys: (i32, i32, i32),
    pub group: &'static str,
    pub since: &'static str,
    pub summary: &'static str,
    /// The arguments in Redis's documentation syntax (`key [NX|XX]`,
    /// `(field value)...`, `name:type`), turned into `COMMAND DOCS`.
    pub syntax: &'static str,
    pub parse: for<'a> fn(Args<'a>) -> Result<Command<'a>, CommandError>,
}

impl Spec {
    /// The name arity errors use.
    pub fn arity_name(&self) -> &'static str {
        self.name
    }
}

/// Every command, in name order (looked up by binary search).
pub static TABLE: &[Spec] = &[
    Spec {
        name: "acl",
        arity: -2,
        flags: "",
        keys: (0, 0, 0),
        group: "server",
        since: "6.0.0",
        summary: "A container for Access List Control commands.",
        syntax: "subcommand [arg ...]",
        parse: |a| auth::parse_acl(a).map(Command::Acl),
    },
    Spec {
        name: "append",
        arity: 3,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "string",
        since: "2.0.0",
        summary: "Appends a string to the value of a key. Creates the key if it doesn't exist.",
        syntax: "key value",
        parse: |a| Ok(Command::Append { key: a[1], value: a[2] }),
    },
    Spec {
        name: "auth",
        arity: -2,
        flags: "noscript loading stale fast no-auth",
        keys: (0, 0, 0),
        group: "connection",
        since: "1.0.0",
        summary: "Authenticates the connection.",
        syntax: "[username] password",
        parse: |a| auth::parse_auth(a).map(|(user, password)| Command::Auth { user, password }),
    },
    Spec {
        name: "client",
        arity: -2,
        flags: "",
        keys: (0, 0, 0),
        group: "connection",
        since: "2.4.0",
        summary: "A container for client connection commands.",
        syntax: "subcommand [arg ...]",
        parse: |a| connection::parse_client(a).map(Command::Client),
    },
    Spec {
        name: "command",
        arity: -1,
        flags: "loading stale",
        keys: (0, 0, 0),
        group: "server",
        since: "2.8.13",
        summary: "Returns detailed information about all commands.",
        syntax: "[subcommand [arg ...]]",
        parse: |a| admin::parse_command(a).map(Command::Commands),
    },
    Spec {
        name: "config",
        arity: -2,
        flags: "",
        keys: (0, 0, 0),
        group: "server",
        since: "2.0.0",
        summary: "A container for server configuration commands.",
        syntax: "subcommand [arg ...]",
        parse: |a| admin::parse_config(a).map(Command::Config),
    },
    Spec {
        name: "dbsize",
        arity: 1,
        flags: "readonly fast",
        keys: (0, 0, 0),
        group: "server",
        since: "1.0.0",
        summary: "Returns the number of keys in the database.",
        syntax: "",
        parse: |_| Ok(Command::DbSize),
    },
    Spec {
        name: "debug",
        arity: -2,
        flags: "admin noscript loading stale",
        keys: (0, 0, 0),
        group: "server",
        since: "1.0.0",
        summary: "A container for debugging commands (walrep: DIGEST only).",
        syntax: "subcommand [arg ...]",
        parse: |a| debug::parse_debug(a).map(|()| Command::DebugDigest),
    },
    Spec {
        name: "decr",
        arity: 2,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "string",
        since: "1.0.0",
        summary: "Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.",
        syntax: "key",
        parse: |a| Ok(Command::IncrBy { key: a[1], by: -1 }),
    },
    Spec {
        name: "decrby",
        arity: 3,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "string",
        since: "1.0.0",
        summary: "Decrements a number from the integer value of a key. Uses 0 as initial value if the key doesn't exist.",
        syntax: "key decrement:integer",
        parse: |a| Ok(Command::IncrBy { key: a[1], by: strings::parse_incr_by(a[2], true)? }),
    },
    Spec {
        name: "del",
        arity: -2,
        flags: "write",
        keys: (1, -1, 1),
        group: "generic",
        since: "1.0.0",
        summary: "Deletes one or more keys.",
        syntax: "key...",
        parse: |a| Ok(Command::Del(&a[1..])),
    },
    Spec {
        name: "discard",
        arity: 1,
        flags: "noscript loading stale fast allow-busy",
        keys: (0, 0, 0),
        group: "transactions",
        since: "2.0.0",
        summary: "Discards a transaction.",
        syntax: "",
        parse: |_| Ok(Command::Discard),
    },
    Spec {
        name: "echo",
        arity: 2,
        flags: "fast",
        keys: (0, 0, 0),
        group: "connection",
        since: "1.0.0",
        summary: "Returns the given string.",
        syntax: "message",
        parse: |a| Ok(Command::Echo(a[1])),
    },
    Spec {
        name: "exec",
        arity: 1,
        flags: "noscript loading stale skip-slowlog",
        keys: (0, 0, 0),
        group: "transactions",
        since: "1.2.0",
        summary: "Executes all commands in a transaction.",
        syntax: "",
        parse: |_| Ok(Command::Exec),
    },
    Spec {
        name: "exists",
        arity: -2,
        flags: "readonly fast",
        keys: (1, -1, 1),
        group: "generic",
        since: "1.0.0",
        summary: "Determines whether one or more keys exist.",
        syntax: "key...",
        parse: |a| Ok(Command::Exists(&a[1..])),
    },
    Spec {
        name: "expire",
        arity: -3,
        flags: "write fast",
        keys: (1, 1, 1),
        group: "generic",
        since: "1.0.0",
        summary: "Sets the expiration time of a key in seconds.",
        syntax: "key seconds:integer [NX|XX|GT|LT]",
        parse: |a| keyspace::parse_expire(a, "expire", false, false).map(Command::Expire),
    },
    Spec {
        name: "expireat",
        arity: -3,
        flags: "write fast",
        keys: (1, 1, 1),
        group: "generic",
        since: "1.2.0",
        summary: "Sets the expiration time of a key to a Unix timestamp.",
        syntax: "key unix-time-seconds:unix-time [NX|XX|GT|LT]",
        parse: |a| keyspace::parse_expire(a, "expireat", false, true).map(Command::Expire),
    },
    Spec {
        name: "expiretime",
        arity: 2,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "generic",
        since: "7.0.0",
        summary: "Returns the expiration time of a key as a Unix timestamp.",
        syntax: "key",
        parse: |a| Ok(Command::Ttl(TtlQuery { key: a[1], ms: false, absolute: true })),
    },
    Spec {
        name: "flushall",
        arity: -1,
        flags: "write",
        keys: (0, 0, 0),
        group: "server",
        since: "1.0.0",
        summary: "Removes all keys from all databases.",
        syntax: "[ASYNC|SYNC]",
        parse: |a| keyspace::parse_flush(a).map(|()| Command::Flush),
    },
    Spec {
        name: "flushdb",
        arity: -1,
        flags: "write",
        keys: (0, 0, 0),
        group: "server",
        since: "1.0.0",
        summary: "Remove all keys from the current database.",
        syntax: "[ASYNC|SYNC]",
        parse: |a| keyspace::parse_flush(a).map(|()| Command::Flush),
    },
    Spec {
        name: "get",
        arity: 2,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "string",
        since: "1.0.0",
        summary: "Returns the string value of a key.",
        syntax: "key",
        parse: |a| Ok(Command::Get(a[1])),
    },
    Spec {
        name: "getdel",
        arity: 2,
        flags: "write fast",
        keys: (1, 1, 1),
        group: "string",
        since: "6.2.0",
        summary: "Returns the string value of a key after deleting the key.",
        syntax: "key",
        parse: |a| Ok(Command::GetDel(a[1])),
    },
    Spec {
        name: "getex",
        arity: -2,
        flags: "write fast",
        keys: (1, 1, 1),
        group: "string",
        since: "6.2.0",
        summary: "Returns the string value of a key after setting its expiration time.",
        syntax: "key [EX seconds:integer|PX milliseconds:integer|EXAT unix-time-seconds:unix-time|PXAT unix-time-milliseconds:unix-time|PERSIST]",
        parse: |a| strings::parse_getex(a).map(Command::GetEx),
    },
    Spec {
        name: "getset",
        arity: 3,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "string",
        since: "1.0.0",
        summary: "Returns the previous string value of a key after setting it to a new value.",
        syntax: "key value",
        parse: |a| Ok(Command::GetSet { key: a[1], value: a[2] }),
    },
    Spec {
        name: "hdel",
        arity: -3,
        flags: "write fast",
        keys: (1, 1, 1),
        group: "hash",
        since: "2.0.0",
        summary: "Deletes one or more fields and their values from a hash. Deletes the hash if no fields remain.",
        syntax: "key field...",
        parse: |a| Ok(Command::HDel { key: a[1], fields: &a[2..] }),
    },
    Spec {
        name: "hello",
        arity: -1,
        flags: "noscript loading stale fast no-auth",
        keys: (0, 0, 0),
        group: "connection",
        since: "6.0.0",
        summary: "Handshakes with the Redis server.",
        syntax: "[protover:integer [AUTH username password] [SETNAME clientname]]",
        parse: |a| connection::parse_hello(a).map(Command::Hello),
    },
    Spec {
        name: "hexists",
        arity: 3,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "hash",
        since: "2.0.0",
        summary: "Determines whether a field exists in a hash.",
        syntax: "key field",
        parse: |a| Ok(Command::HExists { key: a[1], field: a[2] }),
    },
    Spec {
        name: "hget",
        arity: 3,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "hash",
        since: "2.0.0",
        summary: "Returns the value of a field in a hash.",
        syntax: "key field",
        parse: |a| Ok(Command::HGet { key: a[1], field: a[2] }),
    },
    Spec {
        name: "hgetall",
        arity: 2,
        flags: "readonly",
        keys: (1, 1, 1),
        group: "hash",
        since: "2.0.0",
        summary: "Returns all fields and values in a hash.",
        syntax: "key",
        parse: |a| Ok(Command::HGetAll(a[1])),
    },
    Spec {
        name: "hincrby",
        arity: 4,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "hash",
        since: "2.0.0",
        summary: "Increments the integer value of a field in a hash by a number. Uses 0 as initial value if the field doesn't exist.",
        syntax: "key field increment:integer",
        parse: |a| Ok(Command::HIncrBy { key: a[1], field: a[2], by: parse::int(a[3])? }),
    },
    Spec {
        name: "hkeys",
        arity: 2,
        flags: "readonly",
        keys: (1, 1, 1),
        group: "hash",
        since: "2.0.0",
        summary: "Returns all fields in a hash.",
        syntax: "key",
        parse: |a| Ok(Command::HKeys(a[1])),
    },
    Spec {
        name: "hlen",
        arity: 2,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "hash",
        since: "2.0.0",
        summary: "Returns the number of fields in a hash.",
        syntax: "key",
        parse: |a| Ok(Command::HLen(a[1])),
    },
    Spec {
        name: "hmget",
        arity: -3,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "hash",
        since: "2.0.0",
        summary: "Returns the values of all fields in a hash.",
        syntax: "key field...",
        parse: |a| Ok(Command::HMGet { key: a[1], fields: &a[2..] }),
    },
    Spec {
        name: "hmset",
        arity: -4,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "hash",
        since: "2.0.0",
        summary: "Sets the values of multiple fields.",
        syntax: "key (field value)...",
        parse: |a| Ok(Command::HSet { key: a[1], pairs: hashes::parse_hset_pairs(a, "hmset")?, ok: true }),
    },
    Spec {
        name: "hscan",
        arity: -3,
        flags: "readonly",
        keys: (1, 1, 1),
        group: "hash",
        since: "2.8.0",
        summary: "Iterates over fields and values of a hash.",
        syntax: "key cursor:integer [MATCH pattern:pattern] [COUNT count:integer] [NOVALUES]",
        parse: |a| parse::coll_scan(a, true).map(Command::HScan),
    },
    Spec {
        name: "hset",
        arity: -4,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "hash",
        since: "2.0.0",
        summary: "Creates or modifies the value of a field in a hash.",
        syntax: "key (field value)...",
        parse: |a| Ok(Command::HSet { key: a[1], pairs: hashes::parse_hset_pairs(a, "hset")?, ok: false }),
    },
    Spec {
        name: "hsetnx",
        arity: 4,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "hash",
        since: "2.0.0",
        summary: "Sets the value of a field in a hash only when the field doesn't exist.",
        syntax: "key field value",
        parse: |a| Ok(Command::HSetNx { key: a[1], field: a[2], value: a[3] }),
    },
    Spec {
        name: "hstrlen",
        arity: 3,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "hash",
        since: "3.2.0",
        summary: "Returns the length of the value of a field.",
        syntax: "key field",
        parse: |a| Ok(Command::HStrlen { key: a[1], field: a[2] }),
    },
    Spec {
        name: "hvals",
        arity: 2,
        flags: "readonly",
        keys: (1, 1, 1),
        group: "hash",
        since: "2.0.0",
        summary: "Returns all values in a hash.",
        syntax: "key",
        parse: |a| Ok(Command::HVals(a[1])),
    },
    Spec {
        name: "incr",
        arity: 2,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "string",
        since: "1.0.0",
        summary: "Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.",
        syntax: "key",
        parse: |a| Ok(Command::IncrBy { key: a[1], by: 1 }),
    },
    Spec {
        name: "incrby",
        arity: 3,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "string",
        since: "1.0.0",
        summary: "Increments the integer value of a key by a number. Uses 0 as initial value if the key doesn't exist.",
        syntax: "key increment:integer",
        parse: |a| Ok(Command::IncrBy { key: a[1], by: strings::parse_incr_by(a[2], false)? }),
    },
    Spec {
        name: "info",
        arity: -1,
        flags: "loading stale",
        keys: (0, 0, 0),
        group: "server",
        since: "1.0.0",
        summary: "Returns information and statistics about the server.",
        syntax: "[section...]",
        parse: |a| Ok(Command::Info(&a[1..])),
    },
    Spec {
        name: "keys",
        arity: 2,
        flags: "readonly",
        keys: (0, 0, 0),
        group: "generic",
        since: "1.0.0",
        summary: "Returns all key names that match a pattern.",
        syntax: "pattern:pattern",
        parse: |a| Ok(Command::Keys(a[1])),
    },
    Spec {
        name: "lindex",
        arity: 3,
        flags: "readonly",
        keys: (1, 1, 1),
        group: "list",
        since: "1.0.0",
        summary: "Returns an element from a list by its index.",
        syntax: "key index:integer",
        parse: |a| Ok(Command::LIndex { key: a[1], index: parse::int(a[2])? }),
    },
    Spec {
        name: "llen",
        arity: 2,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "list",
        since: "1.0.0",
        summary: "Returns the length of a list.",
        syntax: "key",
        parse: |a| Ok(Command::LLen(a[1])),
    },
    Spec {
        name: "lpop",
        arity: -2,
        flags: "write fast",
        keys: (1, 1, 1),
        group: "list",
        since: "1.0.0",
        summary: "Returns the first elements in a list after removing it. Deletes the list if the last element was popped.",
        syntax: "key [count:integer]",
        parse: |a| Ok(Command::Pop { key: a[1], count: parse::pop_count(a)?, front: true }),
    },
    Spec {
        name: "lpush",
        arity: -3,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "list",
        since: "1.0.0",
        summary: "Prepends one or more elements to a list. Creates the key if it doesn't exist.",
        syntax: "key element...",
        parse: |a| Ok(Command::Push { key: a[1], elems: &a[2..], front: true, only_existing: false }),
    },
    Spec {
        name: "lpushx",
        arity: -3,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "list",
        since: "2.2.0",
        summary: "Prepends one or more elements to a list only when the list exists.",
        syntax: "key element...",
        parse: |a| Ok(Command::Push { key: a[1], elems: &a[2..], front: true, only_existing: true }),
    },
    Spec {
        name: "lrange",
        arity: 4,
        flags: "readonly",
        keys: (1, 1, 1),
        group: "list",
        since: "1.0.0",
        summary: "Returns a range of elements from a list.",
        syntax: "key start:integer stop:integer",
        parse: |a| Ok(Command::LRange { key: a[1], start: parse::int(a[2])?, stop: parse::int(a[3])? }),
    },
    Spec {
        name: "lrem",
        arity: 4,
        flags: "write",
        keys: (1, 1, 1),
        group: "list",
        since: "1.0.0",
        summary: "Removes elements from a list. Deletes the list if the last element was removed.",
        syntax: "key count:integer element",
        parse: |a| Ok(Command::LRem { key: a[1], count: parse::int(a[2])?, elem: a[3] }),
    },
    Spec {
        name: "lset",
        arity: 4,
        flags: "write denyoom",
        keys: (1, 1, 1),
        group: "list",
        since: "1.0.0",
        summary: "Sets the value of an element in a list by its index.",
        syntax: "key index:integer element",
        parse: |a| Ok(Command::LSet { key: a[1], index: parse::int(a[2])?, elem: a[3] }),
    },
    Spec {
        name: "ltrim",
        arity: 4,
        flags: "write",
        keys: (1, 1, 1),
        group: "list",
        since: "1.0.0",
        summary: "Removes elements from both ends a list. Deletes the list if all elements were trimmed.",
        syntax: "key start:integer stop:integer",
        parse: |a| Ok(Command::LTrim { key: a[1], start: parse::int(a[2])?, stop: parse::int(a[3])? }),
    },
    Spec {
        name: "mget",
        arity: -2,
        flags: "readonly fast",
        keys: (1, -1, 1),
        group: "string",
        since: "1.0.0",
        summary: "Atomically returns the string values of one or more keys.",
        syntax: "key...",
        parse: |a| Ok(Command::MGet(&a[1..])),
    },
    Spec {
        name: "mset",
        arity: -3,
        flags: "write denyoom",
        keys: (1, -1, 2),
        group: "string",
        since: "1.0.1",
        summary: "Atomically creates or modifies the string values of one or more keys.",
        syntax: "(key value)...",
        parse: |a| strings::parse_pairs(a, "mset").map(Command::MSet),
    },
    Spec {
        name: "multi",
        arity: 1,
        flags: "noscript loading stale fast allow-busy",
        keys: (0, 0, 0),
        group: "transactions",
        since: "1.2.0",
        summary: "Starts a transaction.",
        syntax: "",
        parse: |_| Ok(Command::Multi),
    },
    Spec {
        name: "persist",
        arity: 2,
        flags: "write fast",
        keys: (1, 1, 1),
        group: "generic",
        since: "2.2.0",
        summary: "Removes the expiration time of a key.",
        syntax: "key",
        parse: |a| Ok(Command::Persist(a[1])),
    },
    Spec {
        name: "pexpire",
        arity: -3,
        flags: "write fast",
        keys: (1, 1, 1),
        group: "generic",
        since: "2.6.0",
        summary: "Sets the expiration time of a key in milliseconds.",
        syntax: "key milliseconds:integer [NX|XX|GT|LT]",
        parse: |a| keyspace::parse_expire(a, "pexpire", true, false).map(Command::Expire),
    },
    Spec {
        name: "pexpireat",
        arity: -3,
        flags: "write fast",
        keys: (1, 1, 1),
        group: "generic",
        since: "2.6.0",
        summary: "Sets the expiration time of a key to a Unix milliseconds timestamp.",
        syntax: "key unix-time-milliseconds:unix-time [NX|XX|GT|LT]",
        parse: |a| keyspace::parse_expire(a, "pexpireat", true, true).map(Command::Expire),
    },
    Spec {
        name: "pexpiretime",
        arity: 2,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "generic",
        since: "7.0.0",
        summary: "Returns the expiration time of a key as a Unix milliseconds timestamp.",
        syntax: "key",
        parse: |a| Ok(Command::Ttl(TtlQuery { key: a[1], ms: true, absolute: true })),
    },
    Spec {
        name: "ping",
        arity: -1,
        flags: "fast",
        keys: (0, 0, 0),
        group: "connection",
        since: "1.0.0",
        summary: "Returns the server's liveliness response.",
        syntax: "[message]",
        parse: |a| connection::parse_ping(a).map(Command::Ping),
    },
    Spec {
        name: "psetex",
        arity: 4,
        flags: "write denyoom",
        keys: (1, 1, 1),
        group: "string",
        since: "2.6.0",
        summary: "Sets both string value and expiration time in milliseconds of a key. The key is created if it doesn't exist.",
        syntax: "key milliseconds:integer value",
        parse: |a| strings::parse_setex(a, "px", "psetex").map(Command::Set),
    },
    Spec {
        name: "pttl",
        arity: 2,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "generic",
        since: "2.6.0",
        summary: "Returns the expiration time in milliseconds of a key.",
        syntax: "key",
        parse: |a| Ok(Command::Ttl(TtlQuery { key: a[1], ms: true, absolute: false })),
    },
    Spec {
        name: "quit",
        arity: -1,
        flags: "noscript loading stale fast no-auth allow-busy",
        keys: (0, 0, 0),
        group: "connection",
        since: "1.0.0",
        summary: "Closes the connection.",
        syntax: "",
        parse: |_| Ok(Command::Quit),
    },
    Spec {
        name: "rename",
        arity: 3,
        flags: "write",
        keys: (1, 2, 1),
        group: "generic",
        since: "1.0.0",
        summary: "Renames a key and overwrites the destination.",
        syntax: "key newkey:key",
        parse: |a| Ok(Command::Rename { from: a[1], to: a[2], nx: false }),
    },
    Spec {
        name: "renamenx",
        arity: 3,
        flags: "write fast",
        keys: (1, 2, 1),
        group: "generic",
        since: "1.0.0",
        summary: "Renames a key only when the target key name doesn't exist.",
        syntax: "key newkey:key",
        parse: |a| Ok(Command::Rename { from: a[1], to: a[2], nx: true }),
    },
    Spec {
        name: "rpop",
        arity: -2,
        flags: "write fast",
        keys: (1, 1, 1),
        group: "list",
        since: "1.0.0",
        summary: "Returns and removes the last elements of a list. Deletes the list if the last element was popped.",
        syntax: "key [count:integer]",
        parse: |a| Ok(Command::Pop { key: a[1], count: parse::pop_count(a)?, front: false }),
    },
    Spec {
        name: "rpush",
        arity: -3,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "list",
        since: "1.0.0",
        summary: "Appends one or more elements to a list. Creates the key if it doesn't exist.",
        syntax: "key element...",
        parse: |a| Ok(Command::Push { key: a[1], elems: &a[2..], front: false, only_existing: false }),
    },
    Spec {
        name: "rpushx",
        arity: -3,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "list",
        since: "2.2.0",
        summary: "Appends an element to a list only when the list exists.",
        syntax: "key element...",
        parse: |a| Ok(Command::Push { key: a[1], elems: &a[2..], front: false, only_existing: true }),
    },
    Spec {
        name: "sadd",
        arity: -3,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "set",
        since: "1.0.0",
        summary: "Adds one or more members to a set. Creates the key if it doesn't exist.",
        syntax: "key member...",
        parse: |a| Ok(Command::SAdd { key: a[1], members: &a[2..] }),
    },
    Spec {
        name: "scan",
        arity: -2,
        flags: "readonly",
        keys: (0, 0, 0),
        group: "generic",
        since: "2.8.0",
        summary: "Iterates over the key names in the database.",
        syntax: "cursor:integer [MATCH pattern:pattern] [COUNT count:integer] [TYPE type]",
        parse: |a| keyspace::parse_scan(a).map(Command::Scan),
    },
    Spec {
        name: "scard",
        arity: 2,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "set",
        since: "1.0.0",
        summary: "Returns the number of members in a set.",
        syntax: "key",
        parse: |a| Ok(Command::SCard(a[1])),
    },
    Spec {
        name: "select",
        arity: 2,
        flags: "loading stale fast",
        keys: (0, 0, 0),
        group: "connection",
        since: "1.0.0",
        summary: "Changes the selected database.",
        syntax: "index:integer",
        parse: |a| connection::parse_select(a).map(|()| Command::Select),
    },
    Spec {
        name: "set",
        arity: -3,
        flags: "write denyoom",
        keys: (1, 1, 1),
        group: "string",
        since: "1.0.0",
        summary: "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist.",
        syntax: "key value [NX|XX] [GET] [EX seconds:integer|PX milliseconds:integer|EXAT unix-time-seconds:unix-time|PXAT unix-time-milliseconds:unix-time|KEEPTTL]",
        parse: |a| strings::parse_set(a).map(Command::Set),
    },
    Spec {
        name: "setex",
        arity: 4,
        flags: "write denyoom",
        keys: (1, 1, 1),
        group: "string",
        since: "2.0.0",
        summary: "Sets the string value and expiration time of a key. Creates the key if it doesn't exist.",
        syntax: "key seconds:integer value",
        parse: |a| strings::parse_setex(a, "ex", "setex").map(Command::Set),
    },
    Spec {
        name: "setnx",
        arity: 3,
        flags: "write denyoom fast",
        keys: (1, 1, 1),
        group: "string",
        since: "1.0.0",
        summary: "Set the string value of a key only when the key doesn't exist.",
        syntax: "key value",
        parse: |a| Ok(Command::SetNx { key: a[1], value: a[2] }),
    },
    Spec {
        name: "sismember",
        arity: 3,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "set",
        since: "1.0.0",
        summary: "Determines whether a member belongs to a set.",
        syntax: "key member",
        parse: |a| Ok(Command::SIsMember { key: a[1], member: a[2] }),
    },
    Spec {
        name: "smembers",
        arity: 2,
        flags: "readonly",
        keys: (1, 1, 1),
        group: "set",
        since: "1.0.0",
        summary: "Returns all members of a set.",
        syntax: "key",
        parse: |a| Ok(Command::SMembers(a[1])),
    },
    Spec {
        name: "smismember",
        arity: -3,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "set",
        since: "6.2.0",
        summary: "Determines whether multiple members belong to a set.",
        syntax: "key member...",
        parse: |a| Ok(Command::SMIsMember { key: a[1], members: &a[2..] }),
    },
    Spec {
        name: "spop",
        arity: -2,
        flags: "write fast",
        keys: (1, 1, 1),
        group: "set",
        since: "1.0.0",
        summary: "Returns one or more random members from a set after removing them. Deletes the set if the last member was popped.",
        syntax: "key [count:integer]",
        parse: |a| Ok(Command::SPop { key: a[1], count: parse::pop_count(a)? }),
    },
    Spec {
        name: "srandmember",
        arity: -2,
        flags: "readonly",
        keys: (1, 1, 1),
        group: "set",
        since: "1.0.0",
        summary: "Get one or multiple random members from a set",
        syntax: "key [count:integer]",
        parse: |a| Ok(Command::SRandMember { key: a[1], count: sets::parse_srandmember_count(a)? }),
    },
    Spec {
        name: "srem",
        arity: -3,
        flags: "write fast",
        keys: (1, 1, 1),
        group: "set",
        since: "1.0.0",
        summary: "Removes one or more members from a set. Deletes the set if the last member was removed.",
        syntax: "key member...",
        parse: |a| Ok(Command::SRem { key: a[1], members: &a[2..] }),
    },
    Spec {
        name: "sscan",
        arity: -3,
        flags: "readonly",
        keys: (1, 1, 1),
        group: "set",
        since: "2.8.0",
        summary: "Iterates over members of a set.",
        syntax: "key cursor:integer [MATCH pattern:pattern] [COUNT count:integer]",
        parse: |a| parse::coll_scan(a, false).map(Command::SScan),
    },
    Spec {
        name: "strlen",
        arity: 2,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "string",
        since: "2.2.0",
        summary: "Returns the length of a string value.",
        syntax: "key",
        parse: |a| Ok(Command::Strlen(a[1])),
    },
    Spec {
        name: "time",
        arity: 1,
        flags: "loading stale fast",
        keys: (0, 0, 0),
        group: "server",
        since: "2.6.0",
        summary: "Returns the server time.",
        syntax: "",
        parse: |_| Ok(Command::Time),
    },
    Spec {
        name: "ttl",
        arity: 2,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "generic",
        since: "1.0.0",
        summary: "Returns the expiration time in seconds of a key.",
        syntax: "key",
        parse: |a| Ok(Command::Ttl(TtlQuery { key: a[1], ms: false, absolute: false })),
    },
    Spec {
        name: "type",
        arity: 2,
        flags: "readonly fast",
        keys: (1, 1, 1),
        group: "generic",
        since: "1.0.0",
        summary: "Determines the type of value stored at a key.",
        syntax: "key",
        parse: |a| Ok(Command::Type(a[1])),
    },
    Spec {
        name: "unlink",
        arity: -2,
        flags: "write fast",
        keys: (1, -1, 1),
        group: "generic",
        since: "4.0.0",
        summary: "Asynchronously deletes one or more keys.",
        syntax: "key...",
        parse: |a| Ok(Command::Unlink(&a[1..])),
    },
    Spec {
        name: "unwatch",
        arity: 1,
        flags: "noscript loading stale fast allow-busy",
        keys: (0, 0, 0),
        group: "transactions",
        since: "2.2.0",
        summary: "Forgets about watched keys of a transaction.",
        syntax: "",
        parse: |_| Ok(Command::Unwatch),
    },
    Spec {
        name: "wait",
        arity: 3,
        flags: "",
        keys: (0, 0, 0),
        group: "generic",
        since: "3.0.0",
        summary: "Blocks until the asynchronous replication of all preceding write commands sent by the connection is completed.",
        syntax: "numreplicas:integer timeout:integer",
        parse: |a| admin::parse_wait(a).map(Command::Wait),
    },
    Spec {
        name: "waitaof",
        arity: 4,
        flags: "",
        keys: (0, 0, 0),
        group: "generic",
        since: "7.2.0",
        summary: "Blocks until all of the preceding write commands sent by the connection are written to the append-only file of the primary and/or replicas.",
        syntax: "numlocal:integer numreplicas:integer timeout:integer",
        parse: |a| admin::parse_waitaof(a).map(Command::Wait),
    },
    Spec {
        name: "watch",
        arity: -2,
        flags: "noscript loading stale fast allow-busy",
        keys: (1, -1, 1),
        group: "transactions",
        since: "2.2.0",
        summary: "Monitors changes to keys to determine the execution of a transaction.",
        syntax: "key...",
        parse: |a| Ok(Command::Watch(&a[1..])),
    },
];

/// The command called `name` (lower case).
pub fn find(name: &str) -> Option<&'static Spec> {
    TABLE
        .binary_search_by(|s| s.name.cmp(name))
        .ok()
        .map(|i| &TABLE[i])
}

/// The families walrep does not have, by command name.
const UNSUPPORTED: &[(&str, &[&str])] = &[
    (
        "sorted sets",
        &[
            "zadd", "zcard", "zcount", "zdiff", "zdiffstore", "zincrby", "zinter", "zintercard",
            "zinterstore", "zlexcount", "zmpop", "zmscore", "zpopmax", "zpopmin", "zrandmember",
            "zrange", "zrangebylex", "zrangebyscore", "zrangestore", "zrank", "zrem",
            "zremrangebylex", "zremrangebyrank", "zremrangebyscore", "zrevrange",
            "zrevrangebylex", "zrevrangebyscore", "zrevrank", "zscan", "zscore", "zunion",
            "zunionstore", "bzpopmin", "bzpopmax", "bzmpop",
        ],
    ),
    (
        "streams",
        &[
            "xadd", "xack", "xautoclaim", "xclaim", "xdel", "xgroup", "xinfo", "xlen",
            "xpending", "xrange", "xread", "xreadgroup", "xrevrange", "xsetid", "xtrim",
        ],
    ),
    (
        "pub/sub",
        &[
            "subscribe", "unsubscribe", "psubscribe", "punsubscribe", "publish", "pubsub",
            "ssubscribe", "sunsubscribe", "spublish",
        ],
    ),
    (
        "Lua scripts and functions",
        &[
            "eval", "evalsha", "eval_ro", "evalsha_ro", "script", "function", "fcall", "fcall_ro",
        ],
    ),
    ("modules", &["module"]),
    (
        "blocking commands",
        &["blpop", "brpop", "brpoplpush", "blmove", "blmpop"],
    ),
    (
        "geospatial indexes",
        &[
            "geoadd", "geodist", "geohash", "geopos", "georadius", "georadiusbymember",
            "geosearch", "geosearchstore", "georadius_ro", "georadiusbymember_ro",
        ],
    ),
    ("HyperLogLogs", &["pfadd", "pfcount", "pfmerge", "pfdebug", "pfselftest"]),
    (
        "bitmaps",
        &["setbit", "getbit", "bitcount", "bitop", "bitpos", "bitfield", "bitfield_ro"],
    ),
    (
        "Redis replication and cluster commands (replication is PostgreSQL's: walrep basebackup, walrep promote)",
        &["replicaof", "slaveof", "sync", "psync", "failover", "cluster", "readonly", "readwrite"],
    ),
];

/// The error for a name not in [`TABLE`]: which family walrep lacks, or
/// Redis's unknown-command error.
pub fn refuse(name: &str, args: Args<'_>) -> CommandError {
    UNSUPPORTED
        .iter()
        .find(|(_, names)| names.contains(&name))
        .map_or_else(
            || unknown_command(args),
            |(family, _)| CommandError::Unsupported {
                family,
                name: name.to_string(),
            },
        )
}

/// Every command name walrep refuses as an unsupported family (tests).
#[cfg(test)]
pub fn unsupported_names() -> impl Iterator<Item = (&'static str, &'static str)> {
    UNSUPPORTED
        .iter()
        .flat_map(|(family, names)| names.iter().map(move |n| (*family, *n)))
}

/// `COMMAND INFO`'s entry for `spec`: name, arity, flags, first key, last
/// key, step, ACL categories, tips, key specifications, subcommands.
pub fn info(r: &mut Reply<'_>, spec: &Spec) {
    r.array(10);
    r.bulk(spec.name.as_bytes());
    r.int(spec.arity.into());
    let flags: Vec<&str> = spec.flags.split_whitespace().collect();
    r.set(flags.len());
    for f in flags {
        r.simple(f);
    }
    r.int(spec.keys.0.into());
    r.int(spec.keys.1.into());
    r.int(spec.keys.2.into());
    let categories = categories(spec);
    r.set(categories.len());
    for c in categories {
        r.simple(c);
    }
    for _ in 0..3 {
        r.array(0);
    }
}

/// ACL categories, as Redis derives them from flags and group.
fn categories(spec: &Spec) -> Vec<&'static str> {
    let mut c = Vec::new();
    let has = |f: &str| spec.flags.split_whitespace().any(|x| x == f);
    if has("write") {
        c.push("@write");
    }
    if has("readonly") {
        c.push("@read");
    }
    if has("fast") {
        c.push("@fast");
    } else {
        c.push("@slow");
    }
    c.push(match spec.group {
        "string" => "@string",
        "hash" => "@hash",
        "list" => "@list",
        "set" => "@set",
        "generic" => "@keyspace",
        "transactions" => "@transaction",
        "connection" => "@connection",
        _ => "@admin",
    });
    c
}

/// `COMMAND DOCS`'s entry for `spec`: a map of summary, since, group and
/// arguments.
pub fn docs(r: &mut Reply<'_>, spec: &Spec) {
    let args = syntax::parse(spec.syntax);
    r.map(if args.is_empty() { 3 } else { 4 });
    for (k, v) in [
        ("summary", spec.summary),
        ("since", spec.since),
        ("group", spec.group),
    ] {
        r.bulk(k.as_bytes());
        r.bulk(v.as_bytes());
    }
    if !args.is_empty() {
        r.bulk(b"arguments");
        syntax::write_args(r, &args);
    }
}

/// Redis's documentation syntax to `COMMAND DOCS` arguments.
pub mod syntax {
    use crate::server::protocol::reply::Reply;

    /// One argument of a command.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Arg {
        pub name: String,
        /// `key`, `string`, `integer`, `pattern`, `unix-time`,
        /// `pure-token`, `oneof` or `block`.
        pub kind: &'static str,
        pub token: Option<String>,
        pub optional: bool,
        pub multiple: bool,
        /// A `oneof`'s choices or a `block`'s parts.
        pub args: Vec<Arg>,
    }

    /// Parse `key value [NX|XX] [EX seconds:integer|KEEPTTL] (field value)...`.
    pub fn parse(text: &str) -> Vec<Arg> {
        let tokens = tokenize(text);
        let mut at = 0;
        let alternatives = group(&tokens, &mut at);
        alternatives.into_iter().next().unwrap_or_default()
    }

    fn tokenize(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut word = String::new();
        for c in text.chars() {
            if matches!(c, '[' | ']' | '(' | ')' | '|' | ' ') {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                if c != ' ' {
                    out.push(c.to_string());
                }
            } else {
                word.push(c);
            }
        }
        if !word.is_empty() {
            out.push(word);
        }
        out
    }

    /// Alternatives (separated by `|`), each a sequence, up to a closing
    /// bracket or the end.
    fn group(tokens: &[String], at: &mut usize) -> Vec<Vec<Arg>> {
        let mut alternatives = vec![Vec::new()];
        while let Some(t) = tokens.get(*at) {
            *at += 1;
            let seq = alternatives.last_mut().expect("one at least");
            match t.as_str() {
                "]" | ")" => break,
                "|" => alternatives.push(Vec::new()),
                open @ ("[" | "(") => {
                    let inner = group(tokens, at);
                    let mut arg = combine(inner);
                    arg.optional |= open == "[";
                    if tokens.get(*at).is_some_and(|t| t == "...") {
                        *at += 1;
                        arg.multiple = true;
                    }
                    seq.push(arg);
                }
                word => push_word(seq, word),
            }
        }
        alternatives
    }

    /// A word: a TOKEN, or `name[:type][...]`; a TOKEN followed by an
    /// argument becomes that argument's token.
    fn push_word(seq: &mut Vec<Arg>, word: &str) {
        let (word, multiple) = match word.strip_suffix("...") {
            Some(w) => (w, true),
            None => (word, false),
        };
        if word.is_empty() {
            if let Some(last) = seq.last_mut() {
                last.multiple = true;
            }
            return;
        }
        let is_token = word
            .chars()
            .all(|c| c.is_ascii_uppercase() || c == '-' || c == '_');
        if is_token {
            seq.push(Arg {
                name: word.to_ascii_lowercase(),
                kind: "pure-token",
                token: Some(word.to_string()),
                optional: false,
                multiple,
                args: Vec::new(),
            });
            return;
        }
        let (name, kind) = match word.split_once(':') {
            Some((n, t)) => (n, kind_of(t)),
            None if word == "key" || word == "newkey" => (word, "key"),
            None => (word, "string"),
        };
        let mut arg = Arg {
            name: name.to_string(),
            kind,
            token: None,
            optional: false,
            multiple,
            args: Vec::new(),
        };
        if let Some(prev) = seq.last() {
            if prev.kind == "pure-token" && !prev.multiple {
                arg.token = prev.token.clone();
                seq.pop();
            }
        }
        seq.push(arg);
    }

    fn kind_of(t: &str) -> &'static str {
        match t {
            "integer" => "integer",
            "pattern" => "pattern",
            "unix-time" => "unix-time",
            "key" => "key",
            "double" => "double",
            _ => "string",
        }
    }

    /// A bracketed group as one argument: a `oneof` of its alternatives, or
    /// its only argument, or a `block`.
    fn combine(mut alternatives: Vec<Vec<Arg>>) -> Arg {
        if alternatives.len() > 1 {
            let choices: Vec<Arg> = alternatives.into_iter().map(one).collect();
            let name = choices
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join("-");
            return Arg {
                name,
                kind: "oneof",
                token: None,
                optional: false,
                multiple: false,
                args: choices,
            };
        }
        one(alternatives.pop().unwrap_or_default())
    }

    fn one(mut seq: Vec<Arg>) -> Arg {
        if seq.len() == 1 {
            return seq.pop().expect("one");
        }
        let name = seq
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join("-");
        Arg {
            name,
            kind: "block",
            token: None,
            optional: false,
            multiple: false,
            args: seq,
        }
    }

    /// The arguments as `COMMAND DOCS` lists them.
    pub fn write_args(r: &mut Reply<'_>, args: &[Arg]) {
        r.array(args.len());
        for a in args {
            let flags: Vec<&str> = [("optional", a.optional), ("multiple", a.multiple)]
                .into_iter()
                .filter(|(_, on)| *on)
                .map(|(f, _)| f)
                .collect();
            let n = 2
                + usize::from(a.token.is_some())
                + usize::from(!flags.is_empty())
                + usize::from(!a.args.is_empty());
            r.map(n);
            r.bulk(b"name");
            r.bulk(a.name.as_bytes());
            r.bulk(b"type");
            r.bulk(a.kind.as_bytes());
            if let Some(t) = &a.token {
                r.bulk(b"token");
                r.bulk(t.as_bytes());
            }
            if !flags.is_empty() {
                r.bulk(b"flags");
                r.array(flags.len());
                for f in flags {
                    r.simple(f);
                }
            }
            if !a.args.is_empty() {
                r.bulk(b"arguments");
                write_args(r, &a.args);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::syntax::parse;
    use super::*;

    #[test]
    fn the_table_is_sorted_and_every_syntax_parses() {
        for w in TABLE.windows(2) {
            assert!(w[0].name < w[1].name, "{} before {}", w[0].name, w[1].name);
        }
        for s in TABLE {
            let args = parse(s.syntax);
            assert_eq!(args.is_empty(), s.syntax.is_empty(), "{}", s.name);
            assert!(find(s.name).is_some());
            assert!(
                find(&s.name.to_uppercase()).is_none(),
                "names are lower case"
            );
        }
        assert!(find("zadd").is_none());
    }

    #[test]
    fn syntax_becomes_redis_arguments() {
        let args = parse("key value [NX|XX] [GET] [EX seconds:integer|KEEPTTL] (field value)...");
        let summary: Vec<(String, &str, Option<String>, bool, bool)> = args
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    a.kind,
                    a.token.clone(),
                    a.optional,
                    a.multiple,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("key".into(), "key", None, false, false),
                ("value".into(), "string", None, false, false),
                ("nx-xx".into(), "oneof", None, true, false),
                ("get".into(), "pure-token", Some("GET".into()), true, false),
                ("seconds-keepttl".into(), "oneof", None, true, false),
                ("field-value".into(), "block", None, false, true),
            ]
        );
        let ex = &args[4].args[0];
        assert_eq!(
            (ex.name.as_str(), ex.kind, ex.token.as_deref()),
            ("seconds", "integer", Some("EX"))
        );
        assert!(parse("key...")[0].multiple);
    }

    #[test]
    fn unsupported_families_are_named() {
        let e = refuse("zadd", &[b"ZADD", b"k", b"1", b"m"]);
        assert_eq!(
            e.to_string(),
            "ERR walrep does not support sorted sets ('zadd'); it supports strings, hashes, lists, sets, key expiry and MULTI/EXEC transactions (see docs/redis-commands.md)"
        );
        assert!(refuse("nosuch", &[b"nosuch"])
            .to_string()
            .starts_with("ERR unknown command 'nosuch'"));
        for (_, name) in unsupported_names() {
            assert!(find(name).is_none(), "{name} is both supported and not");
        }
    }
}
