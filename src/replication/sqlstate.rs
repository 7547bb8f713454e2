//! The errors a replication connection reports to its client, with
//! PostgreSQL's severities and SQLSTATE codes, ready to become an
//! ErrorResponse.

use super::pgwire::ErrorFields;

/// successful_completion is never sent; the codes we do send:
pub const SYNTAX_ERROR: &str = "42601";
pub const UNDEFINED_OBJECT: &str = "42704";
pub const DUPLICATE_OBJECT: &str = "42710";
pub const INVALID_NAME: &str = "42602";
pub const NAME_TOO_LONG: &str = "42622";
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub const PROTOCOL_VIOLATION: &str = "08P01";
pub const INVALID_AUTHORIZATION: &str = "28000";
pub const INVALID_PASSWORD: &str = "28P01";
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
pub const TOO_MANY_CONNECTIONS: &str = "53300";
pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
pub const UNDEFINED_FILE: &str = "58P01";
pub const OBJECT_IN_USE: &str = "55006";
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
pub const ADMIN_SHUTDOWN: &str = "57P01";
pub const INTERNAL_ERROR: &str = "XX000";
pub const IO_ERROR: &str = "58030";
pub const INVALID_PARAMETER_VALUE: &str = "22023";

/// ERROR ends the command and the connection stays usable; FATAL ends the
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

/// An error for the client: severity, SQLSTATE, message and optional detail
/// and hint, as PostgreSQL words them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {code}: {message}", self.severity_text())]
pub struct PgError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn error(code: &'static str, message: impl Into<String>) -> PgError {
        PgError {
            severity: Severity::Error,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> PgError {
        PgError {
            severity: Severity::Fatal,
            ..PgError::error(code, message)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> PgError {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> PgError {
        self.hint = Some(hint.into());
        self
    }

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
    pub fn to_fields(&self) -> ErrorFields {
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
