//! A minimal RESP2 client over a plain TcpStream, for the network tests:
//! it connects from whatever namespace its thread is in, tells a server's
//! error reply (the server answered: the command's fate is known) from a
//! broken or timed-out connection (its fate is unknown), and its socket can
//! be shut down from another thread to end a request stuck on a node that
//! was cut off.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Status(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Vec<Value>),
}

/// Why a call has no reply value.
#[derive(Debug)]
pub enum CallError {
    /// The server answered with an error (`-READONLY ...`).
    Server(String),
    /// No answer: connection refused, reset, closed or timed out.
    Io(std::io::Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Server(e) => write!(f, "server error: {e}"),
            CallError::Io(e) => write!(f, "no answer: {e}"),
        }
    }
}

/// Longest a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Resp {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Resp {
    /// Connect to `addr` (`ip:port`) with a 30 s read timeout.
    pub fn connect(addr: &str) -> std::io::Result<Resp> {
        let sock = addr
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
        let stream = TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(Resp {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    pub fn set_read_timeout(&self, t: Duration) {
        let _ = self.stream.set_read_timeout(Some(t));
    }

    /// A handle that can shut this connection down from another thread.
    pub fn killer(&self) -> std::io::Result<TcpStream> {
        self.stream.try_clone()
    }

    /// Send one command and read its reply.
    pub fn call(&mut self, args: &[&str]) -> Result<Value, CallError> {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.stream
            .write_all(req.as_bytes())
            .map_err(CallError::Io)?;
        self.read_value()
    }

    /// A call whose reply is a status or bulk string.
    pub fn text(&mut self, args: &[&str]) -> Result<Option<String>, CallError> {
        match self.call(args)? {
            Value::Status(s) => Ok(Some(s)),
            Value::Bulk(b) => Ok(b),
            Value::Int(i) => Ok(Some(i.to_string())),
            Value::Array(_) => Err(CallError::Server("unexpected array reply".into())),
        }
    }

    /// A field of `INFO section`.
    pub fn info_field(&mut self, section: &str, field: &str) -> Option<String> {
        let info = self.text(&["INFO", section]).ok()??;
        info.lines().find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
    }

    fn line(&mut self) -> Result<String, CallError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(CallError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => Ok(line.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => Err(CallError::Io(e)),
        }
    }

    fn read_value(&mut self) -> Result<Value, CallError> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(1.min(line.len()));
        let num = || -> Result<i64, CallError> {
            rest.parse()
                .map_err(|_| CallError::Server(format!("bad reply line {line:?}")))
        };
        match kind {
            "+" => Ok(Value::Status(rest.to_string())),
            "-" => Err(CallError::Server(rest.to_string())),
            ":" => Ok(Value::Int(num()?)),
            "$" => {
                let n = num()?;
                if n < 0 {
                    return Ok(Value::Bulk(None));
                }
                let mut buf = vec![0u8; n as usize + 2];
                std::io::Read::read_exact(&mut self.reader, &mut buf).map_err(CallError::Io)?;
                buf.truncate(n as usize);
                Ok(Value::Bulk(Some(
                    String::from_utf8_lossy(&buf).into_owned(),
                )))
            }
            "*" => {
                let n = num()?;
                let mut v = Vec::with_capacity(n.max(0) as usize);
                for _ in 0..n.max(0) {
                    v.push(self.read_value()?);
                }
                Ok(Value::Array(v))
            }
            _ => Err(CallError::Server(format!("bad reply line {line:?}"))),
        }
    }
}

impl Drop for Resp {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
