//! The command table: each command parses its arguments, reads or writes the
//! store, and appends its reply. Error texts follow Redis's, so clients and
//! their users see what they expect.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::protocol::reply;
use super::session::Session;
use super::{Role, WriteError};
use crate::config::SynchronousCommit;
use crate::store::record::{self, KvCommand};
use crate::store::Level;

/// What the session does after a command.
pub enum Flow {
    Continue,
    /// QUIT: send the replies and close.
    Close,
}

/// A command's failure, sent as an error reply.
enum CmdError {
    /// A Redis error text with its prefix word (`ERR ...`, `WRONGTYPE ...`).
    Reply(String),
    Write(WriteError),
}

impl From<WriteError> for CmdError {
    fn from(e: WriteError) -> Self {
        CmdError::Write(e)
    }
}

type CmdResult = Result<(), CmdError>;

fn err(s: impl Into<String>) -> CmdError {
    CmdError::Reply(s.into())
}

/// Execute one request. The connection settles its pending writes before
/// any command that is not a write ([`needs_settled`]) and runs WAIT off
/// its worker thread ([`wait_request`]), so this never blocks on the WAL.
pub fn execute(s: &mut Session, args: &[&[u8]]) -> Flow {
    // Command names are short: lower-case them on the stack (no allocation
    // per request); longer ones are unknown anyway and take the slow path.
    let mut buf = [0u8; 16];
    let lowered;
    let name: &str = match std::str::from_utf8(args[0]) {
        Ok(n) if n.len() <= buf.len() => {
            buf[..n.len()].copy_from_slice(n.as_bytes());
            buf[..n.len()].make_ascii_lowercase();
            std::str::from_utf8(&buf[..n.len()]).unwrap_or("")
        }
        _ => {
            lowered = String::from_utf8_lossy(args[0]).to_ascii_lowercase();
            &lowered
        }
    };
    let result = if reads_data(name) && s.ctx.backend.role() == Role::Recovering {
        Err(CmdError::Write(WriteError::NotConsistent))
    } else {
        dispatch(s, name, args)
    };
    if let Err(e) = result {
        match e {
            CmdError::Reply(text) => reply::error(&mut s.out, &text),
            CmdError::Write(w) => reply::error(&mut s.out, &w.to_string()),
        }
    }
    if name == "quit" {
        Flow::Close
    } else {
        Flow::Continue
    }
}

/// Whether the command named `arg0` must wait until this connection's
/// earlier writes are confirmed: every command but a write, so reads see
/// the connection's own writes and every reply before them is confirmed.
pub fn needs_settled(arg0: &[u8]) -> bool {
    !WRITES
        .iter()
        .any(|w| arg0.eq_ignore_ascii_case(w.as_bytes()))
}

/// Commands that read the store: refused while a standby is not consistent.
fn reads_data(name: &str) -> bool {
    matches!(name, "get" | "mget" | "exists" | "dbsize")
}

/// Whether `arg0` is WAIT, which blocks (up to its timeout) and so runs
/// off the worker thread.
pub fn is_wait(arg0: &[u8]) -> bool {
    arg0.eq_ignore_ascii_case(b"wait")
}

const WRITES: &[&str] = &[
    "set", "setnx", "del", "unlink", "incr", "incrby", "decr", "decrby", "mset", "append",
];

fn arity(args: &[&[u8]], name: &str, ok: bool) -> CmdResult {
    if ok {
        Ok(())
    } else {
        let _ = args;
        Err(err(format!(
            "ERR wrong number of arguments for '{name}' command"
        )))
    }
}

