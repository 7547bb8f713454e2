//! The roles both ports check logins against, parsed once from
//! `[[roles]]` and `requirepass`: each with its verifier (never a clear
//! password), its replication attribute and its Redis ACL category.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ScramVerifier;

/// The Redis port's built-in user, as Redis names it.
pub const DEFAULT_USER: &str = "default";

/// What a role may do on the Redis port (its ACL category).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub enum RedisAccess {
    /// Cannot log in on the Redis port.
    #[default]
    #[serde(rename = "none")]
    None,
    /// Reads, INFO and connection commands.
    #[serde(rename = "readonly")]
    ReadOnly,
    /// Also writes and WAIT.
    #[serde(rename = "readwrite")]
    ReadWrite,
    /// Everything: also CONFIG.
    #[serde(rename = "admin")]
    Admin,
}

impl RedisAccess {
    /// The name used in `walrep.toml` (`redis = "readonly"`) and in
    /// messages.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisAccess::None => "none",
            RedisAccess::ReadOnly => "readonly",
            RedisAccess::ReadWrite => "readwrite",
            RedisAccess::Admin => "admin",
        }
    }
}

/// A role (user) of both ports, as PostgreSQL's `CREATE ROLE ... LOGIN
/// PASSWORD ... REPLICATION` and a Redis ACL user in one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleEntry {
    /// The role name: `user=` on the replication port, the AUTH user name
    /// on the Redis port.
    pub name: String,
    /// A SCRAM-SHA-256 verifier (`walrep passwd`), never a clear password;
    /// empty: no password (only `trust` hba lines let it in).
    #[serde(default)]
    pub password: String,
    /// PostgreSQL's REPLICATION attribute: may stream WAL and take base
    /// backups on the replication port.
    #[serde(default)]
    pub replication: bool,
    /// What it may do on the Redis port.
    #[serde(default)]
    pub redis: RedisAccess,
}

/// One role, ready to authenticate.
#[derive(Debug, Clone)]
pub struct Role {
    /// The role name, unique among a node's roles.
    pub name: String,
    /// `None`: no password; only a `trust` hba line (replication port) or
    /// a passwordless default user (Redis port) lets it in.
    pub verifier: Option<ScramVerifier>,
    /// PostgreSQL's REPLICATION attribute ([`RoleEntry::replication`]).
    pub replication: bool,
    /// What it may do on the Redis port.
    pub redis: RedisAccess,
}

/// Every role of a node.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    by_name: BTreeMap<String, Role>,
    /// The Redis port's default user: a role named `default`, else
    /// `requirepass` (admin), else no password (admin).
    default_user: Option<Role>,
}

impl Roles {
    /// Parse the roles of a validated configuration: its `[[roles]]` and
    /// `requirepass` (invalid verifiers were refused by `Config::validate`;
    /// any left are treated as no password matching, never as a clear
    /// password).
    pub fn new(entries: &[RoleEntry], requirepass: &str) -> Roles {
        let by_name: BTreeMap<String, Role> = entries
            .iter()
            .map(|e| {
                let role = Role {
                    name: e.name.clone(),
                    verifier: ScramVerifier::parse(&e.password).ok(),
                    replication: e.replication,
                    redis: e.redis,
                };
                (e.name.clone(), role)
            })
            .collect();
        let default_user = match by_name.get(DEFAULT_USER) {
            Some(r) => Some(r.clone()),
            None => Some(Role {
                name: DEFAULT_USER.into(),
                verifier: ScramVerifier::parse(requirepass).ok(),
                replication: false,
                redis: RedisAccess::Admin,
            }),
        };
        Roles {
            by_name,
            default_user,
        }
    }

    /// A role of the replication port.
    pub fn get(&self, name: &str) -> Option<&Role> {
        self.by_name.get(name)
    }

    /// A user of the Redis port: `default` or a role with Redis access.
    pub fn redis_user(&self, name: &[u8]) -> Option<&Role> {
        let name = std::str::from_utf8(name).ok()?;
        if name == DEFAULT_USER {
            return self
                .default_user
                .as_ref()
                .filter(|r| r.redis != RedisAccess::None);
        }
        self.by_name
            .get(name)
            .filter(|r| r.redis != RedisAccess::None)
    }

    /// Whether a new Redis connection is logged in as `default` at once
    /// (Redis's `nopass` default user): no password is set for it.
    pub fn default_needs_no_password(&self) -> bool {
        self.default_user
            .as_ref()
            .is_some_and(|r| r.verifier.is_none() && r.redis != RedisAccess::None)
    }

    /// The default user's access when it needs no password.
    pub fn default_access(&self) -> RedisAccess {
        self.default_user
            .as_ref()
            .map_or(RedisAccess::None, |r| r.redis)
    }

    /// Check a Redis login (AUTH / HELLO AUTH): the user's access if the
    /// password is right. A user without a verifier accepts any password
    /// only if it is the passwordless default user (Redis's nopass).
    pub fn redis_login(&self, user: &[u8], password: &[u8]) -> Option<RedisAccess> {
        let role = self.redis_user(user)?;
        match &role.verifier {
            Some(v) => v.check(password).then_some(role.redis),
            None if role.name == DEFAULT_USER => Some(role.redis),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, pw: Option<&str>, redis: RedisAccess) -> RoleEntry {
        RoleEntry {
            name: name.into(),
            password: pw
                .map(|p| ScramVerifier::make(p).to_string())
                .unwrap_or_default(),
            replication: false,
            redis,
        }
    }

    #[test]
    fn logins_follow_redis_rules() {
        let r = Roles::new(&[], "");
        assert!(r.default_needs_no_password());
        assert_eq!(
            r.redis_login(b"default", b"anything"),
            Some(RedisAccess::Admin)
        );
        assert_eq!(r.redis_login(b"alice", b"x"), None);

        let pass = ScramVerifier::make("foobared").to_string();
        let r = Roles::new(
            &[
                entry("alice", Some("a"), RedisAccess::ReadOnly),
                entry("repl", Some("r"), RedisAccess::None),
                entry("nopw", None, RedisAccess::Admin),
            ],
            &pass,
        );
        assert!(!r.default_needs_no_password());
        assert_eq!(
            r.redis_login(b"default", b"foobared"),
            Some(RedisAccess::Admin)
        );
        assert_eq!(r.redis_login(b"default", b"wrong"), None);
        assert_eq!(r.redis_login(b"alice", b"a"), Some(RedisAccess::ReadOnly));
        assert_eq!(r.redis_login(b"repl", b"r"), None, "no Redis access");
        assert_eq!(r.redis_login(b"nopw", b""), None, "no password, no login");
        assert!(r.get("repl").is_some());
    }

    #[test]
    fn a_role_named_default_replaces_requirepass() {
        let pass = ScramVerifier::make("foobared").to_string();
        let r = Roles::new(&[entry("default", None, RedisAccess::None)], &pass);
        assert_eq!(r.redis_login(b"default", b"foobared"), None);
        assert!(!r.default_needs_no_password());
    }
}
