//! PostgreSQL's password file (`~/.pgpass`, or the file `passfile=` names
//! in a connection string): one `hostname:port:database:username:password`
//! line per entry, `*` matching anything in the first four fields, `\:` and
//! `\\` escaping, `#` starting a comment; the first matching line wins. As
//! libpq does, a file that others can read is ignored with a warning, so a
//! password never sits in a world-readable file unnoticed.

use std::path::Path;

use super::secret_file::readable_by_others;

/// What a connection is about to use, to match the file's lines against.
#[derive(Debug, Clone, Copy)]
pub struct PassQuery<'a> {
    /// The host as written in the connection string (`host=`), matched
    /// textually: no name resolution, as libpq.
    pub host: &'a str,
    /// The server's port (`port=`).
    pub port: u16,
    /// `dbname=`; `replication` for a physical replication connection,
    /// which is how libpq matches those too.
    pub database: &'a str,
    /// The role connecting (`user=`).
    pub user: &'a str,
}

/// Why no password came from the file (a missing file is not an error:
/// the connection goes on without a password, as libpq's does).
#[derive(Debug, thiserror::Error)]
pub enum PassfileError {
    /// Others can read the file (mode wider than 0600): its passwords
    /// are not used. Holds the file's path.
    #[error("password file \"{0}\" has group or world access; permissions should be u=rw (0600) or less")]
    TooOpen(String),
    /// The file exists but could not be read.
    #[error("could not read password file \"{path}\": {source}")]
    Read {
        /// The password file's path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The password for `q` in the file at `path`: `Ok(None)` if the file does
/// not exist or has no matching line.
pub fn lookup(path: &Path, q: PassQuery<'_>) -> Result<Option<String>, PassfileError> {
    let shown = || path.display().to_string();
    match readable_by_others(path) {
        Ok(true) => return Err(PassfileError::TooOpen(shown())),
        Ok(false) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PassfileError::Read {
                path: shown(),
                source,
            })
        }
    }
    let text = std::fs::read_to_string(path).map_err(|source| PassfileError::Read {
        path: shown(),
        source,
    })?;
    Ok(find(&text, q))
}

/// The first line of `text` matching `q`.
pub fn find(text: &str, q: PassQuery<'_>) -> Option<String> {
    let port = q.port.to_string();
    let wanted = [q.host, port.as_str(), q.database, q.user];
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter_map(fields)
        .find(|f| {
            f[..4]
                .iter()
                .zip(wanted)
                .all(|(field, want)| field == "*" || field == want)
        })
        .map(|mut f| f.swap_remove(4))
}

/// The five fields of a line (`\` escapes the next character); `None` for
/// a line with fewer. Extra colons belong to the password, as in libpq.
fn fields(line: &str) -> Option<Vec<String>> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.last_mut()?.push(chars.next().unwrap_or('\\')),
            ':' if out.len() < 5 => out.push(String::new()),
            c => out.last_mut()?.push(c),
        }
    }
    (out.len() == 5).then_some(out)
}

/// One line for `q`'s host, port, database and user with `password`,
/// escaped (what `walrep basebackup -R` writes).
pub fn line(q: PassQuery<'_>, password: &str) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    format!(
        "{}:{}:{}:{}:{}\n",
        esc(q.host),
        q.port,
        esc(q.database),
        esc(q.user),
        esc(password)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: PassQuery<'static> = PassQuery {
        host: "10.0.0.1",
        port: 5433,
        database: "replication",
        user: "walrep",
    };

    #[test]
    fn first_matching_line_wins_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    other:5433:*:walrep:nope\n\
                    10.0.0.1:5433:replication:walrep:a\\:b\\\\c:d\n\
                    *:*:*:*:fallback\n";
        assert_eq!(find(text, Q).as_deref(), Some("a:b\\c:d"));
        let q = PassQuery { user: "x", ..Q };
        assert_eq!(find(text, q).as_deref(), Some("fallback"));
        assert_eq!(find("short:line\n", Q), None);
    }

    #[test]
    fn written_lines_read_back() {
        let l = line(Q, "p:w\\d");
        assert_eq!(find(&l, Q).as_deref(), Some("p:w\\d"));
    }

    #[test]
    fn an_open_file_is_refused_and_a_missing_one_is_none() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pgpass");
        assert!(lookup(&p, Q).unwrap().is_none());
        std::fs::write(&p, "*:*:*:*:pw\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(lookup(&p, Q), Err(PassfileError::TooOpen(_))));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&p, Q).unwrap().as_deref(), Some("pw"));
    }
}
