//! Connection start: SSLRequest answered `S` and the TLS handshake run
//! (with `ssl = on`; `N` otherwise, and to GSSENCRequest), the
//! StartupMessage checked, the client authenticated by the hba list
//! (host/hostssl/hostnossl; trust, scram-sha-256, reject) with
//! PostgreSQL's FATAL errors, the replication attribute checked, and the
//! ParameterStatus set a PostgreSQL 15 client needs.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::conn::Conn;
use super::Ctx;
use crate::config::{HbaConnection, HbaEntry, HbaMethod};
use crate::replication::pgwire::io::WireError;
use crate::replication::pgwire::{
    Authentication, BackendMessage, FrontendMessage, MessageReader, SaslInitialResponse,
    StartupPacket, PROTOCOL_V3,
};
use crate::replication::source::ReplicationSource;
use crate::replication::sqlstate::{self as code, PgError};
use crate::security::scram::{self, ScramError, ScramKeys, ScramServer};
use crate::security::NetStream;
use crate::status::links;
use crate::util::Cidr;

/// Who connected, once authenticated.
pub(super) struct Client {
    pub user: String,
    pub application_name: String,
    pub peer: SocketAddr,
    /// The connection is encrypted.
    pub tls: bool,
    /// A walrep standby's status address (its `walrep.status_url` startup
    /// parameter), with an unspecified host replaced by the peer's.
    pub status_url: Option<String>,
    /// The client said (startup parameter [`RECEIVE_UNFLUSHED_PARAMETER`])
    /// that it exposes no WAL past the flush position it is told: it may
    /// be sent WAL as soon as it is written here. Any other client gets
    /// only flushed WAL, as PostgreSQL sends.
    pub receive_unflushed: bool,
    /// The client asked ([`APPLY_FEEDBACK_PARAMETER`]) to be told when a
    /// commit waits for its apply position, and this node agreed (it is
    /// a candidate synchronous standby here): it then reports replay
    /// progress at once only when told, as PostgreSQL's standby does for
    /// commits that asked for apply feedback.
    pub apply_feedback_on_request: bool,
    /// The client asked ([`FLUSH_HINT_PARAMETER`]) to be told whether a
    /// commit may wait for its flush position, and this node agreed (a
    /// walrep server always does): its keepalives carry
    /// `PrimaryKeepalive::flush_deferrable`.
    pub flush_hint: bool,
}

/// The startup parameter (and, echoed, the ParameterStatus) of the walrep
/// extension "apply feedback on request": a walrep standby asks with the
/// value [`APPLY_FEEDBACK_ON_REQUEST`]; a walrep server that agrees echoes
/// it as a ParameterStatus and from then on flags keepalives
/// (`PrimaryKeepalive::apply_feedback`) whenever a commit waits for that
/// standby's apply position (`remote_apply`). The standby then sends a
/// status update for replay progress only when flagged (or at its status
/// interval), instead of after every replayed batch: at `on`, half of its
/// replies, and of the primary's wake-ups for them, carried nothing any
/// commit waited for. A server that does not echo it (PostgreSQL, which
/// takes it as a harmless custom setting) gets replies as before.
pub const APPLY_FEEDBACK_PARAMETER: &str = "walrep.apply_feedback";

/// The value of [`APPLY_FEEDBACK_PARAMETER`] asking for (and agreeing to)
/// apply feedback on request.
pub const APPLY_FEEDBACK_ON_REQUEST: &str = "on_request";

/// The startup parameter (and, echoed, the ParameterStatus) of the walrep
/// extension "flush hint": a walrep standby asks with the value `on`; a
/// walrep server that agrees echoes it and from then on says in every
/// keepalive whether no commit here may wait for that standby's flush
/// position (`PrimaryKeepalive::flush_deferrable`: it is not a candidate
/// synchronous standby), and sends one keepalive whenever that changes.
/// While told so, the standby may space its fsyncs; a standby never told
/// (PostgreSQL's server takes the parameter as a harmless custom setting
/// and sends no such flag) fsyncs at once, as PostgreSQL's does.
pub const FLUSH_HINT_PARAMETER: &str = "walrep.flush_hint";

