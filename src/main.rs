//! The `histor` binary: parse arguments, set up logging, run the chosen subcommand.
use clap::Parser;
use std::process::ExitCode;

// Each review allocates and frees a few thousand small JSON nodes; glibc's and musl's allocators
// spent a third of the capture path's CPU on that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // rustls needs one process-wide crypto provider before any TLS is set up.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = histor::cmd::Cli::parse();
    histor::telemetry::init(cli.log_format, cli.log_level());
    match histor::cmd::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Errors can name objects and users from the store.
            eprintln!(
                "histor: {}",
                histor::render::escape_controls(&error.to_string())
            );
            ExitCode::FAILURE
        }
    }
}
