//! The `walrep` binary: parse the command line, set up logging, call the
//! library. Everything that is product rather than library — the command
//! line, `walrep bench`, `walrep demo`, logging set-up — lives in [`app`].

mod app;

fn main() -> std::process::ExitCode {
    app::cli::main()
}
