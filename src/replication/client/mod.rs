//! A replication client, the walreceiver's side of the protocol: connect
//! (trust, SCRAM-SHA-256 or cleartext password), IDENTIFY_SYSTEM, SHOW,
//! TIMELINE_HISTORY, slot commands and START_REPLICATION, then a receive
//! loop of typed [`StreamEvent`]s while status updates go back upstream
//! (from the same thread or, through a [`StatusSender`], another one).

mod backup;
mod stream;
mod walrange;

pub use crate::config::conninfo::{redact_conninfo, ConnInfo, ConnInfoError};
pub use backup::{BackupMessage, BackupRead, BackupStart, BaseBackupRequest, Tablespace};
pub use stream::{StartOutcome, StatusSender, StreamEvent};

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use walrep_states::{Lsn, TimelineId};

use super::pgwire::io::WireError;
use super::pgwire::{
    Authentication, BackendMessage, ErrorFields, FieldDescription, FrontendMessage, MessageReader,
    SaslInitialResponse, StartupPacket, DEFAULT_MAX_MESSAGE_LEN,
};
use crate::security::passfile::PassfileError;
use crate::security::scram::{ScramClient, ScramError, MECHANISM};
use crate::security::tls::{self, TlsError};
use crate::security::NetStream;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection string does not parse.
    #[error(transparent)]
    ConnInfo(#[from] ConnInfoError),
    /// The host did not resolve, or none of its addresses accepted a TCP
    /// connection in time.
    #[error("could not connect to server at \"{host}\" port {port}: {reason}")]
    Connect {
        /// `host` of the connection string.
        host: String,
        /// `port` of the connection string.
        port: u16,
        /// The last address's error.
        reason: String,
    },
    /// The server sent an ErrorResponse ([`ClientError::sqlstate`] tells
    /// which); boxed to keep the error small.
    #[error("{}", server_text(.0))]
    Server(Box<ErrorFields>),
    /// Authentication could not proceed on our side: no password, md5
    /// asked (not supported), or no SASL mechanism in common.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The SCRAM exchange failed, e.g. the server's signature is wrong
    /// (it does not know the password: maybe not the server we meant).
    #[error(transparent)]
    Scram(#[from] ScramError),
    /// The server sent something the protocol does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Reading a message failed (closed, timed out, malformed).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Writing to the socket failed.
    #[error("could not send data to server: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS configuration (`sslrootcert`, host name) is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TLS handshake failed (e.g. certificate not trusted).
    #[error("SSL error: {0}")]
    Handshake(String),
    /// `sslmode=require` (or stricter) and the server answered `N`.
    #[error("server does not support SSL, but SSL was required")]
    SslRequired,
    /// The password file (`passfile`, `~/.pgpass`) could not be used:
    /// unreadable, or readable by others.
    #[error(transparent)]
    Passfile(#[from] PassfileError),
}

impl ClientError {
    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ClientError::Server(f) => Some(&f.code),
            _ => None,
        }
    }
}

/// A server error on one line, as psql shows it: severity, message and
/// SQLSTATE, then the detail and hint when the server sent them.
fn server_text(e: &ErrorFields) -> String {
    let mut s = format!("{}: {} (SQLSTATE {})", e.severity, e.message, e.code);
    if let Some(d) = &e.detail {
        s.push_str(&format!(" DETAIL: {d}"));
    }
    if let Some(h) = &e.hint {
        s.push_str(&format!(" HINT: {h}"));
    }
    s
}

fn protocol(msg: impl Into<String>) -> ClientError {
    ClientError::Protocol(msg.into())
}

/// IDENTIFY_SYSTEM's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifySystem {
    /// `systemid`: a standby refuses an upstream of another system.
    pub system_id: u64,
    /// `timeline`: the server's current timeline.
    pub timeline: TimelineId,
    /// `xlogpos`: the server's current flush position.
    pub xlogpos: Lsn,
    /// `dbname`: NULL for physical replication.
    pub dbname: Option<String>,
}

