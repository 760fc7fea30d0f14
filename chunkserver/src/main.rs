//! `ringvault-chunkserver --config FILE`: runs one chunk server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Runs one ringvault chunk server until SIGTERM or Ctrl-C.
#[derive(Parser)]
#[command(name = "ringvault-chunkserver", version, about)]
struct Args {
    /// The server's config file (see config/chunkserver.toml).
    #[arg(long, short)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGVAULT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ringvault_chunkserver::serve(
        &args.config,
        ringvault_chunkserver::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
