//! Connection commands: PING, SELECT, HELLO (RESP2 and RESP3) and CLIENT,
//! their parsers and executors (ECHO and QUIT need neither; AUTH and ACL
//! are in [`super::auth`]).

use super::data::Done;
use super::error::CommandError;
use super::flow::Flow;
use super::parse::{arity, canonical_i64, int, is, unknown_subcommand, Args};
use crate::server::backend::Role;
use crate::server::protocol::reply;
use crate::server::session::Session;

/// The Redis version walrep answers as (HELLO, and INFO's redis_version).
pub const REDIS_VERSION: &str = "7.0.0";

/// `HELLO [protover [AUTH username password] [SETNAME name]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello<'a> {
    /// The protocol asked for (2 or 3); `None` keeps the current one.
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
    /// `CLIENT SETINFO LIB-NAME|LIB-VER value` (`ver`: LIB-VER).
    SetInfo {
        ver: bool,
        value: &'a [u8],
    },
    Help,
    /// `CLIENT LIST [TYPE normal] [ID id...]`: `None` lists every client.
    List(Option<Vec<u64>>),
    /// `CLIENT INFO`: this connection's line.
    Info,
    /// `CLIENT KILL ip:port`, or the filter form.
    Kill(KillFilter<'a>),
    /// `CLIENT NO-EVICT`, `CLIENT NO-TOUCH`: accepted (walrep evicts
    /// nothing and keeps no access times).
    Accepted,
}

/// Which connections CLIENT KILL closes: all that match every filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KillFilter<'a> {
    pub id: Option<u64>,
    pub addr: Option<&'a [u8]>,
    pub laddr: Option<&'a [u8]>,
    /// SKIPME (default yes): never the calling connection.
    pub skip_me: bool,
    /// The old form, `CLIENT KILL ip:port`: an error if none matches.
    pub old_form: bool,
    /// MAXAGE: only connections older than this many seconds.
    pub max_age_s: Option<u64>,
}

/// PING's optional message.
pub fn parse_ping<'a>(args: Args<'a>) -> Result<Option<&'a [u8]>, CommandError> {
    match args {
        [_] => Ok(None),
        [_, msg] => Ok(Some(msg)),
        _ => Err(CommandError::Arity("ping")),
    }
}

/// `SELECT index`: walrep has database 0 only.
pub fn parse_select(args: Args<'_>) -> Result<(), CommandError> {
    match canonical_i64(args[1]) {
        Some(0) => Ok(()),
        Some(_) => Err(CommandError::DbIndexOutOfRange),
        None => Err(CommandError::NotInteger),
    }
}

/// HELLO, checked in Redis's order: the version first, then the options.
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
    if version != 2 && version != 3 {
        return Err(CommandError::NoProto);
    }
    hello.protover = Some(version as u8);
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
        let a = a("client|setinfo", 4)?;
        let ver = match () {
            _ if is(a[2], "lib-name") => false,
            _ if is(a[2], "lib-ver") => true,
            _ => {
                return Err(CommandError::UnknownClientInfo(
                    String::from_utf8_lossy(a[2]).into_owned(),
                ))
            }
        };
        Ok(ClientCommand::SetInfo { ver, value: a[3] })
    } else if is(sub, "help") {
        a("client|help", 2).map(|_| ClientCommand::Help)
    } else if is(sub, "list") {
        parse_list(args)
    } else if is(sub, "info") {
        a("client|info", 2).map(|_| ClientCommand::Info)
    } else if is(sub, "kill") {
        parse_kill(a("client|kill", -3)?).map(ClientCommand::Kill)
    } else if is(sub, "no-evict") || is(sub, "no-touch") {
        let on = a("client|no-evict", 3)?[2];
        match is(on, "on") || is(on, "off") {
            true => Ok(ClientCommand::Accepted),
            false => Err(CommandError::Syntax),
        }
    } else {
        Err(unknown_subcommand("CLIENT", sub))
    }
}

