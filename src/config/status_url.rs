//! The syntax of a status page address (`status_advertise_url`, and the
//! addresses peers send): which strings are shown and fetched at all. The
//! configuration checks its own parameter with it; the status pages use
//! it on what peers advertise.

/// Longest status address accepted from a peer: it is shown on pages and
/// fetched by `/cluster`, so a hostile client cannot make it large.
pub const MAX_STATUS_URL_LEN: usize = 256;

/// Why a `status_advertise_url` is refused, `None` when it is usable.
pub fn config_problem(url: &str) -> Option<String> {
    if url.is_empty() || accept(url).is_some() {
        return None;
    }
    Some(format!(
        "\"{url}\" is not an http:// or https:// address of at most {MAX_STATUS_URL_LEN} characters without spaces or quotes"
    ))
}

/// A status address received from a peer, if it is one worth showing:
/// http(s), bounded, printable, nothing that could break out of an HTML
/// attribute. Anything else is dropped (the page shows no link).
pub fn accept(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let printable = url
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"\"'<>`\\".contains(&b));
    let has_host = !rest.is_empty() && !rest.starts_with('/');
    (url.len() <= MAX_STATUS_URL_LEN && printable && has_host).then(|| url.to_string())
}
