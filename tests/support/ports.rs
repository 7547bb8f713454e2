//! Loopback ports the tests reserve for their nodes: the library's
//! [`walrep::ports`], shared with `walrep demo` and `walrep bench`, so
//! tests, demos and benches running side by side never pick the same one.

/// A loopback port reserved for this test process (see [`walrep::ports`]).
pub fn reserve_port() -> u16 {
    walrep::ports::reserve().expect("a loopback port")
}