fn dispatch(s: &mut Session, name: &str, args: &[&[u8]]) -> CmdResult {
    let n = args.len();
    match name {
        "ping" => {
            arity(args, name, n <= 2)?;
            match args.get(1) {
                Some(m) => reply::bulk(&mut s.out, m),
                None => reply::simple(&mut s.out, "PONG"),
            }
            Ok(())
        }
        "echo" => {
            arity(args, name, n == 2)?;
            reply::bulk(&mut s.out, args[1]);
            Ok(())
        }
        "quit" => {
            reply::ok(&mut s.out);
            Ok(())
        }
        "get" => {
            arity(args, name, n == 2)?;
            match s.ctx.backend.store().get(args[1]) {
                Some(v) => reply::bulk(&mut s.out, &v),
                None => reply::null(&mut s.out),
            }
            Ok(())
        }
        "mget" => {
            arity(args, name, n >= 2)?;
            reply::array_header(&mut s.out, n - 1);
            for k in &args[1..] {
                match s.ctx.backend.store().get(k) {
                    Some(v) => reply::bulk(&mut s.out, &v),
                    None => reply::null(&mut s.out),
                }
            }
            Ok(())
        }
        "exists" => {
            arity(args, name, n >= 2)?;
            let store = s.ctx.backend.store();
            let count = args[1..].iter().filter(|k| store.get(k).is_some()).count();
            reply::integer(&mut s.out, count as i64);
            Ok(())
        }
        "dbsize" => {
            arity(args, name, n == 1)?;
            reply::integer(&mut s.out, s.ctx.backend.store().len() as i64);
            Ok(())
        }
        "set" => cmd_set(s, args),
        "setnx" => {
            arity(args, name, n == 3)?;
            let written = write(s, KvCommand::Set, |txn| {
                Ok(match txn.latest(args[1]) {
                    Some(_) => (vec![], false),
                    None => (vec![(args[1], Some(Cow::Borrowed(args[2])))], true),
                })
            })?;
            reply::integer(&mut s.out, written as i64);
            Ok(())
        }
        "mset" => {
            arity(args, name, n >= 3 && n % 2 == 1)?;
            write(s, KvCommand::MSet, |_| {
                Ok((
                    args[1..]
                        .chunks(2)
                        .map(|p| (p[0], Some(Cow::Borrowed(p[1]))))
                        .collect(),
                    (),
                ))
            })?;
            reply::ok(&mut s.out);
            Ok(())
        }
        "del" | "unlink" => {
            arity(args, name, n >= 2)?;
            let removed = write(s, KvCommand::Del, |txn| {
                let mut keys: Vec<&[u8]> = args[1..]
                    .iter()
                    .copied()
                    .filter(|k| txn.latest(k).is_some())
                    .collect();
                keys.dedup();
                let count = keys.len();
                Ok((keys.into_iter().map(|k| (k, None)).collect(), count))
            })?;
            reply::integer(&mut s.out, removed as i64);
            Ok(())
        }
        "incr" | "decr" => {
            arity(args, name, n == 2)?;
            cmd_incr(s, args[1], if name == "incr" { 1 } else { -1 })
        }
        "incrby" | "decrby" => {
            arity(args, name, n == 3)?;
            let by = parse_i64(args[2])?;
            let by = if name == "incrby" {
                by
            } else {
                by.checked_neg()
                    .ok_or_else(|| err("ERR decrement would overflow"))?
            };
            cmd_incr(s, args[1], by)
        }
        "append" => {
            arity(args, name, n == 3)?;
            let len = write(s, KvCommand::Set, |txn| {
                let mut v = txn.latest(args[1]).map(|v| v.to_vec()).unwrap_or_default();
                v.extend_from_slice(args[2]);
                let len = v.len();
                Ok((vec![(args[1], Some(Cow::Owned(v)))], len))
            })?;
            reply::integer(&mut s.out, len as i64);
            Ok(())
        }
        "info" => cmd_info(s, args),
        "config" => cmd_config(s, args),
        "wait" => cmd_wait(s, args),
        "select" => {
            arity(args, name, n == 2)?;
            match args[1] {
                b"0" => {
                    reply::ok(&mut s.out);
                    Ok(())
                }
                _ => Err(err("ERR DB index is out of range")),
            }
        }
        "client" => cmd_client(s, args),
        "command" => {
            // redis-cli asks for command docs at start-up; an empty answer
            // makes it fall back to no hints.
            match args.get(1).map(|a| a.to_ascii_lowercase()) {
                Some(sub) if sub == b"count" => reply::integer(&mut s.out, COMMANDS.len() as i64),
                _ => reply::array_header(&mut s.out, 0),
            }
            Ok(())
        }
        "hello" => Err(err("NOPROTO unsupported protocol version")),
        _ => Err(unknown(args)),
    }
}

