//! The `walrep` binary: parse the command line, set up logging, call the library.

fn main() -> std::process::ExitCode {
    walrep::cli::main()
}
