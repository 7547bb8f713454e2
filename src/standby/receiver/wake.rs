//! Waiting for the upstream's socket and for wake-ups from other threads at
//! once (PostgreSQL's WaitLatchOrSocket): a non-blocking socket pair is the
//! latch, `poll(2)` waits on it and the connection.

use std::io::{self, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The latch: `set` from any thread, `wait` in the walreceiver.
#[derive(Debug)]
pub struct Latch {
    tx: UnixStream,
    rx: UnixStream,
}

/// What a wait saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ready {
    /// The socket is readable (or closed / in error: reading says which).
    pub socket: bool,
    /// The latch was set.
    pub latch: bool,
}

impl Latch {
    pub fn new() -> io::Result<Latch> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Latch { tx, rx })
    }

    /// Wake the waiter. A full pipe already holds a pending wake-up.
    pub fn set(&self) {
        let _ = (&self.tx).write(&[1]);
    }

    /// Clear pending wake-ups.
    fn reset(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.rx).read(&mut buf), Ok(n) if n > 0) {}
    }

    /// Wait until `socket` (if any) is readable, the latch is set, or
    /// `timeout` passes. The latch is reset when it is reported.
    pub fn wait(&self, socket: Option<RawFd>, timeout: Duration) -> io::Result<Ready> {
        let mut fds = [
            libc::pollfd {
                fd: self.rx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: socket.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as libc::c_int;
        let n = if socket.is_some() { 2 } else { 1 };
        // SAFETY: `fds` is a valid array of `n` pollfd structures that
        // outlives the call; poll only writes their `revents`.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(Ready::default());
            }
            return Err(e);
        }
        let ready = Ready {
            latch: fds[0].revents != 0,
            socket: socket.is_some() && fds[1].revents != 0,
        };
        if ready.latch {
            self.reset();
        }
        Ok(ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    #[test]
    fn latch_and_socket_wake_the_waiter() {
        let latch = Latch::new().unwrap();
        let t = Instant::now();
        assert_eq!(
            latch.wait(None, Duration::from_millis(20)).unwrap(),
            Ready::default()
        );
        assert!(t.elapsed() >= Duration::from_millis(15));
        latch.set();
        latch.set();
        let r = latch.wait(None, Duration::from_secs(10)).unwrap();
        assert!(r.latch && !r.socket);
        // Reset: the next wait times out again.
        assert!(!latch.wait(None, Duration::from_millis(1)).unwrap().latch);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        a.write_all(b"x").unwrap();
        let r = latch
            .wait(Some(b.as_raw_fd()), Duration::from_secs(10))
            .unwrap();
        assert!(r.socket && !r.latch);
    }
}
