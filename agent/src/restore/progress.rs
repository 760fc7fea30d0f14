//! A restore's progress: counters the restore bumps as it goes
//! ([`RestoreProgress`]), and what shows them while it runs ([`Ticker`]):
//! a bar on a terminal (bytes, files, rate, ETA, on stderr), or restic's
//! `status` lines with `--json` (on stdout, each one JSON object).
//!
//! The totals grow as the walk finds files (it runs ahead of the writing,
//! so they are soon complete): a file counts in `total_files` and
//! `total_bytes` once found, and moves to `files_skipped` and
//! `bytes_skipped` when it turns out to be kept (unchanged, or kept by
//! `--overwrite never`), as restic counts them. Hard links count once,
//! as the file they link to; directories, symlinks and special files do
//! not count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Action;

/// How often the bar is redrawn.
const BAR_EVERY: Duration = Duration::from_millis(250);
/// How often a `--json` restore prints a status line.
const JSON_EVERY: Duration = Duration::from_secs(1);

/// A restore's running totals: bumped by the restore, read by whoever
/// shows them (from any thread).
#[derive(Debug)]
pub struct RestoreProgress {
    started: Instant,
    total_files: AtomicU64,
    total_bytes: AtomicU64,
    files_restored: AtomicU64,
    bytes_restored: AtomicU64,
    files_skipped: AtomicU64,
    bytes_skipped: AtomicU64,
    files_deleted: AtomicU64,
}

impl Default for RestoreProgress {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            total_files: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            files_restored: AtomicU64::new(0),
            bytes_restored: AtomicU64::new(0),
            files_skipped: AtomicU64::new(0),
            bytes_skipped: AtomicU64::new(0),
            files_deleted: AtomicU64::new(0),
        }
    }
}

/// The totals at one moment, in restic's names: a `status` line of a
/// `--json` restore as it is (the summary adds its own fields).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RestoreStatus {
    /// `status`.
    pub message_type: &'static str,
    /// Whole seconds since the restore began.
    pub seconds_elapsed: u64,
    /// `bytes_restored / total_bytes` (by files when there are no bytes),
    /// 0 to 1.
    pub percent_done: f64,
    /// Files found to write.
    pub total_files: u64,
    /// Files written.
    pub files_restored: u64,
    /// Files kept as they were.
    pub files_skipped: u64,
    /// Entries `--delete` removed (every one below a removed directory
    /// too).
    pub files_deleted: u64,
    /// Bytes of the files found to write.
    pub total_bytes: u64,
    /// Bytes written.
    pub bytes_restored: u64,
    /// Bytes of the files kept.
    pub bytes_skipped: u64,
}

impl RestoreProgress {
    /// Counters at 0, the clock started now.
    pub fn new() -> Self {
        Self::default()
    }

    /// The walk found a file of `size` bytes to restore.
    pub(crate) fn file_found(&self, size: u64) {
        self.total_files.fetch_add(1, Relaxed);
        self.total_bytes.fetch_add(size, Relaxed);
    }

    /// `bytes` more of some file are written.
    pub(crate) fn wrote(&self, bytes: u64) {
        self.bytes_restored.fetch_add(bytes, Relaxed);
    }

    /// A file found earlier, of `size` bytes, is done with `action` (its
    /// bytes, when written, were counted by [`RestoreProgress::wrote`]).
    pub(crate) fn file_done(&self, action: Action, size: u64) {
        match action {
            Action::New | Action::Replaced => {
                self.files_restored.fetch_add(1, Relaxed);
            }
            Action::Unchanged | Action::Skipped => {
                self.total_files.fetch_sub(1, Relaxed);
                self.total_bytes.fetch_sub(size, Relaxed);
                self.files_skipped.fetch_add(1, Relaxed);
                self.bytes_skipped.fetch_add(size, Relaxed);
            }
        }
    }

    /// `--delete` removed `n` more entries.
    pub(crate) fn deleted(&self, n: u64) {
        self.files_deleted.fetch_add(n, Relaxed);
    }

