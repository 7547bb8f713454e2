//! `synchronous_standby_names`, parsed as PostgreSQL's syncrep grammar does:
//!
//! ```text
//! config := list                     -- FIRST 1 (list)
//!         | NUM '(' list ')'         -- FIRST NUM (list)
//!         | FIRST NUM '(' list ')'   -- priority
//!         | ANY NUM '(' list ')'     -- quorum
//! list   := name (',' name)*
//! name   := identifier | "quoted ""identifier""" | NUM | '*'
//! ```
//!
//! `FIRST` and `ANY` are keywords in any case; names match a standby's
//! `application_name` case-insensitively; `*` matches any standby.

use std::fmt;

/// How the synchronous standbys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMethod {
    /// The first `num` connected standbys in list order are synchronous;
    /// a commit waits for all of them (the minimum of their positions).
    Priority,
    /// Any `num` of the listed standbys; a commit waits for the num-th
    /// highest position.
    Quorum,
}

/// A parsed `synchronous_standby_names`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStandbyConfig {
    pub method: SyncMethod,
    pub num_sync: usize,
    pub names: Vec<String>,
}

/// A value PostgreSQL would refuse, with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyNamesError {
    pub value: String,
    pub detail: String,
}

impl fmt::Display for StandbyNamesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid value for parameter \"synchronous_standby_names\": \"{}\" ({})",
            self.value, self.detail
        )
    }
}

impl std::error::Error for StandbyNamesError {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Name(String),
    Num(usize),
    First,
    Any,
    Open,
    Close,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ',' => {
                chars.next();
                out.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    _ => Token::Comma,
                });
            }
            '*' => {
                chars.next();
                out.push(Token::Name("*".into()));
            }
            '"' => {
                chars.next();
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            name.push('"');
                        }
                        Some('"') => break,
                        Some(ch) => name.push(ch),
                        None => return Err("unterminated quoted identifier".into()),
                    }
                }
                if name.is_empty() {
                    return Err("zero-length delimited identifier".into());
                }
                out.push(Token::Name(name));
            }
            c if c.is_ascii_digit() => {
                let mut digits = String::new();
                while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(d);
                    chars.next();
                }
                let n = digits
                    .parse()
                    .map_err(|_| format!("number {digits} is out of range"))?;
                out.push(Token::Num(n));
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut word = String::new();
                while let Some(&w) = chars
                    .peek()
                    .filter(|w| w.is_alphanumeric() || **w == '_' || **w == '$')
                {
                    word.push(w);
                    chars.next();
                }
                out.push(match word.to_ascii_lowercase().as_str() {
                    "first" => Token::First,
                    "any" => Token::Any,
                    _ => Token::Name(word),
                });
            }
            other => return Err(format!("syntax error at or near \"{other}\"")),
        }
    }
    Ok(out)
}

fn parse_list(tokens: &[Token]) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut expect_name = true;
    for t in tokens {
        match (t, expect_name) {
            (Token::Name(n), true) => names.push(n.clone()),
            (Token::Num(n), true) => names.push(n.to_string()),
            (Token::Comma, false) => {}
            (other, _) => return Err(format!("syntax error at or near {}", describe(other))),
        }
        expect_name = !expect_name;
    }
    if names.is_empty() || expect_name {
        return Err("syntax error at end of input".into());
    }
    Ok(names)
}

fn describe(t: &Token) -> String {
    match t {
        Token::Name(n) => format!("\"{n}\""),
        Token::Num(n) => format!("\"{n}\""),
        Token::First => "\"FIRST\"".into(),
        Token::Any => "\"ANY\"".into(),
        Token::Open => "\"(\"".into(),
        Token::Close => "\")\"".into(),
        Token::Comma => "\",\"".into(),
    }
}

