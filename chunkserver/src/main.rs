//! `ringvault-chunkserver --config FILE`: runs one chunk server.
//! `ringvault-chunkserver --config FILE --rebuild-index`: rebuilds its index
//! from the segment files, then exits.

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
    /// Rebuild the store's index from its segment files (moving a damaged
    /// index aside), then exit. Run it with the server stopped, when the
    /// server refuses to start on a damaged index. Snapshot records and keys
    /// come back from the other servers once it runs again.
    #[arg(long)]
    rebuild_index: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    ringvault_net::init_logging("info");
    if args.rebuild_index {
        return match ringvault_chunkserver::rebuild_index(&args.config) {
            Ok(r) => {
                println!(
                    "rebuilt the index from {} segment files: {} blobs, {} bytes, {} records skipped",
                    r.segments, r.blobs, r.bytes, r.skipped
                );
                if let Some(old) = r.moved_aside {
                    println!("the old index is at {}", old.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ringvault_chunkserver::serve(
        &args.config,
        ringvault_net::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
