//! Server commands: INFO, CONFIG, WAIT, COMMAND and TIME, their parsers
//! and executors.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::connection::help;
use super::exec::Done;
use super::glob::Glob;
use super::parse::{arity, canonical_i64, int, is, unknown_subcommand};
use super::{table, Args, Command, CommandError};
use crate::config::SynchronousCommit;
use crate::server::protocol::reply;
use crate::server::session::Session;

/// What `CONFIG SET` may change: per connection, like PostgreSQL's `SET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigChange {
    SynchronousCommit(SynchronousCommit),
}

/// `WAIT numreplicas timeout`, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// A negative count asks for none (Redis answers at once).
    pub numreplicas: usize,
    pub timeout: Duration,
}

/// A WAIT to run off the worker thread: how many standbys, for WAL up to
/// where, how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitRequest {
    pub wanted: usize,
    pub upto: crate::Lsn,
    pub timeout: Duration,
}

/// `WAIT 0` blocks forever in Redis; walrep bounds every wait, and a
/// longer timeout is cut to this too.
pub const WAIT_FOREVER_BOUND: Duration = Duration::from_secs(3600);

pub fn parse_config<'a>(args: Args<'a>) -> Result<Command<'a>, CommandError> {
    let sub = args[1];
    if is(sub, "get") {
        Ok(Command::ConfigGet(&arity(args, "config|get", -3)?[2..]))
    } else if is(sub, "set") {
        parse_config_set(arity(args, "config|set", -4)?)
    } else if is(sub, "help") {
        arity(args, "config|help", 2).map(|_| Command::ConfigHelp)
    } else {
        Err(unknown_subcommand("CONFIG", sub))
    }
}

/// `CONFIG SET parameter value [parameter value ...]`: every pair is
/// checked before any applies; the last value of a parameter wins.
fn parse_config_set<'a>(args: Args<'a>) -> Result<Command<'a>, CommandError> {
    if args.len() % 2 != 0 {
        return Err(CommandError::Syntax);
    }
    let mut change = None;
    for pair in args[2..].chunks(2) {
        let param = String::from_utf8_lossy(pair[0]).to_ascii_lowercase();
        if param != "synchronous_commit" {
            return Err(CommandError::ConfigSetUnsupported(param));
        }
        let value = String::from_utf8_lossy(pair[1]);
        let sc = value.parse().map_err(CommandError::Config)?;
        change = Some(ConfigChange::SynchronousCommit(sc));
    }
    change.map(Command::ConfigSet).ok_or(CommandError::Syntax)
}

/// WAIT, checked in Redis's order: the count, then the timeout.
pub fn parse_wait(args: Args<'_>) -> Result<Wait, CommandError> {
    let numreplicas = int(args[1])?;
    let timeout_ms = canonical_i64(args[2]).ok_or(CommandError::TimeoutNotInteger)?;
    if timeout_ms < 0 {
        return Err(CommandError::TimeoutNegative);
    }
    Ok(Wait {
        numreplicas: usize::try_from(numreplicas).unwrap_or(0),
        timeout: match timeout_ms {
            0 => WAIT_FOREVER_BOUND,
            ms => Duration::from_millis(ms as u64).min(WAIT_FOREVER_BOUND),
        },
    })
}

/// COMMAND and its subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandQuery<'a> {
    /// `COMMAND`: every command's INFO.
    All,
    Count,
    List,
    /// `COMMAND INFO [name...]` (none: all).
    Info(Args<'a>),
    /// `COMMAND DOCS [name...]` (none: all).
    Docs(Args<'a>),
    /// `COMMAND GETKEYS command arg...`.
    GetKeys(Args<'a>),
    Help,
}

pub fn parse_command<'a>(args: Args<'a>) -> Result<Command<'a>, CommandError> {
    let Some(sub) = args.get(1) else {
        return Ok(Command::Commands(CommandQuery::All));
    };
    let q = match () {
        _ if is(sub, "count") => arity(args, "command|count", 2).map(|_| CommandQuery::Count)?,
        _ if is(sub, "list") => CommandQuery::List,
        _ if is(sub, "info") => CommandQuery::Info(&args[2..]),
        _ if is(sub, "docs") => CommandQuery::Docs(&args[2..]),
        _ if is(sub, "getkeys") => CommandQuery::GetKeys(&arity(args, "command|getkeys", -3)?[2..]),
        _ if is(sub, "help") => CommandQuery::Help,
        _ => return Err(unknown_subcommand("COMMAND", sub)),
    };
    Ok(Command::Commands(q))
}

