//! [`Ctx`]: what every command runs with. The agent config is loaded, and
//! the repository opened, at most once and only when a command first asks,
//! so the commands that need neither (the `cluster` subcommands but
//! `status`, which work on the `cluster init` directory, and `quickstart`,
//! which has a config of its own) run without a config.

use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};

use tokio::sync::OnceCell;

use super::Cli;
use crate::repo::{self, LoadedConfig, Repo};

/// The parsed command line, with the agent config and the repository as
/// they are needed.
pub(super) struct Ctx {
    /// The parsed command line.
    pub(super) cli: Cli,
    /// Whether to draw progress bars: not with `--no-progress` or `--json`,
    /// nor when standard error is not a terminal.
    pub(super) progress: bool,
    /// The agent config, once loaded.
    loaded: OnceLock<LoadedConfig>,
    /// The repository, once opened.
    repo: OnceCell<Arc<Repo>>,
}

impl Ctx {
    /// A context for `cli` that has loaded and opened nothing yet.
    pub(super) fn new(cli: Cli) -> Self {
        let progress = !cli.no_progress && !cli.json && std::io::stderr().is_terminal();
        Self {
            cli,
            progress,
            loaded: OnceLock::new(),
            repo: OnceCell::new(),
        }
    }

    /// The agent config (`--config`, else `RINGVAULT_CONFIG`, else the
    /// user's or the quickstart's), loaded on the first call.
    ///
    /// # Errors
    /// As [`repo::load_config`]: none found, or it does not parse. A failed
    /// load is tried again on the next call.
    pub(super) fn config(&self) -> anyhow::Result<&LoadedConfig> {
        if let Some(loaded) = self.loaded.get() {
            return Ok(loaded);
        }
        let loaded = repo::load_config(self.cli.config.as_deref())?;
        Ok(self.loaded.get_or_init(|| loaded))
    }

    /// The repository the config names, opened with the password (the
    /// flags', else the environment's or config's, else a prompt) on the
    /// first call.
    ///
    /// # Errors
    /// As [`Ctx::config`] and [`repo::open`]: the cluster unreachable, a
    /// wrong password, a refused certificate.
    pub(super) async fn repo(&self) -> anyhow::Result<Arc<Repo>> {
        let r = self
            .repo
            .get_or_try_init(|| async {
                let loaded = self.config()?;
                repo::open(&loaded.config, &self.cli.password_flags()).await
            })
            .await?;
        Ok(Arc::clone(r))
    }
}
