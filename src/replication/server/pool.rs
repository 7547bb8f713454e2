//! The connections still in startup (SSL negotiation, startup packet,
//! authentication), kept apart from authenticated walsenders: at most
//! `max_startup_connections` at once, and when a newcomer finds the pool
//! full the oldest member is closed for it. Sockets opened and left idle
//! therefore cannot keep a standby out, however many there are; each
//! also ends at `authentication_timeout`.

use std::collections::VecDeque;
use std::net::{Shutdown, TcpStream};
use std::sync::Mutex;
use std::time::Instant;

/// The pool; see the module docs.
pub(super) struct StartupPool {
    max: usize,
    members: Mutex<Members>,
}

struct Members {
    next_id: u64,
    /// Oldest first: id, a handle on the socket to close it, since when.
    queue: VecDeque<(u64, TcpStream, Instant)>,
}

impl StartupPool {
    pub fn new(max: usize) -> StartupPool {
        StartupPool {
            max: max.max(1),
            members: Mutex::new(Members {
                next_id: 0,
                queue: VecDeque::new(),
            }),
        }
    }

    /// Take a place for the connection of `socket` (a clone of it),
    /// closing the oldest member when the pool is full. Called by the
    /// accepting thread, so "oldest" is the order of arrival.
    pub fn enter(&self, socket: TcpStream) -> u64 {
        let mut m = self.members.lock().unwrap_or_else(|p| p.into_inner());
        while m.queue.len() >= self.max {
            let Some((_, old, since)) = m.queue.pop_front() else {
                break;
            };
            let peer = old
                .peer_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            tracing::warn!(
                %peer,
                waited_ms = since.elapsed().as_millis() as u64,
                "closing the oldest replication connection still authenticating: max_startup_connections ({}) reached",
                self.max
            );
            let _ = old.shutdown(Shutdown::Both);
        }
        m.next_id += 1;
        let id = m.next_id;
        m.queue.push_back((id, socket, Instant::now()));
        id
    }

    /// The member `id` authenticated or left: its place is free.
    pub fn leave(&self, id: u64) {
        let mut m = self.members.lock().unwrap_or_else(|p| p.into_inner());
        m.queue.retain(|(i, _, _)| *i != id);
    }

    /// Members now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.members.lock().unwrap().queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn a_full_pool_closes_its_oldest_member() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let pool = StartupPool::new(2);
        let mut clients = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).unwrap());
            let (s, _) = l.accept().unwrap();
            ids.push(pool.enter(s));
        }
        assert_eq!(pool.len(), 2);
        // The first client's connection was closed by the server side.
        let mut buf = [0u8; 1];
        assert_eq!(clients[0].read(&mut buf).unwrap(), 0);
        pool.leave(ids[2]);
        assert_eq!(pool.len(), 1);
    }
}
