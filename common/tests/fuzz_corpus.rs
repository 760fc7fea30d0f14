//! Replays the fuzz corpora of `common/fuzz/` through the same
//! `ringvault_common::fuzzing` entry points the fuzz targets call, so every
//! input the fuzzer kept (and every crash input kept under
//! `fuzz/regressions/`) is checked by a plain `cargo test` on stable Rust.
//!
//! A missing or empty corpus directory fails the test: a moved corpus must
//! not turn this into a test that checks nothing.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use ringvault_common::fuzzing;

#[test]
fn wire_request() {
    replay("wire_request", fuzzing::wire_request);
}

#[test]
fn wire_response() {
    replay("wire_response", fuzzing::wire_response);
}

#[test]
fn tree() {
    replay("tree", fuzzing::tree);
}

#[test]
fn snapshot() {
    replay("snapshot", fuzzing::snapshot);
}

#[test]
fn blob() {
    replay("blob", fuzzing::blob);
}

#[test]
fn key_file() {
    replay("key_file", fuzzing::key_file);
}

/// Runs `target` on every file of the target's corpus and regressions,
/// and fails naming each input that panicked.
fn replay(target: &str, run: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = inputs(&fuzz.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "the corpus of fuzz target {target} is missing or empty"
    );
    let regressions = fuzz.join("regressions").join(target);
    let regressions = if regressions.exists() {
        inputs(&regressions)
    } else {
        Vec::new()
    };

    let failed: Vec<String> = corpus
        .iter()
        .chain(&regressions)
        .filter(|path| {
            let bytes = std::fs::read(path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "fuzz target {target} panicked on {} of {} inputs: {failed:#?}",
        failed.len(),
        corpus.len() + regressions.len()
    );
}

/// The files in `dir`, sorted; empty when `dir` does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    files.retain(|p| p.is_file());
    files.sort();
    files
}
