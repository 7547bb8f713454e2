//! Status addresses between nodes, so each page can link to its upstream's
//! and its downstreams' pages and `/cluster` can walk the topology. An
//! upstream advertises its address as a ParameterStatus
//! ([`STATUS_URL_PARAMETER`]) when a replication connection starts, as it
//! does its instance id; a walrep standby tells its upstream its own in the
//! startup packet ([`STATUS_URL_STARTUP_PARAMETER`]). The startup name has
//! a dot on purpose: PostgreSQL takes a dotted name it does not know as a
//! custom (placeholder) setting instead of refusing the connection, so a
//! walrep standby of a real PostgreSQL primary can send it too.
//!
//! The address is `status_advertise_url` when set, else
//! `http://LISTEN:status_port/`. A listen address that names no host
//! (`*`, `0.0.0.0`, `::`) is sent as is and the receiving side puts in the
//! host it sees: the host it connected to, or the peer's address.

use std::net::IpAddr;

pub use crate::config::status_url::{accept, config_problem, MAX_STATUS_URL_LEN};
use crate::config::Config;

/// ParameterStatus carrying the serving node's status address (walrep
/// only; PostgreSQL clients ignore unknown parameters).
pub const STATUS_URL_PARAMETER: &str = "walrep_status_url";

/// Startup parameter carrying a walrep standby's status address to its
/// upstream.
pub const STATUS_URL_STARTUP_PARAMETER: &str = "walrep.status_url";

/// The address this node advertises, `None` with the status port off.
pub fn own_status_url(c: &Config) -> Option<String> {
    if !c.status_advertise_url.is_empty() {
        return Some(c.status_advertise_url.clone());
    }
    if c.status_port == 0 {
        return None;
    }
    let host = c.listen_addresses.split(',').next().unwrap_or("").trim();
    let host = match host {
        "" | "*" => "0.0.0.0",
        h => h,
    };
    Some(format!("http://{}:{}/", bracket_v6(host), c.status_port))
}

/// `url` with a host that names no machine (`0.0.0.0`, `[::]`) replaced by
/// `seen`: the address the other side knows this peer by.
pub fn resolve(url: &str, seen: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = split_host_port(authority);
    let unspecified = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    if !unspecified || seen.is_empty() {
        return url.to_string();
    }
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    format!("{scheme}://{}{port}{path}", bracket_v6(seen))
}

/// `host:port` of an `http://` address (what `/cluster` connects to) and
/// the path of its `/status`; `None` for https or a malformed address.
pub fn http_target(url: &str) -> Option<(String, String)> {
    let page = page_of(&accept(url)?);
    let rest = page.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = split_host_port(authority);
    let port = port.unwrap_or("80");
    Some((format!("{host}:{port}"), format!("{path}status")))
}

/// The page of a status address: the address ending in `/`.
pub fn page_of(url: &str) -> String {
    let base = url.split(['?', '#']).next().unwrap_or(url);
    if base.ends_with('/') {
        base.to_string()
    } else {
        format!("{base}/")
    }
}

/// `inner` (markup) as a link to the page at `url`, or as it is when the
/// peer advertised none (PostgreSQL, pg_receivewal). `class` marks the
/// link for tests and styles.
pub fn link_to_page(url: Option<&str>, class: &str, inner: &str) -> String {
    match url.and_then(accept) {
        Some(u) => format!(
            "<a class=\"{class}\" href=\"{}\">{inner}</a>",
            crate::viz::xml::escape(&page_of(&u))
        ),
        None => inner.to_string(),
    }
}

fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(end) = authority.find(']') {
        let port = authority[end + 1..].strip_prefix(':');
        return (&authority[..=end], port);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (authority, None),
    }
}

fn bracket_v6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_url_comes_from_the_listen_address_unless_advertised() {
        let mut c = Config::default();
        assert_eq!(own_status_url(&c), None);
        c.status_port = 9187;
        assert_eq!(
            own_status_url(&c).as_deref(),
            Some("http://127.0.0.1:9187/")
        );
        c.listen_addresses = "*".into();
        assert_eq!(own_status_url(&c).as_deref(), Some("http://0.0.0.0:9187/"));
        c.listen_addresses = "::".into();
        assert_eq!(own_status_url(&c).as_deref(), Some("http://[::]:9187/"));
        c.status_advertise_url = "https://db1.example/walrep/".into();
        assert_eq!(
            own_status_url(&c).as_deref(),
            Some("https://db1.example/walrep/")
        );
    }

    #[test]
    fn unspecified_hosts_take_the_host_seen() {
        assert_eq!(
            resolve("http://0.0.0.0:9187/", "10.0.0.5"),
            "http://10.0.0.5:9187/"
        );
        assert_eq!(
            resolve("http://[::]:9187/", "fe80::1"),
            "http://[fe80::1]:9187/"
        );
        assert_eq!(resolve("http://db1:9187/", "10.0.0.5"), "http://db1:9187/");
    }

    #[test]
    fn hostile_addresses_are_dropped() {
        assert!(accept("http://h:1/").is_some());
        assert!(accept("https://h/x").is_some());
        for bad in [
            "javascript:alert(1)",
            "http://h:1/\"><script>",
            "http:///x",
            "http://h 1/",
            "ftp://h/",
            "",
        ] {
            assert_eq!(accept(bad), None, "{bad}");
        }
        assert_eq!(accept(&format!("http://{}", "a".repeat(300))), None);
        assert!(config_problem("http://h:1/").is_none());
        assert!(config_problem("h:1").is_some());
    }

    #[test]
    fn http_targets_name_host_port_and_page() {
        assert_eq!(
            http_target("http://127.0.0.1:9187"),
            Some(("127.0.0.1:9187".into(), "/status".into()))
        );
        assert_eq!(
            http_target("http://[::1]:9187/walrep/"),
            Some(("[::1]:9187".into(), "/walrep/status".into()))
        );
        assert_eq!(http_target("https://h/"), None);
    }
}
