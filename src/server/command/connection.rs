//! Connection commands: PING, SELECT, HELLO and CLIENT, their parsers and
//! executors (ECHO and QUIT need neither).

use super::exec::Done;
use super::parse::{arity, canonical_i64, is, unknown_subcommand};
use super::{Args, Command, CommandError};
use crate::server::protocol::reply;
use crate::server::session::Session;
use crate::server::Role;

/// The Redis version walrep answers as (HELLO, and INFO's redis_version).
pub const REDIS_VERSION: &str = "7.0.0";

/// `HELLO [protover [AUTH username password] [SETNAME name]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello<'a> {
    /// The protocol asked for; `None` keeps the current one (RESP2).
    pub protover: Option<u8>,
    pub auth: Option<(&'a [u8], &'a [u8])>,
    pub setname: Option<&'a [u8]>,
}

/// CLIENT's subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand<'a> {
    SetName(&'a [u8]),
    GetName,
    Id,
    /// `CLIENT SETINFO LIB-NAME|LIB-VER value`: accepted, not kept.
    SetInfo,
    Help,
}

pub fn parse_ping<'a>(args: Args<'a>) -> Result<Command<'a>, CommandError> {
    match args {
        [_] => Ok(Command::Ping(None)),
        [_, msg] => Ok(Command::Ping(Some(msg))),
        _ => Err(CommandError::Arity("ping")),
    }
}

/// `SELECT index`: walrep has database 0 only.
pub fn parse_select<'a>(args: Args<'a>) -> Result<Command<'a>, CommandError> {
    match canonical_i64(args[1]) {
        Some(0) => Ok(Command::Select),
        Some(_) => Err(CommandError::DbIndexOutOfRange),
        None => Err(CommandError::NotInteger),
    }
}

/// HELLO, checked in Redis's order: the version first, then the options.
/// Only RESP2 is spoken for now, so `HELLO 3` is refused as Redis 5 did.
pub fn parse_hello<'a>(args: Args<'a>) -> Result<Hello<'a>, CommandError> {
    let mut hello = Hello {
        protover: None,
        auth: None,
        setname: None,
    };
    let Some(version) = args.get(1) else {
        return Ok(hello);
    };
    let version = canonical_i64(version).ok_or(CommandError::ProtocolVersionNotInteger)?;
    if version != 2 {
        return Err(CommandError::NoProto);
    }
    hello.protover = Some(2);
    let mut i = 2;
    while i < args.len() {
        let more = args.len() - 1 - i;
        if is(args[i], "auth") && more >= 2 {
            hello.auth = Some((args[i + 1], args[i + 2]));
            i += 3;
        } else if is(args[i], "setname") && more >= 1 {
            hello.setname = Some(args[i + 1]);
            i += 2;
        } else {
            let opt = String::from_utf8_lossy(args[i]).into_owned();
            return Err(CommandError::HelloOption(opt));
        }
    }
    Ok(hello)
}

pub fn parse_client<'a>(args: Args<'a>) -> Result<ClientCommand<'a>, CommandError> {
    let sub = args[1];
    let a = |name, n| arity(args, name, n);
    if is(sub, "setname") {
        Ok(ClientCommand::SetName(a("client|setname", 3)?[2]))
    } else if is(sub, "getname") {
        a("client|getname", 2).map(|_| ClientCommand::GetName)
    } else if is(sub, "id") {
        a("client|id", 2).map(|_| ClientCommand::Id)
    } else if is(sub, "setinfo") {
        let attr = a("client|setinfo", 4)?[2];
        match is(attr, "lib-name") || is(attr, "lib-ver") {
            true => Ok(ClientCommand::SetInfo),
            false => Err(CommandError::UnknownClientInfo(
                String::from_utf8_lossy(attr).into_owned(),
            )),
        }
    } else if is(sub, "help") {
        a("client|help", 2).map(|_| ClientCommand::Help)
    } else {
        Err(unknown_subcommand("CLIENT", sub))
    }
}

pub fn ping(s: &mut Session, msg: Option<&[u8]>) {
    match msg {
        Some(m) => reply::bulk(&mut s.out, m),
        None => reply::simple(&mut s.out, "PONG"),
    }
}

/// HELLO: authenticate (as AUTH does), name the connection, then
/// describe the server as Redis 7 does (a flat list of field, value pairs
/// in RESP2).
pub fn hello(s: &mut Session, hello: Hello<'_>) -> Done {
    if let Some((user, password)) = hello.auth {
        super::auth::login(s, user, password)?;
    }
    if let Some(name) = hello.setname {
        set_name(s, name)?;
    }
    let role = match s.ctx.backend.role() {
        Role::Primary => "master",
        Role::Standby | Role::Recovering => "replica",
    };
    let out = &mut s.out;
    let text = |out: &mut Vec<u8>, field: &str, value: &str| {
        reply::bulk(out, field.as_bytes());
        reply::bulk(out, value.as_bytes());
    };
    reply::array_header(out, 14);
    text(out, "server", "redis");
    text(out, "version", REDIS_VERSION);
    reply::bulk(out, b"proto");
    reply::integer(out, 2);
    reply::bulk(out, b"id");
    reply::integer(out, s.id as i64);
    text(out, "mode", "standalone");
    text(out, "role", role);
    reply::bulk(out, b"modules");
    reply::array_header(out, 0);
    Ok(())
}

pub fn client(s: &mut Session, c: ClientCommand<'_>) -> Done {
    match c {
        ClientCommand::SetName(name) => {
            set_name(s, name)?;
            reply::ok(&mut s.out);
        }
        ClientCommand::GetName => match &s.client_name {
            Some(n) => reply::bulk(&mut s.out, n.as_bytes()),
            None => reply::null(&mut s.out),
        },
        ClientCommand::Id => reply::integer(&mut s.out, s.id as i64),
        ClientCommand::SetInfo => reply::ok(&mut s.out),
        ClientCommand::Help => help(
            s,
            &[
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GETNAME",
                "    Return the name of the current connection.",
                "ID",
                "    Return the ID of the current connection.",
                "SETINFO <LIB-NAME|LIB-VER> <value>",
                "    Accepted for client libraries; not kept.",
                "SETNAME <name>",
                "    Assign the name <name> to the current connection.",
                "HELP",
                "    Print this help.",
            ],
        ),
    }
    Ok(())
}

/// Name the connection as Redis allows: printable ASCII without spaces;
/// an empty name removes it.
fn set_name(s: &mut Session, name: &[u8]) -> Done {
    if !name.iter().all(|b| (b'!'..=b'~').contains(b)) {
        return Err(CommandError::BadClientName);
    }
    s.client_name = match name {
        [] => None,
        _ => Some(String::from_utf8_lossy(name).into_owned()),
    };
    Ok(())
}

/// A HELP reply: one status line per text line.
pub fn help(s: &mut Session, lines: &[&str]) {
    reply::array_header(&mut s.out, lines.len());
    for l in lines {
        reply::simple(&mut s.out, l);
    }
}
