//! RESP request framing and reply encoding (RESP2, and RESP3 after
//! `HELLO 3`).
//!
//! Requests are decoded with the `redis-protocol` crate (zero-copy ranges
//! into the connection's buffer). Before that, the array and bulk-string
//! headers are checked against the limits, so a client that announces a 4 GB
//! bulk string is refused at once instead of being buffered. Inline commands
//! (`PING\r\n` typed into telnet) are accepted as Redis does.

use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;

/// Most arguments in one request (Redis: 1024*1024).
pub const MAX_MULTIBULK_LEN: usize = 1024 * 1024;
/// Longest inline command line (Redis: 64 kB).
pub const MAX_INLINE_LEN: usize = 64 * 1024;
/// Most bytes one request may announce in total (Redis's client-query-buffer-limit).
pub const MAX_QUERY_BYTES: u64 = 1 << 30;

/// Limits applied while framing requests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `proto_max_bulk_len`: the longest key or value.
    pub max_bulk_len: u64,
}

/// A protocol violation: answered with `-ERR Protocol error: ...` and the
/// connection is closed, as Redis does (the stream cannot be resynchronised).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

/// A framed request: its arguments as ranges into the buffer it came from.
#[derive(Debug)]
pub struct Request {
    pub args: Vec<std::ops::Range<usize>>,
    /// Bytes of the buffer this request used.
    pub consumed: usize,
}

/// Frame the next request at the start of `buf`: `Ok(None)` if more bytes
/// are needed.
pub fn next_request(buf: &[u8], limits: Limits) -> Result<Option<Request>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => next_multibulk(buf, limits),
        Some(_) => next_inline(buf),
    }
}

fn next_multibulk(buf: &[u8], limits: Limits) -> Result<Option<Request>, ProtocolError> {
    let mut args = Vec::new();
    let Some(framed) = check_headers(buf, limits, &mut args)? else {
        return Ok(None);
    };
    if let Framed::Plain(consumed) = framed {
        // Every header was plain digits ending in CRLF and every bulk
        // string ended in CRLF: the walk above found the arguments
        // already, as the crate would (a second parse costs as much as
        // the rest of a pipelined SET's framing).
        return Ok(Some(Request { args, consumed }));
    }
    let (frame, consumed) = match decode_range(buf) {
        Ok(Some(v)) => v,
        Ok(None) => return Ok(None),
        Err(e) => return Err(ProtocolError(format!("invalid request: {}", e.details()))),
    };
    let items = match frame {
        RangeFrame::Array(items) => items,
        _ => return Err(ProtocolError("expected an array of bulk strings".into())),
    };
    args.clear();
    args.reserve(items.len());
    for item in items {
        match item {
            RangeFrame::BulkString((start, end)) => args.push(start..end),
            _ => return Err(ProtocolError("expected '$', got something else".into())),
        }
    }
    Ok(Some(Request { args, consumed }))
}

/// What [`check_headers`] found in a complete request.
enum Framed {
    /// Ordinary: the arguments are framed, the request is this long.
    Plain(usize),
    /// Unusual spelling (a sign, a bare LF, a null array): the crate's
    /// decoder decides.
    Unusual,
}

