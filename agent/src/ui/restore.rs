//! `POST /api/restore`: a snapshot, or a path in it, restored into a
//! folder on this machine through [`crate::restore::restore_with`].
//!
//! # Local changes
//!
//! A person restores from the page over files they may have edited since
//! the backup, so its default is not the CLI's (restic's `always`): a
//! request without `overwrite` is `never`, which keeps whatever is at a
//! name, and only `if-changed` or `always`, asked for, replace a file.
//! `dry_run` writes nothing and answers what would be done. Either way the
//! answer lists the entries with what was (or would be) done to each, the
//! [`Action`] the restore itself reports (as for the CLI's `--dry-run`):
//! `new`, `replaced`, `unchanged`, or `skipped` (kept by `never`, whether
//! it differs or not). At most [`MAX_LISTED`] are listed, those replaced
//! and kept first.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use super::{ApiError, Ui, entry_at, kind_name, normalize};
use crate::browse::Trees;
use crate::restore::{self, Action, Overwrite, PlannedAction, RestoreOptions};

/// The policy of a request that names none: keep local changes.
pub const DEFAULT_OVERWRITE: Overwrite = Overwrite::Never;

/// Most entries an answer lists (10 000, about 1 MB of JSON); the rest
/// are counted in [`RestoreResult::actions_left_off`].
pub const MAX_LISTED: usize = 10_000;

/// What `POST /api/restore` takes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The snapshot.
    pub snapshot: String,
    /// What to restore: a path inside it (empty or absent: all of it).
    #[serde(default)]
    pub path: String,
    /// The directory to restore into, absolute (made if missing, unless
    /// this is a dry run).
    pub target: String,
    /// When to replace what the target holds at a file's or symlink's
    /// name: `always`, `if-changed` or `never` (as the CLI's `--overwrite`;
    /// absent: `never`, [`DEFAULT_OVERWRITE`]).
    #[serde(default)]
    pub overwrite: Option<String>,
    /// Write nothing; answer what would be done.
    #[serde(default)]
    pub dry_run: bool,
}

/// What `POST /api/restore` answers (in a dry run: what would be done).
#[derive(Clone, Debug, Serialize)]
pub struct RestoreResult {
    /// The snapshot, hex id.
    pub snapshot: String,
    /// What was restored (empty: all of it).
    pub path: String,
    /// Where to.
    pub target: String,
    /// The policy applied: `always`, `if-changed` or `never`.
    pub overwrite: &'static str,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Regular files written, new or replaced.
    pub files: u64,
    /// Directories made or found in place.
    pub dirs: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Symlinks made, new or replaced.
    pub symlinks: u64,
    /// Files and symlinks already as in the snapshot, kept.
    pub unchanged: u64,
    /// Files and symlinks kept because something was at their name and
    /// the policy is `never` (they may differ from the snapshot).
    pub skipped: u64,
    /// What was done with each entry: replaced, then skipped, then new,
    /// then unchanged, each by path; at most [`MAX_LISTED`].
    pub actions: Vec<ActionInfo>,
    /// Entries done but not in `actions` (beyond [`MAX_LISTED`]).
    pub actions_left_off: u64,
    /// Entries that could not be restored.
    pub errors: Vec<RestoreFailure>,
    /// Bad copies met (and read around) on the servers, as text.
    pub bad_copies: Vec<String>,
}

/// One entry of [`RestoreResult::actions`].
#[derive(Clone, Debug, Serialize)]
pub struct ActionInfo {
    /// Where it is in the target.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: &'static str,
    /// `new`, `replaced`, `unchanged` or `skipped` ([`Action::as_str`]).
    pub action: &'static str,
    /// Its size in the snapshot, bytes (files; 0 for the others).
    pub size: u64,
}

/// An entry a restore skipped.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreFailure {
    /// Where it would have gone.
    pub path: String,
    /// Why it did not.
    pub error: String,
}