/// COMMAND: from the command table.
pub fn command(s: &mut Session, q: CommandQuery<'_>) -> Done {
    let lookup = |name: &[u8]| {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        table::find(&name)
    };
    match q {
        CommandQuery::Count => reply::integer(&mut s.out, table::TABLE.len() as i64),
        CommandQuery::List => {
            reply::array_header(&mut s.out, table::TABLE.len());
            for spec in table::TABLE {
                reply::bulk(&mut s.out, spec.name.as_bytes());
            }
        }
        CommandQuery::All | CommandQuery::Info(&[]) => {
            let mut r = s.reply();
            r.array(table::TABLE.len());
            for spec in table::TABLE {
                table::info(&mut r, spec);
            }
        }
        CommandQuery::Info(names) => {
            let mut r = s.reply();
            r.array(names.len());
            for n in names {
                match lookup(n) {
                    Some(spec) => table::info(&mut r, spec),
                    None => r.null_array(),
                }
            }
        }
        CommandQuery::Docs(names) => {
            let specs: Vec<&table::Spec> = match names {
                [] => table::TABLE.iter().collect(),
                names => names.iter().filter_map(|n| lookup(n)).collect(),
            };
            let mut r = s.reply();
            r.map(specs.len());
            for spec in specs {
                r.bulk(spec.name.as_bytes());
                table::docs(&mut r, spec);
            }
        }
        CommandQuery::GetKeys(request) => {
            let cmd = Command::from_frame(request).map_err(|_| {
                CommandError::Config("Invalid arguments specified for command".into())
            })?;
            let keys: Vec<&[u8]> = cmd.keys().collect();
            if keys.is_empty() {
                return Err(CommandError::Config(
                    "The command has no key arguments".into(),
                ));
            }
            reply::array_header(&mut s.out, keys.len());
            for k in keys {
                reply::bulk(&mut s.out, k);
            }
        }
        CommandQuery::Help => help(
            s,
            &[
                "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "(no subcommand)",
                "    Return details about all commands.",
                "COUNT",
                "    Return the total number of commands.",
                "DOCS [<command-name> ...]",
                "    Return documentation details about multiple commands.",
                "GETKEYS <full-command>",
                "    Return the keys from a full command.",
                "INFO [<command-name> ...]",
                "    Return details about multiple commands.",
                "LIST",
                "    Return a list of all commands.",
                "HELP",
                "    Print this help.",
            ],
        ),
    }
    Ok(())
}

/// TIME: seconds and microseconds of the node's clock.
pub fn time(s: &mut Session) {
    let us = super::exec::now_us();
    reply::array_header(&mut s.out, 2);
    reply::bulk(&mut s.out, (us / 1_000_000).to_string().as_bytes());
    reply::bulk(&mut s.out, (us % 1_000_000).to_string().as_bytes());
}

/// The WAIT for this connection's writes so far.
pub fn wait_request(s: &Session, w: Wait) -> WaitRequest {
    WaitRequest {
        wanted: w.numreplicas,
        upto: s.last_write_end,
        timeout: w.timeout,
    }
}

const INFO_SECTIONS: [&str; 6] = [
    "server",
    "clients",
    "persistence",
    "stats",
    "replication",
    "keyspace",
];

pub fn info(s: &mut Session, sections: Args<'_>) {
    let wanted = |name: &str| {
        sections.is_empty()
            || sections.iter().any(|w| {
                ["all", "everything", "default", name]
                    .iter()
                    .any(|n| is(w, n))
            })
    };
    let mut text = String::new();
    for section in INFO_SECTIONS.into_iter().filter(|n| wanted(n)) {
        let body = match section {
            "clients" => Some(clients_section(s)),
            "stats" => Some(stats_section(s)),
            "keyspace" => Some(keyspace_section(s)),
            other => s.ctx.backend.info_section(other),
        };
        if let Some(body) = body {
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            let mut title = section.to_string();
            title[..1].make_ascii_uppercase();
            text.push_str(&format!("# {title}\r\n{body}"));
        }
    }
    reply::bulk(&mut s.out, text.as_bytes());
}

fn clients_section(s: &Session) -> String {
    format!(
        "connected_clients:{}\r\nmaxclients:{}\r\n",
        s.ctx.stats.connected_clients.load(Ordering::Relaxed),
        s.ctx.settings.max_connections
    )
}

fn stats_section(s: &Session) -> String {
    let st = &s.ctx.stats;
    format!(
        "total_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\nprotocol_errors:{}\r\nexpired_keys:{}\r\n",
        st.total_connections_received.load(Ordering::Relaxed),
        st.total_commands_processed.load(Ordering::Relaxed),
        st.rejected_connections.load(Ordering::Relaxed),
        st.protocol_errors.load(Ordering::Relaxed),
        s.ctx.backend.store().expired_total(),
    )
}

fn keyspace_section(s: &Session) -> String {
    let store = s.ctx.backend.store();
    match store.len() {
        0 => String::new(),
        keys => format!("db0:keys={keys},expires={},avg_ttl=0\r\n", store.expiring()),
    }
}

/// CONFIG GET: every parameter of walrep.toml matching a pattern (names
/// match without regard to case, as in Redis), each once.
pub fn config_get(s: &mut Session, patterns: Args<'_>) -> Done {
    // Never a secret: verifiers and conninfo passwords are masked.
    let config = s.ctx.backend.config().redacted();
    let table = toml::Table::try_from(&config).map_err(|e| CommandError::Config(e.to_string()))?;
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for pattern in patterns {
        let glob = Glob::new(&pattern.to_ascii_lowercase());
        for (k, v) in &table {
            if glob.matches(k.as_bytes()) && !pairs.iter().any(|(n, _)| n == k) {
                let value = match k.as_str() {
                    "synchronous_commit" => s.synchronous_commit.to_string(),
                    _ => toml_text(v),
                };
                pairs.push((k, value));
            }
        }
    }
    let mut r = s.reply();
    r.map(pairs.len());
    for (k, v) in pairs {
        r.bulk(k.as_bytes());
        r.bulk(v.as_bytes());
    }
    Ok(())
}

/// A TOML value as CONFIG GET shows it: strings bare, tables as TOML text.
fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn config_set(s: &mut Session, change: ConfigChange) {
    match change {
        ConfigChange::SynchronousCommit(sc) => s.synchronous_commit = sc,
    }
    reply::ok(&mut s.out);
}

pub fn config_help(s: &mut Session) {
    help(
        s,
        &[
            "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "GET <pattern>",
            "    Return parameters matching the glob-like <pattern> and their values.",
            "SET synchronous_commit <level>",
            "    Set this connection's synchronous_commit; other parameters are set in",
            "    walrep.toml or with -c, and need a restart.",
            "HELP",
            "    Print this help.",
        ],
    );
}
