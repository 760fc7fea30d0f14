//! The redb index behind a handle that can be closed and opened again.
//!
//! After an I/O error in a commit (a full file system, say), redb refuses
//! every later transaction with "Previous I/O error occurred. Please close
//! and re-open the database". [`Index`] notes such errors and, on the next
//! use, closes the database and opens it again (redb then repairs it from
//! its last commit), so the store recovers without a restart once the cause
//! is gone. It waits (bounded) for the calls holding the old handle to end,
//! and tries at most once per [`REOPEN_EVERY`]; meanwhile calls fail with
//! [`StoreError::Index`], carrying the error that broke it
//! ([`IndexError::Broken`]).
//!
//! Known gap: a commit that failed but reached the disk anyway is in the
//! reopened index while the store's in-memory summaries never counted it;
//! they agree again at the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use redb::{Database, DatabaseError, ReadTransaction, ReadableDatabase, WriteTransaction};

use super::StoreError;
use super::health::{Health, is_no_space};

/// Why the index failed, as [`StoreError::Index`] carries it.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// redb failed: an I/O error, a transaction, table or commit it
    /// refused. Shared with the index's memory of the I/O error that broke
    /// it, if this is that error.
    #[error(transparent)]
    Redb(Arc<redb::Error>),
    /// An entry does not parse as this version writes it.
    #[error("malformed index entry")]
    Malformed,
    /// The database is closed while it is reopened after an I/O error, or
    /// because its reopen failed (the store's health says why).
    #[error("the index is closed for reopening")]
    Closed,
    /// An earlier I/O error broke the database: redb refuses every call
    /// until it is reopened, at most once a second.
    #[error("{first} (not cleared yet: the index is reopened at most every {REOPEN_EVERY:?})")]
    Broken {
        /// The I/O error that broke it.
        #[source]
        first: Arc<redb::Error>,
    },
    /// A rebuild was asked to replace an index that a running server
    /// holds.
    #[error(
        "{} is in use by a running server: stop it before rebuilding its index",
        path.display()
    )]
    InUse {
        /// The index file.
        path: PathBuf,
    },
}

impl From<redb::Error> for IndexError {
    fn from(e: redb::Error) -> Self {
        Self::Redb(Arc::new(e))
    }
}

/// Most often a broken index is reopened.
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// How long a reopen waits for the calls holding the old database.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

/// The store's index database; see the module docs.
pub(super) struct Index {
    path: PathBuf,
    slot: RwLock<Option<Arc<Database>>>,
    /// An I/O error was seen: reopen before the next use.
    broken: AtomicBool,
    /// Held by the one reopen running; the time of the last attempt.
    reopening: Mutex<Option<Instant>>,
    /// The I/O error that broke the database, until it is reopened: redb
    /// answers every later call with "Previous I/O error", and callers
    /// are told this cause instead.
    cause: Mutex<Option<Cause>>,
    health: Arc<Health>,
}

/// Why the database broke.
#[derive(Clone, Debug)]
enum Cause {
    /// Its file system ran out of space.
    NoSpace,
    /// Another I/O error, as redb reported it.
    Io(Arc<redb::Error>),
}

impl Index {
    /// Wraps the open database at `path`.
    pub(super) fn new(path: &Path, db: Database, health: Arc<Health>) -> Self {
        Self {
            path: path.to_owned(),
            slot: RwLock::new(Some(Arc::new(db))),
            broken: AtomicBool::new(false),
            reopening: Mutex::new(None),
            cause: Mutex::new(None),
            health,
        }
    }

    /// The database, reopened first if an I/O error broke it.
    ///
    /// # Errors
    /// [`StoreError::Index`] while the database cannot be reopened.
    pub(super) fn db(&self) -> Result<Arc<Database>, StoreError> {
        if self.broken.load(Ordering::Acquire) {
            self.reopen();
        }
        self.slot
            .read()
            .clone()
            .ok_or(StoreError::Index(IndexError::Closed))
    }

