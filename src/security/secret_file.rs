//! Files that hold secrets (password files, the Redis port's verifiers
//! written by `walrep passwd`): created 0600 before a byte is written, so
//! there is no moment when another user may read them, and replaced
//! atomically and durably.
//!
//! Kept to one small function on purpose: the write goes through plain
//! `std::fs` here so the node's storage seam can take it over in one place.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file walrep writes a secret into.
pub const SECRET_FILE_MODE: u32 = 0o600;

/// Replace `path` with `bytes`, readable and writable by its owner only:
/// a temporary file created 0600, fsynced, renamed over `path`, directory
/// fsynced.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(SECRET_FILE_MODE)
        .open(&tmp)?;
    // The mode given to open() is filtered by the umask; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(SECRET_FILE_MODE))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// Whether a file that should hold a secret can be read by others than
/// its owner (libpq refuses such a password file, and so do we).
pub fn readable_by_others(path: &Path) -> io::Result<bool> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o077 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_owner_only_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        write_secret_file(&p, b"one").unwrap();
        write_secret_file(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!readable_by_others(&p).unwrap());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(readable_by_others(&p).unwrap());
    }
}
