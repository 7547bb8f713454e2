//! `/cluster`: the topology around a node, drawn as SVG. Starting from the
//! node asked, the page follows every status address the nodes advertise
//! ([`links`]: each standby's upstream, each walsender's standby) and reads
//! those nodes' `/status`, breadth first, so the whole cluster is drawn
//! from any node; addresses given as `/cluster?peers=HOST:PORT,...` are
//! read too. Bounded: at most [`MAX_PEERS`] reads, each within
//! [`PEER_TIMEOUT`], all within [`WALK_DEADLINE`]. Every standby is tied
//! to the walsender that feeds it; a walsender no known node matches is a
//! client such as pg_receivewal, drawn as a leaf. Each edge carries its
//! lag; each node its state and a link to its own page.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::links;
use crate::viz::html;
use crate::viz::xml::escape;

/// Peers read per request, at most.
pub const MAX_PEERS: usize = 16;
/// Connect, read and write timeout for each peer.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `/status` answer read from a peer.
const MAX_PEER_BYTES: usize = 1 << 20;

/// A node in the picture.
struct Member {
    /// Its `/status`, or `None` for a client known only by a walsender.
    status: Option<Value>,
    name: String,
    /// Its page's address, when known.
    page: Option<String>,
    /// The status address it was read from (its page), `None` for this
    /// node and for clients.
    reached_at: Option<String>,
}

/// The `peers` of a query string (`peers=h:p,h:p`), percent-decoded.
pub fn peers_of(query: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("peers="))
        .flat_map(|v| {
            percent_decode(v)
                .split(',')
                .map(|p| p.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|p| !p.is_empty())
        .take(MAX_PEERS)
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = || u8::from_str_radix(std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?, 16).ok();
        match (b[i], hex()) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A peer's `/status` at `addr` (`host:port`), or why not.
pub fn fetch_status(addr: &str) -> Result<Value, String> {
    fetch_status_at(addr, "/status", Instant::now() + PEER_TIMEOUT)
}

/// `GET path` from `addr`, all of it before `deadline`: a peer that
/// trickles its answer is cut off like one that never answers.
fn fetch_status_at(addr: &str, path: &str, deadline: Instant) -> Result<Value, String> {
    let left = || {
        let d = deadline.saturating_duration_since(Instant::now());
        (!d.is_zero()).then_some(d).ok_or("timed out")
    };
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut s = TcpStream::connect_timeout(&sock, left()?).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        s.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        let read = s.read(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timed out".into(),
            _ => e.to_string(),
        });
        match read? {
            0 => break,
            n if text.len() + n > MAX_PEER_BYTES => return Err("answer too large".into()),
            n => text.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&text);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or("no body")?;
    serde_json::from_str(body).map_err(|e| e.to_string())
}

/// The cluster page: `own` is this node's `/status`, `peers` the other
/// status addresses to read besides those the nodes advertise.
pub fn cluster_page(own: Value, peers: &[String]) -> String {
    let mut walk = Walk::default();
    walk.members.push(member(own, Some("/".into()), None));
    walk.pending
        .extend(peers.iter().map(|p| format!("http://{p}/")));
    walk.run(Instant::now() + WALK_DEADLINE);
    let Walk {
        mut members,
        unreachable,
        ..
    } = walk;
    let edges = edges(&mut members);
    let mut body = String::from("<h1>walrep cluster</h1>\n<p class=\"muted\">the topology as seen from this node, following each node's upstream and downstreams (the status addresses they advertise); more nodes can be named as <code>/cluster?peers=HOST:PORT,HOST:PORT</code> · <a href=\"/\">this node</a></p>\n");
    body.push_str(&svg(&members, &edges));
    body.push_str(&member_list(&members));
    for u in unreachable {
        let _ = writeln!(
            body,
            "<p class=\"unreachable\">unreachable: {}</p>",
            escape(&u)
        );
    }
    html::document("walrep cluster", "", &body)
}

/// The links of the picture, without the picture: each node's page.
fn member_list(members: &[Member]) -> String {
    let mut out = String::from("<ul class=\"members\">\n");
    for m in members {
        match &m.page {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "<li><a href=\"{}\">{}</a></li>",
                    escape(p),
                    escape(&m.name)
                );
            }
            None => {
                let _ = writeln!(out, "<li>{}</li>", escape(&m.name));
            }
        }
    }
    out.push_str("</ul>\n");
    out
}

