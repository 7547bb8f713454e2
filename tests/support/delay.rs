//! A delaying TCP relay run inside a network namespace: the kernel here has
//! nftables but no `tc netem`, so latency comes from this. Each direction
//! is a delay line: a reader stamps every chunk with the time it is due and
//! a writer sends it then, so the link keeps its throughput and only gains
//! latency (a relay that slept per chunk would also throttle it). The queue
//! of chunks in flight is bounded; a full queue stops reading, which TCP
//! turns into back-pressure.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use super::netns::Net;

/// Chunks in flight per direction.
const QUEUE_CHUNKS: usize = 1024;
const CHUNK_BYTES: usize = 16 << 10;

/// A relay from `listen` (in a namespace) to `target`, adding `one_way`
/// latency to each direction; stopped when dropped.
pub struct DelayRelay {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl DelayRelay {
    /// Listen on `listen` (`ip:port`) inside namespace `ns`, connecting
    /// each client to `target` from there.
    pub fn start(net: &Net, ns: &str, listen: &str, target: &str, one_way: Duration) -> DelayRelay {
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (s, c) = (stop.clone(), conns.clone());
        let (listen, target) = (listen.to_string(), target.to_string());
        let (ready_tx, ready_rx) = bounded(1);
        let accept = net.run_in(ns, move || {
            let listener = TcpListener::bind(&listen).expect("bind the relay");
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            accept_loop(&listener, &target, one_way, &s, &c);
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the relay to listen");
        DelayRelay {
            stop,
            conns,
            accept: Some(accept),
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    target: &str,
    one_way: Duration,
    stop: &Arc<AtomicBool>,
    conns: &Arc<Mutex<Vec<TcpStream>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(_) => {
                // Non-blocking accept: poll for the stop flag.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = client.set_nonblocking(false);
        let Ok(upstream) =
            TcpStream::connect_timeout(&target.parse().unwrap(), Duration::from_secs(2))
        else {
            continue; // the client sees its connection closed, as a refusal
        };
        for s in [&client, &upstream] {
            let _ = s.set_nodelay(true);
            if let Ok(c) = s.try_clone() {
                conns.lock().unwrap().push(c);
            }
        }
        line(&client, &upstream, one_way, stop);
        line(&upstream, &client, one_way, stop);
    }
}

/// Bytes read and the moment they are due at the other end.
type Chunk = (Instant, Vec<u8>);

/// One direction: a reader thread queues stamped chunks, a writer thread
/// sends each when due.
fn line(from: &TcpStream, to: &TcpStream, delay: Duration, stop: &Arc<AtomicBool>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let (tx, rx): (Sender<Chunk>, Receiver<Chunk>) = bounded(QUEUE_CHUNKS);
    let stop_r = stop.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK_BYTES];
        while !stop_r.load(Ordering::Relaxed) {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Read);
        // Dropping tx lets the writer drain what is queued, then close.
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
