//! Replication commands (PostgreSQL's `repl_gram.y`), parsed into an enum
//! before anything is executed: IDENTIFY_SYSTEM, SHOW, TIMELINE_HISTORY,
//! START_REPLICATION, CREATE/DROP/READ_REPLICATION_SLOT and BASE_BACKUP,
//! and walrep's WAL_RANGE (a bounded range of WAL, then the command ends)
//! and CONFIRM_BASE_BACKUP (a client's copy checked: its checkpoint is
//! released).
//! Errors carry PostgreSQL's SQLSTATE (42601 for syntax errors, 0A000 for
//! SQL or logical replication in a physical walsender).

mod lexer;
mod options;

use lexer::{tokenize, Token};
pub(crate) use options::OptValue;
pub use options::{
    chunk_list, chunk_list_text, BaseBackupOptions, CheckpointMode, ResumeRequest, MAX_PARALLEL,
    MAX_SKIP_CHUNKS,
};

use walrep_states::{Lsn, TimelineId};

use crate::replication::sqlstate::{PgError, FEATURE_NOT_SUPPORTED, SYNTAX_ERROR};

/// A parsed replication command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationCommand {
    /// `IDENTIFY_SYSTEM`: system id, timeline, flush position (what a
    /// standby checks before it streams).
    IdentifySystem,
    /// `SHOW name` (a dotted name is joined with `.`).
    Show(String),
    /// `TIMELINE_HISTORY n`: the `.history` file of timeline `n`.
    TimelineHistory(TimelineId),
    /// `START_REPLICATION [SLOT s] [PHYSICAL] X/X [TIMELINE n]`: stream
    /// WAL in CopyBoth mode.
    StartReplication {
        /// Slot whose `restart_lsn` the standby's flush reports advance.
        slot: Option<String>,
        /// First WAL position to send; must not be past the flush position.
        start: Lsn,
        /// `None` = the server's current timeline.
        timeline: Option<TimelineId>,
    },
    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] PHYSICAL [RESERVE_WAL]`
    /// (or the parenthesised option list).
    CreateReplicationSlot {
        /// Slot name (the slot manager accepts `[a-z0-9_]`, 1 to 63 bytes).
        name: String,
        /// Dropped when this connection ends.
        temporary: bool,
        /// Hold WAL from the last checkpoint's redo pointer at once, not
        /// only after the first standby connects.
        reserve_wal: bool,
    },
    /// `DROP_REPLICATION_SLOT name [WAIT]`.
    DropReplicationSlot {
        /// Slot name.
        name: String,
        /// Wait for an active slot to be released instead of failing.
        wait: bool,
    },
    /// `READ_REPLICATION_SLOT name`: its type, `restart_lsn` and timeline.
    ReadReplicationSlot(String),
    /// `BASE_BACKUP [( options )]`: a tar stream of the data directory.
    BaseBackup(BaseBackupOptions),
    /// walrep's `WAL_RANGE X/X X/X [TIMELINE n]`: exactly the WAL bytes
    /// `[begin, end)` of one timeline, then the command completes.
    WalRange {
        /// First byte sent.
        begin: Lsn,
        /// End of the range (exclusive); not past the flush position.
        end: Lsn,
        /// `None` = the server's current timeline.
        timeline: Option<TimelineId>,
    },
    /// walrep's `CONFIRM_BASE_BACKUP 'backup_id'`: the client checked its
    /// copy of that (resumable) backup, whose checkpoint the server kept
    /// pinned until now; it is released.
    ConfirmBaseBackup(String),
}

/// The words that start a replication command. Anything else is SQL, which
/// a physical walsender refuses.
const COMMAND_KEYWORDS: &[&str] = &[
    "IDENTIFY_SYSTEM",
    "SHOW",
    "TIMELINE_HISTORY",
    "START_REPLICATION",
    "CREATE_REPLICATION_SLOT",
    "DROP_REPLICATION_SLOT",
    "READ_REPLICATION_SLOT",
    "BASE_BACKUP",
    "WAL_RANGE",
    "CONFIRM_BASE_BACKUP",
];

/// Every keyword of the grammar: an unquoted word equal to one of these is
/// not an identifier (quote it to use it as a slot name).
const KEYWORDS: &[&str] = &[
    "BASE_BACKUP",
    "WAL_RANGE",
    "CONFIRM_BASE_BACKUP",
    "IDENTIFY_SYSTEM",
    "READ_REPLICATION_SLOT",
    "SHOW",
    "TIMELINE",
    "START_REPLICATION",
    "CREATE_REPLICATION_SLOT",
    "DROP_REPLICATION_SLOT",
    "TIMELINE_HISTORY",
    "WAIT",
    "PHYSICAL",
    "LOGICAL",
    "SLOT",
    "RESERVE_WAL",
    "TEMPORARY",
    "TWO_PHASE",
    "EXPORT_SNAPSHOT",
    "NOEXPORT_SNAPSHOT",
    "USE_SNAPSHOT",
    "LABEL",
    "PROGRESS",
    "FAST",
    "WAL",
    "NOWAIT",
    "MAX_RATE",
    "TABLESPACE_MAP",
    "NOVERIFY_CHECKSUMS",
    "MANIFEST",
    "MANIFEST_CHECKSUMS",
];

fn syntax_error() -> PgError {
    PgError::error(SYNTAX_ERROR, "syntax error")
}

/// Parse one replication command.
pub fn parse(input: &str) -> Result<ReplicationCommand, PgError> {
    let tokens = tokenize(input)?;
    let is_command = matches!(tokens.first(), Some(Token::Word(w))
        if COMMAND_KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(w)));
    if !is_command {
        return Err(PgError::error(
            FEATURE_NOT_SUPPORTED,
            "cannot execute SQL commands in WAL sender for physical replication",
        ));
    }
    let mut p = Parser { tokens, pos: 0 };
    let cmd = p.command()?;
    p.eat_char(';');
    if p.pos != p.tokens.len() {
        return Err(syntax_error());
    }
    Ok(cmd)
}

/// Recursive-descent parser over the token list.
pub(crate) struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let hit = self.peek_kw(kw);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), PgError> {
        self.eat_kw(kw).then_some(()).ok_or_else(syntax_error)
    }

    fn eat_char(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(&Token::Char(c));
        if hit {
            self.pos += 1;
        }
        hit
    }

    /// `IDENT`: a non-keyword word (lower-cased) or a quoted identifier.
    fn ident(&mut self) -> Result<String, PgError> {
        match self.next() {
            Some(Token::Word(w)) if !is_keyword(&w) => Ok(w.to_ascii_lowercase()),
            Some(Token::QuotedIdent(s)) => Ok(s),
            _ => Err(syntax_error()),
        }
    }

    fn uconst(&mut self) -> Result<u64, PgError> {
        match self.next() {
            Some(Token::UConst(n)) => Ok(n),
            _ => Err(syntax_error()),
        }
    }

    fn timeline(&mut self) -> Result<TimelineId, PgError> {
        let n = self.uconst()?;
        match u32::try_from(n) {
            Ok(t) if t > 0 => Ok(TimelineId(t)),
            _ => Err(PgError::error(
                SYNTAX_ERROR,
                format!("invalid timeline {n}"),
            )),
        }
    }

    fn command(&mut self) -> Result<ReplicationCommand, PgError> {
        let Some(Token::Word(w)) = self.next() else {
            return Err(syntax_error());
        };
        match w.to_ascii_uppercase().as_str() {
            "IDENTIFY_SYSTEM" => Ok(ReplicationCommand::IdentifySystem),
            "SHOW" => self.var_name().map(ReplicationCommand::Show),
            "READ_REPLICATION_SLOT" => self.var_name().map(ReplicationCommand::ReadReplicationSlot),
            "TIMELINE_HISTORY" => self.timeline().map(ReplicationCommand::TimelineHistory),
            "START_REPLICATION" => self.start_replication(),
            "CREATE_REPLICATION_SLOT" => self.create_slot(),
            "DROP_REPLICATION_SLOT" => {
                let name = self.ident()?;
                let wait = self.eat_kw("WAIT");
                Ok(ReplicationCommand::DropReplicationSlot { name, wait })
            }
            "BASE_BACKUP" => self.base_backup(),
            "WAL_RANGE" => self.wal_range(),
            "CONFIRM_BASE_BACKUP" => match self.next() {
                Some(Token::Str(id)) => Ok(ReplicationCommand::ConfirmBaseBackup(id)),
                _ => Err(syntax_error()),
            },
            _ => Err(syntax_error()),
        }
    }

    /// `IDENT ('.' IDENT)*`
    fn var_name(&mut self) -> Result<String, PgError> {
        let mut name = self.ident()?;
        while self.eat_char('.') {
            name.push('.');
            name.push_str(&self.ident()?);
        }
        Ok(name)
    }

    fn start_replication(&mut self) -> Result<ReplicationCommand, PgError> {
        let slot = if self.eat_kw("SLOT") {
            Some(self.ident()?)
        } else {
            None
        };
        if self.peek_kw("LOGICAL") {
            return Err(logical_unsupported());
        }
        self.eat_kw("PHYSICAL");
        let start = match self.next() {
            Some(Token::RecPtr(l)) => l,
            _ => return Err(syntax_error()),
        };
        let timeline = if self.eat_kw("TIMELINE") {
            Some(self.timeline()?)
        } else {
            None
        };
        Ok(ReplicationCommand::StartReplication {
            slot,
            start,
            timeline,
        })
    }

    /// `RECPTR RECPTR [TIMELINE n]`
    fn wal_range(&mut self) -> Result<ReplicationCommand, PgError> {
        let mut recptr = || match self.next() {
            Some(Token::RecPtr(l)) => Ok(l),
            _ => Err(syntax_error()),
        };
        let begin = recptr()?;
        let end = recptr()?;
        let timeline = if self.eat_kw("TIMELINE") {
            Some(self.timeline()?)
        } else {
            None
        };
        Ok(ReplicationCommand::WalRange {
            begin,
            end,
            timeline,
        })
    }

    fn create_slot(&mut self) -> Result<ReplicationCommand, PgError> {
        let name = self.ident()?;
        let temporary = self.eat_kw("TEMPORARY");
        if self.peek_kw("LOGICAL") {
            return Err(logical_unsupported());
        }
        self.expect_kw("PHYSICAL")?;
        let opts = if self.eat_char('(') {
            self.generic_options()?
        } else {
            self.legacy_slot_options()?
        };
        let reserve_wal = options::physical_slot_options(&opts)?;
        Ok(ReplicationCommand::CreateReplicationSlot {
            name,
            temporary,
            reserve_wal,
        })
    }

    /// RESERVE_WAL | EXPORT_SNAPSHOT | NOEXPORT_SNAPSHOT | USE_SNAPSHOT | TWO_PHASE
    fn legacy_slot_options(&mut self) -> Result<Vec<(String, Option<OptValue>)>, PgError> {
        let mut opts = Vec::new();
        loop {
            let opt = if self.eat_kw("RESERVE_WAL") {
                ("reserve_wal", None)
            } else if self.eat_kw("EXPORT_SNAPSHOT") {
                ("snapshot", Some(OptValue::Str("export".into())))
            } else if self.eat_kw("NOEXPORT_SNAPSHOT") {
                ("snapshot", Some(OptValue::Str("nothing".into())))
            } else if self.eat_kw("USE_SNAPSHOT") {
                ("snapshot", Some(OptValue::Str("use".into())))
            } else if self.eat_kw("TWO_PHASE") {
                ("two_phase", None)
            } else {
                return Ok(opts);
            };
            opts.push((opt.0.to_string(), opt.1));
        }
    }

    /// `name [value] (, name [value])* )` after the opening parenthesis.
    fn generic_options(&mut self) -> Result<Vec<(String, Option<OptValue>)>, PgError> {
        let mut opts = Vec::new();
        loop {
            let name = match self.next() {
                Some(Token::Word(w)) => w.to_ascii_lowercase(),
                Some(Token::QuotedIdent(s)) => s,
                _ => return Err(syntax_error()),
            };
            let value = match self.peek() {
                Some(Token::Word(w)) if !is_keyword(w) => {
                    Some(OptValue::Ident(w.to_ascii_lowercase()))
                }
                Some(Token::QuotedIdent(s)) => Some(OptValue::Ident(s.clone())),
                Some(Token::Str(s)) => Some(OptValue::Str(s.clone())),
                Some(Token::UConst(n)) => Some(OptValue::Num(*n)),
                _ => None,
            };
            if value.is_some() {
                self.pos += 1;
            }
            opts.push((name, value));
            if self.eat_char(')') {
                return Ok(opts);
            }
            if !self.eat_char(',') {
                return Err(syntax_error());
            }
        }
    }

    fn base_backup(&mut self) -> Result<ReplicationCommand, PgError> {
        let opts = if self.eat_char('(') {
            self.generic_options()?
        } else {
            self.legacy_backup_options()?
        };
        BaseBackupOptions::from_options(&opts).map(ReplicationCommand::BaseBackup)
    }

    /// PostgreSQL 14's keyword options, mapped to their generic names.
    fn legacy_backup_options(&mut self) -> Result<Vec<(String, Option<OptValue>)>, PgError> {
        let mut opts = Vec::new();
        loop {
            let (name, value) = if self.eat_kw("LABEL") {
                ("label", Some(self.string()?))
            } else if self.eat_kw("PROGRESS") {
                ("progress", None)
            } else if self.eat_kw("FAST") {
                ("checkpoint", Some(OptValue::Str("fast".into())))
            } else if self.eat_kw("WAL") {
                ("wal", None)
            } else if self.eat_kw("NOWAIT") {
                ("wait", Some(OptValue::Num(0)))
            } else if self.eat_kw("MAX_RATE") {
                ("max_rate", Some(OptValue::Num(self.uconst()?)))
            } else if self.eat_kw("TABLESPACE_MAP") {
                ("tablespace_map", None)
            } else if self.eat_kw("NOVERIFY_CHECKSUMS") {
                ("verify_checksums", Some(OptValue::Num(0)))
            } else if self.eat_kw("MANIFEST_CHECKSUMS") {
                ("manifest_checksums", Some(self.string()?))
            } else if self.eat_kw("MANIFEST") {
                ("manifest", Some(self.string()?))
            } else {
                return Ok(opts);
            };
            opts.push((name.to_string(), value));
        }
    }

    fn string(&mut self) -> Result<OptValue, PgError> {
        match self.next() {
            Some(Token::Str(s)) => Ok(OptValue::Str(s)),
            _ => Err(syntax_error()),
        }
    }
}

fn is_keyword(w: &str) -> bool {
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(w))
}

fn logical_unsupported() -> PgError {
    PgError::error(
        FEATURE_NOT_SUPPORTED,
        "logical replication is not supported by walrep",
    )
}

#[cfg(test)]
mod tests;
