//! libpq connection strings (`host=... port=... user=... password=...
//! application_name=... dbname=...`), parsed with libpq's rules: `key =
//! value` pairs separated by whitespace, values optionally in single
//! quotes, backslash escapes the next character.

use std::path::PathBuf;
use std::time::Duration;

use crate::security::passfile::{self, PassQuery, PassfileError};
use crate::security::tls::SslMode;

/// Why a connection string was refused (libpq's messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    /// A keyword not followed by `=`; holds the keyword (libpq's message).
    #[error("missing \"=\" after \"{0}\" in connection info string")]
    MissingEquals(String),
    /// A single-quoted value without its closing quote.
    #[error("unterminated quoted string in connection info string")]
    Unterminated,
    /// A keyword neither used here nor one of libpq's that are accepted
    /// and ignored; holds it.
    #[error("invalid connection option \"{0}\"")]
    UnknownOption(String),
    /// A known keyword with a value it cannot take (`port=abc`).
    #[error("invalid {key} value: \"{value}\"")]
    BadValue {
        /// The keyword.
        key: String,
        /// The value given.
        value: String,
    },
    /// A `postgresql://` URI: only the `key=value` form is supported.
    #[error("URI connection strings are not supported; use key=value pairs")]
    Uri,
}

/// Options libpq knows that we accept and ignore (client certificates are
/// not offered; a server that requires one refuses the connection).
const IGNORED: &[&str] = &[
    "hostaddr",
    "options",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslcert",
    "sslkey",
    "sslcrl",
    "sslcompression",
    "sslpassword",
    "requirepeer",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "channel_binding",
    "target_session_attrs",
    "service",
    "client_encoding",
    "replication",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "sslsni",
    "load_balance_hosts",
];

/// A parsed connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// `host`: name or address of the upstream (default `localhost`).
    pub host: String,
    /// `port`: its replication port (libpq's default 5432).
    pub port: u16,
    /// `user`: the role to connect as (default: `$USER`).
    pub user: String,
    /// `password`, if given in the string; otherwise the password file
    /// ([`ConnInfo::passfile`]) is asked.
    pub password: Option<String>,
    /// `dbname`; a physical replication connection does not use it.
    pub dbname: Option<String>,
    /// `application_name`: the name this standby reports, which
    /// `synchronous_standby_names` and `pg_stat_replication` use.
    pub application_name: Option<String>,
    /// libpq's connect_timeout (seconds in the string).
    pub connect_timeout: Option<Duration>,
    /// `sslmode` (libpq's default: prefer).
    pub sslmode: SslMode,
    /// `sslrootcert`: the CAs a verify-ca / verify-full server must chain to.
    pub sslrootcert: Option<PathBuf>,
    /// `passfile`: where the password comes from when none is given
    /// (libpq's default: `PGPASSFILE`, else `~/.pgpass`).
    pub passfile: Option<PathBuf>,
}

/// libpq's defaults, environment variables included (`PGSSLMODE`,
/// `PGSSLROOTCERT`, `PGPASSFILE`; the user from `USER`).
impl Default for ConnInfo {
    fn default() -> Self {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        ConnInfo {
            host: "localhost".into(),
            port: 5432,
            user: std::env::var("USER").unwrap_or_else(|_| "postgres".into()),
            password: None,
            dbname: None,
            application_name: None,
            connect_timeout: None,
            sslmode: env("PGSSLMODE")
                .and_then(|m| SslMode::parse(&m.to_string_lossy()).ok())
                .unwrap_or(SslMode::Prefer),
            sslrootcert: env("PGSSLROOTCERT").map(PathBuf::from),
            passfile: env("PGPASSFILE").map(PathBuf::from),
        }
    }
}

impl ConnInfo {
    /// Parse `key=value` pairs over the defaults.
    pub fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
        if s.trim_start().starts_with("postgres://") || s.trim_start().starts_with("postgresql://")
        {
            return Err(ConnInfoError::Uri);
        }
        let mut info = ConnInfo::default();
        for (k, v) in pairs(s)? {
            info.set(&k, v)?;
        }
        Ok(info)
    }

    fn set(&mut self, key: &str, value: String) -> Result<(), ConnInfoError> {
        let bad = |value: &str| ConnInfoError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
        };
        match key {
            "host" => self.host = value,
            "port" => self.port = value.parse().map_err(|_| bad(&value))?,
            "user" => self.user = value,
            "password" => self.password = Some(value),
            "dbname" => self.dbname = Some(value),
            "application_name" => self.application_name = Some(value),
            "connect_timeout" => {
                let secs: u64 = value.trim().parse().map_err(|_| bad(&value))?;
                self.connect_timeout = (secs > 0).then(|| Duration::from_secs(secs.max(2)));
            }
            "sslmode" => self.sslmode = SslMode::parse(&value).map_err(|_| bad(&value))?,
            "sslrootcert" => self.sslrootcert = Some(PathBuf::from(value)),
            "passfile" => self.passfile = Some(PathBuf::from(value)),
            k if IGNORED.contains(&k) => {}
            k => return Err(ConnInfoError::UnknownOption(k.to_string())),
        }
        Ok(())
    }
}

