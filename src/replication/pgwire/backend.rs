//! Messages the server (backend) sends: authentication requests, session
//! parameters, result sets, errors and notices, COPY framing.

use super::buf::{put_cstr, typed_message, Cursor};
use super::CodecError;

/// An `R` message: the server's authentication request or verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// 0: authenticated.
    Ok,
    /// 3: send the password in clear text.
    CleartextPassword,
    /// 5: send an MD5-hashed password with this salt.
    Md5Password([u8; 4]),
    /// 10: start SASL with one of these mechanisms.
    Sasl(Vec<String>),
    /// 11: a SASL challenge.
    SaslContinue(Vec<u8>),
    /// 12: the SASL outcome ("additional data" of the last step).
    SaslFinal(Vec<u8>),
}

/// ReadyForQuery's transaction status; a walsender is always idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block (always, on a walsender).
    Idle,
    /// `T`: inside a transaction block.
    InTransaction,
    /// `E`: inside a failed transaction block.
    Failed,
}

impl TransactionStatus {
    fn byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    /// Column name, e.g. `systemid` in IDENTIFY_SYSTEM's answer.
    pub name: String,
    /// OID of the table the column comes from; 0 for a walsender's results.
    pub table_oid: i32,
    /// Attribute number in that table; 0 when not a table column.
    pub column: i16,
    /// Type OID: text 25, int4 23, int8 20.
    pub type_oid: i32,
    /// `pg_type.typlen`: 8 for int8, 4 for int4, -1 for variable length.
    pub type_size: i16,
    /// `pg_attribute.atttypmod`; -1 = none.
    pub type_modifier: i32,
    /// 0 = text.
    pub format: i16,
}

impl FieldDescription {
    /// A text-format column of type `type_oid` as a walsender describes it.
    pub fn new(name: &str, type_oid: i32) -> FieldDescription {
        let type_size = match type_oid {
            20 => 8,
            23 => 4,
            _ => -1,
        };
        FieldDescription {
            name: name.to_string(),
            table_oid: 0,
            column: 0,
            type_oid,
            type_size,
            type_modifier: -1,
            format: 0,
        }
    }
}

/// The fields of an ErrorResponse / NoticeResponse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    /// `S`: localized severity (ERROR, FATAL, PANIC, WARNING, NOTICE, ...).
    pub severity: String,
    /// `C`: SQLSTATE code.
    pub code: String,
    /// `M`: primary message.
    pub message: String,
    /// `D`: detail.
    pub detail: Option<String>,
    /// `H`: hint.
    pub hint: Option<String>,
    /// Any other fields (type byte, value), kept in order.
    pub other: Vec<(u8, String)>,
}

impl ErrorFields {
    fn decode(c: &mut Cursor<'_>) -> Result<ErrorFields, CodecError> {
        let mut f = ErrorFields::default();
        loop {
            let t = c.u8()?;
            if t == 0 {
                break;
            }
            let v = c.cstr()?;
            match t {
                b'S' => f.severity = v,
                // The non-localized severity; encode writes it from `S`.
                b'V' if f.severity.is_empty() || f.severity == v => f.severity = v,
                b'C' => f.code = v,
                b'M' => f.message = v,
                b'D' => f.detail = Some(v),
                b'H' => f.hint = Some(v),
                t => f.other.push((t, v)),
            }
        }
        Ok(f)
    }

    fn encode(&self, b: &mut Vec<u8>) {
        for (t, v) in [
            (b'S', Some(&self.severity)),
            (b'V', Some(&self.severity)),
            (b'C', Some(&self.code)),
            (b'M', Some(&self.message)),
            (b'D', self.detail.as_ref()),
            (b'H', self.hint.as_ref()),
        ] {
            if let Some(v) = v {
                b.push(t);
                put_cstr(b, v);
            }
        }
        for (t, v) in self.other.iter().filter(|(t, _)| *t != b'V') {
            b.push(*t);
            put_cstr(b, v);
        }
        b.push(0);
    }
}

