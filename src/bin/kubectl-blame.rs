//! `kubectl blame`: the kubectl plugin (install as `kubectl-blame` on the PATH). Thin: parse
//! arguments, run [`histor::cli::run`], print the result or one error line and a hint.
#![forbid(unsafe_code)]

use clap::Parser;
use histor::cli::{BlameArgs, report, run};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    // rustls needs a process-wide crypto provider before any TLS connection; failure means one
    // is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = BlameArgs::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(out) => {
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{}", report(&e));
            ExitCode::FAILURE
        }
    }
}
