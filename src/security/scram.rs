//! SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL speaks it: no channel
//! binding (`n,,` or `y,,`), the user name inside the SCRAM messages is
//! ignored (the startup packet's user counts), 4096 iterations, 16-byte
//! salt, 18-byte nonces. Passwords are used as given (no SASLprep, which is
//! the identity for ASCII passwords).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// PostgreSQL's default SCRAM iteration count.
pub const ITERATIONS: u32 = 4096;
/// The only mechanism we offer.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Upper bound on a server-chosen iteration count the client accepts, so a
/// hostile server cannot make us spin for minutes.
const MAX_CLIENT_ITERATIONS: u32 = 1_000_000;

/// Why a SCRAM exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message does not follow RFC 5802's grammar; says which part.
    #[error("malformed SCRAM message: {0}")]
    Malformed(String),
    /// The client asked for channel binding (`p=` in its GS2 header),
    /// which needs TLS (SCRAM-SHA-256-PLUS); we offer only SCRAM-SHA-256.
    #[error("SCRAM channel binding is not supported (no TLS)")]
    ChannelBinding,
    /// Server side: the client's proof does not match the verifier (a
    /// wrong password). The same message as PostgreSQL, whatever the
    /// reason, so a client learns nothing about which roles exist.
    #[error("password authentication failed")]
    BadPassword,
    /// Client side: the server's signature does not match the password,
    /// so the server is not the one that holds our verifier; the client
    /// stops before sending anything more.
    #[error("invalid SCRAM server signature: the server does not know the password")]
    BadServerSignature,
    /// A message arrived in a step that does not expect it (a bug or a
    /// hostile peer).
    #[error("SCRAM exchange out of order")]
    OutOfOrder,
}

fn malformed(what: &str) -> ScramError {
    ScramError::Malformed(what.to_string())
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The keys derived from a password: what PostgreSQL stores in pg_authid.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// The random salt the password was salted with (16 bytes when we
    /// make one, as PostgreSQL).
    pub salt: Vec<u8>,
    /// PBKDF2 iterations ([`ITERATIONS`] = 4096 when we make a verifier, as
    /// PostgreSQL's default `scram_iterations`).
    pub iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`: checks a client's proof.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`: signs the server's final
    /// message, proving to the client that the server knows the password.
    pub server_key: [u8; 32],
}

impl ScramKeys {
    /// Derive the keys of `password` (RFC 5802's `Hi()`, PBKDF2 with
    /// HMAC-SHA-256): deliberately slow, `iterations` HMACs.
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let salted = salted_password(password, salt, iterations);
        ScramKeys {
            salt: salt.to_vec(),
            iterations,
            stored_key: sha256(&hmac(&salted, b"Client Key")),
            server_key: hmac(&salted, b"Server Key"),
        }
    }
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
    out
}

/// The salt shown for a user without keys: the same on every try (a real
/// user's salt does not change either), different per process and user.
fn mock_salt(user: &str) -> Vec<u8> {
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut s);
        s
    });
    hmac(secret, user.as_bytes())[..16].to_vec()
}

fn nonce() -> String {
    let mut raw = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut raw);
    B64.encode(raw)
}

/// Split `a=1,b=2` into attribute/value pairs (values may contain `=`).
fn attributes(msg: &str) -> Result<Vec<(char, &str)>, ScramError> {
    msg.split(',')
        .map(|part| {
            let mut chars = part.chars();
            match (chars.next(), chars.next()) {
                (Some(k), Some('=')) if k.is_ascii_alphabetic() => Ok((k, &part[2..])),
                _ => Err(ScramError::Malformed(format!("bad attribute {part:?}"))),
            }
        })
        .collect()
}

fn attr<'a>(attrs: &[(char, &'a str)], key: char) -> Result<&'a str, ScramError> {
    attrs
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
        .ok_or_else(|| ScramError::Malformed(format!("missing attribute {key}")))
}

fn utf8(bytes: &[u8]) -> Result<&str, ScramError> {
    std::str::from_utf8(bytes).map_err(|_| malformed("not UTF-8"))
}