/// Parse a value; `Ok(None)` for the empty string (asynchronous replication).
pub fn parse(value: &str) -> Result<Option<SyncStandbyConfig>, StandbyNamesError> {
    let fail = |detail: String| StandbyNamesError {
        value: value.to_string(),
        detail,
    };
    let tokens = tokenize(value).map_err(fail)?;
    if tokens.is_empty() {
        return Ok(None);
    }
    let (method, num, rest) = match tokens.as_slice() {
        [Token::First, Token::Num(n), Token::Open, rest @ .., Token::Close] => {
            (SyncMethod::Priority, *n, rest)
        }
        [Token::Any, Token::Num(n), Token::Open, rest @ .., Token::Close] => {
            (SyncMethod::Quorum, *n, rest)
        }
        [Token::Num(n), Token::Open, rest @ .., Token::Close] => (SyncMethod::Priority, *n, rest),
        [Token::First | Token::Any, ..] | [Token::Num(_), Token::Open, ..] => {
            return Err(fail(
                "syntax error: expected FIRST n (names) or ANY n (names)".into(),
            ))
        }
        all => (SyncMethod::Priority, 1, all),
    };
    let names = parse_list(rest).map_err(fail)?;
    if num == 0 {
        return Err(fail(format!(
            "number of synchronous standbys ({num}) must be greater than zero"
        )));
    }
    Ok(Some(SyncStandbyConfig {
        method,
        num_sync: num,
        names,
    }))
}

impl SyncStandbyConfig {
    /// The priority of a standby with this `application_name`: its 1-based
    /// position in the list (`*` matches anything), 0 if not listed. In
    /// quorum mode every listed standby has priority 1, as in PostgreSQL.
    pub fn priority(&self, application_name: &str) -> usize {
        let pos = self
            .names
            .iter()
            .position(|n| n == "*" || n.eq_ignore_ascii_case(application_name));
        match (pos, self.method) {
            (None, _) => 0,
            (Some(_), SyncMethod::Quorum) => 1,
            (Some(i), SyncMethod::Priority) => i + 1,
        }
    }
}

impl fmt::Display for SyncStandbyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.method {
            SyncMethod::Priority => "FIRST",
            SyncMethod::Quorum => "ANY",
        };
        write!(f, "{kind} {} ({})", self.num_sync, self.names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> SyncStandbyConfig {
        parse(s).unwrap().unwrap()
    }

    #[test]
    fn forms_postgres_accepts() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("   ").unwrap(), None);
        let c = ok("s1, s2");
        assert_eq!(
            (c.method, c.num_sync, c.names.clone()),
            (SyncMethod::Priority, 1, vec!["s1".into(), "s2".into()])
        );
        let c = ok("2 (a, b, c)");
        assert_eq!((c.method, c.num_sync), (SyncMethod::Priority, 2));
        let c = ok("FIRST 1 (s1)");
        assert_eq!(
            (c.method, c.num_sync, c.names.len()),
            (SyncMethod::Priority, 1, 1)
        );
        let c = ok("any 2 (s1, s2, \"My \"\"Standby\"\"\")");
        assert_eq!(c.method, SyncMethod::Quorum);
        assert_eq!(c.names[2], "My \"Standby\"");
        assert_eq!(ok("*").names, vec!["*".to_string()]);
        assert_eq!(ok("FIRST 1 (s1, s2)").to_string(), "FIRST 1 (s1, s2)");
    }

    #[test]
    fn errors_postgres_gives() {
        for bad in [
            "FIRST (s1)",
            "ANY 1 s1",
            "s1,",
            ",s1",
            "s1 s2",
            "FIRST 1 ()",
            "1 (s1",
            "s1 ; drop",
            "\"\"",
            "first",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("invalid value for parameter \"synchronous_standby_names\""),
                "{bad}: {e}"
            );
        }
        let e = parse("ANY 0 (s1)").unwrap_err();
        assert!(e.detail.contains("must be greater than zero"), "{e}");
    }

    #[test]
    fn priorities() {
        let c = ok("FIRST 1 (s1, S2, *)");
        assert_eq!(c.priority("s1"), 1);
        assert_eq!(c.priority("s2"), 2);
        assert_eq!(c.priority("other"), 3);
        let q = ok("ANY 1 (s1, s2)");
        assert_eq!(q.priority("s2"), 1);
        assert_eq!(q.priority("s3"), 0);
    }
}