/// A typed message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    /// `R`: an authentication request or its outcome.
    Authentication(Authentication),
    /// `S`: a run-time parameter the client should know (`server_version`,
    /// walrep's instance and upstream chain ids, ...).
    ParameterStatus {
        /// Parameter name.
        name: String,
        /// Its current value.
        value: String,
    },
    /// `K`: what a CancelRequest must quote to cancel this session.
    BackendKeyData {
        /// The backend's process id (walrep: the walsender id).
        pid: i32,
        /// Secret key proving the canceller saw this message.
        key: i32,
    },
    /// `Z`: the server waits for the next command.
    ReadyForQuery(TransactionStatus),
    /// `T`: the columns of the rows that follow.
    RowDescription(Vec<FieldDescription>),
    /// One row; `None` is SQL NULL.
    DataRow(Vec<Option<Vec<u8>>>),
    /// `C`: a command finished; the tag, e.g. `START_REPLICATION`.
    CommandComplete(String),
    /// `I`: the query string was empty.
    EmptyQueryResponse,
    /// `E`: the command (or, if FATAL, the session) failed.
    ErrorResponse(ErrorFields),
    /// `N`: a warning or notice; the command goes on.
    NoticeResponse(ErrorFields),
    /// `W`: overall format and per-column formats (empty for replication).
    CopyBothResponse {
        /// 0 = text, 1 = binary.
        format: u8,
        /// Format of each column.
        columns: Vec<i16>,
    },
    /// `H`: as CopyBothResponse, for BASE_BACKUP.
    CopyOutResponse {
        /// 0 = text, 1 = binary.
        format: u8,
        /// Format of each column.
        columns: Vec<i16>,
    },
    /// `d`: payload of the copy stream (XLogData, keepalives, archives).
    CopyData(Vec<u8>),
    /// `c`: the server's side of the copy stream ended.
    CopyDone,
}

impl BackendMessage {
    /// Decode one typed backend message.
    pub fn decode(tag: u8, body: &[u8]) -> Result<BackendMessage, CodecError> {
        let mut c = Cursor::new(body, "backend");
        let msg = match tag {
            b'R' => BackendMessage::Authentication(decode_auth(&mut c)?),
            b'S' => BackendMessage::ParameterStatus {
                name: c.cstr()?,
                value: c.cstr()?,
            },
            b'K' => BackendMessage::BackendKeyData {
                pid: c.i32()?,
                key: c.i32()?,
            },
            b'Z' => BackendMessage::ReadyForQuery(decode_status(c.u8()?)?),
            b'T' => BackendMessage::RowDescription(decode_fields(&mut c)?),
            b'D' => BackendMessage::DataRow(decode_row(&mut c)?),
            b'C' => BackendMessage::CommandComplete(c.cstr()?),
            b'I' => BackendMessage::EmptyQueryResponse,
            b'E' => BackendMessage::ErrorResponse(ErrorFields::decode(&mut c)?),
            b'N' => BackendMessage::NoticeResponse(ErrorFields::decode(&mut c)?),
            b'W' => {
                let (format, columns) = decode_copy_response(&mut c)?;
                BackendMessage::CopyBothResponse { format, columns }
            }
            b'H' => {
                let (format, columns) = decode_copy_response(&mut c)?;
                BackendMessage::CopyOutResponse { format, columns }
            }
            b'd' => BackendMessage::CopyData(c.rest().to_vec()),
            b'c' => BackendMessage::CopyDone,
            tag => {
                return Err(CodecError::UnknownType {
                    tag,
                    side: "backend",
                })
            }
        };
        c.finish()?;
        Ok(msg)
    }

    /// Append this message (type, length, body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            BackendMessage::Authentication(a) => typed_message(out, b'R', |b| encode_auth(a, b)),
            BackendMessage::ParameterStatus { name, value } => typed_message(out, b'S', |b| {
                put_cstr(b, name);
                put_cstr(b, value);
            }),
            BackendMessage::BackendKeyData { pid, key } => typed_message(out, b'K', |b| {
                b.extend_from_slice(&pid.to_be_bytes());
                b.extend_from_slice(&key.to_be_bytes());
            }),
            BackendMessage::ReadyForQuery(s) => typed_message(out, b'Z', |b| b.push(s.byte())),
            BackendMessage::RowDescription(f) => typed_message(out, b'T', |b| encode_fields(f, b)),
            BackendMessage::DataRow(r) => typed_message(out, b'D', |b| encode_row(r, b)),
            BackendMessage::CommandComplete(t) => typed_message(out, b'C', |b| put_cstr(b, t)),
            BackendMessage::EmptyQueryResponse => typed_message(out, b'I', |_| {}),
            BackendMessage::ErrorResponse(e) => typed_message(out, b'E', |b| e.encode(b)),
            BackendMessage::NoticeResponse(e) => typed_message(out, b'N', |b| e.encode(b)),
            BackendMessage::CopyBothResponse { format, columns } => {
                typed_message(out, b'W', |b| encode_copy_response(*format, columns, b))
            }
            BackendMessage::CopyOutResponse { format, columns } => {
                typed_message(out, b'H', |b| encode_copy_response(*format, columns, b))
            }
            BackendMessage::CopyData(d) => typed_message(out, b'd', |b| b.extend(d)),
            BackendMessage::CopyDone => typed_message(out, b'c', |_| {}),
        }
    }
}

