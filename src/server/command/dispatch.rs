//! What the connection asks of every parsed request, in its order: may
//! this session run it ([`check`]: NOAUTH, NOPERM), must it wait for the
//! connection's pending writes first ([`must_settle_before`]), then
//! [`respond`]: queued inside a MULTI, refused while a standby is not yet
//! consistent, or run by [`super::multi`] or [`super::exec`].

use super::data::Done;
use super::error::CommandError;
use super::flow::Flow;
use super::parse::Args;
use super::{exec, multi, Command};
use crate::server::backend::{Role, WriteError};
use crate::server::session::Session;

/// Whether the session may run `cmd` (`name` is the request's first word,
/// for the error): NOAUTH before a login, NOPERM beyond the user's level.
pub fn check(s: &Session, cmd: &Command<'_>, name: &[u8]) -> Done {
    let Some(user) = &s.user else {
        return match cmd {
            Command::Auth { .. } | Command::Quit => Ok(()),
            Command::Hello(h) if h.auth.is_some() => Ok(()),
            Command::Hello(_) => Err(CommandError::HelloNoAuth),
            _ => Err(CommandError::NoAuth),
        };
    };
    if cmd.required_access() > user.access {
        let name = String::from_utf8_lossy(&name[..name.len().min(64)]).to_ascii_lowercase();
        return Err(CommandError::NoPerm(name));
    }
    Ok(())
}

/// Whether `cmd` must wait for this connection's pending writes before
/// it runs: everything but a write, and but what MULTI only queues (an
/// EXEC of writes sees the newest state anyway, and queues its reply
/// behind theirs).
pub fn must_settle_before(s: &Session, cmd: &Command<'_>) -> bool {
    match &s.multi {
        Some(_) if !multi::runs_at_once(cmd) => false,
        Some(m) if matches!(cmd, Command::Exec) => !m.has_write(),
        _ => !cmd.is_write(),
    }
}

/// Execute a parsed request, or reply with why the parser refused it. In
/// a MULTI, commands are queued instead (`args` is the request).
pub fn respond(s: &mut Session, args: Args<'_>, parsed: Result<Command<'_>, CommandError>) -> Flow {
    if s.in_multi() {
        match parsed {
            Ok(cmd) if !multi::runs_at_once(&cmd) => {
                multi::queue(s, args, &cmd);
                return Flow::Continue;
            }
            Err(e) => {
                multi::abort(s);
                exec::reply_error(s, &e);
                return Flow::Continue;
            }
            Ok(_) => {}
        }
    }
    match parsed {
        Ok(cmd) => execute(s, cmd),
        Err(e) => {
            exec::reply_error(s, &e);
            Flow::Continue
        }
    }
}

/// Execute `cmd`, appending its reply to the session's output.
pub fn execute(s: &mut Session, cmd: Command<'_>) -> Flow {
    if cmd.reads_data() && s.ctx.backend.role() == Role::Recovering {
        exec::reply_error(s, &WriteError::NotConsistent.into());
        return Flow::Continue;
    }
    match run(s, cmd) {
        Ok(flow) => flow,
        Err(e) => {
            exec::reply_error(s, &e);
            Flow::Continue
        }
    }
}

fn run(s: &mut Session, cmd: Command<'_>) -> Result<Flow, CommandError> {
    use Command as C;
    match cmd {
        C::Multi => multi::multi(s)?,
        C::Exec => multi::exec(s)?,
        C::Discard => multi::discard(s)?,
        C::Watch(keys) => multi::watch(s, keys)?,
        C::Unwatch => multi::unwatch(s),
        cmd if cmd.is_write() => exec::write_one(s, cmd)?,
        cmd if exec::is_data_read(&cmd) => exec::read_one(s, cmd)?,
        cmd => return exec::run_session(s, cmd),
    }
    Ok(Flow::Continue)
}