pub(super) async fn api_restore(
    State(ui): State<Arc<Ui>>,
    Json(req): Json<RestoreRequest>,
) -> Result<Json<RestoreResult>, ApiError> {
    let target = PathBuf::from(&req.target);
    if !target.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "the target {:?} is not an absolute path",
            req.target
        )));
    }
    let overwrite = match req.overwrite.as_deref() {
        None => DEFAULT_OVERWRITE,
        Some(name) => Overwrite::from_str(name, false).map_err(|_| {
            ApiError::bad_request(format!(
                "overwrite {name:?}: give always, if-changed or never"
            ))
        })?,
    };
    let (id, snap) = ui.snapshot(&req.snapshot).await?;
    let path = normalize(&req.path);
    if !path.is_empty() {
        // Before the target is made: a wrong path leaves nothing behind.
        entry_at(&ui, &mut Trees::default(), &id, &snap, &path).await?;
    }
    let options = RestoreOptions {
        path: (!path.is_empty()).then(|| path.clone()),
        overwrite,
        dry_run: req.dry_run,
        list: true,
        ..RestoreOptions::default()
    };
    tracing::info!(
        snapshot = %id.short(),
        %path,
        target = %target.display(),
        overwrite = overwrite_name(overwrite),
        dry_run = req.dry_run,
        "restoring"
    );
    let repo = ui.repo.clone();
    // Its own task: a browser that goes away does not stop it half-way.
    let report =
        tokio::spawn(async move { restore::restore_with(repo, &snap, &target, &options).await })
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("restore: {e}")))?
            .map_err(|e| ApiError::from_library(e, StatusCode::BAD_REQUEST))?;
    let (actions, actions_left_off) = listed(report.actions);
    Ok(Json(RestoreResult {
        snapshot: id.to_hex(),
        path,
        target: req.target,
        overwrite: overwrite_name(overwrite),
        dry_run: req.dry_run,
        files: report.files,
        dirs: report.dirs,
        bytes: report.bytes,
        symlinks: report.symlinks,
        unchanged: report.unchanged,
        skipped: report.skipped,
        actions,
        actions_left_off,
        errors: report
            .errors
            .into_iter()
            .map(|(p, error)| RestoreFailure {
                path: p.display().to_string(),
                error,
            })
            .collect(),
        bad_copies: report
            .bad_copies
            .iter()
            .map(|b| format!("chunk {} on {}: {}", b.chunk, b.node, b.reason))
            .collect(),
    }))
}

/// The policy's name, as the CLI spells it.
fn overwrite_name(o: Overwrite) -> &'static str {
    match o {
        Overwrite::Always => "always",
        Overwrite::IfChanged => "if-changed",
        Overwrite::Never => "never",
    }
}

/// The first [`MAX_LISTED`] of `actions`, replaced and kept (skipped)
/// first, each group by path; and how many were left off.
fn listed(mut actions: Vec<PlannedAction>) -> (Vec<ActionInfo>, u64) {
    let rank = |a: Action| match a {
        Action::Replaced => 0,
        Action::Skipped => 1,
        Action::New => 2,
        Action::Unchanged => 3,
    };
    actions.sort_by(|a, b| {
        rank(a.action)
            .cmp(&rank(b.action))
            .then_with(|| a.path.cmp(&b.path))
    });
    let left_off = actions.len().saturating_sub(MAX_LISTED) as u64;
    let shown = actions
        .into_iter()
        .take(MAX_LISTED)
        .map(|a| ActionInfo {
            path: a.path.display().to_string(),
            kind: kind_name(a.kind),
            action: a.action.as_str(),
            size: a.size,
        })
        .collect();
    (shown, left_off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringvault_common::tree::EntryKind;

    fn planned(path: &str, action: Action) -> PlannedAction {
        PlannedAction {
            path: PathBuf::from(path),
            kind: EntryKind::File,
            action,
            size: 1,
        }
    }

    #[test]
    fn replaced_and_kept_files_are_listed_first() {
        let (shown, left_off) = listed(vec![
            planned("/t/d", Action::New),
            planned("/t/c", Action::Unchanged),
            planned("/t/b", Action::Skipped),
            planned("/t/a", Action::Skipped),
            planned("/t/z", Action::Replaced),
        ]);
        let order: Vec<(&str, &str)> = shown.iter().map(|a| (a.path.as_str(), a.action)).collect();
        assert_eq!(
            order,
            [
                ("/t/z", "replaced"),
                ("/t/a", "skipped"),
                ("/t/b", "skipped"),
                ("/t/d", "new"),
                ("/t/c", "unchanged"),
            ]
        );
        assert_eq!((shown[0].kind, left_off), ("file", 0));
        let many = (0..MAX_LISTED + 3)
            .map(|i| planned(&format!("/t/{i:06}"), Action::New))
            .chain([planned("/t/zz", Action::Replaced)])
            .collect();
        let (shown, left_off) = listed(many);
        assert_eq!((shown.len(), left_off), (MAX_LISTED, 4));
        assert_eq!(shown[0].path, "/t/zz", "replaced files come first");
    }

    #[test]
    fn the_default_keeps_local_changes_and_names_are_the_clis() {
        assert_eq!(DEFAULT_OVERWRITE, Overwrite::Never);
        for o in [Overwrite::Always, Overwrite::IfChanged, Overwrite::Never] {
            let name = overwrite_name(o);
            assert_eq!(Overwrite::from_str(name, false), Ok(o));
            assert_eq!(o.to_possible_value().unwrap().get_name(), name);
        }
        let req: RestoreRequest =
            serde_json::from_str(r#"{"snapshot":"latest","target":"/t"}"#).unwrap();
        assert_eq!((req.overwrite, req.dry_run), (None, false));
    }
}
