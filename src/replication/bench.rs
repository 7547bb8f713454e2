//! Benchmark hook: stream N bytes of WAL from a replication server over the
//! in-memory source to our client over loopback and report MB/s. Used by
//! benchmarks and smoke-tested by the test suite with a small N.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use walrep_states::{Lsn, WalSegSize};

use super::client::{ClientError, ConnInfo, ReplicationClient, StartOutcome, StreamEvent};
use super::fake::FakeSource;
use super::registry::WalSenderRegistry;
use super::server::{self, ServerOptions};
use super::slots::SlotManager;

/// Result of one run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub bytes: u64,
    pub elapsed: Duration,
    pub mb_per_s: f64,
    /// XLogData messages received.
    pub messages: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("benchmark setup failed: {0}")]
    Setup(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("stream stalled: nothing received for {0:?}")]
    Stalled(Duration),
    #[error("received WAL out of order at {got}, expected {expected}")]
    OutOfOrder { got: Lsn, expected: Lsn },
}

/// Silence that counts as a stall.
const STALL: Duration = Duration::from_secs(30);

/// Stream `total_bytes` of already-flushed WAL with segments of `seg_size`
/// from a fresh server on 127.0.0.1 to our client; report the rate.
pub fn stream_fake(total_bytes: u64, seg_size: WalSegSize) -> Result<BenchReport, BenchError> {
    let setup = |e: std::io::Error| BenchError::Setup(e.to_string());
    let dir = tempfile::tempdir().map_err(setup)?;
    let source = Arc::new(FakeSource::new(
        1,
        seg_size,
        dir.path().to_path_buf(),
        Lsn(0),
    ));
    source.advance(total_bytes);
    let slots =
        SlotManager::open(dir.path(), 4, None).map_err(|e| BenchError::Setup(e.to_string()))?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(setup)?;
    let handle = server::spawn(
        listener,
        source,
        slots,
        WalSenderRegistry::new(4),
        ServerOptions::default(),
    )
    .map_err(setup)?;
    let info = ConnInfo {
        host: "127.0.0.1".into(),
        port: handle.local_addr().port(),
        user: "bench".into(),
        ..ConnInfo::default()
    };
    let mut client = ReplicationClient::connect(&info, Duration::from_secs(10))?;
    if client.start_replication(None, Lsn(0), None)? != StartOutcome::Streaming {
        return Err(BenchError::Setup("server did not start streaming".into()));
    }
    let started = Instant::now();
    let mut next = Lsn(0);
    let mut messages = 0;
    while next.0 < total_bytes {
        match client.recv(STALL)? {
            StreamEvent::XLogData { start, data, .. } => {
                if start != next {
                    return Err(BenchError::OutOfOrder {
                        got: start,
                        expected: next,
                    });
                }
                next = Lsn(next.0 + data.len() as u64);
                messages += 1;
            }
            StreamEvent::Timeout => return Err(BenchError::Stalled(STALL)),
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    let _ = client.stop_streaming();
    client.close();
    handle.shutdown();
    Ok(BenchReport {
        bytes: total_bytes,
        elapsed,
        mb_per_s: total_bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64().max(1e-9),
        messages,
    })
}
