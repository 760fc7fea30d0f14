//! Which entries a restore takes: its include and exclude patterns
//! (gitignore-style, matched against paths inside the snapshot), and which
//! directories an anchored include pattern can reach below. See the
//! parent module's notes on choosing entries.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::{PatternError, RestoreOptions};

/// The entries a restore takes: its include and exclude patterns.
pub(super) struct Selection {
    pub(super) include: Patterns,
    exclude: Patterns,
}

impl Selection {
    pub(super) fn new(options: &RestoreOptions) -> Result<Self, PatternError> {
        Ok(Self {
            include: Patterns::new(
                [
                    ("include", &options.include, false),
                    ("iinclude", &options.iinclude, true),
                ],
                true,
            )?,
            exclude: Patterns::new(
                [
                    ("exclude", &options.exclude, false),
                    ("iexclude", &options.iexclude, true),
                ],
                false,
            )?,
        })
    }

    /// Whether the entry at `path` in the snapshot is excluded (a directory
    /// whole).
    pub(super) fn excluded(&self, path: &[u8], is_dir: bool) -> bool {
        self.exclude.decision(path, is_dir) == Some(true)
    }
}

/// Gitignore-style patterns, matched against paths inside the snapshot.
pub(super) struct Patterns {
    /// Case-sensitive and case-insensitive matchers (empty ones left out).
    matchers: Vec<Gitignore>,
    /// What each pattern can reach, for [`Patterns::may_hold`].
    scopes: Vec<Scope>,
}

