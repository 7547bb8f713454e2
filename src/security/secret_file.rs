//! Files that hold secrets (password files, the Redis port's verifiers
//! written by `walrep passwd`): created 0600 before a byte is written, so
//! there is no moment when another user may read them, and replaced
//! atomically and durably.
//!
//! The write goes through the storage seam like every durable file.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::storage::{durable_replace, Storage, StorageError, FILE_MODE};

/// Mode of every file walrep writes a secret into.
pub const SECRET_FILE_MODE: u32 = FILE_MODE;

/// Replace `path` with `bytes`, readable and writable by its owner only:
/// the seam creates its temporary file 0600, fsyncs it, renames it over
/// `path` and fsyncs the directory.
pub fn write_secret_file(st: &dyn Storage, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    durable_replace(st, path, bytes)?;
    // A temporary file left by someone else keeps its mode when reused:
    // never leave a secret readable by others.
    if readable_by_others(path).map_err(StorageError::at("stat", path))? {
        fs::set_permissions(path, fs::Permissions::from_mode(SECRET_FILE_MODE))
            .map_err(StorageError::at("chmod", path))?;
    }
    Ok(())
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
        let st = crate::storage::StdStorage;
        write_secret_file(&st, &p, b"one").unwrap();
        write_secret_file(&st, &p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!readable_by_others(&p).unwrap());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(readable_by_others(&p).unwrap());
    }
}