/// READ_REPLICATION_SLOT's answer for an existing slot (NULL until the
/// slot holds WAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPosition {
    /// Oldest WAL the slot holds (where streaming can resume).
    pub restart_lsn: Option<Lsn>,
    /// The timeline `restart_lsn` is on.
    pub restart_tli: Option<TimelineId>,
}

/// A simple query's result: columns, rows and CommandComplete tags.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    /// The last RowDescription.
    pub columns: Vec<FieldDescription>,
    /// Every DataRow, raw text cells; `None` is NULL.
    pub rows: Vec<Vec<Option<Vec<u8>>>>,
    /// Every CommandComplete tag, in order.
    pub tags: Vec<String>,
}

impl QueryResult {
    /// Cell `(row, col)` as text, `None` for NULL or out of range.
    pub fn text(&self, row: usize, col: usize) -> Option<String> {
        let v = self.rows.get(row)?.get(col)?.as_ref()?;
        Some(String::from_utf8_lossy(v).into_owned())
    }
}

/// A sensible default for [`ReplicationClient::connect`]'s timeout.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One replication connection.
pub struct ReplicationClient {
    reader: MessageReader<NetStream>,
    /// Write half, shared with [`StatusSender`]s.
    writer: Arc<Mutex<NetStream>>,
    /// Our side of the COPY is open: set at CopyBothResponse, cleared
    /// under `writer`'s lock when our CopyDone is written (or the server
    /// left the COPY). [`StatusSender`]s on other threads check it under
    /// the same lock, so no status update follows our CopyDone: it would
    /// reach the server as a stray message between commands.
    copy_open: Arc<std::sync::atomic::AtomicBool>,
    /// ParameterStatus values from the server.
    params: BTreeMap<String, String>,
    /// Bound on waiting for a command's answer.
    io_timeout: Duration,
    /// In COPY (START_REPLICATION running).
    streaming: bool,
    /// In BASE_BACKUP's COPY OUT.
    copy_out: bool,
    /// Bytes of the archive data message being read by
    /// [`ReplicationClient::backup_read`] still in the socket.
    copy_data_left: usize,
    /// The socket's read timeout as last set: not set again (a system
    /// call) for every message of a stream read with the same bound.
    read_timeout: Option<Duration>,
}

impl ReplicationClient {
    /// Connect and authenticate; `timeout` bounds the TCP connect and every
    /// later wait for an answer (connect_timeout in the string wins).
    pub fn connect(info: &ConnInfo, timeout: Duration) -> Result<ReplicationClient, ClientError> {
        Self::connect_with(info, timeout, &[])
    }

    /// [`connect`](Self::connect), sending `extra` startup parameters too
    /// (a walrep standby's status address). A PostgreSQL server refuses a
    /// parameter it does not know unless its name has a dot (a custom
    /// setting), so only dotted names belong here.
    pub fn connect_with(
        info: &ConnInfo,
        timeout: Duration,
        extra: &[(String, String)],
    ) -> Result<ReplicationClient, ClientError> {
        let timeout = info.connect_timeout.unwrap_or(timeout);
        let password = info.resolve_password()?;
        let stream = tcp_connect(info, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let stream = negotiate_tls(info, stream, Instant::now() + timeout)?;
        let writer = Arc::new(Mutex::new(stream.try_clone()?));
        let mut c = ReplicationClient {
            reader: MessageReader::new(stream, DEFAULT_MAX_MESSAGE_LEN),
            writer,
            copy_open: Arc::default(),
            params: BTreeMap::new(),
            io_timeout: timeout,
            streaming: false,
            copy_out: false,
            copy_data_left: 0,
            read_timeout: None,
        };
        c.startup(info, password.as_deref(), extra)?;
        Ok(c)
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.reader.get_ref().is_tls()
    }

    /// A server parameter reported at startup (`server_version`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The serving walrep node's instance identifier (`walrep_instance_id`);
    /// `None` from servers that do not send it (PostgreSQL).
    pub fn instance_id(&self) -> Option<u64> {
        let v = self.parameter(crate::replication::server::INSTANCE_ID_PARAMETER)?;
        u64::from_str_radix(v, 16).ok()
    }

    /// The instances the serving walrep node streams from, nearest first
    /// (`walrep_upstream_chain`); empty from a primary or from PostgreSQL.
    pub fn upstream_chain(&self) -> Vec<u64> {
        self.parameter(crate::replication::server::UPSTREAM_CHAIN_PARAMETER)
            .unwrap_or_default()
            .split(',')
            .filter_map(|id| u64::from_str_radix(id.trim(), 16).ok())
            .collect()
    }

    /// The serving walrep node's status address (`walrep_status_url`), if
    /// it sent a usable one.
    pub fn status_url(&self) -> Option<String> {
        crate::status::links::accept(self.parameter(crate::status::links::STATUS_URL_PARAMETER)?)
    }

    /// The bound on waiting for an answer, as given at connect.
    pub fn io_timeout(&self) -> Duration {
        self.io_timeout
    }

    /// Another handle on the socket: `shutdown` on it unblocks a thread
    /// stuck reading or writing this connection.
    pub fn socket_handle(&self) -> std::io::Result<TcpStream> {
        self.reader.get_ref().socket().try_clone()
    }

    fn send(&self, msg: &FrontendMessage) -> Result<(), ClientError> {
        let mut out = Vec::new();
        msg.encode(&mut out);
        self.write_raw(&out)
    }

    fn write_raw(&self, bytes: &[u8]) -> Result<(), ClientError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(bytes)?;
        Ok(())
    }