impl Patterns {
    /// Builds the matchers of `lists` (flag, patterns, case-insensitive);
    /// with `scopes`, also what each pattern can reach.
    fn new(
        lists: [(&'static str, &[String], bool); 2],
        scopes: bool,
    ) -> Result<Self, PatternError> {
        let mut out = Patterns {
            matchers: Vec::new(),
            scopes: Vec::new(),
        };
        for (flag, patterns, folded) in lists {
            if patterns.is_empty() {
                continue;
            }
            // Relative to ".": the ignore crate strips nothing from the
            // relative paths matched.
            let mut b = GitignoreBuilder::new(".");
            b.case_insensitive(folded)
                .map_err(|error| PatternError { flag, error })?;
            for p in patterns {
                b.add_line(None, p)
                    .map_err(|error| PatternError { flag, error })?;
                if scopes {
                    out.scopes.push(Scope::of(p, folded));
                }
            }
            out.matchers
                .push(b.build().map_err(|error| PatternError { flag, error })?);
        }
        Ok(out)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.matchers.is_empty()
    }

    /// What the patterns say about `path` itself: `Some(true)` matched,
    /// `Some(false)` taken back with `!`, `None` no pattern matches it.
    pub(super) fn decision(&self, path: &[u8], is_dir: bool) -> Option<bool> {
        let path = Path::new(OsStr::from_bytes(path));
        let mut out = None;
        for m in &self.matchers {
            match m.matched(path, is_dir) {
                Match::Ignore(_) => return Some(true),
                Match::Whitelist(_) => out = Some(false),
                Match::None => {}
            }
        }
        out
    }

    /// Whether something below directory `path` (not itself matched) may
    /// match: `false` only when every pattern is anchored and its leading
    /// components rule `path` out.
    pub(super) fn may_hold(&self, path: &[u8]) -> bool {
        let names: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        self.scopes.iter().any(|s| s.may_hold(&names))
    }
}

/// What one include pattern can match, as far as choosing which
/// directories to read goes.
enum Scope {
    /// Nothing (a comment or a blank line).
    Nothing,
    /// Paths at any depth: unanchored patterns, negations, and anything
    /// this does not parse.
    Anywhere,
    /// An anchored pattern's components, from the snapshot's root.
    Under(Vec<Component>),
}

/// One component of an anchored pattern.
enum Component {
    /// `**`: any number of directories.
    AnyDepth,
    /// A glob for one name.
    Name(globset::GlobMatcher),
}

impl Scope {
    /// Parses `pattern` as the ignore crate's gitignore builder does.
    fn of(pattern: &str, folded: bool) -> Scope {
        if pattern.starts_with('#') {
            return Scope::Nothing;
        }
        let mut line = if pattern.ends_with("\\ ") {
            pattern
        } else {
            pattern.trim_end()
        };
        if line.is_empty() {
            return Scope::Nothing;
        }
        let mut anchored = false;
        if line.starts_with("\\!") || line.starts_with("\\#") {
            line = &line[1..];
        } else {
            if line.starts_with('!') {
                return Scope::Anywhere;
            }
            if let Some(rest) = line.strip_prefix('/') {
                line = rest;
                anchored = true;
            }
        }
        if let Some(rest) = line.strip_suffix('/') {
            line = rest.strip_suffix('\\').unwrap_or(rest);
        }
        if !anchored && !line.contains('/') {
            return Scope::Anywhere;
        }
        let mut components = Vec::new();
        for part in line.split('/') {
            if part == "**" {
                components.push(Component::AnyDepth);
                continue;
            }
            let glob = globset::GlobBuilder::new(part)
                .literal_separator(true)
                .case_insensitive(folded)
                .backslash_escape(true)
                .build();
            match glob {
                Ok(g) if !part.is_empty() => components.push(Component::Name(g.compile_matcher())),
                _ => return Scope::Anywhere,
            }
        }
        Scope::Under(components)
    }

    /// Whether the pattern may match something below the directory whose
    /// path inside the snapshot has components `names`, when it does not
    /// match the directory or one above it.
    fn may_hold(&self, names: &[&[u8]]) -> bool {
        let components = match self {
            Scope::Nothing => return false,
            Scope::Anywhere => return true,
            Scope::Under(c) => c,
        };
        for (i, name) in names.iter().enumerate() {
            match components.get(i) {
                // As deep as the pattern: it could only match here or above.
                None => return false,
                Some(Component::AnyDepth) => return true,
                Some(Component::Name(g)) => {
                    if !g.is_match(Path::new(OsStr::from_bytes(name))) {
                        return false;
                    }
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(include: &[&str], iinclude: &[&str], exclude: &[&str]) -> RestoreOptions {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        RestoreOptions {
            include: strings(include),
            iinclude: strings(iinclude),
            exclude: strings(exclude),
            ..RestoreOptions::default()
        }
    }

    #[test]
    fn patterns_include_exclude_and_prune_as_gitignore_does() {
        let s = Selection::new(&options(
            &["/src/a/*.txt", "docs/", "!docs/draft"],
            &["README*"],
            &["*.tmp", "/src/a/skip/"],
        ))
        .unwrap();
        let inc = |p: &str, dir| s.include.decision(p.as_bytes(), dir);
        assert_eq!(inc("src/a/x.txt", false), Some(true), "anchored");
        assert_eq!(inc("src/b/a/x.txt", false), None, "anchored to the root");
        assert_eq!(inc("src/a/b/x.txt", false), None, "`*` stays in a name");
        assert_eq!(inc("deep/docs", true), Some(true), "unanchored, any depth");
        assert_eq!(inc("deep/docs", false), None, "`docs/` is for directories");
        assert_eq!(inc("docs/draft", false), Some(false), "taken back");
        assert_eq!(inc("x/readme.md", false), Some(true), "case-folded");
        assert_eq!(inc("x/Readme.md", false), Some(true));
        assert!(s.excluded(b"src/a/y.tmp", false));
        assert!(s.excluded(b"src/a/skip", true));
        assert!(!s.excluded(b"src/a/skip", false), "directories only");
        assert!(!s.excluded(b"src/b/src/a/skip", true), "anchored");
        // Unanchored patterns can match anywhere below.
        assert!(s.include.may_hold(b"anything/at/all"));
        let anchored = Selection::new(&options(&["/src/a/*.txt", "/lib/**/x"], &[], &[])).unwrap();
        let may = |p: &str| anchored.include.may_hold(p.as_bytes());
        assert!(may("src"));
        assert!(may("src/a"));
        assert!(!may("src/a/b"), "deeper than the pattern");
        assert!(!may("src/b"));
        assert!(!may("other"));
        assert!(may("lib/q/r/s"), "`**` reaches any depth");
        assert!(Selection::new(&options(&["a/[z-a"], &[], &[])).is_err());
        let none = Selection::new(&RestoreOptions::default()).unwrap();
        assert!(none.include.is_empty());
        assert!(!none.excluded(b"a", true));
    }
}
