//! [`NetStream`]: a blocking TCP connection, with or without TLS, that one
//! thread can read while another writes (a walsender's reader thread and
//! its sender; a walreceiver and its status sender), as a plain
//! `TcpStream::try_clone` allows.
//!
//! # How TLS is shared
//! rustls keeps one state per connection for both directions, so the TLS
//! variant holds it behind a mutex that is never held across a socket
//! call: the reader reads ciphertext from the socket with no lock, then
//! decrypts under the lock; a writer encrypts under the lock, then writes
//! the records under a second lock that only orders the socket writes (TLS
//! records must leave in the order they were sealed). A reader that must
//! send something itself (a TLS 1.3 key update) does so only if no writer
//! is busy, never waiting for one: a writer blocked on a full socket must
//! not stop the reader that lets the peer make progress.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

/// Ciphertext read from the socket per call (one TLS record and change).
const RAW_READ: usize = 18 * 1024;

/// A connection, plain or TLS.
pub enum NetStream {
    /// A plain TCP connection (`sslmode=disable`, or no TLS configured).
    Plain(TcpStream),
    /// TLS over TCP, the session shared by every clone of the stream.
    Tls(Arc<TlsShared>),
}

/// The TLS state both halves of a connection share.
pub struct TlsShared {
    sock: TcpStream,
    state: Mutex<TlsState>,
    /// Orders socket writes of sealed records.
    write_order: Mutex<()>,
}

struct TlsState {
    conn: rustls::Connection,
    /// Ciphertext read but not yet taken by rustls.
    raw_in: Vec<u8>,
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NetStream {
    /// Run the server side of a TLS handshake on `sock` within `deadline`.
    pub fn accept_tls(
        sock: TcpStream,
        config: Arc<rustls::ServerConfig>,
        deadline: Instant,
    ) -> io::Result<NetStream> {
        let conn = rustls::ServerConnection::new(config).map_err(tls_err)?;
        Self::handshake(sock, conn.into(), deadline)
    }

    /// Run the client side of a TLS handshake on `sock` within `deadline`.
    pub fn connect_tls(
        sock: TcpStream,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        deadline: Instant,
    ) -> io::Result<NetStream> {
        let conn = rustls::ClientConnection::new(config, name).map_err(tls_err)?;
        Self::handshake(sock, conn.into(), deadline)
    }

    fn handshake(
        sock: TcpStream,
        mut conn: rustls::Connection,
        deadline: Instant,
    ) -> io::Result<NetStream> {
        let (read_timeout, write_timeout) = (sock.read_timeout()?, sock.write_timeout()?);
        while conn.is_handshaking() || conn.wants_write() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timed out during the TLS handshake",
                ));
            }
            sock.set_read_timeout(Some(left))?;
            sock.set_write_timeout(Some(left))?;
            conn.complete_io(&mut &sock)?;
        }
        sock.set_read_timeout(read_timeout)?;
        sock.set_write_timeout(write_timeout)?;
        Ok(NetStream::Tls(Arc::new(TlsShared {
            sock,
            state: Mutex::new(TlsState {
                conn,
                raw_in: Vec::new(),
            }),
            write_order: Mutex::new(()),
        })))
    }

    /// The TCP socket underneath (timeouts, shutdown, addresses, polling).
    pub fn socket(&self) -> &TcpStream {
        match self {
            NetStream::Plain(s) => s,
            NetStream::Tls(t) => &t.sock,
        }
    }

    /// Another handle on the same connection.
    pub fn try_clone(&self) -> io::Result<NetStream> {
        Ok(match self {
            NetStream::Plain(s) => NetStream::Plain(s.try_clone()?),
            NetStream::Tls(t) => NetStream::Tls(Arc::clone(t)),
        })
    }

    /// Whether the connection is encrypted (PostgreSQL's `pg_stat_ssl.ssl`).
    pub fn is_tls(&self) -> bool {
        matches!(self, NetStream::Tls(_))
    }

    /// Whether the peer presented a certificate that verified against the
    /// configured roots (rustls refuses the handshake otherwise).
    pub fn peer_has_certificate(&self) -> bool {
        match self {
            NetStream::Plain(_) => false,
            NetStream::Tls(t) => lock(&t.state).conn.peer_certificates().is_some(),
        }
    }

    /// Bound every read on the socket (`None`: block). Shared by all
    /// clones, as on a `TcpStream`.
    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.socket().set_read_timeout(d)
    }

    /// Bound every write on the socket (`None`: block), so a peer that
    /// stops reading cannot hold a writer forever.
    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.socket().set_write_timeout(d)
    }

    /// The address of the other end, for `pg_stat_replication.client_addr`
    /// and log lines.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.socket().peer_addr()
    }

    /// Shut the TCP socket down (without a TLS close_notify): wakes a
    /// thread blocked reading on a clone.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.socket().shutdown(how)
    }

    /// Decrypted bytes are waiting to be read (a TLS stream may hold some
    /// the socket no longer shows as readable).
    pub fn has_buffered_input(&self) -> bool {
        match self {
            NetStream::Plain(_) => false,
            NetStream::Tls(t) => {
                let mut st = lock(&t.state);
                !st.raw_in.is_empty()
                    || st
                        .conn
                        .process_new_packets()
                        .is_ok_and(|s| s.plaintext_bytes_to_read() > 0)
            }
        }
    }
}

impl AsRawFd for NetStream {
    fn as_raw_fd(&self) -> RawFd {
        self.socket().as_raw_fd()
    }
}

