//! The repository password: where it comes from, in restic's order.
//!
//! 1. A command-line flag: `--password-file FILE` or `--password-command
//!    CMD` (mutually exclusive);
//! 2. the environment: `RINGVAULT_PASSWORD_FILE` or
//!    `RINGVAULT_PASSWORD_COMMAND` (mutually exclusive), then
//!    `RINGVAULT_PASSWORD`;
//! 3. the config's `password-file`;
//! 4. a prompt on the terminal.
//!
//! A file gives its first line (and must be mode 0600); a command runs
//! through `sh -c` and gives the first line of its output, without the
//! line end; a command that fails is an error naming its exit status, not
//! an empty password. An environment variable set to the empty string
//! counts as unset, as in restic. The new password of `key add` and `key
//! passwd` comes from `--new-password-file`, then `RINGVAULT_NEW_PASSWORD`,
//! then a prompt. Making a key with an empty password is refused
//! ([`EmptyPassword`]).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ringvault_common::config::AgentConfig;
use zeroize::Zeroizing;

/// Where the command line points at the repository password
/// (`--password-file`, `--password-command`). Default: nowhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PasswordFlags {
    /// Read the password from this file (mode 0600; its first line).
    pub file: Option<PathBuf>,
    /// Run this through `sh -c`; the first line of its output is the
    /// password.
    pub command: Option<String>,
}

impl PasswordFlags {
    /// `--password-file path`.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            file: Some(path.into()),
            command: None,
        }
    }
}

/// Where a password came from, for messages (never the password itself,
/// nor a command's text, which may hold one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    /// `--password-file`.
    FileFlag(PathBuf),
    /// `--password-command`.
    CommandFlag(String),
    /// `RINGVAULT_PASSWORD_FILE`.
    FileEnv(PathBuf),
    /// `RINGVAULT_PASSWORD_COMMAND`.
    CommandEnv(String),
    /// `RINGVAULT_PASSWORD`.
    Env,
    /// The config's `password-file`.
    ConfigFile(PathBuf),
    /// Typed at a prompt.
    Prompt,
}

impl std::fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FileFlag(p) => write!(f, "--password-file {}", p.display()),
            Self::CommandFlag(_) => f.write_str("--password-command"),
            Self::FileEnv(p) => write!(f, "RINGVAULT_PASSWORD_FILE ({})", p.display()),
            Self::CommandEnv(_) => f.write_str("RINGVAULT_PASSWORD_COMMAND"),
            Self::Env => f.write_str("RINGVAULT_PASSWORD"),
            Self::ConfigFile(p) => write!(f, "the config's password-file {}", p.display()),
            Self::Prompt => f.write_str("the prompt"),
        }
    }
}

/// An empty password where a key is made (`init`, `key add`, `key
/// passwd`), as restic refuses it.
#[derive(Debug, thiserror::Error)]
#[error("an empty password is not allowed")]
pub struct EmptyPassword;

/// The password the user gave outright, in restic's order: a flag
/// (`--password-file` or `--password-command`), else
/// `RINGVAULT_PASSWORD_FILE` or `RINGVAULT_PASSWORD_COMMAND`, else
/// `RINGVAULT_PASSWORD`. An environment variable set to the empty string
/// counts as unset, as in restic. `None` when none is given (the config's
/// `password-file` and the prompt come next: [`password`]).
///
/// # Errors
/// Both sources of one level given (they are mutually exclusive, as in
/// restic), an unreadable or too open file, or a command that fails or
/// prints nothing.
pub fn given_password(
    flags: &PasswordFlags,
) -> anyhow::Result<Option<(Zeroizing<String>, PasswordSource)>> {
    match (&flags.file, &flags.command) {
        (Some(_), Some(_)) => {
            bail!("--password-file and --password-command are mutually exclusive")
        }
        (Some(f), None) => {
            let p = read_password_file(f)?;
            return Ok(Some((p, PasswordSource::FileFlag(f.clone()))));
        }
        (None, Some(c)) => {
            let p = run_password_command(c, "--password-command")?;
            return Ok(Some((p, PasswordSource::CommandFlag(c.clone()))));
        }
        (None, None) => {}
    }
    let file = env_value("RINGVAULT_PASSWORD_FILE").map(|f| PathBuf::from(&*f));
    let command = env_value("RINGVAULT_PASSWORD_COMMAND");
    match (file, command) {
        (Some(_), Some(_)) => {
            bail!("RINGVAULT_PASSWORD_FILE and RINGVAULT_PASSWORD_COMMAND are mutually exclusive")
        }
        (Some(f), None) => {
            let p = read_password_file(&f)?;
            return Ok(Some((p, PasswordSource::FileEnv(f))));
        }
        (None, Some(c)) => {
            let p = run_password_command(&c, "RINGVAULT_PASSWORD_COMMAND")?;
            return Ok(Some((p, PasswordSource::CommandEnv(c.to_string()))));
        }
        (None, None) => {}
    }
    Ok(env_value("RINGVAULT_PASSWORD").map(|p| (p, PasswordSource::Env)))
}

/// The repository password: [`given_password`], else the config's
/// `password-file`, else a prompt on the terminal (typed twice when
/// `confirm`).
///
/// # Errors
/// As [`given_password`]; no source and no terminal to prompt on.
pub fn password(
    config: &AgentConfig,
    flags: &PasswordFlags,
    confirm: bool,
) -> anyhow::Result<Zeroizing<String>> {
    Ok(password_and_source(config, flags, confirm)?.0)
}

