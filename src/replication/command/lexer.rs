//! Tokens of the replication command language, as PostgreSQL's
//! `repl_scanner.l` splits them: words (case-insensitive keywords or
//! identifiers), "quoted identifiers", 'string literals', unsigned numbers,
//! `X/X` positions and single punctuation characters.

use walrep_states::Lsn;

use crate::replication::sqlstate::{PgError, SYNTAX_ERROR};

/// One token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// An unquoted word, as written (keywords are matched case-insensitively;
    /// as an identifier it is lower-cased).
    Word(String),
    /// A "quoted identifier", case kept, `""` unescaped.
    QuotedIdent(String),
    /// A 'string literal', `''` unescaped.
    Str(String),
    /// An unsigned integer.
    UConst(u64),
    /// An `X/X` WAL position.
    RecPtr(Lsn),
    /// Any other single character: `(`, `)`, `,`, `;`, `.`, ...
    Char(char),
}

fn syntax(message: &str) -> PgError {
    PgError::error(SYNTAX_ERROR, message)
}

/// Split a command into tokens.
pub fn tokenize(input: &str) -> Result<Vec<Token>, PgError> {
    let mut out = Vec::new();
    let mut rest = input;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let Some(first) = rest.chars().next() else {
            return Ok(out);
        };
        let (tok, len) = if let Some(m) = recptr(rest) {
            m
        } else if first.is_ascii_digit() {
            number(rest)?
        } else if first == '"' {
            quoted(rest, '"', "unterminated quoted identifier")
                .and_then(|(s, n)| ident_token(s).map(|t| (t, n)))?
        } else if first == '\'' {
            let (s, n) = quoted(rest, '\'', "unterminated quoted string")?;
            (Token::Str(s), n)
        } else if is_ident_start(first) {
            let n = rest.find(|c: char| !is_ident_cont(c)).unwrap_or(rest.len());
            (Token::Word(rest[..n].to_string()), n)
        } else {
            (Token::Char(first), first.len_utf8())
        };
        out.push(tok);
        rest = &rest[len..];
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

fn is_ident_cont(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == '$'
}

fn ident_token(s: String) -> Result<Token, PgError> {
    if s.is_empty() {
        return Err(syntax("zero-length delimited identifier"));
    }
    Ok(Token::QuotedIdent(s))
}

/// `{hexdigit}+/{hexdigit}+`, which wins over a number or word by being longer.
fn recptr(s: &str) -> Option<(Token, usize)> {
    let hex_run = |t: &str| t.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(t.len());
    let hi = hex_run(s);
    if hi == 0 || s.as_bytes().get(hi) != Some(&b'/') {
        return None;
    }
    let lo = hex_run(&s[hi + 1..]);
    if lo == 0 {
        return None;
    }
    let text = &s[..hi + 1 + lo];
    // Like sscanf("%X/%X"), each half is a 32-bit number.
    let lsn = text.parse::<Lsn>().ok()?;
    Some((Token::RecPtr(lsn), text.len()))
}

fn number(s: &str) -> Result<(Token, usize), PgError> {
    let n = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let v = s[..n]
        .parse::<u64>()
        .map_err(|_| syntax("numeric constant out of range"))?;
    Ok((Token::UConst(v), n))
}

/// A quoted run ending at an unpaired `quote`; a doubled quote is one.
fn quoted(s: &str, quote: char, unterminated: &str) -> Result<(String, usize), PgError> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1).peekable();
    while let Some((i, c)) = chars.next() {
        if c != quote {
            out.push(c);
            continue;
        }
        if chars.peek().map(|p| p.1) == Some(quote) {
            out.push(quote);
            chars.next();
            continue;
        }
        return Ok((out, i + 1));
    }
    Err(syntax(unterminated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_repl_scanner() {
        let t = tokenize("START_REPLICATION SLOT \"My\"\"S\" 0/1500790 TIMELINE 2;").unwrap();
        assert_eq!(
            t,
            vec![
                Token::Word("START_REPLICATION".into()),
                Token::Word("SLOT".into()),
                Token::QuotedIdent("My\"S".into()),
                Token::RecPtr(Lsn(0x1500790)),
                Token::Word("TIMELINE".into()),
                Token::UConst(2),
                Token::Char(';'),
            ]
        );
        assert_eq!(
            tokenize("AB/cd 'it''s'").unwrap(),
            vec![
                Token::RecPtr(Lsn(0xAB_0000_00CD)),
                Token::Str("it's".into())
            ]
        );
        assert!(tokenize("'open").is_err());
        assert!(tokenize("\"\"").is_err());
        assert!(tokenize("99999999999999999999999").is_err());
    }
}