impl ConnInfo {
    /// The password to use: `password=` if given, else the first matching
    /// line of the password file (libpq's order: `passfile=`, then
    /// `PGPASSFILE`, then `~/.pgpass`).
    pub fn resolve_password(&self) -> Result<Option<String>, PassfileError> {
        if self.password.is_some() {
            return Ok(self.password.clone());
        }
        let path = self
            .passfile
            .clone()
            .or_else(|| std::env::var_os("PGPASSFILE").map(PathBuf::from))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")));
        let Some(path) = path else { return Ok(None) };
        let database = self.dbname.as_deref().unwrap_or("replication");
        passfile::lookup(
            &path,
            PassQuery {
                host: &self.host,
                port: self.port,
                database,
                user: &self.user,
            },
        )
    }
}

/// `conninfo` with the password's value masked, for CONFIG GET and logs;
/// a string that does not parse is masked whole (its password cannot be
/// told apart).
pub fn redact_conninfo(conninfo: &str) -> String {
    let Ok(pairs) = pairs(conninfo) else {
        return crate::security::REDACTED.to_string();
    };
    if !pairs.iter().any(|(k, _)| k == "password") {
        return conninfo.to_string();
    }
    pairs
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "password" => format!("password={}", crate::security::REDACTED),
            _ if v.is_empty() || v.contains([' ', '\'', '\\']) => {
                format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
            }
            _ => format!("{k}={v}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// libpq's conninfo_parse tokenizer.
fn pairs(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConnInfoError::MissingEquals(key));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        out.push((key, value(&mut chars)?));
    }
}

fn value(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, ConnInfoError> {
    let mut v = String::new();
    if chars.next_if_eq(&'\'').is_some() {
        loop {
            match chars.next() {
                None => return Err(ConnInfoError::Unterminated),
                Some('\\') => v.push(chars.next().ok_or(ConnInfoError::Unterminated)?),
                Some('\'') => return Ok(v),
                Some(c) => v.push(c),
            }
        }
    }
    while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
        if c == '\\' {
            if let Some(n) = chars.next() {
                v.push(n);
            }
        } else {
            v.push(c);
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_masks_the_password_only() {
        let r = redact_conninfo("host=h port=1 password='it\\'s secret' application_name=s1");
        assert!(!r.contains("secret"), "{r}");
        let back = ConnInfo::parse(&r).unwrap();
        assert_eq!(back.password.as_deref(), Some(crate::security::REDACTED));
        assert_eq!(back.application_name.as_deref(), Some("s1"));
        assert_eq!(redact_conninfo("host=h"), "host=h");
        assert_eq!(redact_conninfo("password='open"), crate::security::REDACTED);
    }

    #[test]
    fn parses_like_libpq() {
        let c = ConnInfo::parse(
            " host=127.0.0.1 port = 5433 user=walrep password='it\\'s a secret' application_name=s1 dbname=replication sslmode=disable",
        )
        .unwrap();
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, 5433);
        assert_eq!(c.user, "walrep");
        assert_eq!(c.password.as_deref(), Some("it's a secret"));
        assert_eq!(c.application_name.as_deref(), Some("s1"));
        assert_eq!(c.dbname.as_deref(), Some("replication"));
        let c = ConnInfo::parse("password=a\\ b connect_timeout=1").unwrap();
        assert_eq!(c.password.as_deref(), Some("a b"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(
            ConnInfo::parse("host").unwrap_err(),
            ConnInfoError::MissingEquals("host".into())
        );
        assert_eq!(
            ConnInfo::parse("password='open").unwrap_err(),
            ConnInfoError::Unterminated
        );
        assert_eq!(
            ConnInfo::parse("hots=x").unwrap_err(),
            ConnInfoError::UnknownOption("hots".into())
        );
        assert!(matches!(
            ConnInfo::parse("port=99999"),
            Err(ConnInfoError::BadValue { .. })
        ));
        assert_eq!(
            ConnInfo::parse("postgresql://x").unwrap_err(),
            ConnInfoError::Uri
        );
    }
}
