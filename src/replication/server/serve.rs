//! One replication connection: startup, the walsender slot, then the
//! command loop (simple Query only). An ERROR leaves the connection usable;
//! FATAL, Terminate, a closed socket or server shutdown end it.

use std::net::TcpStream;
use std::sync::Arc;

use crossbeam_channel::select;
use rand::Rng;

use super::conn::{spawn_reader, ClientEvent, Conn, StatusWake};
use super::session::{Failure, Session};
use super::startup::{self, Client, StartupEnd};
use super::{exec, walrange, walsender, Ctx};
use crate::replication::command::{self, ReplicationCommand};
use crate::replication::pgwire::{BackendMessage, FrontendMessage, MessageReader};
use crate::replication::registry::WalSenderHandle;
use crate::replication::source::ReplicationSource;
use crate::replication::sqlstate::{self as code, PgError};
use crate::security::NetStream;

/// FATAL 53300 for a connection over the startup bound, without a thread.
pub(super) fn refuse_too_many(stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
    let mut conn = Conn::new(NetStream::Plain(stream));
    let _ = conn.error(&PgError::fatal(
        code::TOO_MANY_CONNECTIONS,
        "sorry, too many clients already",
    ));
    conn.close();
}

/// Serve one connection to its end; `startup_id` is its place in the
/// startup pool, left once authentication ends either way.
pub(super) fn run<S: ReplicationSource>(ctx: &Arc<Ctx<S>>, stream: TcpStream, startup_id: u64) {
    let Ok(peer) = stream.peer_addr() else {
        ctx.startup.leave(startup_id);
        return;
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(
        ctx.options
            .wal_sender_timeout
            .or(Some(ctx.options.authentication_timeout)),
    );
    let Ok(write_half) = stream.try_clone() else {
        ctx.startup.leave(startup_id);
        return;
    };
    let mut conn = Conn::new(NetStream::Plain(write_half));
    let mut reader = MessageReader::new(NetStream::Plain(stream), ctx.options.max_message_len);
    let negotiated = startup::negotiate(ctx, &mut reader, &mut conn, peer);
    ctx.startup.leave(startup_id);
    let client = match negotiated {
        Ok(c) => c,
        Err(StartupEnd::Fatal(e)) => {
            tracing::info!(%peer, "replication connection refused: {e}");
            let _ = conn.error(&e);
            conn.close();
            return;
        }
        Err(StartupEnd::Close(why)) => {
            tracing::debug!(%peer, "replication connection closed during startup: {why}");
            conn.close();
            return;
        }
    };
    let Some(handle) = ctx.registry.register(
        &client.application_name,
        &client.user,
        Some(peer),
        ctx.source.in_recovery(),
    ) else {
        let e = PgError::fatal(
            code::TOO_MANY_CONNECTIONS,
            format!(
                "number of requested standby connections exceeds max_wal_senders (currently {})",
                ctx.options.max_wal_senders
            ),
        );
        let _ = conn.error(&e);
        conn.close();
        return;
    };
    handle.set_status_url(client.status_url.clone());
    serve(Arc::clone(ctx), conn, reader, handle, client);
}

fn serve<S: ReplicationSource>(
    ctx: Arc<Ctx<S>>,
    mut conn: Conn,
    reader: MessageReader<NetStream>,
    handle: WalSenderHandle,
    client: Client,
) {
    let id = handle.id();
    let span = tracing::info_span!("walsender", id, peer = %client.peer, app = %client.application_name, tls = client.tls);
    let _enter = span.enter();
    conn.send(&BackendMessage::BackendKeyData {
        pid: id as i32,
        key: rand::thread_rng().gen(),
    });
    let status_wake = StatusWake::new(Arc::clone(&ctx.slots));
    let reader = spawn_reader(
        reader,
        id,
        handle.recorder(),
        std::thread::current(),
        status_wake.clone(),
    );
    let Ok((rx, reader_join)) = reader else {
        return;
    };
    if conn.ready().is_err() {
        conn.close();
        return;
    }
    let mut session = Session {
        ctx: Arc::clone(&ctx),
        conn,
        rx,
        status_wake,
        handle,
        receive_unflushed: client.receive_unflushed,
        apply_feedback_on_request: client.apply_feedback_on_request,
        flush_hint: client.flush_hint,
    };
    let why = session.command_loop();
    tracing::debug!("replication connection ended: {why}");
    ctx.slots.drop_temporary_of(id);
    session.conn.close();
    drop(session);
    let _ = reader_join.join();
}

impl<S: ReplicationSource> Session<S> {
    fn command_loop(&mut self) -> String {
        loop {
            let ev = select! {
                recv(self.rx) -> ev => ev,
                recv(self.ctx.shutdown_rx) -> _ => {
                    let e = self.ctx.terminated.get().cloned().unwrap_or_else(|| {
                        PgError::fatal(code::ADMIN_SHUTDOWN, "terminating connection due to administrator command")
                    });
                    let _ = self.conn.error(&e);
                    return format!("server shutdown: {}", e.message);
                }
            };
            let msg = match ev {
                Ok(ClientEvent::Message(m)) => m,
                // A status update outside COPY: ignored, as any CopyData.
                Ok(ClientEvent::Status { .. }) => continue,
                Ok(ClientEvent::Gone(why)) => return why,
                Err(_) => return "reader stopped".into(),
            };
            if let Err(why) = self.on_message(msg) {
                return why;
            }
        }
    }

    fn on_message(&mut self, msg: FrontendMessage) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        match msg {
            FrontendMessage::Query(q) => self.query(&q),
            FrontendMessage::Terminate => Err("client terminated".into()),
            // Accepted and ignored, as PostgreSQL does after a failed COPY.
            FrontendMessage::CopyData(_)
            | FrontendMessage::CopyDone
            | FrontendMessage::CopyFail(_) => Ok(()),
            FrontendMessage::Sync => self.conn.ready().map_err(io),
            FrontendMessage::Flush => self.conn.flush().map_err(io),
            FrontendMessage::Extended(_) => self
                .conn
                .error(&PgError::error(
                    code::PROTOCOL_VIOLATION,
                    "extended query protocol not supported in a replication connection",
                ))
                .map_err(io),
            FrontendMessage::AuthResponse(_) => {
                let e = PgError::fatal(
                    code::PROTOCOL_VIOLATION,
                    "unexpected password message after authentication",
                );
                let _ = self.conn.error(&e);
                Err(e.message)
            }
        }
    }

    /// Run one command and answer it; `Err` ends the connection.
    fn query(&mut self, q: &str) -> Result<(), String> {
        tracing::debug!(command = q, "received replication command");
        let outcome = command::parse(q).map_err(Failure::Error).and_then(|cmd| {
            let tag = command_tag(&cmd);
            self.execute(cmd).map(|()| tag)
        });
        let sent = match outcome {
            Ok(tag) => {
                self.conn.send(&BackendMessage::CommandComplete(tag.into()));
                self.conn.ready()
            }
            Err(Failure::Error(e)) => {
                let r = self.conn.error(&e);
                if e.is_fatal() {
                    return Err(e.message);
                }
                r
            }
            Err(Failure::Gone(why)) => return Err(why),
        };
        sent.map_err(|e| e.to_string())
    }

    fn execute(&mut self, cmd: ReplicationCommand) -> Result<(), Failure> {
        match cmd {
            ReplicationCommand::IdentifySystem => exec::identify_system(self),
            ReplicationCommand::Show(name) => exec::show(self, &name),
            ReplicationCommand::TimelineHistory(tli) => exec::timeline_history(self, tli),
            ReplicationCommand::CreateReplicationSlot {
                name,
                temporary,
                reserve_wal,
            } => exec::create_slot(self, &name, temporary, reserve_wal),
            ReplicationCommand::DropReplicationSlot { name, wait } => {
                exec::drop_slot(self, &name, wait)
            }
            ReplicationCommand::ReadReplicationSlot(name) => exec::read_slot(self, &name),
            ReplicationCommand::StartReplication {
                slot,
                start,
                timeline,
            } => walsender::start_replication(self, slot.as_deref(), start, timeline),
            ReplicationCommand::BaseBackup(options) => exec::base_backup(self, &options),
            ReplicationCommand::WalRange {
                begin,
                end,
                timeline,
            } => walrange::wal_range(self, begin, end, timeline),
            ReplicationCommand::ConfirmBaseBackup(id) => exec::confirm_base_backup(self, &id),
        }
    }
}

/// The CommandComplete tag PostgreSQL 15 sends at the end of each command.
fn command_tag(cmd: &ReplicationCommand) -> &'static str {
    match cmd {
        ReplicationCommand::IdentifySystem => "IDENTIFY_SYSTEM",
        ReplicationCommand::Show(_) => "SHOW",
        ReplicationCommand::TimelineHistory(_) => "TIMELINE_HISTORY",
        ReplicationCommand::StartReplication { .. } => "START_REPLICATION",
        ReplicationCommand::CreateReplicationSlot { .. } => "CREATE_REPLICATION_SLOT",
        ReplicationCommand::DropReplicationSlot { .. } => "DROP_REPLICATION_SLOT",
        ReplicationCommand::ReadReplicationSlot(_) => "READ_REPLICATION_SLOT",
        ReplicationCommand::BaseBackup(_) => "BASE_BACKUP",
        ReplicationCommand::WalRange { .. } => "WAL_RANGE",
        ReplicationCommand::ConfirmBaseBackup(_) => "CONFIRM_BASE_BACKUP",
    }
}