/// `CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id...]`: walrep's
/// clients are all `normal`.
fn parse_list<'a>(args: Args<'a>) -> Result<ClientCommand<'a>, CommandError> {
    let mut ids = None;
    let mut i = 2;
    while i < args.len() {
        if is(args[i], "type") && i + 1 < args.len() {
            let t = args[i + 1];
            if !["normal", "master", "replica", "slave", "pubsub"]
                .iter()
                .any(|n| is(t, n))
            {
                return Err(CommandError::Config(format!(
                    "Unknown client type '{}'",
                    String::from_utf8_lossy(t)
                )));
            }
            if !is(t, "normal") {
                ids = Some(Vec::new());
            }
            i += 2;
        } else if is(args[i], "id") && i + 1 < args.len() {
            let list = args[i + 1..]
                .iter()
                .map(|a| {
                    int(a)
                        .ok()
                        .and_then(|n| u64::try_from(n).ok())
                        .filter(|&n| n > 0)
                        .ok_or(CommandError::Config("Invalid client ID".into()))
                })
                .collect::<Result<Vec<u64>, _>>()?;
            ids = Some(list);
            i = args.len();
        } else {
            return Err(CommandError::Syntax);
        }
    }
    Ok(ClientCommand::List(ids))
}

/// `CLIENT KILL ip:port` or `CLIENT KILL [ID id] [ADDR ip:port]
/// [LADDR ip:port] [SKIPME yes|no] [MAXAGE s] [TYPE normal] [USER default]`.
fn parse_kill<'a>(args: Args<'a>) -> Result<KillFilter<'a>, CommandError> {
    if args.len() == 3 {
        return Ok(KillFilter {
            addr: Some(args[2]),
            old_form: true,
            ..KillFilter::default()
        });
    }
    let mut f = KillFilter {
        skip_me: true,
        ..KillFilter::default()
    };
    for pair in args[2..].chunks(2) {
        let [name, value] = pair else {
            return Err(CommandError::Syntax);
        };
        let number = || {
            int(value)
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or(CommandError::Syntax)
        };
        match () {
            _ if is(name, "id") => f.id = Some(number()?),
            _ if is(name, "addr") => f.addr = Some(value),
            _ if is(name, "laddr") => f.laddr = Some(value),
            _ if is(name, "maxage") => f.max_age_s = Some(number()?),
            _ if is(name, "skipme") && is(value, "yes") => f.skip_me = true,
            _ if is(name, "skipme") && is(value, "no") => f.skip_me = false,
            _ if is(name, "type") && is(value, "normal") => {}
            _ if is(name, "user") && is(value, "default") => {}
            _ => return Err(CommandError::Syntax),
        }
    }
    Ok(f)
}

pub fn ping(s: &mut Session, msg: Option<&[u8]>) {
    match msg {
        Some(m) => reply::bulk(&mut s.out, m),
        None => reply::simple(&mut s.out, "PONG"),
    }
}

/// HELLO: authenticate (as AUTH does), switch the protocol, name the
/// connection, then describe the server as Redis 7 does (a map in RESP3,
/// a flat list of field, value pairs in RESP2). A wrong password changes
/// nothing: not the protocol, not the name.
pub fn hello(s: &mut Session, hello: Hello<'_>) -> Done {
    if let Some((user, password)) = hello.auth {
        super::auth::login(s, user, password)?;
    }
    if let Some(name) = hello.setname {
        set_name(s, name)?;
    }
    if let Some(v) = hello.protover {
        s.resp3 = v == 3;
        s.client.set_resp(v);
    }
    let role = match s.ctx.backend.role() {
        Role::Primary => "master",
        Role::Standby | Role::Recovering => "replica",
    };
    let id = s.id as i64;
    let mut r = s.reply();
    r.map(7);
    for (field, value) in [("server", "redis"), ("version", REDIS_VERSION)] {
        r.bulk(field.as_bytes());
        r.bulk(value.as_bytes());
    }
    r.bulk(b"proto");
    r.int(if r.resp3 { 3 } else { 2 });
    r.bulk(b"id");
    r.int(id);
    for (field, value) in [("mode", "standalone"), ("role", role)] {
        r.bulk(field.as_bytes());
        r.bulk(value.as_bytes());
    }
    r.bulk(b"modules");
    r.array(0);
    Ok(())
}

