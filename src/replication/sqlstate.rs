//! The errors a replication connection reports to its client, with
//! PostgreSQL's severities and SQLSTATE codes, ready to become an
//! ErrorResponse, and the SQLSTATEs walrep sends, named after
//! PostgreSQL's conditions (errcodes.txt).

use super::pgwire::ErrorFields;

/// `42601` syntax_error: a replication command that does not parse.
pub const SYNTAX_ERROR: &str = "42601";
/// `42704` undefined_object: a replication slot that does not exist.
pub const UNDEFINED_OBJECT: &str = "42704";
/// `42710` duplicate_object: CREATE_REPLICATION_SLOT of a name already taken.
pub const DUPLICATE_OBJECT: &str = "42710";
/// `42602` invalid_name: a slot name that is empty or has a character
/// outside `[a-z0-9_]`.
pub const INVALID_NAME: &str = "42602";
/// `42622` name_too_long: a slot name longer than NAMEDATALEN - 1.
pub const NAME_TOO_LONG: &str = "42622";
/// `0A000` feature_not_supported: SQL or logical replication sent to a
/// physical walsender.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// `08P01` protocol_violation: a message the protocol does not allow here
/// (sent FATAL: the connection cannot be trusted to be in step).
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// `28000` invalid_authorization_specification: no `hba` entry matches,
/// or the role does not exist.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// `28P01` invalid_password: SCRAM or password authentication failed.
pub const INVALID_PASSWORD: &str = "28P01";
/// `42501` insufficient_privilege: the role lacks the REPLICATION attribute.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// `53300` too_many_connections: `max_wal_senders` walsenders already run.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// `53400` configuration_limit_exceeded: all `max_replication_slots` in use.
pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
/// `58P01` undefined_file: requested WAL (or a timeline history file) was
/// already removed or never existed.
pub const UNDEFINED_FILE: &str = "58P01";
/// `55006` object_in_use: a slot that another walsender holds active.
pub const OBJECT_IN_USE: &str = "55006";
/// `55000` object_not_in_prerequisite_state: an invalidated slot, a WAL
/// range across a timeline boundary, a backup the server cannot take now.
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
/// `57P01` admin_shutdown: the server is shutting down.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// `57P02` crash_shutdown: the server ends every session after a failure
/// that stopped its WAL writer (then restarts, or stops).
pub const CRASH_SHUTDOWN: &str = "57P02";
/// `XX000` internal_error: PostgreSQL's code for errors raised without one
/// (a start point ahead of the flush position, an unknown slot option), and
/// corrupt slot files.
pub const INTERNAL_ERROR: &str = "XX000";
/// `58030` io_error: reading or writing a file (slot, backup) failed.
pub const IO_ERROR: &str = "58030";
/// `22023` invalid_parameter_value: a command option with a bad value.
pub const INVALID_PARAMETER_VALUE: &str = "22023";

/// ERROR ends the command and the connection stays usable; FATAL ends the
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// `ERROR`: this command failed; the session goes on.
    Error,
    /// `FATAL`: the server closes the connection after sending it.
    Fatal,
}

/// An error for the client: severity, SQLSTATE, message and optional detail
/// and hint, as PostgreSQL words them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {code}: {message}", self.severity_text())]
pub struct PgError {
    /// Whether the connection survives (field `S`/`V`).
    pub severity: Severity,
    /// The SQLSTATE (field `C`), one of this module's constants.
    pub code: &'static str,
    /// The primary message (field `M`), worded as PostgreSQL words it.
    pub message: String,
    /// Optional detail (field `D`): facts behind the message.
    pub detail: Option<String>,
    /// Optional hint (field `H`): what the user could do about it.
    pub hint: Option<String>,
}

impl PgError {
    /// An `ERROR` with this SQLSTATE: the command fails, the session stays.
    pub fn error(code: &'static str, message: impl Into<String>) -> PgError {
        PgError {
            severity: Severity::Error,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// A `FATAL` with this SQLSTATE: the connection ends after it is sent.
    pub fn fatal(code: &'static str, message: impl Into<String>) -> PgError {
        PgError {
            severity: Severity::Fatal,
            ..PgError::error(code, message)
        }
    }

    /// Adds the DETAIL line.
    pub fn with_detail(mut self, detail: impl Into<String>) -> PgError {
        self.detail = Some(detail.into());
        self
    }

    /// Adds the HINT line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> PgError {
        self.hint = Some(hint.into());
        self
    }

    /// Whether the session must end once this error has been sent.
    pub fn is_fatal(&self) -> bool {
        self.severity == Severity::Fatal
    }

    fn severity_text(&self) -> &'static str {
        match self.severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }

    /// The fields of the ErrorResponse.
    pub(crate) fn to_fields(&self) -> ErrorFields {
        ErrorFields {
            severity: self.severity_text().to_string(),
            code: self.code.to_string(),
            message: self.message.clone(),
            detail: self.detail.clone(),
            hint: self.hint.clone(),
            other: Vec::new(),
        }
    }
}
