//! Link the unwinder statically into the `walrep` binary on Linux with
//! glibc: `libgcc_eh.a` instead of `libgcc_s.so.1`.
//!
//! Every `walrep` process (`walrep promote` on the path of a promotion
//! above all) otherwise pays for loading one more shared library at
//! start-up, and `libgcc_s`'s constructor probes the CPU with `cpuid`,
//! which traps to the hypervisor on a virtual machine. Only the unwinder
//! is needed from it (panics, backtraces), and `libgcc_eh.a` is the same
//! code, installed with GCC, which links Rust programs here anyway.
//!
//! How: named here as a library of this package, `-lgcc_eh` comes on the
//! link line right after this package's archive and before the standard
//! library's, whose `unwind` crate asks for `-lgcc_s` near the end. This
//! package's code calls `_Unwind_Resume` (every landing pad does), which
//! pulls the archive's unwinder in; every `_Unwind_*` symbol std needs is
//! then already defined, and `--as-needed` (rustc's default) drops
//! `libgcc_s` as unused. Were that ever not so, the link would still
//! succeed, with `libgcc_s` as before. Only with the `cli` feature (the
//! binary's), so a library user's link is left alone.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let static_crt = std::env::var("CARGO_CFG_TARGET_FEATURE")
        .unwrap_or_default()
        .split(',')
        .any(|f| f == "crt-static");
    if std::env::var_os("CARGO_FEATURE_CLI").is_some()
        && os == "linux"
        && env == "gnu"
        && !static_crt
    {
        println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
    }
}
