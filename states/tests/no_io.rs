//! walrep-states stays IO-free: besides states/clippy.toml (which forbids
//! the std APIs for clocks, files, sockets, threads, processes, the
//! environment and printing), its only dependencies are serde and statig —
//! no randomness, no IO crates can come in unnoticed.

/// The crate's manifest, read at compile time.
const MANIFEST: &str = include_str!("../Cargo.toml");

#[test]
fn only_serde_and_statig_are_dependencies() {
    let deps = MANIFEST
        .split("[dependencies]")
        .nth(1)
        .expect("a [dependencies] section")
        .split("\n[")
        .next()
        .unwrap_or_default();
    let names: Vec<&str> = deps
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split('=').next())
        .map(str::trim)
        .collect();
    assert_eq!(
        names,
        ["serde", "statig"],
        "new dependency in walrep-states: {names:?}"
    );
}

#[test]
fn clippy_config_forbids_the_io_apis() {
    let config = include_str!("../clippy.toml");
    for api in [
        "std::time::Instant::now",
        "std::time::SystemTime",
        "std::fs::File",
        "std::net::TcpStream",
        "std::thread::spawn",
        "std::thread::sleep",
        "std::process::Command",
        "std::env::var",
        "std::println",
        "std::collections::HashMap",
    ] {
        assert!(
            config.contains(&format!("\"{api}\"")),
            "{api} is not forbidden"
        );
    }
}
