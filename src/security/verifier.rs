//! SCRAM-SHA-256 verifiers in PostgreSQL's text format, the only form in
//! which walrep keeps a password:
//!
//! ```text
//! SCRAM-SHA-256$<iterations>:<salt, base64>$<StoredKey, base64>:<ServerKey, base64>
//! ```
//!
//! exactly what PostgreSQL stores in `pg_authid.rolpassword`, so a
//! verifier made by `walrep passwd`, by PostgreSQL (`SELECT rolpassword
//! FROM pg_authid`) or by any libpq-based tool is interchangeable. A
//! verifier lets a server check a SCRAM exchange (replication port) or a
//! clear password (Redis's AUTH) without being able to log in as the user.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;

use super::scram::{ScramKeys, ITERATIONS};

/// The scheme prefix of a verifier.
pub const SCHEME: &str = "SCRAM-SHA-256";
/// Salt length `walrep passwd` uses (PostgreSQL's).
pub const SALT_LEN: usize = 16;
/// Iteration counts accepted in a verifier: PostgreSQL's minimum is 1, but
/// a verifier that would make a single login spin for minutes is refused.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// Why a text is not a verifier. The message never contains the text
/// itself: it may be a clear password put where a verifier belongs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifierError {
    /// The text does not have the verifier's shape at all (often a clear
    /// password where a verifier belongs).
    #[error("not a SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>; make one with `walrep passwd`)")]
    NotAVerifier,
    /// The iteration count is 0, not a number, or above
    /// [`MAX_ITERATIONS`].
    #[error("SCRAM-SHA-256 verifier has an invalid iteration count (1 to {MAX_ITERATIONS})")]
    Iterations,
    /// The salt or a key is not valid base64 or not of the right length;
    /// holds which ("salt", "StoredKey", "ServerKey").
    #[error("SCRAM-SHA-256 verifier has an invalid {0} (base64 of the right length expected)")]
    Field(&'static str),
}

/// A parsed verifier: salt, iterations and the two keys.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// The salt, iteration count and keys, decoded.
    pub keys: ScramKeys,
}

/// Never print a verifier's keys: a verifier is not a password, but
/// whoever holds one can mount an offline guessing attack.
impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(..)")
    }
}

impl ScramVerifier {
    /// A new verifier for `password`, with a fresh random salt and
    /// PostgreSQL's default iteration count.
    pub fn make(password: &str) -> ScramVerifier {
        let mut salt = [0u8; SALT_LEN];
        rand::thread_rng().fill_bytes(&mut salt);
        Self::with_salt(password, &salt, ITERATIONS)
    }

    /// The verifier of `password` for a given salt and iteration count.
    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        ScramVerifier {
            keys: ScramKeys::derive(password, salt, iterations),
        }
    }

    /// Parse PostgreSQL's text form.
    pub fn parse(text: &str) -> Result<ScramVerifier, VerifierError> {
        let rest = text
            .trim()
            .strip_prefix(SCHEME)
            .and_then(|r| r.strip_prefix('$'))
            .ok_or(VerifierError::NotAVerifier)?;
        let (params, keys) = rest.split_once('$').ok_or(VerifierError::NotAVerifier)?;
        let (iterations, salt) = params.split_once(':').ok_or(VerifierError::NotAVerifier)?;
        let (stored, server) = keys.split_once(':').ok_or(VerifierError::NotAVerifier)?;
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|i| (1..=MAX_ITERATIONS).contains(i))
            .ok_or(VerifierError::Iterations)?;
        let salt = B64
            .decode(salt)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or(VerifierError::Field("salt"))?;
        let key = |b64: &str, what| -> Result<[u8; 32], VerifierError> {
            B64.decode(b64)
                .ok()
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .ok_or(VerifierError::Field(what))
        };
        Ok(ScramVerifier {
            keys: ScramKeys {
                salt,
                iterations,
                stored_key: key(stored, "StoredKey")?,
                server_key: key(server, "ServerKey")?,
            },
        })
    }

    /// Whether `text` looks like a verifier at all (it starts with the
    /// scheme), to tell "a malformed verifier" from "a clear password".
    pub fn looks_like_one(text: &str) -> bool {
        text.trim().starts_with("SCRAM-SHA-256$")
    }

    /// Whether `password` is the one this verifier was made from (Redis's
    /// AUTH sends it in clear). Compared in constant time.
    pub fn check(&self, password: &[u8]) -> bool {
        let Ok(password) = std::str::from_utf8(password) else {
            return false;
        };
        let k = ScramKeys::derive(password, &self.keys.salt, self.keys.iterations);
        let mut diff = 0u8;
        for (a, b) in k
            .stored_key
            .iter()
            .chain(&k.server_key)
            .zip(self.keys.stored_key.iter().chain(&self.keys.server_key))
        {
            diff |= a ^ b;
        }
        diff == 0
    }
}

impl std::fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{SCHEME}${}:{}${}:{}",
            self.keys.iterations,
            B64.encode(&self.keys.salt),
            B64.encode(self.keys.stored_key),
            B64.encode(self.keys.server_key)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A verifier PostgreSQL 15 made (`password_encryption = scram-sha-256`,
    /// `CREATE ROLE walrep PASSWORD 'sekrit pw'`).
    const FROM_POSTGRES: &str = "SCRAM-SHA-256$4096:YNotekpZj54PEjYNE+45gA==$pMp2cE0GK5drEaq4p1FtF6Ewod42cKfZmP1IDZqnYmE=:NwIMwFLw/naegcQPW1Ezrlet9eJ8yi2o0mbARSNRfQs=";

    #[test]
    fn make_parse_and_print_round_trip() {
        let v = ScramVerifier::make("sekrit pw");
        let text = v.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"), "{text}");
        assert_eq!(ScramVerifier::parse(&text).unwrap(), v);
        assert!(v.check(b"sekrit pw"));
        assert!(!v.check(b"sekrit pW"));
        assert!(!v.check(b"\xff"));
        assert!(!format!("{v:?}").contains(&B64.encode(v.keys.stored_key)));
    }

    #[test]
    fn a_postgres_verifier_checks_its_password() {
        let v = ScramVerifier::parse(FROM_POSTGRES).unwrap();
        assert_eq!(v.to_string(), FROM_POSTGRES);
        assert!(v.check(b"sekrit pw"));
        assert!(!v.check(b"other"));
    }

    #[test]
    fn clear_passwords_and_garbage_are_refused_without_echo() {
        for bad in [
            "hunter2",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$0:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$4096:$x:y",
            "SCRAM-SHA-256$4096:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$99999999999:AAAA$AAAA:AAAA",
        ] {
            assert!(ScramVerifier::parse(bad).is_err(), "{bad}");
        }
        let e = ScramVerifier::parse("hunter2").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(!ScramVerifier::looks_like_one("hunter2"));
        assert!(ScramVerifier::looks_like_one("SCRAM-SHA-256$x"));
    }
}
