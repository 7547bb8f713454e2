//! Redis's glob patterns (KEYS, SCAN MATCH, CONFIG GET), matched without
//! recursion, in time linear in the key for a given pattern.
//!
//! The syntax is that of Redis's `stringmatchlen`: `*` any run of bytes,
//! `?` one byte, `\x` a literal `x`, and classes `[abc]`, `[^abc]`,
//! `[a-z]` (a reversed range `[z-a]` means `[a-z]`; `\x` inside a class is
//! a literal `x`; a class left open ends with the pattern). One deliberate
//! difference: `*` matches the empty key, which Redis's matcher refuses
//! (its KEYS and SCAN list the empty key for `*` only because they skip
//! matching for that exact pattern).
//!
//! Redis matches recursively, trying every split at every `*`: a pattern
//! such as `a*a*a*a*a*b` against a long run of `a` takes exponential time
//! (Redis 7 cuts it short with a flag and a nesting limit). Here the
//! pattern is compiled once into tokens, a class into a 256-bit set, and
//! matched with one backtracking point: on a mismatch only the latest `*`
//! takes one more byte. Earlier stars never need to, because every other
//! token consumes exactly one byte, so the leftmost place where the part
//! after a star matches is always as good as any later one. The work is at
//! most (key length + 1) x (longest star-free run of the pattern + 1) +
//! pattern length steps, and the stack is constant.

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
    /// The literal bytes every match starts with (ordered stores can seek
    /// to them instead of walking every key).
    prefix: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// Any run of bytes, the empty one included (consecutive stars are one).
    Star,
    /// Exactly one byte, any.
    Any,
    Byte(u8),
    Class(Box<ByteSet>),
}

/// A set of bytes: bit `b` of the 256 says whether byte `b` is in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ByteSet([u64; 4]);

impl ByteSet {
    fn insert_range(&mut self, from: u8, to: u8) {
        for b in from..=to {
            self.0[usize::from(b >> 6)] |= 1 << (b & 63);
        }
    }

    fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }

    fn invert(&mut self) {
        for w in &mut self.0 {
            *w = !*w;
        }
    }
}

impl Token {
    fn accepts(&self, b: u8) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Byte(c) => *c == b,
            Token::Class(set) => set.contains(b),
        }
    }
}

impl Glob {
    /// Compile `pattern`. Every byte string is a valid pattern, as in Redis.
    pub fn new(pattern: &[u8]) -> Glob {
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut i = 0;
        while i < pattern.len() {
            let token = match (pattern[i], pattern.get(i + 1)) {
                (b'*', _) => {
                    i += 1;
                    if tokens.last() == Some(&Token::Star) {
                        continue;
                    }
                    Token::Star
                }
                (b'?', _) => {
                    i += 1;
                    Token::Any
                }
                (b'[', _) => {
                    let (set, next) = class(pattern, i + 1);
                    i = next;
                    Token::Class(Box::new(set))
                }
                (b'\\', Some(&escaped)) => {
                    i += 2;
                    Token::Byte(escaped)
                }
                (b, _) => {
                    i += 1;
                    Token::Byte(b)
                }
            };
            tokens.push(token);
        }
        let prefix = tokens
            .iter()
            .map_while(|t| match t {
                Token::Byte(b) => Some(*b),
                _ => None,
            })
            .collect();
        Glob { tokens, prefix }
    }

    /// The bytes every matching key starts with.
    pub fn literal_prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// `Some(key)` when the pattern matches that one key only.
    pub fn exact(&self) -> Option<&[u8]> {
        (self.prefix.len() == self.tokens.len()).then_some(&self.prefix[..])
    }

    /// Whether the pattern matches every key (`*`).
    pub fn matches_all(&self) -> bool {
        self.tokens == [Token::Star]
    }

    /// Whether `key` matches the whole pattern.
    pub fn matches(&self, key: &[u8]) -> bool {
        self.matches_counting(key, &mut 0)
    }

    /// [`Glob::matches`], adding the steps taken to `steps` (tests bound
    /// the work on hostile patterns with it).
    fn matches_counting(&self, key: &[u8], steps: &mut u64) -> bool {
        let t = &self.tokens;
        let (mut ti, mut ki) = (0, 0);
        // Where to resume after a mismatch: the token after the latest
        // star, and the key position that star's next try starts from.
        let mut retry: Option<(usize, usize)> = None;
        loop {
            *steps += 1;
            match t.get(ti) {
                Some(Token::Star) if ti + 1 == t.len() => return true,
                Some(Token::Star) => {
                    ti += 1;
                    retry = Some((ti, ki));
                    continue;
                }
                Some(tok) if key.get(ki).is_some_and(|&b| tok.accepts(b)) => {
                    ti += 1;
                    ki += 1;
                    continue;
                }
                None if ki == key.len() => return true,
                _ => {}
            }
            match retry {
                Some((rt, rk)) if rk < key.len() => {
                    retry = Some((rt, rk + 1));
                    ti = rt;
                    ki = rk + 1;
                }
                _ => return false,
            }
        }
    }
}

