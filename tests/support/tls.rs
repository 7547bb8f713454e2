//! A test certificate authority made inside the test (rcgen), and a server
//! certificate it signed for 127.0.0.1 and localhost, written as PEM files
//! (the key 0600) where a node's `ssl_cert_file` / `ssl_key_file` and a
//! client's `sslrootcert` / `--cacert` can name them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The files of a test CA.
pub struct TestCa {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A second CA that signed nothing here: verifying against it fails.
    pub other_ca_cert: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    (params.self_signed(&key).unwrap(), key)
}

impl TestCa {
    /// Make the CA and the server certificate in `dir`.
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let (ca_cert, ca_key) = ca("walrep test CA");
        let (other, _) = ca("some other CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
        let t = TestCa {
            ca_cert: dir.join("root.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            other_ca_cert: dir.join("other-root.crt"),
        };
        std::fs::write(&t.ca_cert, ca_cert.pem()).unwrap();
        std::fs::write(&t.other_ca_cert, other.pem()).unwrap();
        std::fs::write(&t.server_cert, cert.pem()).unwrap();
        std::fs::write(&t.server_key, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&t.server_key, std::fs::Permissions::from_mode(0o600)).unwrap();
        t
    }

    /// `-c` settings that turn TLS on for both ports of a node.
    pub fn node_settings(&self, tls_port: u16) -> Vec<String> {
        vec![
            "ssl=on".into(),
            format!("ssl_cert_file={}", self.server_cert.display()),
            format!("ssl_key_file={}", self.server_key.display()),
            format!("tls_port={tls_port}"),
        ]
    }
}
