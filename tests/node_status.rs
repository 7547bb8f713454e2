//! Observability of a running pair: `walrep status`, the HTTP `/status`
//! (JSON) and `/metrics` (Prometheus) endpoints on `status_port`.

mod support;

use support::cluster::*;
use support::node::{init_datadir, walrep, TestNode};
use support::{free_port, http_get};

#[test]
fn status_command_and_http_endpoints_show_both_roles() {
    let tmp = tempfile::tempdir().unwrap();
    let pdir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", SEG_1MB]);
    let pport = free_port();
    let primary = TestNode::start(
        &pdir,
        &[&format!("status_port={pport}"), "log_connections=on"],
    );
    let sdir = basebackup(&primary, tmp.path(), "standby", "s1");
    let sport = free_port();
    let standby = TestNode::start(
        &sdir,
        &[
            &format!("status_port={sport}"),
            "wal_retrieve_retry_interval=200ms",
        ],
    );
    write_keys(&primary, "k", 200, 10);
    wait_state(&standby, "Streaming");
    wait_caught_up(&primary, &standby);

    let (code, body) = http_get(pport, "/status");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["role"], "primary");
    assert_eq!(v["standbys"][0]["application_name"], "s1");
    let (code, body) = http_get(sport, "/status");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["role"], "standby");
    assert_eq!(v["recovery"]["state"], "Streaming");
    assert_eq!(v["recovery"]["wal_source"], "stream");

    let (code, metrics) = http_get(pport, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("walrep_wal_records_total"), "{metrics}");
    assert!(metrics.contains("walrep_walsenders 1"), "{metrics}");
    let (_, metrics) = http_get(sport, "/metrics");
    assert!(
        metrics.contains("walrep_recovery_state_streaming 1"),
        "{metrics}"
    );
    assert_eq!(http_get(pport, "/nope").0, 404);

    // Log lines say which client, walsender and walreceiver they concern.
    let plog = std::fs::read_to_string(&primary.log).unwrap();
    assert!(
        plog.contains("client{id=") && plog.contains("connection received"),
        "no per-client span in the primary's log"
    );
    assert!(
        plog.contains("walsender{"),
        "no walsender span in the primary's log"
    );
    let slog = std::fs::read_to_string(&standby.log).unwrap();
    assert!(
        slog.contains("walreceiver{session="),
        "no walreceiver span in the standby's log:\n{slog}"
    );

    let (ok, out, err) = walrep(&["status", primary.datadir.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("role:      primary") && out.contains("standby:   s1 streaming async"),
        "{out}"
    );
    let (ok, out, err) = walrep(&["status", standby.datadir.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("role:      standby") && out.contains("recovery:  Streaming from stream"),
        "{out}"
    );
}
