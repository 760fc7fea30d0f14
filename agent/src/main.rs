//! `ringvault`: see `ringvault --help`.

fn main() -> std::process::ExitCode {
    ringvault::cli::main()
}
