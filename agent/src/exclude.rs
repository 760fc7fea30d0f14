//! What a backup skips: gitignore-style patterns from the config (relative
//! to each backed-up path) and from `.ringvaultignore` files (relative to
//! their directory, for it and below; deeper files win, `!` re-includes,
//! as in git), cache directories (`CACHEDIR.TAG`), files over a size, other
//! file systems, and always the agent's own state and chunk-server data
//! directories. Matching uses the `ignore` crate (ripgrep's).

use std::path::{Path, PathBuf};

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ringvault_common::config::AgentConfig;

/// The per-directory pattern file.
pub const IGNORE_FILE: &str = ".ringvaultignore";
/// The Cache Directory Tagging Specification's tag file and signature
/// (<https://bford.info/cachedir/>).
const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Errors in exclusion patterns.
#[derive(Debug, thiserror::Error)]
pub enum ExcludeError {
    /// A pattern in the config or an ignore file does not parse.
    #[error("bad exclude pattern in {source_name}: {error}")]
    Pattern {
        /// The config or the ignore file.
        source_name: String,
        /// What `ignore` said.
        error: ignore::Error,
    },
}

/// The rules of one backup, and the ignore files of the directories being
/// walked.
pub struct Excludes {
    patterns: Vec<String>,
    caches: bool,
    larger_than: u64,
    one_file_system: bool,
    always: Vec<PathBuf>,
    /// Matchers from the config (for the current root) and from the ignore
    /// files of the directories being walked, outermost first.
    stack: Vec<Gitignore>,
    /// The current root's device, for `one-file-system`.
    device: Option<u64>,
}

impl Excludes {
    /// The config's rules; `always` are paths skipped whatever the rules
    /// (the agent's state directory).
    pub fn new(config: &AgentConfig, always: Vec<PathBuf>) -> Self {
        Self {
            patterns: config.exclude.clone(),
            caches: config.exclude_caches,
            larger_than: config.exclude_larger_than,
            one_file_system: config.one_file_system,
            always,
            stack: Vec::new(),
            device: None,
        }
    }

    /// Starts a backed-up path (`root`, on `device`): the config's
    /// patterns apply relative to it.
    ///
    /// # Errors
    /// [`ExcludeError`] for a pattern that does not parse.
    pub fn enter_root(&mut self, root: &Path, device: u64) -> Result<(), ExcludeError> {
        self.stack.clear();
        self.device = Some(device);
        let mut b = GitignoreBuilder::new(root);
        for p in &self.patterns {
            b.add_line(None, p).map_err(|error| ExcludeError::Pattern {
                source_name: "the config's `exclude`".into(),
                error,
            })?;
        }
        self.stack.push(build(b, "the config's `exclude`")?);
        Ok(())
    }

    /// Enters directory `dir`: reads its ignore file, if any. Returns
    /// whether one was pushed (pass it to [`Excludes::leave_dir`]).
    ///
    /// # Errors
    /// [`ExcludeError`] for a pattern that does not parse.
    pub fn enter_dir(&mut self, dir: &Path) -> Result<bool, ExcludeError> {
        let file = dir.join(IGNORE_FILE);
        if !file.is_file() {
            return Ok(false);
        }
        let mut b = GitignoreBuilder::new(dir);
        if let Some(error) = b.add(&file) {
            return Err(ExcludeError::Pattern {
                source_name: file.display().to_string(),
                error,
            });
        }
        self.stack.push(build(b, &file.display().to_string())?);
        Ok(true)
    }

    /// Leaves a directory entered with [`Excludes::enter_dir`].
    pub fn leave_dir(&mut self, pushed: bool) {
        if pushed {
            self.stack.pop();
        }
    }

    /// Whether to skip `path`, whose metadata is `meta`.
    pub fn skips(&self, path: &Path, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        if self.always.iter().any(|a| a == path) {
            return true;
        }
        let is_dir = meta.is_dir();
        for gi in self.stack.iter().rev() {
            match gi.matched(path, is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => break,
                Match::None => {}
            }
        }
        if is_dir {
            if self.one_file_system && self.device.is_some_and(|d| d != meta.dev()) {
                return true;
            }
            if path.join(ringvault_common::DATA_DIR_TAG).is_file() {
                return true;
            }
            if self.caches && is_cache_dir(path) {
                return true;
            }
        } else if meta.is_file() && self.larger_than > 0 && meta.len() > self.larger_than {
            return true;
        }
        false
    }
}