/// The startup parameter a walrep standby sends (`on`) to be streamed WAL
/// before it is durable here: it promises to expose and report as
/// applied nothing past the flush position each message carries (`walEnd`
/// of XLogData and keepalives), and to drop what it holds past it when the
/// stream ends. A PostgreSQL server takes it as a harmless custom setting.
pub const RECEIVE_UNFLUSHED_PARAMETER: &str = "walrep.receive_unflushed";

/// How startup ended without a session.
pub(super) enum StartupEnd {
    /// Tell the client (FATAL) and close.
    Fatal(PgError),
    /// Just close (client left, cancel request, garbage before any message).
    Close(String),
}

impl From<WireError> for StartupEnd {
    fn from(e: WireError) -> Self {
        StartupEnd::Close(e.to_string())
    }
}

impl From<std::io::Error> for StartupEnd {
    fn from(e: std::io::Error) -> Self {
        StartupEnd::Close(e.to_string())
    }
}

type Reader = MessageReader<NetStream>;

/// Run the startup phase up to (not including) BackendKeyData.
pub(super) fn negotiate<S: ReplicationSource>(
    ctx: &Ctx<S>,
    reader: &mut Reader,
    conn: &mut Conn,
    peer: SocketAddr,
) -> Result<Client, StartupEnd> {
    let deadline = Instant::now() + ctx.options.authentication_timeout;
    let params = startup_params(ctx, reader, conn, deadline)?;
    let tls = reader.get_ref().is_tls();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let user = get("user").filter(|u| !u.is_empty()).ok_or_else(|| {
        fatal(
            code::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        )
    })?;
    check_replication_param(get("replication"), &user, get("database"), peer.ip())?;
    let method = authenticate(ctx, reader, conn, &user, peer.ip(), deadline)?;
    check_replication_role(ctx, &user, method)?;
    conn.send(&BackendMessage::Authentication(Authentication::Ok));
    let application_name = get("application_name").unwrap_or_default();
    for (name, value) in parameter_status(ctx, &user, &application_name) {
        conn.send(&BackendMessage::ParameterStatus { name, value });
    }
    let apply_feedback_on_request = get(APPLY_FEEDBACK_PARAMETER).as_deref()
        == Some(APPLY_FEEDBACK_ON_REQUEST)
        && ctx.source.apply_feedback_on_request(&application_name);
    if apply_feedback_on_request {
        conn.send(&BackendMessage::ParameterStatus {
            name: APPLY_FEEDBACK_PARAMETER.into(),
            value: APPLY_FEEDBACK_ON_REQUEST.into(),
        });
    }
    let flush_hint = get(FLUSH_HINT_PARAMETER).as_deref() == Some("on");
    if flush_hint {
        conn.send(&BackendMessage::ParameterStatus {
            name: FLUSH_HINT_PARAMETER.into(),
            value: "on".into(),
        });
    }
    let status_url = get(links::STATUS_URL_STARTUP_PARAMETER)
        .and_then(|u| links::accept(&u))
        .map(|u| links::resolve(&u, &peer.ip().to_string()));
    let receive_unflushed = get(RECEIVE_UNFLUSHED_PARAMETER).as_deref() == Some("on");
    Ok(Client {
        user,
        application_name,
        peer,
        tls,
        status_url,
        receive_unflushed,
        apply_feedback_on_request,
        flush_hint,
    })
}

fn fatal(c: &'static str, msg: impl Into<String>) -> StartupEnd {
    StartupEnd::Fatal(PgError::fatal(c, msg))
}

fn set_deadline(reader: &Reader, deadline: Instant) -> Result<(), StartupEnd> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(StartupEnd::Close("authentication timeout".into()));
    }
    reader.get_ref().set_read_timeout(Some(left))?;
    Ok(())
}

