//! A small, bounded HTTP/1.1 server for the status pages: one request per
//! connection, a fixed pool of workers behind a bounded queue, a deadline
//! on every read and write. A slow or hostile client holds at most one
//! worker for at most [`IO_TIMEOUT`]; when every worker is busy and the
//! queue is full, new connections get `503` at once and are closed. The
//! node's own threads never wait on it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, TrySendError};

/// Threads answering requests: pages are rendered in microseconds, so a
/// few suffice; a slow client ties up one of them, never the node.
pub const WORKERS: usize = 4;
/// Accepted connections waiting for a worker; beyond it: `503`.
pub const QUEUE: usize = 32;
/// Longest a worker waits for a client to send its request or take the
/// response, per read or write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a whole request (line and headers) may take to arrive.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Largest request line plus headers read.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// What a handler answers.
#[derive(Debug, Clone)]
pub struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// `200` with `body`.
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status: 200,
            content_type,
            body: body.into(),
        }
    }

    /// A plain-text error.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

/// Counters of the server, for tests and `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Requests answered by a handler.
    pub served: AtomicU64,
    /// Connections refused with `503` because the queue was full.
    pub refused: AtomicU64,
    /// Connections dropped: request too slow, too large or malformed.
    pub dropped: AtomicU64,
}

/// Answers a request path (with its query string).
pub type Handler = dyn Fn(&str) -> Response + Send + Sync + 'static;

/// A running server.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<HttpStats>,
}

impl HttpServer {
    /// Listen on `addr` and answer every GET with `handler`.
    pub fn start(addr: SocketAddr, handler: Arc<Handler>) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(HttpStats::default());
        let (tx, rx) = bounded::<TcpStream>(QUEUE);
        let mut threads = Vec::with_capacity(WORKERS + 1);
        for i in 0..WORKERS {
            let (rx, handler, stats) = (rx.clone(), handler.clone(), stats.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("status-http-{i}"))
                    .spawn(move || worker(&rx, &*handler, &stats))?,
            );
        }
        let (stop2, stats2) = (stop.clone(), stats.clone());
        threads.push(
            std::thread::Builder::new()
                .name("status-accept".into())
                .spawn(move || {
                    let _span = tracing::info_span!("status-http").entered();
                    for conn in listener.incoming() {
                        if stop2.load(Ordering::Acquire) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        if let Err(TrySendError::Full(conn)) = tx.try_send(conn) {
                            stats2.refused.fetch_add(1, Ordering::Relaxed);
                            refuse(conn);
                        }
                    }
                    // Dropping `tx` ends the workers.
                })?,
        );
        Ok(HttpServer {
            addr,
            stop,
            threads,
            stats,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn stats(&self) -> &HttpStats {
        &self.stats
    }

    /// Stop accepting, let the workers finish, join every thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Every worker busy: say so briefly, without waiting on the client.
fn refuse(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(true);
    let _ = conn.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\nRetry-After: 1\r\n\r\nbusy\n",
    );
}

fn worker(rx: &Receiver<TcpStream>, handler: &Handler, stats: &HttpStats) {
    while let Ok(conn) = rx.recv() {
        match serve(conn, handler) {
            Ok(()) => stats.served.fetch_add(1, Ordering::Relaxed),
            Err(_) => stats.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn serve(conn: TcpStream, handler: &Handler) -> io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = conn.set_nodelay(true);
    let (method, path) = read_request(&conn)?;
    let response = if method == "GET" || method == "HEAD" {
        handler(&path)
    } else {
        Response::text(405, "only GET\n")
    };
    write_response(conn, &response, method == "HEAD")
}

/// The request line's method and path; the headers are read and ignored,
/// within [`MAX_REQUEST_BYTES`] and [`REQUEST_DEADLINE`].
fn read_request(conn: &TcpStream) -> io::Result<(String, String)> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut reader =
        BufReader::new(DeadlineReader { conn, deadline }.take(MAX_REQUEST_BYTES as u64));
    let mut line = String::new();
    let mut first = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "request cut"));
        }
        if first.is_none() {
            first = Some(line.trim_end().to_string());
        } else if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let first = first.unwrap_or_default();
    let mut parts = first.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(p), Some(v)) if v.starts_with("HTTP/1.") && p.starts_with('/') => {
            Ok((m.to_string(), p.to_string()))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request line",
        )),
    }
}

/// Reads from a connection until a deadline: each read waits at most
/// what is left of it, so a client trickling bytes cannot stretch a
/// request past [`REQUEST_DEADLINE`].
struct DeadlineReader<'a> {
    conn: &'a TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request too slow"));
        }
        self.conn.set_read_timeout(Some(left.min(IO_TIMEOUT)))?;
        let mut conn = self.conn;
        conn.read(buf)
    }
}

fn write_response(mut conn: TcpStream, r: &Response, head_only: bool) -> io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    };
    let header = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    conn.write_all(header.as_bytes())?;
    if !head_only {
        conn.write_all(&r.body)?;
    }
    conn.flush()
}
