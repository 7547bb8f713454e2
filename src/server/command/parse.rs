//! Parsing helpers the command families share: the command name looked up
//! without allocating, Redis's arity rule, and numbers read the way Redis
//! reads them.

use super::error::CommandError;

/// A request's arguments, the command name first, borrowed from the
/// connection's input buffer.
pub type Args<'a> = &'a [&'a [u8]];

/// Longest command name looked up; a longer one is unknown anyway.
pub const MAX_NAME_LEN: usize = 16;

/// `arg0` lower-cased into `buf`, so the name is matched without an
/// allocation per request; `None` if no command has such a name.
pub fn lower_name<'b>(arg0: &[u8], buf: &'b mut [u8; MAX_NAME_LEN]) -> Option<&'b str> {
    let name = buf.get_mut(..arg0.len())?;
    name.copy_from_slice(arg0);
    name.make_ascii_lowercase();
    std::str::from_utf8(name).ok()
}

/// Redis's arity rule: `arity` > 0 is the exact number of arguments, the
/// name included; `arity` < 0 is the least number.
pub fn arity<'a>(args: Args<'a>, name: &'static str, arity: i32) -> Result<Args<'a>, CommandError> {
    let n = args.len() as i64;
    let ok = if arity >= 0 {
        n == i64::from(arity)
    } else {
        n >= -i64::from(arity)
    };
    ok.then_some(args).ok_or(CommandError::Arity(name))
}

/// Whether `arg` is `word`, ignoring ASCII case (`word` is lower-case).
pub fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// A signed 64-bit integer as Redis reads one (`string2ll`): canonical
/// decimal only, so no `+`, no leading zeros, no `-0`.
pub fn canonical_i64(b: &[u8]) -> Option<i64> {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    let canonical = match digits {
        [] => false,
        [b'0'] => digits.len() == b.len(),
        [first, ..] => first.is_ascii_digit() && *first != b'0',
    };
    if !canonical || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// [`canonical_i64`] or Redis's error for it.
pub fn int(b: &[u8]) -> Result<i64, CommandError> {
    canonical_i64(b).ok_or(CommandError::NotInteger)
}

/// Redis's reply to an unknown command: the name and the first arguments,
/// each cut to 128 bytes as Redis cuts them.
pub fn unknown_command(args: Args<'_>) -> CommandError {
    const MAX: usize = 128;
    let name = &args[0][..args[0].len().min(MAX)];
    let mut list = Vec::new();
    for a in &args[1..] {
        if list.len() >= MAX {
            break;
        }
        list.push(b'\'');
        list.extend_from_slice(&a[..a.len().min(MAX - (list.len() - 1))]);
        list.extend_from_slice(b"' ");
    }
    CommandError::UnknownCommand {
        name: String::from_utf8_lossy(name).into_owned(),
        args: String::from_utf8_lossy(&list).into_owned(),
    }
}

/// Redis's reply to an unknown subcommand of `command` (upper-case).
pub fn unknown_subcommand(command: &'static str, sub: &[u8]) -> CommandError {
    CommandError::UnknownSubcommand {
        command,
        sub: String::from_utf8_lossy(&sub[..sub.len().min(128)]).into_owned(),
    }
}

/// A non-negative integer, or Redis's "must be positive" error.
pub fn count(b: &[u8]) -> Result<u64, CommandError> {
    let n = int(b)?;
    u64::try_from(n).map_err(|_| CommandError::NotPositive)
}

/// A pop's optional count, the third and last argument (`LPOP key
/// [count]`, `SPOP key [count]`).
pub fn pop_count(args: Args<'_>) -> Result<Option<u64>, CommandError> {
    let count = match args.get(2) {
        Some(c) => Some(count(c)?),
        None => None,
    };
    match args.len() > 3 {
        true => Err(CommandError::Syntax),
        false => Ok(count),
    }
}

/// `HSCAN` / `SSCAN key cursor [MATCH pattern] [COUNT n] [NOVALUES]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollScan<'a> {
    pub key: &'a [u8],
    /// A position in the collection's hash order (0 = the start).
    pub cursor: u64,
    pub pattern: Option<&'a [u8]>,
    pub count: usize,
    /// HSCAN's NOVALUES: fields only.
    pub novalues: bool,
}

/// Most members one HSCAN/SSCAN call examines, whatever COUNT asks.
pub const COLL_SCAN_COUNT_MAX: usize = 10_000;

pub fn coll_scan<'a>(args: Args<'a>, hash: bool) -> Result<CollScan<'a>, CommandError> {
    let digits = !args[2].is_empty() && args[2].iter().all(u8::is_ascii_digit);
    let cursor = digits
        .then(|| std::str::from_utf8(args[2]).ok()?.parse().ok())
        .flatten()
        .ok_or(CommandError::InvalidCursor)?;
    let mut scan = CollScan {
        key: args[1],
        cursor,
        pattern: None,
        count: 10,
        novalues: false,
    };
    let mut i = 3;
    while i < args.len() {
        let more = args.get(i + 1);
        match more {
            Some(v) if is(args[i], "match") => scan.pattern = Some(v),
            Some(v) if is(args[i], "count") => {
                let n = int(v)?;
                if n < 1 {
                    return Err(CommandError::Syntax);
                }
                scan.count =
                    usize::try_from(n).map_or(COLL_SCAN_COUNT_MAX, |n| n.min(COLL_SCAN_COUNT_MAX));
            }
            _ if hash && is(args[i], "novalues") => {
                scan.novalues = true;
                i += 1;
                continue;
            }
            _ => return Err(CommandError::Syntax),
        }
        i += 2;
    }
    Ok(scan)
}
