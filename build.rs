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
//!
//! The same binary is linked as a position-dependent executable
//! (`-no-pie`, an `ET_EXEC` file at a fixed address). As a PIE the
//! loader applies ~18,600 relative relocations at every start and thereby
//! writes every page of `.data.rel.ro` (copy-on-write faults: ~190 page
//! faults per `walrep promote` instead of ~120); without PIE the linker
//! resolves them once and those pages are only read from the page cache
//! when touched. The objects stay position-independent (rustc's default,
//! and std's prebuilt ones are), which a fixed-address link accepts; only
//! the final link of the `walrep` binaries changes, not the tests' or a
//! library user's. rustc puts `-pie` on the link line and the user's link
//! arguments after it; the compiler driver takes the last of the two. The
//! cost: the binary's own code and data are no longer randomized by ASLR
//! (the heap, the stack, the shared libraries and thread stacks still
//! are). A static (`crt-static`) build is left as it is.

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
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