/// Parse a class whose `[` ends just before `i`, as Redis reads one:
/// returns the set and where the pattern continues.
fn class(p: &[u8], mut i: usize) -> (ByteSet, usize) {
    let negated = p.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut set = ByteSet::default();
    loop {
        match (p.get(i), p.get(i + 1), p.get(i + 2)) {
            (None, _, _) => break,
            (Some(b'\\'), Some(&c), _) => {
                set.insert_range(c, c);
                i += 2;
            }
            (Some(b']'), _, _) => {
                i += 1;
                break;
            }
            (Some(&a), Some(b'-'), Some(&b)) => {
                set.insert_range(a.min(b), a.max(b));
                i += 3;
            }
            (Some(&c), _, _) => {
                set.insert_range(c, c);
                i += 1;
            }
        }
    }
    if negated {
        set.invert();
    }
    (set, i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(pattern: &str, key: &str) -> bool {
        Glob::new(pattern.as_bytes()).matches(key.as_bytes())
    }

    /// A plain recursive matcher written from Redis's `stringmatchlen`
    /// (without its shortcuts): exponential, fine for small inputs.
    fn reference(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') => (0..=s.len()).any(|i| reference(&p[1..], &s[i..])),
            Some(_) if s.is_empty() => false,
            Some(b'?') => reference(&p[1..], &s[1..]),
            Some(b'[') => match reference_class(&p[1..], s[0]) {
                Some(rest) => reference(rest, &s[1..]),
                None => false,
            },
            Some(b'\\') if p.len() >= 2 => p[1] == s[0] && reference(&p[2..], &s[1..]),
            Some(&c) => c == s[0] && reference(&p[1..], &s[1..]),
        }
    }

    /// Redis's class loop, byte by byte: `Some(rest of the pattern)` if
    /// `c` is in the class.
    fn reference_class(mut p: &[u8], c: u8) -> Option<&[u8]> {
        let not = p.first() == Some(&b'^');
        if not {
            p = &p[1..];
        }
        let mut hit = false;
        loop {
            if p.len() >= 2 && p[0] == b'\\' {
                hit |= p[1] == c;
                p = &p[2..];
            } else if p.first() == Some(&b']') {
                p = &p[1..];
                break;
            } else if p.is_empty() {
                break;
            } else if p.len() >= 3 && p[1] == b'-' {
                let (lo, hi) = (p[0].min(p[2]), p[0].max(p[2]));
                hit |= (lo..=hi).contains(&c);
                p = &p[3..];
            } else {
                hit |= p[0] == c;
                p = &p[1..];
            }
        }
        (hit != not).then_some(p)
    }

    #[test]
    fn matches_like_redis() {
        assert!(m("*", "port"));
        assert!(m("*", ""));
        assert!(m("wal_*", "wal_keep_size"));
        assert!(m("p?rt", "port"));
        assert!(!m("save", "port"));
        assert!(m("*size", "max_wal_size"));
        assert!(m("h[ae]llo", "hallo") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo") && !m("h[a-b]llo", "hcllo"));
        assert!(m(r"a\*b", "a*b") && !m(r"a\*b", "axb"));
        assert!(m(r"a[\]]b", "a]b"));
        assert!(m("user:*:name", "user:42:name"));
        assert!(!m("user:*:name", "user:42:email"));
        // Corner cases checked against redis-server 7.0.
        assert!(m("fo[o", "foo"), "an open class ends with the pattern");
        assert!(m("fo[o]", "foo"));
        assert!(!m("fo[]o", "foo"), "[] is an empty class");
        assert!(m("f[^a]o", "foo"));
        assert!(!m(r"foo\", "foo") && m(r"foo\", r"foo\"));
        assert!(m("fo[o-]", "foo"), "[o-] is the range ]..o");
        assert!(m("fo[z-a]", "foo"), "a reversed range");
    }

    #[test]
    fn prefix_and_exact_are_the_literal_start() {
        let g = Glob::new(br"user\*:1*x");
        assert_eq!(g.literal_prefix(), b"user*:1");
        assert_eq!(g.exact(), None);
        assert_eq!(Glob::new(br"a\?b").exact(), Some(&b"a?b"[..]));
        assert_eq!(Glob::new(b"?x").literal_prefix(), b"");
        assert!(Glob::new(b"**").matches_all());
        assert!(!Glob::new(b"*a").matches_all());
    }

    #[test]
    fn hostile_patterns_take_linear_work() {
        let key = vec![b'a'; 10_000];
        for pattern in [
            "a*a*a*a*a*b".to_string(),
            "*a".repeat(40) + "b",
            "*".to_string() + &"?".repeat(30) + "b",
        ] {
            let g = Glob::new(pattern.as_bytes());
            let mut steps = 0;
            assert!(!g.matches_counting(&key, &mut steps));
            // The bound of the module comment: (key + 1) x (longest
            // star-free run + 1) + pattern.
            let run = pattern.split('*').map(str::len).max().unwrap_or(0) as u64;
            let bound = (key.len() as u64 + 1) * (run + 1) + pattern.len() as u64;
            assert!(steps <= bound, "{pattern}: {steps} steps > {bound}");
        }
        // The classic exponential case takes about two steps per byte.
        let mut steps = 0;
        Glob::new(b"a*a*a*a*a*b").matches_counting(&key, &mut steps);
        assert!(steps < 3 * key.len() as u64, "{steps}");
    }

    fn pattern_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                Just(b'a'),
                Just(b'b'),
                Just(b'*'),
                Just(b'?'),
                Just(b'['),
                Just(b']'),
                Just(b'^'),
                Just(b'-'),
                Just(b'\\'),
            ],
            0..10,
        )
    }

    fn key_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                Just(b'a'),
                Just(b'b'),
                Just(b'c'),
                Just(b']'),
                Just(b'-'),
                Just(b'\\'),
                Just(b'^')
            ],
            0..10,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn agrees_with_the_reference(p in pattern_bytes(), s in key_bytes()) {
            prop_assert_eq!(Glob::new(&p).matches(&s), reference(&p, &s));
        }

        #[test]
        fn every_match_starts_with_the_prefix(p in pattern_bytes(), s in key_bytes()) {
            let g = Glob::new(&p);
            if g.matches(&s) {
                prop_assert!(s.starts_with(g.literal_prefix()));
            }
            if let Some(exact) = g.exact() {
                prop_assert_eq!(g.matches(&s), s == exact);
            }
        }
    }
}