/// [`password`], and where it came from.
///
/// # Errors
/// As [`password`].
pub fn password_and_source(
    config: &AgentConfig,
    flags: &PasswordFlags,
    confirm: bool,
) -> anyhow::Result<(Zeroizing<String>, PasswordSource)> {
    if let Some(given) = given_password(flags)? {
        return Ok(given);
    }
    if let Some(f) = &config.password_file {
        let p = read_password_file(f)?;
        return Ok((p, PasswordSource::ConfigFile(f.clone())));
    }
    if !std::io::stdin().is_terminal() {
        if env_is_empty("RINGVAULT_PASSWORD") {
            return Err(anyhow::Error::new(EmptyPassword).context("RINGVAULT_PASSWORD is empty"));
        }
        bail!(
            "no password: pass --password-file or --password-command, set RINGVAULT_PASSWORD_FILE, RINGVAULT_PASSWORD_COMMAND or RINGVAULT_PASSWORD, set password-file in the config, or run on a terminal"
        );
    }
    Ok((
        prompt("repository password: ", confirm)?,
        PasswordSource::Prompt,
    ))
}

/// The new password of `key add` and `key passwd`: `--new-password-file`
/// (`file`), else `RINGVAULT_NEW_PASSWORD` (empty counts as unset), else a
/// prompt typed twice.
///
/// # Errors
/// An unreadable file; no source and no terminal.
pub fn new_password(file: Option<&Path>) -> anyhow::Result<Zeroizing<String>> {
    if let Some(f) = file {
        return read_password_file(f).context("reading the new password file");
    }
    if let Some(p) = env_value("RINGVAULT_NEW_PASSWORD") {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        if env_is_empty("RINGVAULT_NEW_PASSWORD") {
            return Err(
                anyhow::Error::new(EmptyPassword).context("RINGVAULT_NEW_PASSWORD is empty")
            );
        }
        bail!(
            "no new password: pass --new-password-file, set RINGVAULT_NEW_PASSWORD, or run on a terminal"
        );
    }
    prompt("new password: ", true)
}

/// A non-empty environment variable's value.
fn env_value(name: &str) -> Option<Zeroizing<String>> {
    std::env::var(name)
        .ok()
        .map(Zeroizing::new)
        .filter(|v| !v.is_empty())
}

/// Whether `name` is set to the empty string.
fn env_is_empty(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v.is_empty())
}

/// The first line of a private (mode 0600) password file.
fn read_password_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        ringvault_net::files::read_private(path).context("reading the password file")?,
    );
    Ok(Zeroizing::new(text.lines().next().unwrap_or("").to_owned()))
}

/// Runs `command` through `sh -c` (its stdin and stderr are this
/// process's, so it may prompt) and returns the first line of its output,
/// without the line end. `source` names the setting in errors; the
/// command's text is left out of them, since it may hold the password.
fn run_password_command(command: &str, source: &str) -> anyhow::Result<Zeroizing<String>> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {source}"))?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        bail!("{source} failed: {}", out.status);
    }
    if stdout.is_empty() {
        bail!("{source} printed no password");
    }
    let text = std::str::from_utf8(&stdout)
        .map_err(|_| anyhow::anyhow!("{source} printed something that is not UTF-8 text"))?;
    let line = text.split('\n').next().unwrap_or("");
    Ok(Zeroizing::new(
        line.strip_suffix('\r').unwrap_or(line).to_owned(),
    ))
}

/// Asks on the terminal, twice when `confirm`.
fn prompt(label: &str, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    let p = Zeroizing::new(rpassword::prompt_password(label)?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("enter it again: ")?);
        if *again != *p {
            bail!("the passwords differ");
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_gives_its_first_line_without_the_line_end() {
        let run = |c: &str| run_password_command(c, "--password-command").map(|p| p.to_string());
        assert_eq!(run("printf 'pw one\\ntwo\\n'").unwrap(), "pw one");
        assert_eq!(run("printf 'crlf\\r\\n'").unwrap(), "crlf");
        assert_eq!(run("printf 'no newline'").unwrap(), "no newline");
        assert_eq!(
            run("printf '  spaces kept  \\n'").unwrap(),
            "  spaces kept  "
        );
        assert_eq!(
            run("printf '\\n'").unwrap(),
            "",
            "an empty line is an empty password"
        );
        let failed = run("exit 3").unwrap_err().to_string();
        assert_eq!(failed, "--password-command failed: exit status: 3");
        let empty = run("true").unwrap_err().to_string();
        assert_eq!(empty, "--password-command printed no password");
        assert!(run("printf '\\377\\n'").is_err(), "not UTF-8");
    }

    #[test]
    fn sources_never_show_a_command() {
        let shown = PasswordSource::CommandFlag("echo hunter2".into()).to_string();
        assert_eq!(shown, "--password-command");
        assert!(
            !PasswordSource::CommandEnv("echo hunter2".into())
                .to_string()
                .contains("hunter2")
        );
        assert_eq!(
            PasswordSource::FileFlag("/x/pw".into()).to_string(),
            "--password-file /x/pw"
        );
    }

    #[test]
    fn a_password_file_gives_its_first_line() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "first\r\nsecond\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(&*read_password_file(&path).unwrap(), "first");
        let flags = PasswordFlags::file(&path);
        let (p, source) = given_password(&flags).unwrap().unwrap();
        assert_eq!(p.as_str(), "first");
        assert_eq!(source, PasswordSource::FileFlag(path.clone()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_password_file(&path).is_err(), "a file others may read");
        let both = PasswordFlags {
            file: Some(path),
            command: Some("true".into()),
        };
        assert!(given_password(&both).is_err());
    }
}
