//! A fault proxy between a walreceiver and a walsender: forwards bytes both
//! ways and, on command, cuts every connection, delays every chunk, or
//! black-holes the stream (connections stay open, nothing arrives).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    Pass = 0,
    /// Close every connection and refuse new ones.
    Cut = 1,
    /// Hold every chunk back 50 ms.
    Delay = 2,
    /// Keep connections but forward nothing.
    BlackHole = 3,
}

pub struct FaultProxy {
    pub port: u16,
    fault: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(target_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let fault = Arc::new(AtomicU8::new(Fault::Pass as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (f, s, c) = (fault.clone(), stop.clone(), conns.clone());
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if f.load(Ordering::Relaxed) == Fault::Cut as u8 {
                            continue; // dropped: refused
                        }
                        let _ = client.set_nonblocking(false);
                        let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)) else {
                            continue;
                        };
                        c.lock()
                            .unwrap()
                            .extend([client.try_clone().unwrap(), upstream.try_clone().unwrap()]);
                        pipe(
                            client.try_clone().unwrap(),
                            upstream.try_clone().unwrap(),
                            f.clone(),
                            s.clone(),
                        );
                        pipe(upstream, client, f.clone(), s.clone());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FaultProxy {
            port,
            fault,
            stop,
            conns,
            accept: Some(accept),
        }
    }

    pub fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
        if fault == Fault::Cut {
            for c in self.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Copy `from` to `to` in a thread, applying the current fault per chunk.
fn pipe(mut from: TcpStream, mut to: TcpStream, fault: Arc<AtomicU8>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = vec![0u8; 64 << 10];
        while !stop.load(Ordering::Relaxed) {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => break,
            };
            // Black hole: hold the bytes until the fault changes (bounded by stop).
            while fault.load(Ordering::Relaxed) == Fault::BlackHole as u8
                && !stop.load(Ordering::Relaxed)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            match fault.load(Ordering::Relaxed) {
                x if x == Fault::Cut as u8 => break,
                x if x == Fault::Delay as u8 => std::thread::sleep(Duration::from_millis(50)),
                _ => {}
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

impl Drop for FaultProxy {
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
