//! Loopback ports for servers that must be told their port before they
//! start: the nodes, etcd members and peers that `walrep demo`, `walrep
//! bench` and the tests launch on one machine.
//!
//! A port found free with `bind(…:0)` and released is an ephemeral port:
//! until the child binds it, any `connect` on the machine may take it as
//! its source port, and any other `bind(…:0)` may be handed it, so the
//! child then fails with "Address already in use". A port below
//! `ip_local_port_range` is never handed out that way: only an explicit
//! bind takes it. Processes choosing ports side by side (test binaries, a
//! demo, a bench) agree through a `flock` on
//! `$TMPDIR/walrep-ports/PORT.lock`, held until the process exits or
//! has reserved 256 newer ports.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// How many ports below the ephemeral range are drawn from.
const SPAN: u32 = 12_000;

/// The lock files of the ports this process reserved, the newest
/// [`MAX_HELD`]: open so no other process takes one of them.
static HELD: Mutex<VecDeque<File>> = Mutex::new(VecDeque::new());
/// How many reservations keep their lock. A port is reserved just before
/// its server starts and binds it; a long bench reserves thousands, and
/// holding every lock would hold as many descriptors. The oldest lock is
/// let go once this many newer ports were reserved: by then its server
/// bound the port (or was stopped, and the port is free for anyone).
const MAX_HELD: usize = 256;
/// Where the next search starts (spread by pid so processes rarely meet).
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// The first port of the kernel's ephemeral range (32768 when unknown).
fn ephemeral_low() -> u32 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("walrep-ports")
}

/// Take `port` for this process if no other process holds its lock and
/// nothing listens there now.
fn try_take(port: u32) -> Option<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_dir().join(format!("{port}.lock")))
        .ok()?;
    // SAFETY: flock on a valid, owned descriptor has no memory effects.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return None;
    }
    // Free now (std sets SO_REUSEADDR, as walrep's listeners do).
    TcpListener::bind(("127.0.0.1", port as u16)).ok()?;
    Some(file)
}

/// A loopback port reserved for this process, below the ephemeral range;
/// a free ephemeral port (not reserved) if none is left there or the
/// lock directory cannot be made.
pub fn reserve() -> io::Result<u16> {
    let high = ephemeral_low().clamp(2048, 65536);
    let low = high.saturating_sub(SPAN).max(1024);
    let span = high - low;
    if fs::create_dir_all(lock_dir()).is_ok() {
        let _ = NEXT.compare_exchange(
            u32::MAX,
            std::process::id().wrapping_mul(7919) % span,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        for _ in 0..span {
            let port = low + NEXT.fetch_add(1, Ordering::SeqCst) % span;
            if let Some(lock) = try_take(port) {
                let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
                if held.len() == MAX_HELD {
                    held.pop_front();
                }
                held.push_back(lock);
                return Ok(port as u16);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests share `HELD`: one at a time, so one's reservations are
    /// not let go by the other's.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn reserved_ports_are_distinct_below_the_ephemeral_range_and_locked() {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let a = reserve().unwrap();
        let b = reserve().unwrap();
        assert_ne!(a, b);
        for p in [a, b] {
            assert!(u32::from(p) < ephemeral_low(), "{p}");
            let lock = File::open(lock_dir().join(format!("{p}.lock"))).unwrap();
            // SAFETY: flock on a valid, owned descriptor.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            // flock locks belong to the open file description: a second
            // open in the same process conflicts with the held one.
            assert_ne!(rc, 0, "port {p} is not locked");
        }
    }

    #[test]
    fn only_the_newest_reservations_keep_their_lock() {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let first = reserve().unwrap();
        for _ in 0..MAX_HELD + 8 {
            reserve().unwrap();
        }
        assert!(HELD.lock().unwrap().len() <= MAX_HELD);
        let lock = File::open(lock_dir().join(format!("{first}.lock"))).unwrap();
        // SAFETY: flock on a valid, owned descriptor.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0, "the oldest reservation's lock was let go");
    }
}
