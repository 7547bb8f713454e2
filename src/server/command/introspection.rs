//! COMMAND and its subcommands: the command table read back (redis-cli
//! builds its hints from COMMAND DOCS).

use super::admin::CommandQuery;
use super::data::Done;
use super::error::CommandError;
use super::table;
use super::Command;
use crate::server::protocol::reply;
use crate::server::session::Session;

/// COMMAND: from the command table.
pub fn command(s: &mut Session, q: CommandQuery<'_>) -> Done {
    let lookup = |name: &[u8]| {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        table::find(&name)
    };
    match q {
        CommandQuery::Count => reply::integer(&mut s.out, table::TABLE.len() as i64),
        CommandQuery::List => {
            reply::array_header(&mut s.out, table::TABLE.len());
            for spec in table::TABLE {
                reply::bulk(&mut s.out, spec.name.as_bytes());
            }
        }
        CommandQuery::All | CommandQuery::Info(&[]) => {
            let mut r = s.reply();
            r.array(table::TABLE.len());
            for spec in table::TABLE {
                table::info(&mut r, spec);
            }
        }
        CommandQuery::Info(names) => {
            let mut r = s.reply();
            r.array(names.len());
            for n in names {
                match lookup(n) {
                    Some(spec) => table::info(&mut r, spec),
                    None => r.null_array(),
                }
            }
        }
        CommandQuery::Docs(names) => {
            let specs: Vec<&table::Spec> = match names {
                [] => table::TABLE.iter().collect(),
                names => names.iter().filter_map(|n| lookup(n)).collect(),
            };
            let mut r = s.reply();
            r.map(specs.len());
            for spec in specs {
                r.bulk(spec.name.as_bytes());
                table::docs(&mut r, spec);
            }
        }
        CommandQuery::GetKeys(request) => {
            let cmd = Command::from_frame(request).map_err(|_| {
                CommandError::Config("Invalid arguments specified for command".into())
            })?;
            let keys: Vec<&[u8]> = cmd.keys().collect();
            if keys.is_empty() {
                return Err(CommandError::Config(
                    "The command has no key arguments".into(),
                ));
            }
            reply::array_header(&mut s.out, keys.len());
            for k in keys {
                reply::bulk(&mut s.out, k);
            }
        }
        CommandQuery::Help => reply::help(
            &mut s.out,
            &[
                "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "(no subcommand)",
                "    Return details about all commands.",
                "COUNT",
                "    Return the total number of commands.",
                "DOCS [<command-name> ...]",
                "    Return documentation details about multiple commands.",
                "GETKEYS <full-command>",
                "    Return the keys from a full command.",
                "INFO [<command-name> ...]",
                "    Return details about multiple commands.",
                "LIST",
                "    Return a list of all commands.",
                "HELP",
                "    Print this help.",
            ],
        ),
    }
    Ok(())
}