    /// A read transaction.
    ///
    /// # Errors
    /// [`StoreError::Index`].
    pub(super) fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        self.db()?.begin_read().map_err(|e| self.error(e))
    }

    /// A write transaction.
    ///
    /// # Errors
    /// [`StoreError::Index`].
    pub(super) fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        self.db()?.begin_write().map_err(|e| self.error(e))
    }

    /// Commits `txn`.
    ///
    /// # Errors
    /// [`StoreError::Index`]; the commit may or may not have reached the
    /// disk.
    pub(super) fn commit(&self, txn: WriteTransaction) -> Result<(), StoreError> {
        txn.commit().map_err(|e| self.error(e))
    }

    /// Turns a redb error into a [`StoreError`], noting an I/O error: the
    /// database must then be reopened, and the store is full (out of space:
    /// [`StoreError::DiskFull`]) or failing until it is.
    pub(super) fn error(&self, e: impl Into<redb::Error>) -> StoreError {
        let e: redb::Error = e.into();
        let cause = self.cause.lock().clone();
        match (&e, cause) {
            (redb::Error::Io(io), _) if is_no_space(io) => {
                self.set_cause(Cause::NoSpace);
                self.broken.store(true, Ordering::Release);
                self.health.refused(0);
                self.health.note(format!("index: {e}"));
                return StoreError::DiskFull {
                    free: 0,
                    min_free: 0,
                };
            }
            // Still out of space, as far as anyone knows: full, not failing.
            (redb::Error::PreviousIo, Some(Cause::NoSpace)) => {
                self.broken.store(true, Ordering::Release);
                self.health.refused(0);
                return StoreError::DiskFull {
                    free: 0,
                    min_free: 0,
                };
            }
            (redb::Error::PreviousIo, Some(Cause::Io(first))) => {
                self.broken.store(true, Ordering::Release);
                self.health.fail(format!("index: {first}"), false);
                return IndexError::Broken { first }.into();
            }
            _ => {}
        }
        let e = Arc::new(e);
        match &*e {
            redb::Error::Io(_) => {
                self.set_cause(Cause::Io(e.clone()));
                self.broken.store(true, Ordering::Release);
                self.health.fail(format!("index: {e}"), false);
            }
            redb::Error::PreviousIo | redb::Error::DatabaseClosed => {
                self.broken.store(true, Ordering::Release);
                self.health.fail(format!("index: {e}"), false);
            }
            _ => {}
        }
        IndexError::Redb(e).into()
    }

    fn set_cause(&self, cause: Cause) {
        *self.cause.lock() = Some(cause);
    }

    /// Closes and opens the database again; see the module docs.
    fn reopen(&self) {
        let Some(mut last) = self.reopening.try_lock() else {
            return;
        };
        if !self.broken.load(Ordering::Acquire) || last.is_some_and(|t| t.elapsed() < REOPEN_EVERY)
        {
            return;
        }
        *last = Some(Instant::now());
        let deadline = Instant::now() + REOPEN_WAIT;
        let taken = self.slot.write().take();
        if let Some(mut db) = taken {
            loop {
                match Arc::try_unwrap(db) {
                    Ok(db) => {
                        // The close reports the latched error again.
                        drop(db);
                        break;
                    }
                    Err(held) if Instant::now() < deadline => {
                        db = held;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(held) => {
                        *self.slot.write() = Some(held);
                        tracing::warn!(
                            "cannot reopen the index: calls still hold it; trying again later"
                        );
                        return;
                    }
                }
            }
        }
        loop {
            match Database::create(&self.path) {
                Ok(db) => {
                    *self.slot.write() = Some(Arc::new(db));
                    self.broken.store(false, Ordering::Release);
                    *self.cause.lock() = None;
                    self.health.recovered();
                    tracing::warn!(path = %self.path.display(), "reopened the index after an I/O error");
                    return;
                }
                // A transaction begun on the old handle keeps the file
                // locked until it ends.
                Err(DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot reopen the index; trying again later");
                    self.health
                        .fail(format!("index: cannot reopen: {e}"), false);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringvault_common::wire::StoreState;

    fn index(dir: &Path) -> Index {
        let path = dir.join("index.redb");
        let db = Database::create(&path).unwrap();
        Index::new(&path, db, Arc::new(Health::default()))
    }

    #[test]
    fn the_errors_after_an_io_error_repeat_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let full = index(dir.path());
        let no_space = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(matches!(
            full.error(redb::Error::Io(no_space)),
            StoreError::DiskFull { .. }
        ));
        let later = full.error(redb::Error::PreviousIo);
        assert!(matches!(later, StoreError::DiskFull { .. }), "{later}");
        assert_eq!(full.health.report().state, StoreState::Full);

        let dir = tempfile::tempdir().unwrap();
        let failing = index(dir.path());
        failing.error(redb::Error::Io(std::io::Error::other("sector not found")));
        let later = failing.error(redb::Error::PreviousIo);
        assert!(later.to_string().contains("sector not found"), "{later}");
        assert_eq!(failing.health.report().state, StoreState::Failing);
    }

    #[test]
    fn the_io_error_that_broke_the_index_stays_typed_in_later_errors() {
        let dir = tempfile::tempdir().unwrap();
        let failing = index(dir.path());
        let first = failing.error(redb::Error::Io(std::io::Error::other("sector not found")));
        assert!(
            matches!(&first, StoreError::Index(IndexError::Redb(e)) if matches!(&**e, redb::Error::Io(_))),
            "{first:?}"
        );
        let later = failing.error(redb::Error::PreviousIo);
        let StoreError::Index(IndexError::Broken { first }) = &later else {
            panic!("not the broken index: {later:?}");
        };
        let redb::Error::Io(io) = &**first else {
            panic!("not the I/O error: {first:?}");
        };
        assert_eq!(io.kind(), std::io::ErrorKind::Other);
        assert_eq!(
            later.to_string(),
            "index: I/O error: sector not found (not cleared yet: the index is reopened at most every 1s)"
        );
        let source = std::error::Error::source(&later).map(ToString::to_string);
        assert_eq!(
            source.as_deref(),
            Some(&later.to_string()["index: ".len()..])
        );
    }
}