/// Commands this server knows (COMMAND COUNT and the docs).
pub const COMMANDS: &[&str] = &[
    "ping", "echo", "quit", "get", "mget", "exists", "dbsize", "set", "setnx", "mset", "del",
    "unlink", "incr", "decr", "incrby", "decrby", "append", "info", "config", "wait", "select",
    "client", "command",
];

fn unknown(args: &[&[u8]]) -> CmdError {
    let mut text = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(args[0])
    );
    for a in args[1..].iter().take(8) {
        let a: String = String::from_utf8_lossy(a).chars().take(128).collect();
        text.push_str(&format!("'{a}' "));
    }
    err(text)
}

fn parse_i64(b: &[u8]) -> Result<i64, CmdError> {
    std::str::from_utf8(b)
        .ok()
        .filter(|s| {
            // Redis accepts only canonical integers: no sign '+', no leading zeros, no "-0".
            !(s.starts_with('+') || s.starts_with("-0") || s.len() > 1 && s.starts_with('0'))
        })
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| err("ERR value is not an integer or out of range"))
}

type Ops<'a> = Vec<(&'a [u8], Option<Cow<'a, [u8]>>)>;

/// The write path: under the store's write lock, plan the blind writes from
/// the current (newest) values, insert one WAL record, apply it; then note
/// it as pending so its reply waits for its durability level.
fn write<'a, R>(
    s: &mut Session,
    command: KvCommand,
    plan: impl FnOnce(&crate::store::map::WriteTxn<'_>) -> Result<(Ops<'a>, R), CmdError>,
) -> Result<R, CmdError> {
    let backend = s.ctx.backend.clone();
    if backend.role() != Role::Primary {
        return Err(WriteError::ReadOnly.into());
    }
    let level = Level::for_commit(s.synchronous_commit, backend.sync_standbys_defined());
    let store = backend.store();
    let mut txn = store.write();
    let (ops, result) = plan(&txn)?;
    if ops.is_empty() {
        return Ok(result);
    }
    let borrowed: Vec<(&[u8], Option<&[u8]>)> =
        ops.iter().map(|(k, v)| (*k, v.as_deref())).collect();
    let payload = record::encode(now_us(), &borrowed);
    let end = backend.insert(command as u8, &payload)?;
    let mut compact = Vec::new();
    for (k, v) in &borrowed {
        if txn.apply(end, level, k, *v) {
            compact.push(k.to_vec());
        }
    }
    drop(txn);
    s.note_write(end, level, compact);
    Ok(result)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn cmd_set(s: &mut Session, args: &[&[u8]]) -> CmdResult {
    arity(args, "set", args.len() >= 3)?;
    let (mut nx, mut xx, mut get) = (false, false, false);
    for opt in &args[3..] {
        match opt.to_ascii_lowercase().as_slice() {
            b"nx" => nx = true,
            b"xx" => xx = true,
            b"get" => get = true,
            b"ex" | b"px" | b"exat" | b"pxat" | b"keepttl" => {
                return Err(err(
                    "ERR walrep does not support key expiry (EX, PX, EXAT, PXAT, KEEPTTL)",
                ))
            }
            _ => return Err(err("ERR syntax error")),
        }
    }
    if nx && xx {
        return Err(err("ERR syntax error"));
    }
    let (written, old) = write(s, KvCommand::Set, |txn| {
        // A plain SET is a blind write: no lookup of the current value.
        let old = if nx || xx || get {
            txn.latest(args[1]).map(|v| v.to_vec())
        } else {
            None
        };
        let apply = !(nx && old.is_some() || xx && old.is_none());
        let ops = if apply {
            vec![(args[1], Some(Cow::Borrowed(args[2])))]
        } else {
            vec![]
        };
        Ok((ops, (apply, old)))
    })?;
    if get {
        match old {
            Some(v) => reply::bulk(&mut s.out, &v),
            None => reply::null(&mut s.out),
        }
    } else if written {
        reply::ok(&mut s.out);
    } else {
        reply::null(&mut s.out);
    }
    Ok(())
}

fn cmd_incr(s: &mut Session, key: &[u8], by: i64) -> CmdResult {
    let value = write(s, KvCommand::Incr, |txn| {
        let current = match txn.latest(key) {
            Some(v) => parse_i64(v)?,
            None => 0,
        };
        let next = current
            .checked_add(by)
            .ok_or_else(|| err("ERR increment or decrement would overflow"))?;
        Ok((
            vec![(key, Some(Cow::Owned(next.to_string().into_bytes())))],
            next,
        ))
    })?;
    reply::integer(&mut s.out, value);
    Ok(())
}

fn cmd_info(s: &mut Session, args: &[&[u8]]) -> CmdResult {
    let wanted: Vec<String> = args[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| w == "all" || w == "everything" || w == "default");
    let mut text = String::new();
    for section in [
        "server",
        "clients",
        "persistence",
        "stats",
        "replication",
        "keyspace",
    ] {
        if !all && !wanted.iter().any(|w| w == section) {
            continue;
        }
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
    Ok(())
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
        "total_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\nprotocol_errors:{}\r\n",
        st.total_connections_received.load(Ordering::Relaxed),
        st.total_commands_processed.load(Ordering::Relaxed),
        st.rejected_connections.load(Ordering::Relaxed),
        st.protocol_errors.load(Ordering::Relaxed),
    )
}

fn keyspace_section(s: &Session) -> String {
    let keys = s.ctx.backend.store().len();
    if keys == 0 {
        String::new()
    } else {
        format!("db0:keys={keys},expires=0,avg_ttl=0\r\n")
    }
}

fn cmd_config(s: &mut Session, args: &[&[u8]]) -> CmdResult {
    let sub = args
        .get(1)
        .map(|a| a.to_ascii_lowercase())
        .unwrap_or_default();
    match sub.as_slice() {
        b"get" => {
            arity(args, "config|get", args.len() >= 3)?;
            let config = s.ctx.backend.config();
            let table = toml::Table::try_from(&*config).map_err(|e| err(format!("ERR {e}")))?;
            let mut pairs: Vec<(String, String)> = Vec::new();
            for pattern in &args[2..] {
                let pattern = String::from_utf8_lossy(pattern).to_ascii_lowercase();
                for (k, v) in &table {
                    if glob_match(pattern.as_bytes(), k.as_bytes())
                        && !pairs.iter().any(|(n, _)| n == k)
                    {
                        let value = if k == "synchronous_commit" {
                            s.synchronous_commit.to_string()
                        } else {
                            toml_text(v)
                        };
                        pairs.push((k.clone(), value));
                    }
                }
            }
            reply::array_header(&mut s.out, pairs.len() * 2);
            for (k, v) in pairs {
                reply::bulk(&mut s.out, k.as_bytes());
                reply::bulk(&mut s.out, v.as_bytes());
            }
            Ok(())
        }
        b"set" => {
            arity(args, "config|set", args.len() == 4)?;
            let param = String::from_utf8_lossy(args[2]).to_ascii_lowercase();
            let value = String::from_utf8_lossy(args[3]);
            if param != "synchronous_commit" {
                return Err(err(format!(
                    "ERR CONFIG SET is only supported for synchronous_commit (per connection); set '{param}' in walrep.toml or with -c and restart"
                )));
            }
            let sc: SynchronousCommit =
                value.parse().map_err(|e: String| err(format!("ERR {e}")))?;
            s.synchronous_commit = sc;
            reply::ok(&mut s.out);
            Ok(())
        }
        _ => Err(err(format!(
            "ERR unknown subcommand '{}'. Try CONFIG GET or CONFIG SET.",
            String::from_utf8_lossy(args.get(1).copied().unwrap_or(b""))
        ))),
    }
}

/// A TOML value as CONFIG GET shows it: strings bare, tables as TOML text.
fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Redis's glob: `*`, `?` and literal characters.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob_match(&p[1..], s) || (!s.is_empty() && glob_match(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob_match(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob_match(&p[1..], &s[1..]),
        _ => false,
    }
}