    /// The totals now. `done`: the restore has ended, so a restore with
    /// nothing to write is complete (`percent_done` 1).
    pub fn status(&self, done: bool) -> RestoreStatus {
        let total_files = self.total_files.load(Relaxed);
        let files_restored = self.files_restored.load(Relaxed);
        let total_bytes = self.total_bytes.load(Relaxed);
        let bytes_restored = self.bytes_restored.load(Relaxed);
        let percent_done = if total_bytes > 0 {
            bytes_restored as f64 / total_bytes as f64
        } else if total_files > 0 {
            files_restored as f64 / total_files as f64
        } else if done {
            1.0
        } else {
            0.0
        };
        RestoreStatus {
            message_type: "status",
            seconds_elapsed: self.started.elapsed().as_secs(),
            percent_done: percent_done.min(1.0),
            total_files,
            files_restored,
            files_skipped: self.files_skipped.load(Relaxed),
            files_deleted: self.files_deleted.load(Relaxed),
            total_bytes,
            bytes_restored,
            bytes_skipped: self.bytes_skipped.load(Relaxed),
        }
    }
}

/// How to show a restore's progress while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    /// Not at all.
    Nothing,
    /// A bar on stderr (only call for a terminal).
    Bar,
    /// restic's `status` lines on stdout, one a second, and one more at
    /// the end.
    Json,
}

/// Shows a [`RestoreProgress`] until [`Ticker::finish`].
pub struct Ticker {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<indicatif::ProgressBar>,
    progress: Arc<RestoreProgress>,
    show: Show,
}

impl Ticker {
    /// Starts showing `progress` as `show` says. Call within a tokio
    /// runtime.
    pub fn start(progress: Arc<RestoreProgress>, show: Show) -> Self {
        let mut ticker = Ticker {
            task: None,
            bar: None,
            progress: progress.clone(),
            show,
        };
        match show {
            Show::Nothing => {}
            Show::Bar => {
                let bar = indicatif::ProgressBar::with_draw_target(
                    Some(0),
                    indicatif::ProgressDrawTarget::stderr_with_hz(8),
                );
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{elapsed_precise} [{wide_bar}] {binary_bytes}/{binary_total_bytes} \
                         {binary_bytes_per_sec} ETA {eta} {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                let b = bar.clone();
                ticker.task = Some(tokio::spawn(async move {
                    loop {
                        draw(&b, &progress.status(false));
                        tokio::time::sleep(BAR_EVERY).await;
                    }
                }));
                ticker.bar = Some(bar);
            }
            Show::Json => {
                ticker.task = Some(tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(JSON_EVERY).await;
                        print_json(&progress.status(false));
                    }
                }));
            }
        }
        ticker
    }

    /// Stops showing: clears the bar, or prints the last status line.
    pub async fn finish(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Until it has stopped: no status line after the last one.
            let _ = task.await;
        }
        if let Some(bar) = self.bar.take() {
            draw(&bar, &self.progress.status(true));
            bar.finish_and_clear();
        }
        if self.show == Show::Json {
            print_json(&self.progress.status(true));
        }
    }
}

impl Drop for Ticker {
    /// A restore that failed: no more status lines, no bar left behind.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn draw(bar: &indicatif::ProgressBar, s: &RestoreStatus) {
    bar.set_length(s.total_bytes);
    bar.set_position(s.bytes_restored);
    bar.set_message(format!("{}/{} files", s.files_restored, s.total_files));
}

fn print_json(s: &RestoreStatus) {
    if let Ok(line) = serde_json::to_string(s) {
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_files_move_from_the_totals_to_skipped() {
        let p = RestoreProgress::new();
        assert_eq!(p.status(false).percent_done, 0.0);
        assert_eq!(p.status(true).percent_done, 1.0);
        p.file_found(100);
        p.file_found(50);
        p.file_found(0);
        p.wrote(60);
        assert_eq!(p.status(false).percent_done, 0.4);
        p.wrote(40);
        p.file_done(Action::New, 100);
        p.file_done(Action::Unchanged, 50);
        p.file_done(Action::Replaced, 0);
        p.deleted(3);
        let s = p.status(true);
        assert_eq!(
            (
                s.total_files,
                s.files_restored,
                s.files_skipped,
                s.files_deleted
            ),
            (2, 2, 1, 3)
        );
        assert_eq!(
            (s.total_bytes, s.bytes_restored, s.bytes_skipped),
            (100, 100, 50)
        );
        assert_eq!(s.percent_done, 1.0);
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["message_type"], "status");
        assert_eq!(json["bytes_restored"], 100);
    }
}
