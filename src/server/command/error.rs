//! The errors commands reply with, worded as Redis words them: the first
//! word is the code clients act on (`ERR`, `NOPROTO`, `WRONGPASS`,
//! `READONLY`, `LOADING`), and tests and users compare the rest.

use crate::server::backend::WriteError;

/// Why a command was refused or failed; its text is the error reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    /// Redis's arity rule; the name is the command's (`get`) or the
    /// subcommand's (`config|get`).
    #[error("ERR wrong number of arguments for '{0}' command")]
    Arity(&'static str),
    #[error("ERR syntax error")]
    Syntax,
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    #[error("ERR unknown command '{name}', with args beginning with: {args}")]
    UnknownCommand { name: String, args: String },
    #[error("ERR unknown subcommand '{sub}'. Try {command} HELP.")]
    UnknownSubcommand { command: &'static str, sub: String },
    #[error("ERR invalid expire time in '{0}' command")]
    InvalidExpireTime(&'static str),
    #[error("WRONGTYPE Operation against a key holding the wrong kind of value")]
    WrongType,
    #[error("ERR hash value is not an integer")]
    HashNotInteger,
    #[error("ERR value is out of range, must be positive")]
    NotPositive,
    #[error("ERR value is out of range, value must between 0 and 1")]
    NumLocalOutOfRange,
    #[error("ERR WAITAOF cannot be used with replica instances. Please also note that writes to replicas are just local and are not propagated.")]
    WaitAofOnReplica,
    #[error("ERR value is out of range")]
    OutOfRange,
    #[error("ERR no such key")]
    NoSuchKey,
    #[error("ERR index out of range")]
    IndexOutOfRange,
    #[error("ERR NX and XX, GT or LT options at the same time are not compatible")]
    ExpireNxWithOthers,
    #[error("ERR GT and LT options at the same time are not compatible")]
    ExpireGtAndLt,
    #[error("ERR MULTI calls can not be nested")]
    NestedMulti,
    #[error("ERR EXEC without MULTI")]
    ExecWithoutMulti,
    #[error("ERR DISCARD without MULTI")]
    DiscardWithoutMulti,
    #[error("ERR WATCH inside MULTI is not allowed")]
    WatchInMulti,
    #[error("ERR Command not allowed inside a transaction")]
    NotInMulti,
    #[error("EXECABORT Transaction discarded because of previous errors.")]
    ExecAbort,
    /// EXEC refused as a whole (the node became a standby, the WAL failed):
    /// Redis's EXECABORT with the reason's own error.
    #[error("EXECABORT Transaction discarded because of: {0}")]
    ExecAbortBecause(String),
    #[error("ERR transaction too large: at most {0} queued commands and 256 MB of arguments")]
    MultiTooLarge(usize),
    /// A command family walrep does not have; the text names what it has.
    #[error("ERR walrep does not support {family} ('{name}'); it supports strings, hashes, lists, sets, key expiry and MULTI/EXEC transactions (see docs/redis-commands.md)")]
    Unsupported { family: &'static str, name: String },
    #[error("ERR No such client")]
    NoSuchClient,
    #[error("ERR increment or decrement would overflow")]
    IncrementOverflow,
    #[error("ERR decrement would overflow")]
    DecrementOverflow,
    #[error("ERR DB index is out of range")]
    DbIndexOutOfRange,
    #[error("ERR timeout is not an integer or out of range")]
    TimeoutNotInteger,
    #[error("ERR timeout is negative")]
    TimeoutNegative,
    /// A SCAN cursor that is not a number.
    #[error("ERR invalid cursor")]
    InvalidCursor,
    /// A SCAN cursor this node does not know (see `scan.rs`).
    #[error("ERR unknown SCAN cursor {0}: it expired, or was issued before a restart or by another node; start a new scan with cursor 0")]
    UnknownCursor(u64),
    #[error("ERR unknown type name '{0}'")]
    UnknownType(String),
    #[error("ERR Protocol version is not an integer or out of range")]
    ProtocolVersionNotInteger,
    #[error("NOPROTO unsupported protocol version")]
    NoProto,
    #[error("ERR Syntax error in HELLO option '{0}'")]
    HelloOption(String),
    #[error("WRONGPASS invalid username-password pair or user is disabled.")]
    WrongPass,
    #[error("NOAUTH Authentication required.")]
    NoAuth,
    #[error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")]
    HelloNoAuth,
    #[error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")]
    AuthWithoutPassword,
    /// The command's name (lower-case).
    #[error("NOPERM this user has no permissions to run the '{0}' command")]
    NoPerm(String),
    #[error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")]
    StringTooLong,
    /// The limit, in bytes.
    #[error("ERR the reply would exceed client_output_buffer_limit ({0} bytes); ask for less at a time (SCAN, fewer keys)")]
    ReplyTooLarge(usize),
    #[error("ERR too many WAIT commands in progress ({0}); retry later")]
    TooManyWaits(usize),
    #[error("ERR Client names cannot contain spaces, newlines or special characters.")]
    BadClientName,
    #[error("ERR Unrecognized option '{0}'")]
    UnknownClientInfo(String),
    #[error("ERR CONFIG SET is only supported for synchronous_commit (per connection); set '{0}' in walrep.toml or with -c and restart")]
    ConfigSetUnsupported(String),
    /// A parameter's value that does not parse, or a configuration that
    /// cannot be shown; the text says which.
    #[error("ERR {0}")]
    Config(String),
    /// The node refused or failed the command (READONLY, LOADING, a WAL
    /// failure): its text is already a Redis error.
    #[error(transparent)]
    Node(#[from] WriteError),
}