impl TlsState {
    /// Hand buffered ciphertext to rustls until it holds plaintext to read
    /// or the ciphertext is used up.
    fn feed(&mut self) -> io::Result<()> {
        while !self.raw_in.is_empty() {
            let n = self.conn.read_tls(&mut &self.raw_in[..])?;
            self.raw_in.drain(..n);
            let state = self.conn.process_new_packets().map_err(tls_err)?;
            if n == 0 || state.plaintext_bytes_to_read() > 0 {
                break;
            }
        }
        Ok(())
    }

    /// Sealed records waiting to be sent.
    fn take_output(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out)?;
        }
        Ok(out)
    }
}

impl TlsShared {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut raw = [0u8; RAW_READ];
        loop {
            {
                let mut st = lock(&self.state);
                match st.conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if !st.raw_in.is_empty() {
                    st.feed()?;
                    continue;
                }
            }
            let n = (&self.sock).read(&mut raw)?;
            let mut st = lock(&self.state);
            if n == 0 {
                // End of stream: rustls tells a close_notify (Ok(0) next)
                // from a truncation (UnexpectedEof next).
                st.conn.read_tls(&mut io::empty())?;
                st.conn.process_new_packets().map_err(tls_err)?;
                continue;
            }
            st.raw_in.extend_from_slice(&raw[..n]);
            st.feed()?;
            let pending = st.conn.wants_write();
            drop(st);
            if pending {
                self.send_pending_if_idle()?;
            }
        }
    }

    /// Send what rustls queued on its own (key updates, alerts), unless a
    /// writer is busy: it sends them after its own records.
    fn send_pending_if_idle(&self) -> io::Result<()> {
        let Ok(_order) = self.write_order.try_lock() else {
            return Ok(());
        };
        let out = lock(&self.state).take_output()?;
        (&self.sock).write_all(&out)
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let _order = lock(&self.write_order);
        let (n, mut out) = {
            let mut st = lock(&self.state);
            let n = st.conn.writer().write(buf)?;
            (n, st.take_output()?)
        };
        while !out.is_empty() {
            (&self.sock).write_all(&out)?;
            out = lock(&self.state).take_output()?;
        }
        Ok(n)
    }
}

impl Read for NetStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            NetStream::Plain(s) => s.read(buf),
            NetStream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for NetStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            NetStream::Plain(s) => s.write(buf),
            NetStream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            NetStream::Plain(s) => s.flush(),
            NetStream::Tls(_) => Ok(()),
        }
    }
}

impl From<TcpStream> for NetStream {
    fn from(s: TcpStream) -> Self {
        NetStream::Plain(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::tls::{self, SslMode};
    use std::net::TcpListener;

    /// A CA and a server certificate for 127.0.0.1 and localhost, as PEM
    /// files in `dir`: (ca, cert, key).
    pub(crate) fn test_ca(
        dir: &std::path::Path,
    ) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "walrep test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let paths = (
            dir.join("ca.crt"),
            dir.join("server.crt"),
            dir.join("server.key"),
        );
        std::fs::write(&paths.0, ca.pem()).unwrap();
        std::fs::write(&paths.1, cert.pem()).unwrap();
        std::fs::write(&paths.2, key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&paths.2, std::fs::Permissions::from_mode(0o600)).unwrap();
        paths
    }

    fn pair(mode: SslMode, host: &str) -> io::Result<(NetStream, NetStream)> {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = test_ca(dir.path());
        let server = tls::server_config(tls::ServerFiles {
            cert_param: "ssl_cert_file",
            cert: &cert,
            key_param: "ssl_key_file",
            key: &key,
            client_ca: None,
        })
        .unwrap();
        let client = tls::client_config(mode, Some(&ca)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let accept = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            NetStream::accept_tls(s, server, deadline)
        });
        let sock = TcpStream::connect(addr).unwrap();
        let c = NetStream::connect_tls(sock, client, tls::server_name(host).unwrap(), deadline);
        let s = accept.join().unwrap();
        Ok((c?, s?))
    }

    #[test]
    fn one_thread_reads_while_another_writes_both_ways() {
        let (client, server) = pair(SslMode::VerifyFull, "127.0.0.1").unwrap();
        let n = 300_000usize;
        let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let mut server_w = server.try_clone().unwrap();
        let mut server_r = server;
        let mut client_w = client.try_clone().unwrap();
        let mut client_r = client;
        let d1 = data.clone();
        let w1 = std::thread::spawn(move || server_w.write_all(&d1).unwrap());
        let d2 = data.clone();
        let w2 = std::thread::spawn(move || client_w.write_all(&d2).unwrap());
        let mut got_c = vec![0u8; n];
        let r1 = std::thread::spawn(move || {
            let mut got = vec![0u8; n];
            server_r.read_exact(&mut got).unwrap();
            got
        });
        client_r.read_exact(&mut got_c).unwrap();
        assert_eq!(got_c, data);
        assert_eq!(r1.join().unwrap(), data);
        w1.join().unwrap();
        w2.join().unwrap();
    }

    #[test]
    fn verify_full_refuses_a_name_the_certificate_lacks() {
        assert!(pair(SslMode::VerifyFull, "walrep.invalid").is_err());
        // verify-ca checks the chain only.
        pair(SslMode::VerifyCa, "walrep.invalid").unwrap();
    }

    #[test]
    fn a_peer_that_closes_ends_the_stream() {
        let (client, mut server) = pair(SslMode::Require, "127.0.0.1").unwrap();
        client.shutdown(Shutdown::Both).unwrap();
        let mut buf = [0u8; 8];
        let r = server.read(&mut buf);
        assert!(matches!(r, Ok(0)) || r.is_err(), "{r:?}");
    }
}