fn build(b: GitignoreBuilder, source_name: &str) -> Result<Gitignore, ExcludeError> {
    b.build().map_err(|error| ExcludeError::Pattern {
        source_name: source_name.into(),
        error,
    })
}

/// Whether `dir` holds a valid `CACHEDIR.TAG` (it starts with the
/// signature).
fn is_cache_dir(dir: &Path) -> bool {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(dir.join(CACHEDIR_TAG)) else {
        return false;
    };
    let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
    f.take(head.len() as u64).read_exact(&mut head).is_ok() && head == CACHEDIR_SIGNATURE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(p: &Path) -> std::fs::Metadata {
        std::fs::symlink_metadata(p).unwrap()
    }

    #[test]
    fn config_patterns_ignore_files_and_tags_decide_what_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for d in [
            "a/node_modules",
            "a/keep",
            "cache",
            "build",
            "sub/build",
            "data",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in ["x.tmp", "a/y.tmp", "a/keep/important.tmp", "small.bin"] {
            std::fs::write(root.join(f), b"0123456789").unwrap();
        }
        std::fs::write(root.join("big.bin"), [0u8; 100]).unwrap();
        std::fs::write(root.join("a").join(IGNORE_FILE), "*.tmp\n!important.tmp\n").unwrap();
        std::fs::write(root.join("cache/CACHEDIR.TAG"), CACHEDIR_SIGNATURE).unwrap();
        std::fs::write(root.join("data").join(ringvault_common::DATA_DIR_TAG), "").unwrap();
        let config = AgentConfig {
            exclude: vec!["node_modules/".into(), "/build".into()],
            exclude_caches: true,
            exclude_larger_than: 50,
            ..AgentConfig::default()
        };
        let state = root.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let mut ex = Excludes::new(&config, vec![state.clone()]);
        ex.enter_root(&root, std::os::unix::fs::MetadataExt::dev(&meta(&root)))
            .unwrap();
        let skips = |ex: &Excludes, rel: &str| ex.skips(&root.join(rel), &meta(&root.join(rel)));
        assert!(skips(&ex, "build"), "anchored pattern");
        assert!(!skips(&ex, "sub/build"), "anchored to the root only");
        assert!(skips(&ex, "cache"), "CACHEDIR.TAG");
        assert!(skips(&ex, "data"), "chunk-server data");
        assert!(skips(&ex, "state"), "the agent's state");
        assert!(skips(&ex, "big.bin"), "100 bytes > 50");
        assert!(!skips(&ex, "small.bin"));
        assert!(
            !skips(&ex, "x.tmp"),
            "the ignore file is a/'s, not the root's"
        );
        let pushed = ex.enter_dir(&root.join("a")).unwrap();
        assert!(pushed);
        assert!(skips(&ex, "a/node_modules"), "unanchored directory pattern");
        assert!(skips(&ex, "a/y.tmp"));
        assert!(!skips(&ex, "a/keep/important.tmp"), "re-included with !");
        ex.leave_dir(pushed);
        assert!(!skips(&ex, "a/y.tmp"), "left a/");
    }

    #[test]
    fn one_file_system_skips_directories_on_another_device() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let config = AgentConfig {
            one_file_system: true,
            ..AgentConfig::default()
        };
        let dev = std::os::unix::fs::MetadataExt::dev(&meta(dir.path()));
        let mut ex = Excludes::new(&config, vec![]);
        let sub = dir.path().join("sub");
        ex.enter_root(dir.path(), dev).unwrap();
        assert!(!ex.skips(&sub, &meta(&sub)));
        // As if the root were on another device than `sub`.
        ex.enter_root(dir.path(), dev.wrapping_add(1)).unwrap();
        assert!(ex.skips(&sub, &meta(&sub)));
        let file = dir.path().join("file");
        assert!(!ex.skips(&file, &meta(&file)), "files are not mount points");
    }
}