/// Walk the `*N` and `$L` headers present in `buf` and refuse lengths over
/// the limits before their bytes arrive; collect the arguments' ranges in
/// `args` on the way. Returns `None` when the buffer ends before the
/// request does (more bytes needed).
fn check_headers(
    buf: &[u8],
    limits: Limits,
    args: &mut Vec<std::ops::Range<usize>>,
) -> Result<Option<Framed>, ProtocolError> {
    let Some((count, mut at)) = header_line(buf, 0, b'*')? else {
        return Ok(None);
    };
    let mut plain = plain_header(buf, 0, at);
    if count < 0 {
        // `*-1` is a null array: not a command, Redis ignores it.
        return Ok(Some(Framed::Unusual));
    }
    if count as usize > MAX_MULTIBULK_LEN {
        return Err(ProtocolError("invalid multibulk length".into()));
    }
    args.clear();
    if plain {
        // Never more than the bytes present could hold (4 per argument).
        args.reserve((count as usize).min(buf.len() / 4 + 1));
    }
    let mut total: u64 = 0;
    for _ in 0..count {
        if at >= buf.len() {
            return Ok(None);
        }
        if buf[at] != b'$' {
            return Err(ProtocolError(format!(
                "expected '$', got '{}'",
                buf[at] as char
            )));
        }
        let Some((len, next)) = header_line(buf, at, b'$')? else {
            return Ok(None);
        };
        if len < 0 || len as u64 > limits.max_bulk_len {
            return Err(ProtocolError("invalid bulk length".into()));
        }
        plain &= plain_header(buf, at, next);
        total += len as u64;
        if total > MAX_QUERY_BYTES {
            return Err(ProtocolError(
                "request exceeds the query buffer limit".into(),
            ));
        }
        let data_end = next + len as usize;
        if buf.len() >= data_end + 2 && &buf[data_end..data_end + 2] != b"\r\n" {
            return Err(ProtocolError("bulk string not terminated by CRLF".into()));
        }
        if plain {
            args.push(next..data_end);
        }
        at = data_end + 2;
    }
    if at > buf.len() {
        return Ok(None);
    }
    Ok(Some(if plain {
        Framed::Plain(at)
    } else {
        Framed::Unusual
    }))
}

/// Whether the header line `buf[at..next]` is a prefix, decimal digits
/// (at least one) and CRLF: the spelling every client sends.
fn plain_header(buf: &[u8], at: usize, next: usize) -> bool {
    next >= at + 4
        && &buf[next - 2..next] == b"\r\n"
        && buf[at + 1..next - 2].iter().all(u8::is_ascii_digit)
}

/// Parse `<prefix><integer>\r\n` at `at`; `None` if the line is incomplete.
fn header_line(buf: &[u8], at: usize, prefix: u8) -> Result<Option<(i64, usize)>, ProtocolError> {
    debug_assert_eq!(buf.get(at), Some(&prefix));
    let rest = &buf[at + 1..];
    let Some(nl) = rest.iter().take(32).position(|&b| b == b'\n') else {
        if rest.len() >= 32 {
            return Err(ProtocolError(format!("invalid {} length", kind(prefix))));
        }
        return Ok(None);
    };
    let line = &rest[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let n =
        parse_i64(line).ok_or_else(|| ProtocolError(format!("invalid {} length", kind(prefix))))?;
    Ok(Some((n, at + 1 + nl + 1)))
}

/// `str::parse::<i64>` of `line`, with a loop for the usual case (up to 18
/// plain digits, which cannot overflow).
fn parse_i64(line: &[u8]) -> Option<i64> {
    if !line.is_empty() && line.len() <= 18 && line.iter().all(u8::is_ascii_digit) {
        return Some(line.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')));
    }
    std::str::from_utf8(line).ok()?.parse::<i64>().ok()
}

fn kind(prefix: u8) -> &'static str {
    if prefix == b'*' {
        "multibulk"
    } else {
        "bulk"
    }
}

fn next_inline(buf: &[u8]) -> Result<Option<Request>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_INLINE_LEN {
            return Err(ProtocolError("too big inline request".into()));
        }
        return Ok(None);
    };
    if nl > MAX_INLINE_LEN {
        return Err(ProtocolError("too big inline request".into()));
    }
    let mut args = Vec::new();
    let mut i = 0;
    while i < nl {
        while i < nl && buf[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < nl && !buf[i].is_ascii_whitespace() {
            i += 1;
        }
        if start < i {
            args.push(start..i);
        }
    }
    Ok(Some(Request {
        args,
        consumed: nl + 1,
    }))
}

/// Reply encoding, appended to a connection's output buffer. The free
/// functions write what both protocols spell alike; [`reply::Reply`] also
/// knows the connection's protocol for what RESP3 spells differently.
pub mod reply {
    pub fn ok(out: &mut Vec<u8>) {
        out.extend_from_slice(b"+OK\r\n");
    }

