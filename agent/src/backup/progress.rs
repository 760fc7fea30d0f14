//! What a running backup has done so far: counters the daemon's status
//! and the web UI read, and the progress line on a terminal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A backup's running totals, readable while it runs.
#[derive(Default, Debug)]
pub struct Counters {
    /// Files scanned.
    pub files: AtomicU64,
    /// Directories listed.
    pub dirs: AtomicU64,
    /// Bytes in the files scanned.
    pub bytes: AtomicU64,
    /// Bytes read from files on disk (holes of sparse files are not read,
    /// so not counted).
    pub bytes_read: AtomicU64,
    /// Bytes of chunks the cluster lacked.
    pub new_bytes: AtomicU64,
    /// Sealed bytes sent.
    pub sent_bytes: AtomicU64,
}

impl Counters {
    /// Sets every total back to 0 (a backup starting again).
    pub(super) fn reset(&self) {
        for c in [
            &self.files,
            &self.dirs,
            &self.bytes,
            &self.bytes_read,
            &self.new_bytes,
            &self.sent_bytes,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

pub(super) struct Progress {
    bar: indicatif::ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub(super) fn start(counters: Arc<Counters>) -> Self {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        let b = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                let c = &counters;
                b.set_message(format!(
                    "{} files, {} read, {} new, {} sent",
                    c.files.load(Ordering::Relaxed),
                    indicatif::HumanBytes(c.bytes_read.load(Ordering::Relaxed)),
                    indicatif::HumanBytes(c.new_bytes.load(Ordering::Relaxed)),
                    indicatif::HumanBytes(c.sent_bytes.load(Ordering::Relaxed)),
                ));
                b.tick();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { bar, ticker }
    }

    pub(super) fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