/// Server side of one exchange.
pub struct ScramServer {
    /// `None` for a user without a verifier: the exchange runs (so the
    /// client learns nothing) and always fails, as PostgreSQL's mock does.
    keys: Option<ScramKeys>,
    /// Salt and iterations announced (the mock's too).
    salt: Vec<u8>,
    iterations: u32,
    /// Filled by the first step: gs2 header, client-first-bare,
    /// server-first and the combined nonce.
    state: Option<ServerState>,
}

struct ServerState {
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    /// Start an exchange with a user's stored keys (a verifier), or with
    /// none: then the exchange runs to its end and fails, and the salt
    /// announced is a stable one derived from the user name, so a client
    /// cannot tell an unknown user from a wrong password.
    pub fn new(keys: Option<ScramKeys>, user: &str) -> ScramServer {
        let (salt, iterations) = match &keys {
            Some(k) => (k.salt.clone(), k.iterations),
            None => (mock_salt(user), ITERATIONS),
        };
        ScramServer {
            keys,
            salt,
            iterations,
            state: None,
        }
    }

    /// An exchange for a clear password (tests, and servers that keep
    /// none): the keys are derived with a fresh salt.
    pub fn with_password(password: &str) -> ScramServer {
        let mut salt = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        ScramServer::new(Some(ScramKeys::derive(password, &salt, ITERATIONS)), "")
    }

    /// Answer the client-first-message with the server-first-message.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let msg = utf8(msg)?;
        let (gs2_header, bare) = split_gs2(msg)?;
        let attrs = attributes(bare)?;
        if attrs.first().map(|a| a.0) == Some('m') {
            return Err(malformed("mandatory extensions are not supported"));
        }
        let client_nonce = attr(&attrs, 'r')?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(malformed("invalid client nonce"));
        }
        let nonce = format!("{client_nonce}{}", self::nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.salt),
            self.iterations
        );
        self.state = Some(ServerState {
            gs2_header: gs2_header.to_string(),
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
        });
        Ok(server_first.into_bytes())
    }

    /// Check the client-final-message; on success, the server-final-message.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let st = self.state.take().ok_or(ScramError::OutOfOrder)?;
        let msg = utf8(msg)?;
        let (without_proof, proof_b64) = msg
            .rsplit_once(",p=")
            .ok_or_else(|| malformed("missing proof"))?;
        let attrs = attributes(without_proof)?;
        let binding = B64
            .decode(attr(&attrs, 'c')?)
            .map_err(|_| malformed("invalid channel binding encoding"))?;
        if binding != st.gs2_header.as_bytes() {
            return Err(malformed("unexpected SCRAM channel-binding attribute"));
        }
        if attr(&attrs, 'r')? != st.nonce {
            return Err(malformed("nonce mismatch"));
        }
        let proof = B64
            .decode(proof_b64)
            .map_err(|_| malformed("invalid proof encoding"))?;
        let auth_message = format!(
            "{},{},{}",
            st.client_first_bare, st.server_first, without_proof
        );
        let keys = self.keys.as_ref().ok_or(ScramError::BadPassword)?;
        verify_proof(keys, &auth_message, &proof)?;
        let signature = hmac(&keys.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(signature)).into_bytes())
    }
}

