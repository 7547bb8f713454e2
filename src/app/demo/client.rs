//! A minimal blocking RESP2 client for the demo and benchmarks: enough to
//! send commands and read one reply each, with timeouts on every call.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One reply, as the demo needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// A connection to a walrep (or Redis) server.
pub struct RespClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// Longest reply line accepted (a corrupt stream must not grow a buffer forever).
const MAX_LINE: usize = 64 << 10;
/// Largest bulk reply accepted.
const MAX_BULK: usize = 512 << 20;

impl RespClient {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<RespClient> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        Ok(RespClient {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Send one command and read its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&buf)?;
        self.read_reply()
    }

    /// `call` with text arguments.
    pub fn cmd(&mut self, args: &[&str]) -> io::Result<Reply> {
        let raw: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.call(&raw)
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\r\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-reply",
            ));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "reply line is not UTF-8"))
    }

    fn read_reply(&mut self) -> io::Result<Reply> {
        let line = self.line()?;
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("malformed reply line {line:?}"),
            )
        };
        let (kind, rest) = line.split_at(line.len().min(1));
        Ok(match kind {
            "+" => Reply::Status(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Integer(rest.parse().map_err(|_| bad())?),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    Reply::Bulk(None)
                } else if n as usize > MAX_BULK {
                    return Err(bad());
                } else {
                    let mut v = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut v)?;
                    v.truncate(n as usize);
                    Reply::Bulk(Some(v))
                }
            }
            "*" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                let mut items = Vec::new();
                for _ in 0..n.clamp(0, 1 << 20) {
                    items.push(self.read_reply()?);
                }
                Reply::Array(items)
            }
            _ => return Err(bad()),
        })
    }
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Status(s) if s == "OK")
    }

    pub fn as_text(&self) -> Option<String> {
        match self {
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Reply::Status(s) => Some(s.clone()),
            _ => None,
        }
    }
}
