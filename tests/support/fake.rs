//! A replication server over the in-memory source (`FakeSource`), in a
//! temporary data directory, for the replication tests that need no node.

use std::net::TcpListener;
use std::sync::Arc;

use walrep::config::{HbaConnection, HbaEntry, HbaMethod, RedisAccess, RoleEntry};
use walrep::replication::fake::FakeSource;
use walrep::replication::registry::WalSenderRegistry;
use walrep::replication::server::{self, ServerHandle, ServerOptions};
use walrep::replication::slots::SlotManager;
use walrep::security::roles::Roles;
use walrep::security::ScramVerifier;
use walrep::Lsn;

use super::wal::{seg, SYSTEM_ID};

/// A replication server over a FakeSource in a temporary data directory.
pub struct FakeServer {
    pub source: Arc<FakeSource>,
    pub slots: Arc<SlotManager>,
    pub registry: Arc<WalSenderRegistry>,
    pub handle: Option<ServerHandle>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl FakeServer {
    pub fn start(options: ServerOptions) -> FakeServer {
        let dir = tempfile::tempdir().unwrap();
        let source = Arc::new(FakeSource::new(
            SYSTEM_ID,
            seg(),
            dir.path().to_path_buf(),
            Lsn(0),
        ));
        let slots =
            SlotManager::open(Arc::new(walrep::storage::StdStorage), dir.path(), 8, None).unwrap();
        let registry = WalSenderRegistry::new(options.max_wal_senders);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = server::spawn(
            listener,
            Arc::clone(&source),
            Arc::clone(&slots),
            Arc::clone(&registry),
            options,
        )
        .unwrap();
        FakeServer {
            source,
            slots,
            registry,
            handle: Some(handle),
            port,
            dir,
        }
    }

    pub fn conninfo(&self, extra: &str) -> String {
        format!("host=127.0.0.1 port={} user=walrep {extra}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }
}

/// Options with a password user (a replication role whose verifier is
/// made from "sekrit pw") and an hba that needs SCRAM for it.
pub fn scram_options() -> ServerOptions {
    let roles = Arc::new(Roles::new(
        &[RoleEntry {
            name: "walrep".into(),
            password: ScramVerifier::make("sekrit pw").to_string(),
            replication: true,
            redis: RedisAccess::None,
        }],
        "",
    ));
    let line = |method, user: &str| HbaEntry {
        connection: HbaConnection::Host,
        address: "127.0.0.1/32".into(),
        method,
        user: user.into(),
        clientcert: false,
    };
    ServerOptions {
        roles,
        hba: vec![
            line(HbaMethod::Reject, "rejected"),
            line(HbaMethod::ScramSha256, "walrep"),
        ],
        ..ServerOptions::default()
    }
}
