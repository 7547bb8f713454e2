//! The disk's floor: how many 8 kB write + fdatasync pairs per second the
//! data directory's filesystem does, measured like pg_test_fsync ("one 8kB
//! write", fdatasync): the same block rewritten at offset 0 of a file that
//! was fully written and synced first, so no allocation is measured.
//! And the network's floor: a one-byte round trip over loopback TCP. A
//! client's commit costs at least one of each.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::BenchError;

/// Size of each write (PostgreSQL's XLOG_BLCKSZ).
const WRITE_BYTES: usize = 8192;
/// Size of the probe file (pg_test_fsync uses 16 MB).
const FILE_BYTES: usize = 16 << 20;
/// Bound on the fdatasyncs of one probe, whatever the duration.
const MAX_OPS: u64 = 10_000_000;
/// How long the loopback ping-pong runs.
const RTT_PROBE: Duration = Duration::from_millis(500);

/// One probe's result.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FsyncProbe {
    /// Write + fdatasync pairs per second.
    pub ops_per_s: f64,
    /// Mean time of one pair, microseconds.
    pub mean_us: f64,
    pub ops: u64,
}

/// The probe file, created once in the directory to test.
pub struct FsyncProber {
    file: File,
    path: PathBuf,
    block: Vec<u8>,
}

impl FsyncProber {
    /// Create and fill the probe file in `dir` (then fsync it).
    pub fn create(dir: &Path) -> Result<FsyncProber, BenchError> {
        let path = dir.join("fdatasync_probe.tmp");
        let io = |e| BenchError::io(format!("fdatasync probe file {}", path.display()), e);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let zeroes = vec![0u8; 1 << 20];
        for _ in 0..FILE_BYTES / zeroes.len() {
            file.write_all(&zeroes).map_err(io)?;
        }
        file.sync_all().map_err(io)?;
        Ok(FsyncProber {
            file,
            path,
            block: vec![0x5a; WRITE_BYTES],
        })
    }

    /// Write + fdatasync at offset 0 for `duration`.
    pub fn probe(&mut self, duration: Duration) -> Result<FsyncProbe, BenchError> {
        let start = Instant::now();
        let mut ops = 0u64;
        while ops < MAX_OPS && (ops == 0 || start.elapsed() < duration) {
            self.file
                .write_all_at(&self.block, 0)
                .and_then(|()| self.file.sync_data())
                .map_err(|e| BenchError::io(format!("fdatasync of {}", self.path.display()), e))?;
            ops += 1;
        }
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        Ok(FsyncProbe {
            ops_per_s: ops as f64 / secs,
            mean_us: secs * 1e6 / ops as f64,
            ops,
        })
    }
}

/// Bandwidth of the data directory's disk: write `bytes` (1 MiB at a
/// time) into a new file, fdatasync, remove it; MB/s (1e6 bytes), like
/// `dd bs=1M conv=fdatasync` of shared/anchors/01_disk.sh.
pub fn seq_write_probe(dir: &Path, bytes: u64) -> Result<f64, BenchError> {
    let path = dir.join("seq_write_probe.tmp");
    let io = |e| BenchError::io(format!("sequential write probe {}", path.display()), e);
    let start = Instant::now();
    let result = (|| {
        let mut f = File::create(&path)?;
        let chunk = vec![0x5au8; 1 << 20];
        let mut done = 0u64;
        while done < bytes {
            let n = chunk.len().min((bytes - done) as usize);
            f.write_all(&chunk[..n])?;
            done += n as u64;
        }
        f.sync_data()
    })();
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let _ = std::fs::remove_file(&path);
    result.map_err(io)?;
    Ok(bytes as f64 / 1e6 / secs)
}

/// Mean round trip of one byte over a loopback TCP connection, µs.
pub fn loopback_rtt_us() -> Result<f64, BenchError> {
    let io = |e| BenchError::io("loopback round-trip probe", e);
    let l = TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let addr = l.local_addr().map_err(io)?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr).map_err(io)?;
    c.set_nodelay(true).map_err(io)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    let mut b = [7u8; 1];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RTT_PROBE {
        c.write_all(&b).map_err(io)?;
        c.read_exact(&mut b).map_err(io)?;
        n += 1;
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
    drop(c);
    let _ = echo.join();
    Ok(us)
}

impl Drop for FsyncProber {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_counts_its_fdatasyncs() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = FsyncProber::create(dir.path()).unwrap();
        let r = p.probe(Duration::from_millis(20)).unwrap();
        assert!(r.ops >= 1);
        assert!(r.ops_per_s > 0.0 && r.mean_us > 0.0);
        assert_eq!(
            std::fs::metadata(dir.path().join("fdatasync_probe.tmp"))
                .unwrap()
                .len(),
            FILE_BYTES as u64
        );
        drop(p);
        assert!(!dir.path().join("fdatasync_probe.tmp").exists());
    }

    #[test]
    fn a_sequential_probe_measures_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let mbps = seq_write_probe(dir.path(), 3 << 20).unwrap();
        assert!(mbps > 0.0);
        assert!(!dir.path().join("seq_write_probe.tmp").exists());
        assert!(seq_write_probe(&dir.path().join("missing"), 1 << 20).is_err());
    }
}