/// Longest a whole `/cluster` walk may take: every peer read shares it.
pub const WALK_DEADLINE: Duration = Duration::from_secs(8);

/// The breadth-first walk over advertised status addresses.
#[derive(Default)]
struct Walk {
    members: Vec<Member>,
    /// Addresses still to read, in order found.
    pending: VecDeque<String>,
    /// Addresses read or queued, so none is read twice.
    seen: HashSet<String>,
    unreachable: Vec<String>,
    fetched: usize,
}

impl Walk {
    /// Read queued addresses, queueing what each node advertises, until
    /// none is left, [`MAX_PEERS`] were read or `deadline` passes.
    fn run(&mut self, deadline: Instant) {
        self.queue_neighbours(0);
        while let Some(url) = self.pending.pop_front() {
            if self.fetched >= MAX_PEERS || Instant::now() >= deadline {
                self.unreachable
                    .push(format!("{url}: not read (the walk's bound was reached)"));
                continue;
            }
            let Some((addr, path)) = links::http_target(&url) else {
                self.unreachable
                    .push(format!("{url}: only http:// addresses are read"));
                continue;
            };
            self.fetched += 1;
            let limit = deadline.min(Instant::now() + PEER_TIMEOUT);
            match fetch_status_at(&addr, &path, limit) {
                Ok(v) if !self.members.iter().any(|m| same_node(m, &v)) => {
                    self.members
                        .push(member(v, Some(links::page_of(&url)), Some(url)));
                    self.queue_neighbours(self.members.len() - 1);
                }
                Ok(_) => {}
                Err(e) => self.unreachable.push(format!("{url}: {e}")),
            }
        }
    }

    /// Queue member `i`'s upstream and downstreams, unless already known.
    fn queue_neighbours(&mut self, i: usize) {
        let Some(s) = self.members[i].status.clone() else {
            return;
        };
        let upstream = &s["upstream"];
        let up_known = upstream["instance_id"]
            .as_str()
            .is_some_and(|id| self.members.iter().any(|m| instance(m) == Some(id)));
        if !up_known {
            self.push(upstream["status_url"].as_str());
        }
        for w in s["standbys"].as_array().into_iter().flatten() {
            if feeds(&self.members, &s, w).is_none() {
                self.push(w["status_url"].as_str());
            }
        }
    }

    fn push(&mut self, url: Option<&str>) {
        let Some(url) = url.and_then(links::accept) else {
            return;
        };
        let page = links::page_of(&url);
        let reached = self
            .members
            .iter()
            .any(|m| m.reached_at.as_deref() == Some(&page));
        if !reached && self.seen.insert(page.clone()) {
            self.pending.push_back(page);
        }
    }
}

fn instance(m: &Member) -> Option<&str> {
    m.status.as_ref()?["instance_id"].as_str()
}

fn member(status: Value, page: Option<String>, reached_at: Option<String>) -> Member {
    Member {
        name: status["node"].as_str().unwrap_or("?").to_string(),
        page,
        reached_at: reached_at.map(|u| links::page_of(&u)),
        status: Some(status),
    }
}

/// The same node twice: same instance (random per start), or, from a node
/// too old to say, same system and replication port.
fn same_node(m: &Member, v: &Value) -> bool {
    m.status.as_ref().is_some_and(|s| {
        match (s["instance_id"].as_str(), v["instance_id"].as_str()) {
            (Some(a), Some(b)) => a == b,
            _ => {
                s["system_identifier"] == v["system_identifier"]
                    && s["ports"]["replication_port"] == v["ports"]["replication_port"]
            }
        }
    })
}