/// A parsed WAIT: how many standbys, for WAL up to where, how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitRequest {
    pub wanted: usize,
    pub upto: crate::Lsn,
    pub timeout: Duration,
}

/// Parse WAIT's arguments; `Err` is the error reply's text.
pub fn wait_request(s: &Session, args: &[&[u8]]) -> Result<WaitRequest, String> {
    let parsed = (|| {
        arity(args, "wait", args.len() == 3)?;
        let wanted = parse_i64(args[1])?;
        let timeout_ms = parse_i64(args[2])?;
        if wanted < 0 || timeout_ms < 0 {
            return Err(err("ERR timeout is negative"));
        }
        // WAIT 0 blocks forever in Redis; walrep bounds every wait, at one hour.
        let timeout = if timeout_ms == 0 {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(timeout_ms as u64)
        };
        Ok(WaitRequest {
            wanted: wanted as usize,
            upto: s.last_write_end,
            timeout,
        })
    })();
    parsed.map_err(|e| match e {
        CmdError::Reply(text) => text,
        CmdError::Write(w) => w.to_string(),
    })
}

fn cmd_wait(s: &mut Session, args: &[&[u8]]) -> CmdResult {
    let w = wait_request(s, args).map_err(CmdError::Reply)?;
    let acked = s.ctx.backend.wait_replicas(w.upto, w.wanted, w.timeout);
    reply::integer(&mut s.out, acked as i64);
    Ok(())
}