    pub fn simple(out: &mut Vec<u8>, s: &str) {
        out.push(b'+');
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// `-ERR ...` or another error prefix (`-READONLY ...`): the text must
    /// start with the prefix word. Newlines are replaced so the reply stays
    /// one line.
    pub fn error(out: &mut Vec<u8>, s: &str) {
        out.push(b'-');
        for b in s.bytes() {
            out.push(if b == b'\r' || b == b'\n' { b' ' } else { b });
        }
        out.extend_from_slice(b"\r\n");
    }

    pub fn integer(out: &mut Vec<u8>, n: i64) {
        header(out, b':', n);
    }

    pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
        header(out, b'$', b.len() as i64);
        out.extend_from_slice(b);
        out.extend_from_slice(b"\r\n");
    }

    pub fn array_header(out: &mut Vec<u8>, n: usize) {
        header(out, b'*', n as i64);
    }

    /// A HELP subcommand's reply: one simple string per line.
    pub fn help(out: &mut Vec<u8>, lines: &[&str]) {
        array_header(out, lines.len());
        for l in lines {
            simple(out, l);
        }
    }

    /// `<prefix><n>\r\n`, without a heap-allocated number.
    fn header(out: &mut Vec<u8>, prefix: u8, n: i64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut m = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (m % 10) as u8;
            m /= 10;
            if m == 0 {
                break;
            }
        }
        out.push(prefix);
        if n < 0 {
            out.push(b'-');
        }
        out.extend_from_slice(&digits[i..]);
        out.extend_from_slice(b"\r\n");
    }

    /// Replies to one connection, in its protocol.
    pub struct Reply<'a> {
        pub out: &'a mut Vec<u8>,
        /// RESP3 (`HELLO 3`): maps, sets and one null type.
        pub resp3: bool,
    }

    impl Reply<'_> {
        pub fn ok(&mut self) {
            ok(self.out)
        }
        pub fn simple(&mut self, s: &str) {
            simple(self.out, s)
        }
        pub fn int(&mut self, n: i64) {
            integer(self.out, n)
        }
        pub fn bulk(&mut self, b: &[u8]) {
            bulk(self.out, b)
        }
        pub fn array(&mut self, n: usize) {
            array_header(self.out, n)
        }
        /// A missing value: `$-1` in RESP2, `_` in RESP3.
        pub fn null(&mut self) {
            self.out.extend_from_slice(match self.resp3 {
                false => b"$-1\r\n",
                true => b"_\r\n",
            });
        }
        /// A missing array (EXEC aborted by WATCH, LPOP of a missing key
        /// with a count): `*-1` in RESP2, `_` in RESP3.
        pub fn null_array(&mut self) {
            self.out.extend_from_slice(match self.resp3 {
                false => b"*-1\r\n",
                true => b"_\r\n",
            });
        }
        /// A map of `n` pairs: `%n` in RESP3, a flat array of `2n` in RESP2.
        pub fn map(&mut self, n: usize) {
            match self.resp3 {
                true => header(self.out, b'%', n as i64),
                false => array_header(self.out, 2 * n),
            }
        }
        /// A set of `n` members: `~n` in RESP3, an array in RESP2.
        pub fn set(&mut self, n: usize) {
            match self.resp3 {
                true => header(self.out, b'~', n as i64),
                false => array_header(self.out, n),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const L: Limits = Limits { max_bulk_len: 1024 };

    fn args<'a>(buf: &'a [u8], r: &Request) -> Vec<&'a [u8]> {
        r.args.iter().map(|a| &buf[a.clone()]).collect()
    }

    #[test]
    fn frames_multibulk_and_pipelines() {
        let buf = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        let r = next_request(buf, L).unwrap().unwrap();
        assert_eq!(args(buf, &r), vec![&b"GET"[..], b"k"]);
        let rest = &buf[r.consumed..];
        let r2 = next_request(rest, L).unwrap().unwrap();
        assert_eq!(args(rest, &r2), vec![&b"PING"[..]]);
        assert_eq!(r2.consumed, rest.len());
    }

    #[test]
    fn incomplete_requests_wait_for_more() {
        let full = b"*2\r\n$3\r\nSET\r\n$5\r\nhello\r\n";
        for cut in 1..full.len() {
            assert!(
                next_request(&full[..cut], L).unwrap().is_none(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn oversized_bulk_is_refused_before_it_arrives() {
        let e = next_request(b"*1\r\n$4294967296\r\n", L).unwrap_err();
        assert_eq!(e.to_string(), "Protocol error: invalid bulk length");
        let e = next_request(b"*99999999\r\n", L).unwrap_err();
        assert_eq!(e.to_string(), "Protocol error: invalid multibulk length");
        assert!(next_request(b"*1\r\n$2000\r\n", L).is_err());
    }

    #[test]
    fn inline_commands_split_on_whitespace() {
        let buf = b"SET  k v\r\n";
        let r = next_request(buf, L).unwrap().unwrap();
        assert_eq!(args(buf, &r), vec![&b"SET"[..], b"k", b"v"]);
        assert!(next_request(&vec![b'a'; MAX_INLINE_LEN + 1], L).is_err());
    }

    #[test]
    fn malformed_headers_are_errors() {
        assert!(next_request(b"*x\r\n", L).is_err());
        assert!(next_request(b"*1\r\n:5\r\n", L).is_err());
        assert!(next_request(b"*1\r\n$-5\r\n", L).is_err());
        assert!(next_request(b"*1\r\n$1\r\nabc\r\n", L).is_err());
    }

    #[test]
    fn replies_follow_the_protocol() {
        let mut out = Vec::new();
        for resp3 in [false, true] {
            let mut r = reply::Reply {
                out: &mut out,
                resp3,
            };
            r.null();
            r.null_array();
            r.map(2);
            r.set(3);
            r.int(-42);
            r.int(i64::MIN);
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "$-1\r\n*-1\r\n*4\r\n*3\r\n:-42\r\n:-9223372036854775808\r\n\
             _\r\n_\r\n%2\r\n~3\r\n:-42\r\n:-9223372036854775808\r\n"
        );
    }

    /// The crate's framing of `buf`, what the single walk must agree with.
    fn crate_framing(buf: &[u8]) -> Option<(Vec<std::ops::Range<usize>>, usize)> {
        match decode_range(buf) {
            Ok(Some((RangeFrame::Array(items), consumed))) => {
                let args = items.into_iter().map(|i| match i {
                    RangeFrame::BulkString((s, e)) => Some(s..e),
                    _ => None,
                });
                Some((args.collect::<Option<Vec<_>>>()?, consumed))
            }
            _ => None,
        }
    }

    #[test]
    fn unusual_spellings_go_to_the_crate() {
        // A sign in a header, a bare LF: framed as the crate frames them.
        for buf in [
            &b"*+1\r\n$1\r\na\r\n"[..],
            b"*1\n$1\r\na\r\n",
            b"*1\r\n$01\r\na\r\n",
        ] {
            let ours = next_request(buf, L)
                .ok()
                .flatten()
                .map(|r| (r.args, r.consumed));
            assert_eq!(
                ours,
                crate_framing(buf),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    proptest! {
        #[test]
        fn framing_agrees_with_the_crate(
            reqs in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..6), 1..4),
            cut in any::<proptest::sample::Index>(),
        ) {
            let mut buf = Vec::new();
            for r in &reqs {
                buf.extend_from_slice(format!("*{}\r\n", r.len()).as_bytes());
                for a in r {
                    buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                    buf.extend_from_slice(a);
                    buf.extend_from_slice(b"\r\n");
                }
            }
            let buf = &buf[..cut.index(buf.len() + 1)];
            let ours = next_request(buf, L).unwrap().map(|r| (r.args, r.consumed));
            prop_assert_eq!(ours, crate_framing(buf));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = next_request(&bytes, L);
        }

        #[test]
        fn never_panics_on_resp_shaped_input(parts in proptest::collection::vec(prop_oneof![
            Just(b"*".to_vec()), Just(b"$".to_vec()), Just(b"\r\n".to_vec()),
            Just(b"3".to_vec()), Just(b"-1".to_vec()), Just(b"abc".to_vec()), Just(b":".to_vec()),
        ], 0..30)) {
            let bytes: Vec<u8> = parts.concat();
            if let Ok(Some(r)) = next_request(&bytes, L) {
                if bytes.first() == Some(&b'*') {
                    prop_assert_eq!(Some((r.args, r.consumed)), crate_framing(&bytes));
                }
            }
        }
    }
}
