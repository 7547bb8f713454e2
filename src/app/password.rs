//! Reading a new password for `walrep passwd`: from the terminal without
//! echo (asked twice, PostgreSQL's `\password` does the same), or as the
//! first line of standard input when that is not a terminal (scripts).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context};

/// Longest password accepted (PostgreSQL's limit on a cleartext password
/// message is about 1000 bytes; SCRAM takes any length, a bound is sane).
const MAX_PASSWORD_LEN: usize = 1024;

/// The password typed or piped in.
pub fn read_new_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt("Enter new password: ")?;
        let again = prompt("Enter it again: ")?;
        if first != again {
            bail!("passwords didn't match");
        }
        first
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("could not read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        bail!("empty password: nothing to make a verifier of");
    }
    if password.len() > MAX_PASSWORD_LEN {
        bail!("password longer than {MAX_PASSWORD_LEN} bytes");
    }
    Ok(password)
}

/// One line from the terminal with echo off (restored even on error).
fn prompt(text: &str) -> anyhow::Result<String> {
    let mut err = std::io::stderr();
    write!(err, "{text}")?;
    err.flush()?;
    let fd = libc::STDIN_FILENO;
    // SAFETY: tcgetattr/tcsetattr read and write one termios struct
    // through valid pointers, on standard input which is a terminal here.
    let saved = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            bail!("could not read the terminal settings");
        }
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        libc::tcsetattr(fd, libc::TCSANOW, &t);
        saved
    };
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    // SAFETY: as above; restores what was read.
    unsafe {
        libc::tcsetattr(fd, libc::TCSANOW, &saved);
    }
    writeln!(err)?;
    read.context("could not read the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
