//! Loopback ports the tests reserve for their nodes, outside the kernel's
//! ephemeral range, held for the whole test process.
//!
//! A node started on port 0 gets an ephemeral port; a test that stops or
//! kills it and starts it again must ask for the same port (its downstreams
//! point there), but while no process holds it, any `bind(…:0)` on the
//! machine may be handed that very port (Linux gives listeners the odd
//! ephemeral ports) and the restart then fails with "Address already in
//! use". A port below `ip_local_port_range` is never handed out that way:
//! only an explicit bind takes it. Test processes running side by side
//! (other test binaries, other checkouts) agree through a `flock` on
//! `$TMPDIR/walrep-test-ports/PORT.lock`, released when the process exits.

use std::fs::{self, File, OpenOptions};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// How many ports below the ephemeral range the tests draw from.
const SPAN: u32 = 12_000;

/// The lock files of the ports this process reserved: open for its
/// lifetime, so no other test process takes one of them.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());
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
    std::env::temp_dir().join("walrep-test-ports")
}

/// Take `port` for this process if no other test process holds it and
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
/// a free ephemeral port (not reserved) if none is left there.
pub fn reserve_port() -> u16 {
    let high = ephemeral_low().clamp(2048, 65536);
    let low = high.saturating_sub(SPAN).max(1024);
    let span = high - low;
    let _ = fs::create_dir_all(lock_dir());
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = low + NEXT.fetch_add(1, Ordering::SeqCst) % span;
        if let Some(lock) = try_take(port) {
            HELD.lock().unwrap_or_else(|p| p.into_inner()).push(lock);
            return port as u16;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
