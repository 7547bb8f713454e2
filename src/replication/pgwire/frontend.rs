//! Messages a client (frontend) sends: the untyped startup-phase packets
//! (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) and the typed
//! messages of a session (Query, password/SASL responses, COPY, Terminate).

use super::buf::{put_cstr, typed_message, Cursor};
use super::{CodecError, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, PROTOCOL_V3, SSL_REQUEST_CODE};

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// StartupMessage: protocol version and `name=value` parameters in order.
    Startup {
        /// Requested protocol version (major << 16 | minor); only major 3
        /// ([`PROTOCOL_V3`]) is served.
        version: i32,
        /// `user`, `database`, `replication`, `application_name`, ... in
        /// the order sent.
        params: Vec<(String, String)>,
    },
    /// Asks for TLS; answered `S` and a handshake when `ssl` is on, else
    /// with a single `N`.
    SslRequest,
    /// Asks for GSSAPI encryption; answered with a single `N`.
    GssEncRequest,
    /// Asks to cancel the query of the backend `pid` that holds `key`.
    Cancel {
        /// The process id from BackendKeyData.
        pid: i32,
        /// The secret key from BackendKeyData.
        key: i32,
    },
}

impl StartupPacket {
    /// Decode the body of a startup packet (after its length word).
    pub fn decode(body: &[u8]) -> Result<StartupPacket, CodecError> {
        let mut c = Cursor::new(body, "startup packet");
        let code = c.i32()?;
        match code {
            SSL_REQUEST_CODE => c.finish().map(|_| StartupPacket::SslRequest),
            GSSENC_REQUEST_CODE => c.finish().map(|_| StartupPacket::GssEncRequest),
            CANCEL_REQUEST_CODE => {
                let pid = c.i32()?;
                let key = c.i32()?;
                c.finish()?;
                Ok(StartupPacket::Cancel { pid, key })
            }
            version => Ok(StartupPacket::Startup {
                version,
                params: decode_params(&mut c)?,
            }),
        }
    }

    /// The whole packet, length word included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0; 4];
        match self {
            StartupPacket::Startup { version, params } => {
                out.extend_from_slice(&version.to_be_bytes());
                for (k, v) in params {
                    put_cstr(&mut out, k);
                    put_cstr(&mut out, v);
                }
                out.push(0);
            }
            StartupPacket::SslRequest => out.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes()),
            StartupPacket::GssEncRequest => {
                out.extend_from_slice(&GSSENC_REQUEST_CODE.to_be_bytes())
            }
            StartupPacket::Cancel { pid, key } => {
                out.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
                out.extend_from_slice(&pid.to_be_bytes());
                out.extend_from_slice(&key.to_be_bytes());
            }
        }
        super::buf::patch_len(&mut out, 0);
        out
    }

    /// A v3.0 StartupMessage with these parameters.
    pub fn startup(params: Vec<(String, String)>) -> StartupPacket {
        StartupPacket::Startup {
            version: PROTOCOL_V3,
            params,
        }
    }
}

/// `name\0value\0 ... \0`: the list ends with an empty name.
fn decode_params(c: &mut Cursor<'_>) -> Result<Vec<(String, String)>, CodecError> {
    let mut params = Vec::new();
    loop {
        let name = c.cstr()?;
        if name.is_empty() {
            break;
        }
        let value = c.cstr()?;
        params.push((name, value));
    }
    c.finish()?;
    Ok(params)
}

/// A typed message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    /// `Q`: a simple query (a replication command here).
    Query(String),
    /// `p`: PasswordMessage, SASLInitialResponse or SASLResponse; which one
    /// depends on the authentication request it answers, so the body is
    /// kept raw (see [`SaslInitialResponse`]).
    AuthResponse(Vec<u8>),
    /// `d`: CopyData.
    CopyData(Vec<u8>),
    /// `c`: CopyDone.
    CopyDone,
    /// `f`: CopyFail with the client's reason.
    CopyFail(String),
    /// `S`: Sync.
    Sync,
    /// `H`: Flush.
    Flush,
    /// `X`: Terminate.
    Terminate,
    /// `P`, `B`, `E`, `D`, `C`: extended-query messages, refused in a
    /// replication connection as PostgreSQL does.
    Extended(u8),
}

impl FrontendMessage {
    /// Decode one typed frontend message.
    pub fn decode(tag: u8, body: &[u8]) -> Result<FrontendMessage, CodecError> {
        let mut c = Cursor::new(body, "frontend");
        let msg = match tag {
            b'Q' => FrontendMessage::Query(c.cstr()?),
            b'p' => FrontendMessage::AuthResponse(c.rest().to_vec()),
            b'd' => FrontendMessage::CopyData(c.rest().to_vec()),
            b'c' => FrontendMessage::CopyDone,
            b'f' => FrontendMessage::CopyFail(c.cstr()?),
            b'S' => FrontendMessage::Sync,
            b'H' => FrontendMessage::Flush,
            b'X' => FrontendMessage::Terminate,
            b'P' | b'B' | b'E' | b'D' | b'C' => return Ok(FrontendMessage::Extended(tag)),
            tag => {
                return Err(CodecError::UnknownType {
                    tag,
                    side: "frontend",
                })
            }
        };
        c.finish()?;
        Ok(msg)
    }

    /// Append this message (type, length, body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            FrontendMessage::Query(q) => typed_message(out, b'Q', |b| put_cstr(b, q)),
            FrontendMessage::AuthResponse(d) => typed_message(out, b'p', |b| b.extend(d)),
            FrontendMessage::CopyData(d) => typed_message(out, b'd', |b| b.extend(d)),
            FrontendMessage::CopyDone => typed_message(out, b'c', |_| {}),
            FrontendMessage::CopyFail(m) => typed_message(out, b'f', |b| put_cstr(b, m)),
            FrontendMessage::Sync => typed_message(out, b'S', |_| {}),
            FrontendMessage::Flush => typed_message(out, b'H', |_| {}),
            FrontendMessage::Terminate => typed_message(out, b'X', |_| {}),
            FrontendMessage::Extended(tag) => typed_message(out, *tag, |_| {}),
        }
    }
}

/// The body of a SASLInitialResponse: the chosen mechanism and the client's
/// first message (`None` when the client sent length -1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitialResponse {
    /// The mechanism chosen from the server's list, e.g. `SCRAM-SHA-256`.
    pub mechanism: String,
    /// The client-first-message.
    pub data: Option<Vec<u8>>,
}

impl SaslInitialResponse {
    /// Parse the body of the `p` message that starts SASL (the server knows
    /// from its state that this `p` is not a password or SASLResponse).
    pub fn parse(body: &[u8]) -> Result<SaslInitialResponse, CodecError> {
        let mut c = Cursor::new(body, "SASLInitialResponse");
        let mechanism = c.cstr()?;
        let len = c.i32()?;
        let data = if len == -1 {
            None
        } else {
            let n = c.count(len.into(), 1)?;
            Some(c.take(n)?.to_vec())
        };
        c.finish()?;
        Ok(SaslInitialResponse { mechanism, data })
    }

    /// The raw body, for [`FrontendMessage::AuthResponse`].
    pub fn to_body(&self) -> Vec<u8> {
        let mut b = Vec::new();
        put_cstr(&mut b, &self.mechanism);
        match &self.data {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(d) => {
                b.extend_from_slice(&(d.len() as i32).to_be_bytes());
                b.extend_from_slice(d);
            }
        }
        b
    }
}
