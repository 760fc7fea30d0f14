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
    ringvault_chunkserver::init_logging("info");
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