/// The known member that walsender `w` of `upstream` feeds: the one read
/// at the address the walsender's standby advertised, else the one whose
/// upstream is `upstream` (by instance, or by replication port) under the
/// walsender's application_name.
fn feeds(members: &[Member], upstream: &Value, w: &Value) -> Option<usize> {
    let by_url = w["status_url"].as_str().map(links::page_of).and_then(|u| {
        members
            .iter()
            .position(|m| m.reached_at.as_deref() == Some(&u))
    });
    by_url.or_else(|| {
        let app = w["application_name"].as_str().unwrap_or("");
        members.iter().position(|m| {
            m.status.as_ref().is_some_and(|s| {
                let up = &s["upstream"];
                let same_upstream =
                    match (up["instance_id"].as_str(), upstream["instance_id"].as_str()) {
                        (Some(a), Some(b)) => a == b,
                        _ => up["sender_port"] == upstream["ports"]["replication_port"],
                    };
                same_upstream && up["application_name"].as_str() == Some(app)
            })
        })
    })
}

/// An arrow from upstream to downstream with what the walsender says.
struct Edge {
    from: usize,
    to: usize,
    label: String,
}

/// Tie each walsender to the node it feeds ([`feeds`]), else add the
/// client (pg_receivewal, or a standby not reached) as a leaf.
fn edges(members: &mut Vec<Member>) -> Vec<Edge> {
    let mut out = Vec::new();
    let known = members.len();
    for from in 0..known {
        let Some(status) = members[from].status.clone() else {
            continue;
        };
        let senders = status["standbys"].as_array().cloned().unwrap_or_default();
        for w in senders {
            let to = feeds(&members[..known], &status, &w).unwrap_or_else(|| {
                let app = w["application_name"].as_str().unwrap_or("");
                members.push(Member {
                    status: None,
                    name: format!("{app} (client)"),
                    page: w["status_url"].as_str().and_then(links::accept),
                    reached_at: None,
                });
                members.len() - 1
            });
            out.push(Edge {
                from,
                to,
                label: edge_label(&status, &w),
            });
        }
    }
    out
}

fn edge_label(upstream: &Value, w: &Value) -> String {
    let lsn = |v: &Value| v.as_str().and_then(|s| s.parse::<crate::Lsn>().ok());
    let own = lsn(&upstream["wal"]["flush_lsn"]).or(lsn(&upstream["recovery"]["replay_lsn"]));
    let lag = match (own, lsn(&w["flush_lsn"])) {
        (Some(o), Some(f)) => crate::viz::chart::bytes(o.saturating_sub(f) as f64),
        _ => "?".into(),
    };
    let mut s = format!(
        "{} {}, flush lag {lag}",
        w["state"].as_str().unwrap_or("?"),
        w["sync_state"].as_str().unwrap_or("")
    );
    if let Some(ms) = w["replay_lag_ms"].as_u64() {
        let _ = write!(s, ", replay lag {ms}ms");
    }
    if let Some(slot) = w["slot_name"].as_str() {
        let _ = write!(s, ", slot {slot}");
    }
    s
}

/// Depth of each member: roots (no known upstream) at 0.
fn depths(n: usize, edges: &[Edge]) -> Vec<usize> {
    let mut depth = vec![0; n];
    // Bounded: a depth never exceeds the number of members.
    for _ in 0..n {
        for e in edges {
            if depth[e.to] < depth[e.from] + 1 && depth[e.from] < n {
                depth[e.to] = depth[e.from] + 1;
            }
        }
    }
    depth
}