/// Read packets until the StartupMessage, answering encryption requests.
fn startup_params<S: ReplicationSource>(
    ctx: &Ctx<S>,
    reader: &mut Reader,
    conn: &mut Conn,
    deadline: Instant,
) -> Result<Vec<(String, String)>, StartupEnd> {
    // At most one SSLRequest and one GSSENCRequest precede the startup.
    for _ in 0..3 {
        set_deadline(reader, deadline)?;
        match reader.read_startup()? {
            StartupPacket::SslRequest if !reader.get_ref().is_tls() => {
                start_tls(ctx, reader, conn, deadline)?;
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                conn.send_raw(b"N");
                conn.flush()?;
            }
            StartupPacket::Cancel { .. } => {
                return Err(StartupEnd::Close("cancel request (ignored)".into()))
            }
            StartupPacket::Startup { version, params } => {
                if version >> 16 != PROTOCOL_V3 >> 16 {
                    return Err(fatal(
                        code::FEATURE_NOT_SUPPORTED,
                        format!(
                            "unsupported frontend protocol {}.{}: server supports 3.0 to 3.0",
                            version >> 16,
                            version & 0xFFFF
                        ),
                    ));
                }
                return Ok(params);
            }
        }
    }
    Err(StartupEnd::Close("too many encryption requests".into()))
}

/// Answer an SSLRequest: `N` without `ssl`, else `S` and the handshake,
/// after which the reader and writer speak through TLS.
fn start_tls<S: ReplicationSource>(
    ctx: &Ctx<S>,
    reader: &mut Reader,
    conn: &mut Conn,
    deadline: Instant,
) -> Result<(), StartupEnd> {
    let Some(config) = ctx.options.tls.clone() else {
        conn.send_raw(b"N");
        conn.flush()?;
        return Ok(());
    };
    // Bytes sent after the SSLRequest but before the handshake would be
    // taken as if encrypted (CVE-2021-23214): refuse them.
    if !reader.buffered().is_empty() {
        return Err(fatal(
            code::PROTOCOL_VIOLATION,
            "received unencrypted data after SSL request",
        ));
    }
    conn.send_raw(b"S");
    conn.flush()?;
    let sock = reader.get_ref().socket().try_clone()?;
    let stream = NetStream::accept_tls(sock, config, deadline)
        .map_err(|e| StartupEnd::Close(format!("could not accept SSL connection: {e}")))?;
    *conn = Conn::new(stream.try_clone()?);
    *reader = MessageReader::new(stream, ctx.options.max_message_len);
    Ok(())
}

/// PostgreSQL lets only superusers and roles with the REPLICATION
/// attribute start a walsender. A role not listed in `[[roles]]` has it
/// only when a `trust` line let it in (the address is its credential).
fn check_replication_role<S: ReplicationSource>(
    ctx: &Ctx<S>,
    user: &str,
    method: HbaMethod,
) -> Result<(), StartupEnd> {
    let allowed = match ctx.options.roles.get(user) {
        Some(role) => role.replication,
        None => method == HbaMethod::Trust,
    };
    if allowed {
        return Ok(());
    }
    Err(fatal(
        code::INSUFFICIENT_PRIVILEGE,
        "must be superuser or replication role to start walsender",
    ))
}

/// Only physical replication connections are served: a plain database
/// connection finds no hba line (as with a replication-only pg_hba.conf).
fn check_replication_param(
    replication: Option<String>,
    user: &str,
    database: Option<String>,
    ip: IpAddr,
) -> Result<(), StartupEnd> {
    let v = replication.unwrap_or_default().to_ascii_lowercase();
    match v.as_str() {
        "true" | "on" | "yes" | "1" => Ok(()),
        "database" => Err(fatal(
            code::FEATURE_NOT_SUPPORTED,
            "logical replication connections are not supported by walrep",
        )),
        _ => Err(fatal(
            code::INVALID_AUTHORIZATION,
            format!(
                "no pg_hba.conf entry for host \"{ip}\", user \"{user}\", database \"{}\", no encryption",
                database.unwrap_or_else(|| user.to_string())
            ),
        )),
    }
}

