//! `ringvault service install`: runs the agent as a user service, with
//! systemd on Linux (`systemd/ringvault-agent.service`) and launchd on
//! macOS (`systemd/com.ringvault.agent.plist`). The unit is the one in the
//! source tree with this machine's binary, config and state paths filled in.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

const SYSTEMD_UNIT: &str = include_str!("../../systemd/ringvault-agent.service");
const LAUNCHD_PLIST: &str = include_str!("../../systemd/com.ringvault.agent.plist");
/// The unit's file name under systemd.
pub const UNIT_NAME: &str = "ringvault-agent.service";
/// The job's label and file name under launchd.
pub const LAUNCHD_LABEL: &str = "com.ringvault.agent";

/// Where and how to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The `ringvault` binary the service runs.
    pub exe: PathBuf,
    /// The agent config it runs with (absolute).
    pub config: PathBuf,
    /// The agent's state directory, the only place it writes.
    pub state_dir: PathBuf,
    /// Directory for the unit file [default: the user's systemd or
    /// LaunchAgents directory].
    pub dir: Option<PathBuf>,
    /// Enable and start it after writing it.
    pub start: bool,
}

/// The systemd unit for `opts`.
pub fn systemd_unit(opts: &InstallOptions) -> String {
    SYSTEMD_UNIT
        .lines()
        .map(|line| {
            if line.starts_with("ExecStart=") {
                format!(
                    "ExecStart={} --config {} agent",
                    systemd_quote(&opts.exe),
                    systemd_quote(&opts.config)
                )
            } else if line.starts_with("ReadWritePaths=") {
                format!("ReadWritePaths={}", systemd_quote(&opts.state_dir))
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The launchd job for `opts`.
pub fn launchd_plist(opts: &InstallOptions) -> String {
    let xml = |p: &Path| {
        p.display()
            .to_string()
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    LAUNCHD_PLIST
        .replace(
            "<string>/usr/local/bin/ringvault</string>",
            &format!("<string>{}</string>", xml(&opts.exe)),
        )
        .replace(
            "<string>~/Library/Application Support/ringvault/agent.toml</string>",
            &format!("<string>{}</string>", xml(&opts.config)),
        )
}

/// systemd's quoting for a path in a unit: double quotes, with `\`, `"`
/// and `%` escaped (systemd.syntax(7), systemd.unit(5) "Specifiers").
fn systemd_quote(p: &Path) -> String {
    let s = p.display().to_string();
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('%', "%%")
    )
}

/// Writes the unit and, with `start`, enables and starts it. Returns what
/// was done, a line per step.
///
/// # Errors
/// When the unit cannot be written or a `systemctl`/`launchctl` step fails
/// (the steps done so far are in the error).
pub fn install(opts: &InstallOptions) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let (path, text, commands): (PathBuf, String, Vec<Vec<String>>) = if cfg!(target_os = "macos") {
        let dir = match &opts.dir {
            Some(d) => d.clone(),
            None => home()?.join("Library/LaunchAgents"),
        };
        let path = dir.join(format!("{LAUNCHD_LABEL}.plist"));
        let load = vec![
            "launchctl".into(),
            "load".into(),
            "-w".into(),
            path.display().to_string(),
        ];
        (path, launchd_plist(opts), vec![load])
    } else {
        let dir = match &opts.dir {
            Some(d) => d.clone(),
            None => home()?.join(".config/systemd/user"),
        };
        let user = |args: &[&str]| {
            std::iter::once("systemctl".to_owned())
                .chain(std::iter::once("--user".to_owned()))
                .chain(args.iter().map(|a| (*a).to_owned()))
                .collect::<Vec<_>>()
        };
        let commands = vec![
            user(&["daemon-reload"]),
            user(&["enable", "--now", UNIT_NAME]),
        ];
        (dir.join(UNIT_NAME), systemd_unit(opts), commands)
    };
    // The unit makes everything else read-only: the state directory must
    // exist before it starts.
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("creating {}", opts.state_dir.display()))?;
    let dir = path.parent().context("unit path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    done.push(format!("wrote {}", path.display()));
    if !opts.start {
        return Ok(done);
    }
    for cmd in commands {
        let line = cmd.join(" ");
        let status = Command::new(&cmd[0])
            .args(&cmd[1..])
            .status()
            .with_context(|| format!("{}\nrunning {line}", done.join("\n")))?;
        if !status.success() {
            bail!("{}\n{line} failed ({status})", done.join("\n"));
        }
        done.push(format!("ran {line}"));
    }
    Ok(done)
}

fn home() -> anyhow::Result<PathBuf> {
    directories::BaseDirs::new()
        .map(|d| d.home_dir().to_owned())
        .context("no home directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> InstallOptions {
        InstallOptions {
            exe: PathBuf::from("/opt/rv/bin/ringvault"),
            config: PathBuf::from("/home/me/my configs/agent.toml"),
            state_dir: PathBuf::from("/home/me/.local/share/ringvault/state/default"),
            dir: None,
            start: false,
        }
    }

    #[test]
    fn the_systemd_unit_names_this_binary_config_and_state() {
        let unit = systemd_unit(&opts());
        assert!(unit.contains(
            "ExecStart=\"/opt/rv/bin/ringvault\" --config \"/home/me/my configs/agent.toml\" agent\n"
        ));
        assert!(
            unit.contains("ReadWritePaths=\"/home/me/.local/share/ringvault/state/default\"\n")
        );
        for line in [
            "Type=notify",
            "WatchdogSec=",
            "IOSchedulingClass=idle",
            "ProtectSystem=strict",
        ] {
            assert!(unit.contains(line), "{line}");
        }
    }

    #[test]
    fn the_launchd_job_names_this_binary_and_config() {
        let plist = launchd_plist(&opts());
        assert!(plist.contains("<string>/opt/rv/bin/ringvault</string>"));
        assert!(plist.contains("<string>/home/me/my configs/agent.toml</string>"));
        assert!(!plist.contains("/usr/local/bin"));
    }

    #[test]
    fn percent_and_quotes_are_escaped() {
        assert_eq!(systemd_quote(Path::new("/a b/%h\"x")), "\"/a b/%%h\\\"x\"");
    }
}