    fn read(&mut self, timeout: Duration) -> Result<BackendMessage, ClientError> {
        self.set_read_timeout(timeout)?;
        Ok(self.reader.read_backend()?)
    }

    /// The socket's read timeout, set only when it changes.
    fn set_read_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let asked = timeout.max(MIN_READ_TIMEOUT);
        if self.read_timeout == Some(asked) {
            return Ok(());
        }
        self.set_socket_read_timeout(asked)
    }

    /// Bound the next reads by `timeout` (at least 1 ms), waiting never
    /// longer but maybe less, for a caller that reads again after a
    /// timeout: the socket's timeout is set (a system call) only when the
    /// one it has would not do (see [`keeps_read_timeout`]).
    fn set_loose_read_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let asked = timeout.max(MIN_READ_TIMEOUT);
        if self
            .read_timeout
            .is_some_and(|set| keeps_read_timeout(set, asked))
        {
            return Ok(());
        }
        self.set_socket_read_timeout(quantise_read_timeout(asked))
    }

    fn set_socket_read_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let timeout = Some(timeout);
        // Forgotten first: a failed call leaves the socket's unknown.
        self.read_timeout = None;
        self.reader.get_ref().set_read_timeout(timeout)?;
        self.read_timeout = timeout;
        Ok(())
    }

    fn startup(
        &mut self,
        info: &ConnInfo,
        password: Option<&str>,
        extra: &[(String, String)],
    ) -> Result<(), ClientError> {
        let mut params = vec![
            ("user".to_string(), info.user.clone()),
            (
                "database".to_string(),
                info.dbname.clone().unwrap_or_else(|| "replication".into()),
            ),
            ("replication".to_string(), "true".to_string()),
        ];
        if let Some(a) = &info.application_name {
            params.push(("application_name".into(), a.clone()));
        }
        params.extend(extra.iter().cloned());
        self.write_raw(&StartupPacket::startup(params).encode())?;
        self.authenticate(password)?;
        loop {
            match self.read(self.io_timeout)? {
                BackendMessage::ParameterStatus { name, value } => {
                    self.params.insert(name, value);
                }
                BackendMessage::BackendKeyData { .. } | BackendMessage::NoticeResponse(_) => {}
                BackendMessage::ReadyForQuery(_) => return Ok(()),
                BackendMessage::ErrorResponse(e) => return Err(ClientError::Server(Box::new(e))),
                other => {
                    return Err(protocol(format!(
                        "unexpected message during startup: {other:?}"
                    )))
                }
            }
        }
    }

    fn authenticate(&mut self, password: Option<&str>) -> Result<(), ClientError> {
        let mut scram: Option<ScramClient> = None;
        loop {
            let auth = match self.read(self.io_timeout)? {
                BackendMessage::Authentication(a) => a,
                BackendMessage::ErrorResponse(e) => return Err(ClientError::Server(Box::new(e))),
                BackendMessage::NoticeResponse(_) => continue,
                other => {
                    return Err(protocol(format!(
                        "expected authentication request, got {other:?}"
                    )))
                }
            };
            let need_pw = || {
                password.ok_or_else(|| {
                    ClientError::Auth("a password is required but none was given".into())
                })
            };
            match auth {
                Authentication::Ok => return Ok(()),
                Authentication::CleartextPassword => {
                    let mut body = need_pw()?.as_bytes().to_vec();
                    body.push(0);
                    self.send(&FrontendMessage::AuthResponse(body))?;
                }
                Authentication::Md5Password(_) => {
                    return Err(ClientError::Auth(
                        "md5 authentication is not supported; use scram-sha-256".into(),
                    ))
                }
                Authentication::Sasl(mechs) => {
                    if !mechs.iter().any(|m| m == MECHANISM) {
                        return Err(ClientError::Auth(format!(
                            "no supported SASL mechanism among {mechs:?}"
                        )));
                    }
                    let c = ScramClient::new(need_pw()?);
                    let initial = SaslInitialResponse {
                        mechanism: MECHANISM.into(),
                        data: Some(c.client_first()),
                    };
                    self.send(&FrontendMessage::AuthResponse(initial.to_body()))?;
                    scram = Some(c);
                }
                Authentication::SaslContinue(data) => {
                    let c = scram
                        .as_mut()
                        .ok_or_else(|| protocol("SASL continue without SASL start"))?;
                    let reply = c.server_first(&data)?;
                    self.send(&FrontendMessage::AuthResponse(reply))?;
                }
                Authentication::SaslFinal(data) => {
                    scram
                        .as_ref()
                        .ok_or_else(|| protocol("SASL final without SASL start"))?
                        .server_final(&data)?;
                }
            }
        }
    }

    /// Run one simple query and collect its results (not for
    /// START_REPLICATION, see [`ReplicationClient::start_replication`]).
    pub fn simple_query(&mut self, q: &str) -> Result<QueryResult, ClientError> {
        if self.streaming || self.copy_out {
            return Err(protocol("cannot run a command while streaming"));
        }
        self.send(&FrontendMessage::Query(q.to_string()))?;
        self.collect_results(QueryResult::default())
    }

    /// Read results until ReadyForQuery; an ErrorResponse is returned after it.
    fn collect_results(&mut self, mut r: QueryResult) -> Result<QueryResult, ClientError> {
        let mut error = None;
        loop {
            match self.read(self.io_timeout)? {
                BackendMessage::RowDescription(c) => r.columns = c,
                BackendMessage::DataRow(row) => r.rows.push(row),
                BackendMessage::CommandComplete(t) => r.tags.push(t),
                BackendMessage::ErrorResponse(e) => error = Some(e),
                BackendMessage::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(ClientError::Server(Box::new(e))),
                        None => Ok(r),
                    }
                }
                BackendMessage::EmptyQueryResponse
                | BackendMessage::NoticeResponse(_)
                | BackendMessage::ParameterStatus { .. } => {}
                other => return Err(protocol(format!("unexpected message {other:?}"))),
            }
        }
    }

    /// `IDENTIFY_SYSTEM`: what a walreceiver checks before streaming.
    pub fn identify_system(&mut self) -> Result<IdentifySystem, ClientError> {
        let r = self.simple_query("IDENTIFY_SYSTEM")?;
        if r.rows.len() != 1 || r.columns.len() < 3 {
            return Err(protocol(format!(
                "could not identify system: got {} rows and {} fields, expected 1 row and 3 or more fields",
                r.rows.len(),
                r.columns.len()
            )));
        }
        let field = |i| {
            r.text(0, i)
                .ok_or_else(|| protocol("IDENTIFY_SYSTEM returned NULL"))
        };
        Ok(IdentifySystem {
            system_id: field(0)?
                .parse()
                .map_err(|_| protocol("invalid systemid"))?,
            timeline: TimelineId(
                field(1)?
                    .parse()
                    .map_err(|_| protocol("invalid timeline"))?,
            ),
            xlogpos: field(2)?.parse().map_err(|_| protocol("invalid xlogpos"))?,
            dbname: r.text(0, 3),
        })
    }

    /// `SHOW name`: one setting as text (e.g. `wal_segment_size`).
    pub fn show(&mut self, name: &str) -> Result<String, ClientError> {
        let r = self.simple_query(&format!("SHOW {name}"))?;
        r.text(0, 0)
            .ok_or_else(|| protocol(format!("SHOW {name} returned no value")))
    }

    /// `TIMELINE_HISTORY n`: the file name and content.
    pub fn timeline_history(&mut self, tli: TimelineId) -> Result<(String, Vec<u8>), ClientError> {
        let r = self.simple_query(&format!("TIMELINE_HISTORY {}", tli.0))?;
        let name = r
            .text(0, 0)
            .ok_or_else(|| protocol("TIMELINE_HISTORY returned no file name"))?;
        if name != tli.history_file_name() {
            return Err(protocol(format!(
                "unexpected timeline history file name {name:?}"
            )));
        }
        let content = r.rows[0].get(1).cloned().flatten().unwrap_or_default();
        Ok((name, content))
    }

    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] PHYSICAL [(RESERVE_WAL)]`;
    /// the name is quoted, so any valid slot name works.
    pub fn create_physical_slot(
        &mut self,
        name: &str,
        temporary: bool,
        reserve_wal: bool,
    ) -> Result<(), ClientError> {
        let temp = if temporary { " TEMPORARY" } else { "" };
        let opts = if reserve_wal { " (RESERVE_WAL)" } else { "" };
        self.simple_query(&format!(
            "CREATE_REPLICATION_SLOT {}{temp} PHYSICAL{opts}",
            quote_ident(name)
        ))?;
        Ok(())
    }

    /// `DROP_REPLICATION_SLOT name [WAIT]`: with `wait`, the server waits
    /// for an active slot to be released instead of failing.
    pub fn drop_slot(&mut self, name: &str, wait: bool) -> Result<(), ClientError> {
        let wait = if wait { " WAIT" } else { "" };
        self.simple_query(&format!(
            "DROP_REPLICATION_SLOT {}{wait}",
            quote_ident(name)
        ))?;
        Ok(())
    }

    /// READ_REPLICATION_SLOT: `None` if the slot does not exist, else its
    /// restart LSN and timeline (NULL until WAL is reserved).
    pub fn read_replication_slot(
        &mut self,
        name: &str,
    ) -> Result<Option<SlotPosition>, ClientError> {
        let r = self.simple_query(&format!("READ_REPLICATION_SLOT {}", quote_ident(name)))?;
        if r.text(0, 0).is_none() {
            return Ok(None);
        }
        Ok(Some(SlotPosition {
            restart_lsn: r.text(0, 1).and_then(|t| t.parse().ok()),
            restart_tli: r.text(0, 2).and_then(|t| t.parse().ok()).map(TimelineId),
        }))
    }

    /// Close politely (Terminate).
    pub fn close(self) {
        let _ = self.send(&FrontendMessage::Terminate);
    }
}

/// The shortest read timeout set (a zero one would mean none).
const MIN_READ_TIMEOUT: Duration = Duration::from_millis(1);

/// A read timeout at least this long is kept for any longer wait asked:
/// it costs at most one early wake-up per that much silence, about what a
/// receive loop bounded by its timers (the walreceiver's wakes at least
/// once a second) has anyway.
const KEPT_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether a socket whose read timeout is `set` may serve a read asked to
/// wait at most `asked` (both at least [`MIN_READ_TIMEOUT`]): never longer
/// than asked, and not much shorter, unless `set` is half a second or more.
/// Alternating bounds (a walreceiver's next timer, then the bound on a
/// message's rest) and a deadline's remainder, shrinking with every call,
/// so keep the one set while a stream goes on.
fn keeps_read_timeout(set: Duration, asked: Duration) -> bool {
    set <= asked && (set >= KEPT_READ_TIMEOUT || set >= quantise_read_timeout(asked))
}

/// `asked` rounded down to its three leading binary digits in
/// microseconds (at most an eighth shorter): a remainder shrinking call
/// after call sets a new timeout only when it has shrunk by that much.
fn quantise_read_timeout(asked: Duration) -> Duration {
    let micros = u64::try_from(asked.as_micros()).unwrap_or(u64::MAX);
    let shift = (u64::BITS - micros.leading_zeros()).saturating_sub(3);
    let micros = (micros >> shift) << shift;
    Duration::from_micros(micros).max(MIN_READ_TIMEOUT)
}

/// Quote an identifier for a replication command (`"a""b"`).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// libpq's SSL negotiation: an SSLRequest unless `sslmode` is disable or
/// allow; `S` starts the TLS handshake, `N` goes on in clear unless TLS is
/// required.
fn negotiate_tls(
    info: &ConnInfo,
    mut sock: TcpStream,
    deadline: Instant,
) -> Result<NetStream, ClientError> {
    if !info.sslmode.tries_tls() {
        return Ok(NetStream::Plain(sock));
    }
    let config = tls::client_config(info.sslmode, info.sslrootcert.as_deref())?;
    sock.write_all(&StartupPacket::SslRequest.encode())?;
    let mut answer = [0u8; 1];
    std::io::Read::read_exact(&mut sock, &mut answer)?;
    match answer[0] {
        b'S' => {
            let name = tls::server_name(&info.host)?;
            NetStream::connect_tls(sock, config, name, deadline)
                .map_err(|e| ClientError::Handshake(e.to_string()))
        }
        b'N' if info.sslmode.requires_tls() => Err(ClientError::SslRequired),
        b'N' => Ok(NetStream::Plain(sock)),
        other => Err(protocol(format!(
            "received invalid response to SSL negotiation: {:?}",
            other as char
        ))),
    }
}

fn tcp_connect(info: &ConnInfo, timeout: Duration) -> Result<TcpStream, ClientError> {
    let err = |reason: String| ClientError::Connect {
        host: info.host.clone(),
        port: info.port,
        reason,
    };
    let addrs = (info.host.as_str(), info.port)
        .to_socket_addrs()
        .map_err(|e| err(e.to_string()))?;
    let mut last = "no address found".to_string();
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
    }
    Err(err(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_read_timeout_set_is_never_longer_than_asked_nor_much_shorter() {
        for asked in [1, 2, 7, 99, 999, 1_000, 1_001, 60_000] {
            let q = quantise_read_timeout(ms(asked));
            assert!(
                q <= ms(asked) && q >= ms(asked) - ms(asked) / 8,
                "{asked} ms: {q:?}"
            );
            assert!(keeps_read_timeout(q, ms(asked)));
        }
        assert_eq!(quantise_read_timeout(Duration::ZERO), MIN_READ_TIMEOUT);
        assert!(
            !keeps_read_timeout(ms(100), ms(99)),
            "longer than asked is never kept"
        );
        assert!(
            !keeps_read_timeout(ms(5), ms(60_000)),
            "a short one is not kept for a long wait"
        );
    }

    #[test]
    fn a_stream_keeps_its_read_timeout() {
        // The walreceiver's next timer (a second), then the bound on a
        // message's rest (wal_receiver_timeout), over and over.
        let set = quantise_read_timeout(ms(1_000));
        assert!(keeps_read_timeout(set, ms(60_000)));
        assert!(keeps_read_timeout(set, ms(1_000)));
        // A status interval's remainder, a few microseconds less each call,
        // resets it only once it has shrunk by an eighth.
        let first = quantise_read_timeout(ms(100));
        let resets = (0..1_600u64)
            .map(|i| ms(100) - Duration::from_micros(i))
            .filter(|asked| !keeps_read_timeout(first, *asked))
            .count();
        assert_eq!(resets, 0);
    }
}