/// The first hba line whose connection type fits (`hostssl` wants TLS,
/// `hostnossl` wants none), whose address range holds `ip` and whose user
/// list names `user` (or `all`).
pub(crate) fn hba_lookup<'a>(
    hba: &'a [HbaEntry],
    ip: IpAddr,
    user: &str,
    tls: bool,
) -> Option<&'a HbaEntry> {
    hba.iter().find(|h| {
        let type_ok = match h.connection {
            HbaConnection::Host => true,
            HbaConnection::HostSsl => tls,
            HbaConnection::HostNoSsl => !tls,
        };
        let user_ok = h
            .user
            .split(',')
            .map(str::trim)
            .any(|u| u == "all" || u == user);
        type_ok && user_ok && Cidr::parse(&h.address).is_some_and(|c| c.contains(ip))
    })
}

fn authenticate<S: ReplicationSource>(
    ctx: &Ctx<S>,
    reader: &mut Reader,
    conn: &mut Conn,
    user: &str,
    ip: IpAddr,
    deadline: Instant,
) -> Result<HbaMethod, StartupEnd> {
    let tls = reader.get_ref().is_tls();
    let encryption = if tls {
        "SSL encryption"
    } else {
        "no encryption"
    };
    let Some(line) = hba_lookup(&ctx.options.hba, ip, user, tls) else {
        return Err(fatal(
            code::INVALID_AUTHORIZATION,
            format!("no pg_hba.conf entry for replication connection from host \"{ip}\", user \"{user}\", {encryption}"),
        ));
    };
    if line.clientcert && !reader.get_ref().peer_has_certificate() {
        return Err(fatal(
            code::INVALID_AUTHORIZATION,
            "connection requires a valid client certificate",
        ));
    }
    match line.method {
        HbaMethod::Trust => {}
        HbaMethod::Reject => {
            return Err(fatal(
                code::INVALID_AUTHORIZATION,
                format!("pg_hba.conf rejects replication connection for host \"{ip}\", user \"{user}\", {encryption}"),
            ))
        }
        HbaMethod::ScramSha256 => {
            let keys = ctx
                .options
                .roles
                .get(user)
                .and_then(|r| r.verifier.as_ref())
                .map(|v| v.keys.clone());
            scram_exchange(reader, conn, user, keys, deadline)?;
        }
    }
    Ok(line.method)
}

fn read_auth_response(reader: &mut Reader, deadline: Instant) -> Result<Vec<u8>, StartupEnd> {
    set_deadline(reader, deadline)?;
    match reader.read_frontend()? {
        FrontendMessage::AuthResponse(body) => Ok(body),
        other => Err(fatal(
            code::PROTOCOL_VIOLATION,
            format!("expected SASL response, got message type {other:?}"),
        )),
    }
}

fn scram_exchange(
    reader: &mut Reader,
    conn: &mut Conn,
    user: &str,
    keys: Option<ScramKeys>,
    deadline: Instant,
) -> Result<(), StartupEnd> {
    conn.send(&BackendMessage::Authentication(Authentication::Sasl(vec![
        scram::MECHANISM.to_string(),
    ])));
    conn.flush()?;
    let initial = SaslInitialResponse::parse(&read_auth_response(reader, deadline)?)
        .map_err(|e| fatal(code::PROTOCOL_VIOLATION, e.to_string()))?;
    if initial.mechanism != scram::MECHANISM {
        return Err(fatal(
            code::PROTOCOL_VIOLATION,
            "client selected an invalid SASL authentication mechanism",
        ));
    }
    let mut server = ScramServer::new(keys, user);
    let first = initial.data.unwrap_or_default();
    let challenge = server
        .client_first(&first)
        .map_err(|e| scram_fatal(e, user))?;
    conn.send(&BackendMessage::Authentication(
        Authentication::SaslContinue(challenge),
    ));
    conn.flush()?;
    let response = read_auth_response(reader, deadline)?;
    let outcome = server
        .client_final(&response)
        .map_err(|e| scram_fatal(e, user))?;
    conn.send(&BackendMessage::Authentication(Authentication::SaslFinal(
        outcome,
    )));
    Ok(())
}

