//! Authentication and access control on the Redis port, as Redis 7 does
//! them: `AUTH [user] password`, `HELLO ... AUTH user password`, `ACL
//! WHOAMI`, the `NOAUTH` / `WRONGPASS` / `NOPERM` errors in Redis's words,
//! and protected mode. Users are the node's roles (`[[roles]]`, each with a
//! SCRAM-SHA-256 verifier and a Redis access level) plus Redis's `default`
//! user (`requirepass`).
//!
//! Access levels, each including the one before:
//! - connection commands (PING, ECHO, QUIT, SELECT, HELLO, CLIENT, AUTH,
//!   ACL WHOAMI, COMMAND): anyone authenticated;
//! - `readonly`: commands that read data, and INFO;
//! - `readwrite`: commands that write, and WAIT;
//! - `admin`: CONFIG (the node's configuration, and this connection's
//!   durability level).

use std::net::IpAddr;

use super::data::Done;
use super::error::CommandError;
use super::parse::{arity, is, unknown_subcommand, Args};
use crate::server::protocol::reply;
use crate::server::session::{AuthUser, Session};

/// `ACL`'s subcommands walrep has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclCommand {
    WhoAmI,
    Help,
}

/// Redis's reply to a client of a protected server that is not local.
pub const DENIED: &str = "DENIED Redis is running in protected mode because protected mode is enabled and no password is set for the default user. In this mode connections are only accepted from the loopback interface. If you want to connect from external computers to Redis you may adopt one of the following solutions: 1) Just disable protected mode sending the command 'CONFIG SET protected-mode no' from the loopback interface by connecting to Redis from the same host the server is running, however MAKE SURE Redis is not publicly accessible from internet if you do so. Use CONFIG REWRITE to make this change permanent. 2) Alternatively you can just disable the protected mode by editing the Redis configuration file, and setting the protected mode option to 'no', and then restarting the server. 3) If you started the server manually just for testing, restart it with the '--protected-mode no' option. 4) Set up an authentication password for the default user. NOTE: You only need to do one of the above things in order for the server to start accepting connections from the outside.";

/// Whether protected mode turns a client from `peer` away: Redis serves
/// only 127.0.0.1 and ::1 while the default user has no password.
pub fn protected_mode_refuses(s: &Session, peer: Option<IpAddr>) -> bool {
    let settings = &s.ctx.settings;
    if !settings.protected_mode || !settings.roles.default_needs_no_password() {
        return false;
    }
    let local = match peer {
        Some(IpAddr::V4(v4)) => v4.octets() == [127, 0, 0, 1],
        Some(IpAddr::V6(v6)) => {
            v6.is_loopback()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.octets() == [127, 0, 0, 1])
        }
        None => false,
    };
    !local
}

/// `AUTH password` (the default user) or `AUTH username password`: the
/// user, if named, and the password.
pub fn parse_auth<'a>(args: Args<'a>) -> Result<(Option<&'a [u8]>, &'a [u8]), CommandError> {
    match args {
        [_, password] => Ok((None, password)),
        [_, user, password] => Ok((Some(user), password)),
        // Arity (at least two) is the table's; more than three is Redis's
        // syntax error.
        _ => Err(CommandError::Syntax),
    }
}

pub fn parse_acl(args: Args<'_>) -> Result<AclCommand, CommandError> {
    let sub = args[1];
    if is(sub, "whoami") {
        arity(args, "acl|whoami", 2).map(|_| AclCommand::WhoAmI)
    } else if is(sub, "help") {
        arity(args, "acl|help", 2).map(|_| AclCommand::Help)
    } else {
        Err(unknown_subcommand("ACL", sub))
    }
}

/// Log in as `user` (default: `default`). A wrong password leaves the
/// connection as it was, as in Redis.
pub fn login(s: &mut Session, user: &[u8], password: &[u8]) -> Done {
    let roles = s.ctx.settings.roles.clone();
    match roles.redis_login(user, password) {
        Some(access) => {
            s.user = Some(AuthUser {
                name: String::from_utf8_lossy(user).into_owned(),
                access,
            });
            Ok(())
        }
        None => {
            // Never the password; the user name helps an operator.
            tracing::info!(
                user = %String::from_utf8_lossy(&user[..user.len().min(64)]),
                "AUTH failed: wrong user name or password"
            );
            Err(CommandError::WrongPass)
        }
    }
}

pub fn auth(s: &mut Session, user: Option<&[u8]>, password: &[u8]) -> Done {
    if user.is_none() && s.ctx.settings.roles.default_needs_no_password() {
        return Err(CommandError::AuthWithoutPassword);
    }
    login(s, user.unwrap_or(b"default"), password)?;
    reply::ok(&mut s.out);
    Ok(())
}

pub fn acl(s: &mut Session, c: AclCommand) {
    match c {
        AclCommand::WhoAmI => match &s.user {
            Some(u) => reply::bulk(&mut s.out, u.name.as_bytes()),
            None => reply::Reply {
                out: &mut s.out,
                resp3: s.resp3,
            }
            .null(),
        },
        AclCommand::Help => reply::help(
            &mut s.out,
            &[
                "ACL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "WHOAMI",
                "    Return the current connection username.",
                "HELP",
                "    Print this help.",
            ],
        ),
    }
}