fn svg(members: &[Member], edges: &[Edge]) -> String {
    const BOX_W: f64 = 230.0;
    const BOX_H: f64 = 64.0;
    const ROW: f64 = 150.0;
    let depth = depths(members.len(), edges);
    let mut col = vec![0usize; members.len() + 1];
    let mut pos = Vec::with_capacity(members.len());
    for d in &depth {
        pos.push((
            30.0 + col[*d] as f64 * (BOX_W + 60.0),
            30.0 + *d as f64 * ROW,
        ));
        col[*d] += 1;
    }
    let width = 60.0 + col.iter().max().copied().unwrap_or(1) as f64 * (BOX_W + 60.0);
    let height = 60.0 + (depth.iter().max().copied().unwrap_or(0) + 1) as f64 * ROW;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"cluster\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n<defs><marker id=\"arrow\" markerWidth=\"10\" markerHeight=\"7\" refX=\"10\" refY=\"3.5\" orient=\"auto\"><polygon points=\"0 0, 10 3.5, 0 7\"/></marker></defs>\n"
    );
    for e in edges {
        let (a, b) = (pos[e.from], pos[e.to]);
        let (x1, y1, x2, y2) = (a.0 + BOX_W / 2.0, a.1 + BOX_H, b.0 + BOX_W / 2.0, b.1);
        let _ = writeln!(
            out,
            "<g class=\"edge\"><line x1=\"{x1}\" y1=\"{y1}\" x2=\"{x2}\" y2=\"{y2}\" stroke=\"#333\" stroke-width=\"2\" marker-end=\"url(#arrow)\"/><text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" fill=\"#444\">{}</text></g>",
            // Three quarters down the edge, near its own target: edges
            // leaving one node part there, so their labels do not collide.
            x1 + (x2 - x1) * 0.75 + 6.0,
            y1 + (y2 - y1) * 0.75,
            escape(&e.label)
        );
    }
    for (m, (x, y)) in members.iter().zip(&pos) {
        out.push_str(&node_box(m, *x, *y, BOX_W, BOX_H));
    }
    out.push_str("</svg>\n");
    out
}

fn node_box(m: &Member, x: f64, y: f64, w: f64, h: f64) -> String {
    let (state, tli) = match &m.status {
        Some(s) => (
            s["recovery"]["state"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| {
                    if s["role"] == "primary" {
                        "Primary".into()
                    } else {
                        "Starting".into()
                    }
                }),
            s["wal"]["timeline"]
                .as_u64()
                .or(s["timeline"].as_u64())
                .unwrap_or(0),
        ),
        None => ("client".to_string(), 0),
    };
    let fill = crate::states::recovery::StateKind::ALL
        .into_iter()
        .find(|k| k.to_string() == state)
        .map(crate::viz::swimlane::state_color)
        .unwrap_or(if m.status.is_some() {
            ("#264653", "#fff")
        } else {
            ("#eee", "#000")
        });
    let mut out = String::new();
    if let Some(p) = &m.page {
        let _ = write!(out, "<a href=\"{}\">", escape(p));
    }
    let _ = write!(
        out,
        "<g class=\"member\" data-node=\"{}\" data-state=\"{}\"><rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" rx=\"8\" fill=\"{}\" stroke=\"#000\"/><text x=\"{}\" y=\"{}\" fill=\"{}\" font-weight=\"bold\">{}</text><text x=\"{}\" y=\"{}\" fill=\"{}\">{}</text></g>",
        escape(&m.name),
        escape(&state),
        fill.0,
        x + 10.0,
        y + 24.0,
        fill.1,
        escape(&m.name),
        x + 10.0,
        y + 46.0,
        fill.1,
        escape(&if tli > 0 { format!("{state}, timeline {tli}") } else { state.clone() }),
    );
    if m.page.is_some() {
        out.push_str("</a>");
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_decoded_and_bounded() {
        assert_eq!(
            peers_of("x=1&peers=127.0.0.1%3A9101%2C127.0.0.1:9102"),
            ["127.0.0.1:9101", "127.0.0.1:9102"]
        );
        let many = format!("peers={}", vec!["h:1"; 40].join(","));
        assert_eq!(peers_of(&many).len(), MAX_PEERS);
    }

    /// A peer that trickles its answer a byte at a time is cut off at the
    /// deadline, not kept reading for as long as it keeps sending.
    #[test]
    fn a_trickling_peer_is_cut_off_at_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n{");
            for _ in 0..40 {
                if s.write_all(b" ").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let r = fetch_status_at(&addr, "/status", started + Duration::from_millis(500));
        assert_eq!(r.unwrap_err(), "timed out");
        assert!(started.elapsed() < Duration::from_millis(1500));
        peer.join().unwrap();
    }
}
