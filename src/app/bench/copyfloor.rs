//! The copy floor of a base backup on this machine: the same files moved
//! by the simplest pipeline there is — a sender reading each file and
//! writing it to a loopback TCP socket, a receiver reading the socket and
//! writing the file, then the final sync a backup does (every file, then
//! the directory) — over 1 or N streams at once. No protocol, no
//! checksum, no tar, no check: what the disk, the page cache, the
//! loopback and the CPUs allow. A backup's rate as a share of it says
//! how much of the time its own work costs.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::BenchError;

/// Where a data directory keeps its checkpoint snapshots.
const BASE_DIR: &str = "base";
/// Bytes per read and per write (the backup's own chunk size).
const BUF_BYTES: usize = 256 * 1024;

/// What one run of the pipeline measured.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// Bytes of file data moved.
    pub bytes: u64,
    /// Wall time from the first read to the end of the final sync.
    pub secs: f64,
    /// CPU (user + system) of the sender and receiver threads, seconds.
    pub cpu_s: f64,
}

impl Floor {
    /// MB/s (MiB, as the backup figures).
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.secs.max(1e-9)
    }

    /// CPU seconds per GiB moved.
    pub fn cpu_s_per_gb(&self) -> f64 {
        self.cpu_s / (self.bytes as f64 / (1u64 << 30) as f64).max(1e-9)
    }
}

/// The snapshot chunk files of the newest snapshot under `datadir/base`.
pub fn snapshot_files(datadir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let base = datadir.join(BASE_DIR);
    let io = |e| BenchError::io(format!("list {}", base.display()), e);
    let newest = std::fs::read_dir(&base)
        .map_err(io)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .max()
        .ok_or_else(|| BenchError::Server(format!("no snapshot under {}", base.display())))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&newest)
        .map_err(io)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

/// Move `files` into `dest` (created; removed after) over `streams`
/// loopback connections, each file whole on one of them, then fsync every
/// file and `dest`.
pub fn measure(files: &[PathBuf], dest: &Path, streams: usize) -> Result<Floor, BenchError> {
    std::fs::create_dir_all(dest)
        .map_err(|e| BenchError::io(format!("create {}", dest.display()), e))?;
    let shares = split(files, streams.max(1))?;
    let cpu0 = thread_group_cpu_s();
    let t0 = Instant::now();
    let moved = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .iter()
            .enumerate()
            .map(|(k, share)| scope.spawn(move || one_stream(share, dest, k)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io_err("a copy stream panicked")))
            })
            .collect::<Result<Vec<_>, _>>()
    });
    let result = moved.and_then(|received| {
        let mut bytes = 0;
        for (path, n) in received.into_iter().flatten() {
            File::open(&path).and_then(|f| f.sync_all())?;
            bytes += n;
        }
        File::open(dest).and_then(|d| d.sync_all())?;
        Ok(bytes)
    });
    let secs = t0.elapsed().as_secs_f64();
    let cpu_s = thread_group_cpu_s() - cpu0;
    let _ = std::fs::remove_dir_all(dest);
    let bytes = result.map_err(|e| BenchError::io("copy floor", e))?;
    Ok(Floor { bytes, secs, cpu_s })
}

fn io_err(msg: &str) -> std::io::Error {
    std::io::Error::other(msg.to_string())
}

/// Each file on the stream with the fewest bytes so far (largest first):
/// (path, size) per stream.
fn split(files: &[PathBuf], streams: usize) -> Result<Vec<Vec<(PathBuf, u64)>>, BenchError> {
    let mut sized = files
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .map(|m| (p.clone(), m.len()))
                .map_err(|e| BenchError::io(format!("stat {}", p.display()), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    sized.sort_by_key(|f| std::cmp::Reverse(f.1));
    let mut shares: Vec<(u64, Vec<(PathBuf, u64)>)> = vec![(0, Vec::new()); streams];
    for f in sized {
        let least = shares
            .iter_mut()
            .min_by_key(|s| s.0)
            .expect("one stream at least");
        least.0 += f.1;
        least.1.push(f);
    }
    Ok(shares.into_iter().map(|s| s.1).collect())
}

/// One connection: a sender thread reads the files and writes them to
/// the socket, this thread reads the socket and writes `dest/k-i`;
/// returns the files written and their sizes.
fn one_stream(
    share: &[(PathBuf, u64)],
    dest: &Path,
    k: usize,
) -> std::io::Result<Vec<(PathBuf, u64)>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::scope(|scope| {
        let sender = scope.spawn(move || -> std::io::Result<()> {
            let mut sock = TcpStream::connect(addr)?;
            let mut buf = vec![0u8; BUF_BYTES];
            for (path, _) in share {
                let mut f = File::open(path)?;
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    sock.write_all(&buf[..n])?;
                }
            }
            Ok(())
        });
        let (mut sock, _) = listener.accept()?;
        let mut buf = vec![0u8; BUF_BYTES];
        let mut out = Vec::with_capacity(share.len());
        for (i, (_, size)) in share.iter().enumerate() {
            let path = dest.join(format!("{k}-{i}"));
            let mut f = File::create(&path)?;
            let mut left = *size;
            while left > 0 {
                let want = buf.len().min(left as usize);
                let n = sock.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io_err("the sender closed the connection early"));
                }
                f.write_all(&buf[..n])?;
                left -= n as u64;
            }
            out.push((path, *size));
        }
        sender
            .join()
            .unwrap_or_else(|_| Err(io_err("a sender panicked")))?;
        Ok(out)
    })
}

/// CPU (user + system) of this whole process so far, its threads that
/// ended included.
fn thread_group_cpu_s() -> f64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF is valid and `usage` is writable.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_of_every_file_is_moved_over_each_stream_count() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let sizes = [0usize, 1, BUF_BYTES + 7, 3 * BUF_BYTES, 12_345];
        let files: Vec<PathBuf> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let p = src.join(format!("f{i}"));
                std::fs::write(&p, vec![i as u8; n]).unwrap();
                p
            })
            .collect();
        for streams in [1, 2, 4] {
            let f = measure(&files, &dir.path().join("dest"), streams).unwrap();
            assert_eq!(f.bytes, sizes.iter().sum::<usize>() as u64);
            assert!(f.secs > 0.0 && f.mbps() > 0.0);
            assert!(!dir.path().join("dest").exists(), "the copy is removed");
        }
        let shares = split(&files, 2).unwrap();
        let per: Vec<u64> = shares.iter().map(|s| s.iter().map(|f| f.1).sum()).collect();
        assert_eq!(per.iter().sum::<u64>(), sizes.iter().sum::<usize>() as u64);
        assert!(shares.iter().all(|s| !s.is_empty()));
    }
}
