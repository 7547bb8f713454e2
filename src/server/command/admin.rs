//! Server commands: INFO, CONFIG, WAIT, WAITAOF, COMMAND and TIME, their parsers
//! and executors.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::data::Done;
use super::error::CommandError;
use super::flow::WaitRequest;
use super::glob::Glob;
use super::parse::{arity, canonical_i64, int, is, unknown_subcommand, Args};
use crate::config::SynchronousCommit;
use crate::server::backend::Role;
use crate::server::protocol::reply;
use crate::server::session::Session;

/// What `CONFIG SET` may change: per connection, like PostgreSQL's `SET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigChange {
    SynchronousCommit(SynchronousCommit),
}

/// `WAIT numreplicas timeout` or `WAITAOF numlocal numreplicas timeout`,
/// parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// A negative count asks for none (Redis answers at once).
    pub numreplicas: usize,
    pub timeout: Duration,
    /// WAITAOF: whether the WAL must also be durable here (`numlocal`
    /// 1); `None` for WAIT.
    pub numlocal: Option<bool>,
}

/// `WAIT 0` blocks forever in Redis; walrep bounds every wait, and a
/// longer timeout is cut to this too.
pub const WAIT_FOREVER_BOUND: Duration = Duration::from_secs(3600);

/// CONFIG's subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigCommand<'a> {
    /// `CONFIG GET pattern...`: the patterns.
    Get(Args<'a>),
    Set(ConfigChange),
    Help,
}

pub fn parse_config<'a>(args: Args<'a>) -> Result<ConfigCommand<'a>, CommandError> {
    let sub = args[1];
    if is(sub, "get") {
        Ok(ConfigCommand::Get(&arity(args, "config|get", -3)?[2..]))
    } else if is(sub, "set") {
        parse_config_set(arity(args, "config|set", -4)?).map(ConfigCommand::Set)
    } else if is(sub, "help") {
        arity(args, "config|help", 2).map(|_| ConfigCommand::Help)
    } else {
        Err(unknown_subcommand("CONFIG", sub))
    }
}

/// `CONFIG SET parameter value [parameter value ...]`: every pair is
/// checked before any applies; the last value of a parameter wins.
fn parse_config_set(args: Args<'_>) -> Result<ConfigChange, CommandError> {
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
    change.ok_or(CommandError::Syntax)
}

/// WAIT, checked in Redis's order: the count, then the timeout.
pub fn parse_wait(args: Args<'_>) -> Result<Wait, CommandError> {
    let numreplicas = int(args[1])?;
    Ok(Wait {
        numreplicas: usize::try_from(numreplicas).unwrap_or(0),
        timeout: wait_timeout(args[2])?,
        numlocal: None,
    })
}

/// WAITAOF, checked in Redis's order: `numlocal` (0 or 1), `numreplicas`
/// (not negative), then the timeout.
pub fn parse_waitaof(args: Args<'_>) -> Result<Wait, CommandError> {
    let numlocal = match int(args[1])? {
        0 => false,
        1 => true,
        _ => return Err(CommandError::NumLocalOutOfRange),
    };
    let numreplicas = usize::try_from(int(args[2])?).map_err(|_| CommandError::NotPositive)?;
    Ok(Wait {
        numreplicas,
        timeout: wait_timeout(args[3])?,
        numlocal: Some(numlocal),
    })
}

/// A WAIT's timeout in milliseconds (0: Redis's "forever", bounded here).
fn wait_timeout(arg: &[u8]) -> Result<Duration, CommandError> {
    let timeout_ms = canonical_i64(arg).ok_or(CommandError::TimeoutNotInteger)?;
    if timeout_ms < 0 {
        return Err(CommandError::TimeoutNegative);
    }
    Ok(match timeout_ms {
        0 => WAIT_FOREVER_BOUND,
        ms => Duration::from_millis(ms as u64).min(WAIT_FOREVER_BOUND),
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

pub fn parse_command<'a>(args: Args<'a>) -> Result<CommandQuery<'a>, CommandError> {
    let Some(sub) = args.get(1) else {
        return Ok(CommandQuery::All);
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
    Ok(q)
}

/// TIME: seconds and microseconds of the node's clock.
pub fn time(s: &mut Session) {
    let us = crate::store::control::now_us();
    reply::array_header(&mut s.out, 2);
    reply::bulk(&mut s.out, (us / 1_000_000).to_string().as_bytes());
    reply::bulk(&mut s.out, (us % 1_000_000).to_string().as_bytes());
}

/// The WAIT (or WAITAOF) for this connection's writes so far. WAITAOF
/// is refused on a standby, as Redis refuses it on a replica.
pub fn wait_request(s: &Session, w: Wait) -> Result<WaitRequest, CommandError> {
    if w.numlocal.is_some() && s.ctx.backend.role() != Role::Primary {
        return Err(CommandError::WaitAofOnReplica);
    }
    Ok(WaitRequest {
        wanted: w.numreplicas,
        upto: s.last_write_end,
        timeout: w.timeout,
        numlocal: w.numlocal,
    })
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
    reply::help(
        &mut s.out,
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
