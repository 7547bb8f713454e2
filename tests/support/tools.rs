//! The external tools the tests drive, PostgreSQL 15's and Redis's, and the
//! one rule for a missing one: the test fails with the `apt-get install`
//! line that brings it, unless WALREP_SKIP_EXTERNAL=1, where the test is
//! skipped with a message. (CI unsets the variable: there nothing skips.)

use std::env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Debian's directory of PostgreSQL 15's programs (the server's are only
/// there), searched before PATH.
const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The Debian package that installs `tool`.
fn package(tool: &str) -> &'static str {
    match tool {
        "redis-cli" | "redis-benchmark" => "redis-tools",
        "psql" | "pg_receivewal" | "pg_basebackup" | "pg_verifybackup" => "postgresql-client-15",
        "postgres" | "initdb" => "postgresql-15",
        other => panic!("no package known for `{other}`: add it to tests/support/tools.rs"),
    }
}

/// The path of `name`, searched in PostgreSQL 15's directory, then PATH.
/// Missing, it fails the test saying how to install it, or, with
/// WALREP_SKIP_EXTERNAL=1, returns `None`: the caller returns (skips).
pub fn tool(name: &str) -> Option<PathBuf> {
    let package = package(name);
    if let Some(path) = find(name) {
        return Some(path);
    }
    if env::var("WALREP_SKIP_EXTERNAL").as_deref() == Ok("1") {
        eprintln!(
            "skipping: `{name}` is not installed (apt-get install {package}) and WALREP_SKIP_EXTERNAL=1"
        );
        return None;
    }
    panic!(
        "this test needs `{name}`: apt-get install {package} \
         (or set WALREP_SKIP_EXTERNAL=1 to skip the tests that need it)"
    );
}

fn find(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    std::iter::once(PathBuf::from(PG_BIN_DIR))
        .chain(env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