fn cmd_client(s: &mut Session, args: &[&[u8]]) -> CmdResult {
    let sub = args
        .get(1)
        .map(|a| a.to_ascii_lowercase())
        .unwrap_or_default();
    match sub.as_slice() {
        b"setname" if args.len() == 3 => {
            s.client_name = Some(String::from_utf8_lossy(args[2]).into_owned());
            reply::ok(&mut s.out);
        }
        b"getname" => match &s.client_name {
            Some(n) => reply::bulk(&mut s.out, n.as_bytes()),
            None => reply::null(&mut s.out),
        },
        b"id" => reply::integer(&mut s.out, s.id as i64),
        b"setinfo" => reply::ok(&mut s.out),
        _ => {
            return Err(err(
                "ERR unknown subcommand or wrong number of arguments for 'client'",
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob_match(b"*", b"port"));
        assert!(glob_match(b"wal_*", b"wal_keep_size"));
        assert!(glob_match(b"p?rt", b"port"));
        assert!(!glob_match(b"save", b"port"));
        assert!(glob_match(b"*size", b"max_wal_size"));
    }

    #[test]
    fn integers_parse_strictly() {
        assert!(parse_i64(b"12").is_ok());
        assert!(parse_i64(b"-12").is_ok());
        for bad in [
            &b"012"[..],
            b"+1",
            b"1.0",
            b"",
            b"99999999999999999999",
            b"-0",
        ] {
            assert!(
                parse_i64(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_i64(b"0").ok(), Some(0));
    }
}