pub fn client(s: &mut Session, c: ClientCommand<'_>) -> Result<Flow, CommandError> {
    match c {
        ClientCommand::SetName(name) => {
            set_name(s, name)?;
            reply::ok(&mut s.out);
        }
        ClientCommand::GetName => match s.client.name() {
            Some(n) => reply::bulk(&mut s.out, n.as_bytes()),
            None => s.reply().null(),
        },
        ClientCommand::Id => reply::integer(&mut s.out, s.id as i64),
        ClientCommand::SetInfo { ver, value } => {
            let value = String::from_utf8_lossy(value);
            if value.contains(|c: char| c == ' ' || c.is_control()) {
                return Err(CommandError::Config(format!(
                    "{} cannot contain spaces, newlines or special characters.",
                    if ver { "lib-ver" } else { "lib-name" }
                )));
            }
            s.client.set_lib(ver, &value);
            reply::ok(&mut s.out);
        }
        ClientCommand::Accepted => reply::ok(&mut s.out),
        ClientCommand::Info => {
            let line = format!("{}\n", s.client.line());
            reply::bulk(&mut s.out, line.as_bytes());
        }
        ClientCommand::List(ids) => {
            let text: String = s
                .ctx
                .clients
                .all()
                .iter()
                .filter(|c| ids.as_ref().is_none_or(|ids| ids.contains(&c.id)))
                .map(|c| format!("{}\n", c.line()))
                .collect();
            reply::bulk(&mut s.out, text.as_bytes());
        }
        ClientCommand::Kill(f) => return kill(s, f),
        ClientCommand::Help => reply::help(
            &mut s.out,
            &[
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GETNAME",
                "    Return the name of the current connection.",
                "ID",
                "    Return the ID of the current connection.",
                "INFO",
                "    Return information about the current client connection.",
                "KILL <ip:port>",
                "    Kill connection made from <ip:port>.",
                "KILL <option> <value> [<option> <value> [...]]",
                "    Kill connections. Options are: ID <client-id>, ADDR <ip:port>,",
                "    LADDR <ip:port>, MAXAGE <seconds>, SKIPME (YES|NO), TYPE normal, USER default.",
                "LIST [TYPE normal] [ID <id> [<id> ...]]",
                "    Return information about client connections.",
                "SETINFO <LIB-NAME|LIB-VER> <value>",
                "    Set client library name or version (shown by CLIENT LIST).",
                "SETNAME <name>",
                "    Assign the name <name> to the current connection.",
                "HELP",
                "    Print this help.",
            ],
        ),
    }
    Ok(Flow::Continue)
}

/// CLIENT KILL: mark the matching connections; their worker loops close
/// them. The caller itself (SKIPME no) is closed after this reply.
fn kill(s: &mut Session, f: KillFilter<'_>) -> Result<Flow, CommandError> {
    let matches = |c: &crate::server::clients::ClientInfo| {
        f.id.is_none_or(|id| id == c.id)
            && f.addr.is_none_or(|a| a == c.addr.as_bytes())
            && f.laddr.is_none_or(|a| a == c.laddr.as_bytes())
            && f.max_age_s.is_none_or(|m| c.age_s() >= m)
    };
    let mut killed = 0;
    let mut me = false;
    for c in s.ctx.clients.all().iter().filter(|c| matches(c)) {
        if c.id == s.id {
            if f.skip_me && !f.old_form {
                continue;
            }
            me = true;
        } else {
            c.kill();
        }
        killed += 1;
    }
    match (f.old_form, killed) {
        (true, 0) => return Err(CommandError::NoSuchClient),
        (true, _) => reply::ok(&mut s.out),
        (false, n) => reply::integer(&mut s.out, n),
    }
    Ok(if me { Flow::Close } else { Flow::Continue })
}

/// Name the connection as Redis allows: printable ASCII without spaces;
/// an empty name removes it.
fn set_name(s: &mut Session, name: &[u8]) -> Done {
    if !name.iter().all(|b| (b'!'..=b'~').contains(b)) {
        return Err(CommandError::BadClientName);
    }
    s.client.set_name(match name {
        [] => None,
        _ => Some(String::from_utf8_lossy(name).into_owned()),
    });
    Ok(())
}