fn scram_fatal(e: ScramError, user: &str) -> StartupEnd {
    match e {
        ScramError::BadPassword => fatal(
            code::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user}\""),
        ),
        ScramError::ChannelBinding => fatal(
            code::PROTOCOL_VIOLATION,
            "channel binding is not supported by this build",
        ),
        other => StartupEnd::Fatal(
            PgError::fatal(code::PROTOCOL_VIOLATION, "malformed SCRAM message")
                .with_detail(other.to_string()),
        ),
    }
}

/// What PostgreSQL 15 reports after authentication.
fn parameter_status<S: ReplicationSource>(
    ctx: &Ctx<S>,
    user: &str,
    application_name: &str,
) -> Vec<(String, String)> {
    let on_off = |b: bool| if b { "on" } else { "off" };
    let in_recovery = ctx.source.in_recovery();
    let instance_id = format_instance_id(ctx.options.instance_id);
    let chain = format_chain(&ctx.source.upstream_chain());
    [
        ("application_name", application_name),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("default_transaction_read_only", on_off(in_recovery)),
        ("in_hot_standby", on_off(in_recovery)),
        ("integer_datetimes", "on"),
        ("IntervalStyle", "postgres"),
        ("is_superuser", "on"),
        ("server_encoding", "UTF8"),
        ("server_version", ctx.options.server_version.as_str()),
        ("session_authorization", user),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        (INSTANCE_ID_PARAMETER, instance_id.as_str()),
        (UPSTREAM_CHAIN_PARAMETER, chain.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain(announced_history_id(&*ctx.source).map(|h| (HISTORY_ID_PARAMETER.to_string(), h)))
    .chain(
        ctx.options
            .status_url
            .clone()
            .map(|u| (links::STATUS_URL_PARAMETER.to_string(), u)),
    )
    .collect()
}

/// The ParameterStatus naming the serving node's timeline and its history
/// id, `TLI/HEX` (walrep only; not sent on timeline 1, which has no id).
pub const HISTORY_ID_PARAMETER: &str = "walrep_history_id";

/// `TLI/HEX` of the source's current timeline, from its history file.
fn announced_history_id<S: ReplicationSource>(source: &S) -> Option<String> {
    let tli = source.flush_point().tli;
    let text = source.history_file(tli).ok()??;
    let ids = crate::wal::timeline::history_ids(&String::from_utf8_lossy(&text));
    let id = ids.get(&tli)?;
    Some(format!(
        "{}/{}",
        tli.0,
        crate::wal::timeline::format_history_id(*id)
    ))
}

/// Parse a [`HISTORY_ID_PARAMETER`] value.
pub fn parse_history_id_parameter(v: &str) -> Option<(crate::TimelineId, u64)> {
    let (tli, id) = v.split_once('/')?;
    Some((
        crate::TimelineId(tli.parse().ok()?),
        u64::from_str_radix(id, 16).ok()?,
    ))
}

/// The ParameterStatus naming the serving node's instance (walrep only).
pub const INSTANCE_ID_PARAMETER: &str = "walrep_instance_id";

/// The ParameterStatus listing the instances the serving node streams
/// from, nearest first, comma-separated (walrep only; empty on a primary).
pub const UPSTREAM_CHAIN_PARAMETER: &str = "walrep_upstream_chain";

/// An upstream chain as sent.
pub fn format_chain(chain: &[u64]) -> String {
    chain
        .iter()
        .map(|id| format_instance_id(*id))
        .collect::<Vec<_>>()
        .join(",")
}

/// An instance identifier as sent: 16 hex digits.
pub fn format_instance_id(id: u64) -> String {
    format!("{id:016X}")
}