/// `n,,rest` / `y,,rest` (client without channel binding); `p=...` asks for
/// binding we cannot offer; an authorization identity is refused.
fn split_gs2(msg: &str) -> Result<(&str, &str), ScramError> {
    let (flag, rest) = msg
        .split_once(',')
        .ok_or_else(|| malformed("missing gs2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(malformed("invalid channel binding flag")),
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or_else(|| malformed("missing gs2 header"))?;
    if !authzid.is_empty() {
        return Err(malformed("authorization identity is not supported"));
    }
    let header_len = msg.len() - bare.len();
    Ok((&msg[..header_len], bare))
}

fn verify_proof(keys: &ScramKeys, auth_message: &str, proof: &[u8]) -> Result<(), ScramError> {
    if proof.len() != 32 {
        return Err(malformed("proof has the wrong length"));
    }
    let signature = hmac(&keys.stored_key, auth_message.as_bytes());
    let mut client_key = [0u8; 32];
    for i in 0..32 {
        client_key[i] = proof[i] ^ signature[i];
    }
    if sha256(&client_key) != keys.stored_key {
        return Err(ScramError::BadPassword);
    }
    Ok(())
}

/// Client side of one exchange.
pub struct ScramClient {
    password: String,
    client_nonce: String,
    /// client-first-bare, then the expected server signature.
    client_first_bare: String,
    server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    /// A client that will prove knowledge of `password`, with a fresh
    /// random nonce.
    pub fn new(password: &str) -> ScramClient {
        let client_nonce = nonce();
        ScramClient {
            password: password.to_string(),
            client_first_bare: format!("n=,r={client_nonce}"),
            client_nonce,
            server_signature: None,
        }
    }

    /// The client-first-message, as libpq sends it.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Answer the server-first-message with the client-final-message.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let msg = utf8(msg)?;
        let attrs = attributes(msg)?;
        let nonce = attr(&attrs, 'r')?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(malformed("server nonce does not extend the client nonce"));
        }
        let salt = B64
            .decode(attr(&attrs, 's')?)
            .map_err(|_| malformed("invalid salt encoding"))?;
        let iterations: u32 = attr(&attrs, 'i')?
            .parse()
            .map_err(|_| malformed("invalid iteration count"))?;
        if iterations == 0 || iterations > MAX_CLIENT_ITERATIONS {
            return Err(malformed("iteration count out of range"));
        }
        let keys = ScramKeys::derive(&self.password, &salt, iterations);
        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", self.client_first_bare, msg, without_proof);
        let signature = hmac(&keys.stored_key, auth_message.as_bytes());
        let mut proof = [0u8; 32];
        for i in 0..32 {
            proof[i] = client_key[i] ^ signature[i];
        }
        self.server_signature = Some(hmac(&keys.server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Check the server-final-message (`v=` signature, or `e=` error).
    pub fn server_final(&self, msg: &[u8]) -> Result<(), ScramError> {
        let expected = self.server_signature.ok_or(ScramError::OutOfOrder)?;
        let attrs = attributes(utf8(msg)?)?;
        if let Ok(e) = attr(&attrs, 'e') {
            return Err(ScramError::Malformed(format!("server error: {e}")));
        }
        let v = B64
            .decode(attr(&attrs, 'v')?)
            .map_err(|_| malformed("invalid signature encoding"))?;
        if v != expected {
            return Err(ScramError::BadServerSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(server_pw: Option<&str>, client_pw: &str) -> Result<(), ScramError> {
        let mut s = match server_pw {
            Some(pw) => ScramServer::with_password(pw),
            None => ScramServer::new(None, "nobody"),
        };
        let mut c = ScramClient::new(client_pw);
        let sf = s.client_first(&c.client_first())?;
        let cf = c.server_first(&sf)?;
        let fin = s.client_final(&cf)?;
        c.server_final(&fin)
    }

    #[test]
    fn right_password_authenticates_both_ways() {
        exchange(Some("sekrit"), "sekrit").unwrap();
    }

    #[test]
    fn wrong_or_missing_password_fails() {
        assert_eq!(
            exchange(Some("sekrit"), "guess"),
            Err(ScramError::BadPassword)
        );
        assert_eq!(exchange(None, "guess"), Err(ScramError::BadPassword));
    }

    /// RFC 7677's SHA-256 test vector, for the key derivation and proof.
    #[test]
    fn rfc7677_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let keys = ScramKeys::derive("pencil", &salt, 4096);
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = B64
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        verify_proof(&keys, auth, &proof).unwrap();
        let sig = hmac(&keys.server_key, auth.as_bytes());
        assert_eq!(
            B64.encode(sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        let mut s = ScramServer::with_password("x");
        for m in [
            &b""[..],
            b"n",
            b"p=tls-unique,,n=,r=x",
            b"n,a=bob,n=,r=x",
            b"\xff\xfe",
        ] {
            assert!(s.client_first(m).is_err(), "{m:?}");
        }
        assert_eq!(
            s.client_final(b"c=biws,r=x,p=AAAA"),
            Err(ScramError::OutOfOrder)
        );
        let mut c = ScramClient::new("x");
        assert!(c.server_first(b"r=other,s=AAAA,i=4096").is_err());
        assert!(c.server_first(b"garbage").is_err());
    }
}