fn decode_auth(c: &mut Cursor<'_>) -> Result<Authentication, CodecError> {
    Ok(match c.i32()? {
        0 => Authentication::Ok,
        3 => Authentication::CleartextPassword,
        5 => {
            let s = c.take(4)?;
            Authentication::Md5Password([s[0], s[1], s[2], s[3]])
        }
        10 => {
            let mut mechs = Vec::new();
            loop {
                let m = c.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechs.push(m);
            }
            Authentication::Sasl(mechs)
        }
        11 => Authentication::SaslContinue(c.rest().to_vec()),
        12 => Authentication::SaslFinal(c.rest().to_vec()),
        other => {
            return Err(CodecError::Invalid {
                what: "Authentication",
                reason: format!("unsupported authentication request {other}"),
            })
        }
    })
}

fn encode_auth(a: &Authentication, b: &mut Vec<u8>) {
    let code: i32 = match a {
        Authentication::Ok => 0,
        Authentication::CleartextPassword => 3,
        Authentication::Md5Password(_) => 5,
        Authentication::Sasl(_) => 10,
        Authentication::SaslContinue(_) => 11,
        Authentication::SaslFinal(_) => 12,
    };
    b.extend_from_slice(&code.to_be_bytes());
    match a {
        Authentication::Md5Password(salt) => b.extend_from_slice(salt),
        Authentication::Sasl(mechs) => {
            for m in mechs {
                put_cstr(b, m);
            }
            b.push(0);
        }
        Authentication::SaslContinue(d) | Authentication::SaslFinal(d) => b.extend(d),
        Authentication::Ok | Authentication::CleartextPassword => {}
    }
}

fn decode_status(b: u8) -> Result<TransactionStatus, CodecError> {
    match b {
        b'I' => Ok(TransactionStatus::Idle),
        b'T' => Ok(TransactionStatus::InTransaction),
        b'E' => Ok(TransactionStatus::Failed),
        other => Err(CodecError::Invalid {
            what: "ReadyForQuery",
            reason: format!("unknown transaction status 0x{other:02X}"),
        }),
    }
}

fn decode_fields(c: &mut Cursor<'_>) -> Result<Vec<FieldDescription>, CodecError> {
    let n = c.i16()?;
    // A field needs at least 19 bytes (empty name + 18 bytes of numbers).
    let n = c.count(n.into(), 19)?;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        fields.push(FieldDescription {
            name: c.cstr()?,
            table_oid: c.i32()?,
            column: c.i16()?,
            type_oid: c.i32()?,
            type_size: c.i16()?,
            type_modifier: c.i32()?,
            format: c.i16()?,
        });
    }
    Ok(fields)
}

fn encode_fields(fields: &[FieldDescription], b: &mut Vec<u8>) {
    b.extend_from_slice(&(fields.len() as i16).to_be_bytes());
    for f in fields {
        put_cstr(b, &f.name);
        b.extend_from_slice(&f.table_oid.to_be_bytes());
        b.extend_from_slice(&f.column.to_be_bytes());
        b.extend_from_slice(&f.type_oid.to_be_bytes());
        b.extend_from_slice(&f.type_size.to_be_bytes());
        b.extend_from_slice(&f.type_modifier.to_be_bytes());
        b.extend_from_slice(&f.format.to_be_bytes());
    }
}

fn decode_row(c: &mut Cursor<'_>) -> Result<Vec<Option<Vec<u8>>>, CodecError> {
    let n = c.i16()?;
    let n = c.count(n.into(), 4)?;
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        let len = c.i32()?;
        if len == -1 {
            row.push(None);
        } else {
            let len = c.count(len.into(), 1)?;
            row.push(Some(c.take(len)?.to_vec()));
        }
    }
    Ok(row)
}

fn encode_row(row: &[Option<Vec<u8>>], b: &mut Vec<u8>) {
    b.extend_from_slice(&(row.len() as i16).to_be_bytes());
    for v in row {
        match v {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }
}

fn decode_copy_response(c: &mut Cursor<'_>) -> Result<(u8, Vec<i16>), CodecError> {
    let format = c.u8()?;
    let n = c.i16()?;
    let n = c.count(n.into(), 2)?;
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        cols.push(c.i16()?);
    }
    Ok((format, cols))
}

fn encode_copy_response(format: u8, columns: &[i16], b: &mut Vec<u8>) {
    b.push(format);
    b.extend_from_slice(&(columns.len() as i16).to_be_bytes());
    for col in columns {
        b.extend_from_slice(&col.to_be_bytes());
    }
}
