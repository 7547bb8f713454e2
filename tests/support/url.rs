//! Redis clients by URL, for nodes a test runs in its own process (an
//! [`InProcessNode`](super::node::InProcessNode) has a URL, not a
//! [`TestNode`](super::node::TestNode)'s helpers), and the primary's view of
//! its first standby.

use std::time::Duration;

use walrep::Lsn;

/// A connection to `url` whose reads wait at most 30 s.
pub fn conn(url: &str) -> redis::Connection {
    let c = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c
}

pub fn set(url: &str, key: &str, value: &str) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query(&mut conn(url))
        .unwrap();
}

/// `GET key`; `None` when the key is missing, a panic when the node
/// refuses.
pub fn get(url: &str, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut conn(url))
        .unwrap_or_else(|e| panic!("GET {key} on {url}: {e}"))
}

/// `GET key`; `None` also while the node refuses (a standby still
/// starting).
pub fn try_get(url: &str, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query::<Option<String>>(&mut conn(url))
        .ok()
        .flatten()
}

/// A field of INFO `section`.
pub fn info_field(url: &str, section: &str, field: &str) -> Option<String> {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query(&mut conn(url))
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")).map(str::to_string))
}

/// `field=value` of the primary's INFO line of standby `slave0`.
pub fn slave_field(url: &str, field: &str) -> Option<Lsn> {
    let line = info_field(url, "replication", "slave0")?;
    line.split(',')
        .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
        .and_then(|v| v.parse().ok())
}
