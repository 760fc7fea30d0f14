//! Files both daemons keep: secret files (private keys, password files)
//! read only when no one but their owner can read them, as OpenSSH does for
//! its private keys; and small state files replaced durably (a temporary
//! file, fsync, rename, fsync of the directory), the sequence that survives
//! a power loss on ext4, XFS and btrfs (see `rename(2)` and the ext4
//! `auto_da_alloc` notes).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A durable write that failed, naming the file at fault (the temporary
/// file, the target, or its directory).
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct WriteError {
    /// The file or directory whose operation failed.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Replaces `path` with `bytes` durably: writes `path` with the extension
/// `tmp` (mode 0666 less the umask), fsyncs it, renames it over `path`, and
/// fsyncs the directory. After a crash `path` holds either the old or the
/// new bytes, never a mix.
///
/// # Errors
/// [`WriteError`] naming the file whose write, fsync or rename failed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    replace(path, bytes, 0o666)
}

/// Like [`write_atomic`], for secrets: the file is created mode 0600, and
/// missing parent directories are created mode 0700.
///
/// # Errors
/// [`WriteError`] naming the directory or file at fault.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let dir = parent(path);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(at(dir))?;
    replace(path, bytes, 0o600)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError {
        path: path.to_owned(),
        source,
    }
}

fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(at(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(at(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(at(path))?;
    let dir = parent(path);
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

/// A secret file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    /// It could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its group or others may read or write it.
    #[error(
        "{path} is accessible by group or others (mode {mode:04o}); a private key or password file must be mode 0600: run `chmod 600 {path}`"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It is not UTF-8 text.
    #[error("{0} is not UTF-8 text")]
    NotText(PathBuf),
}

/// Reads the secret text file at `path`, refusing it when its permission
/// bits grant group or others any access (`mode & 0o077 != 0`).
///
/// # Errors
/// [`PrivateFileError`]: unreadable, too open, or not text.
pub fn read_private(path: &Path) -> Result<String, PrivateFileError> {
    let io = |source| PrivateFileError::Io {
        path: path.to_owned(),
        source,
    };
    check_mode(path, std::fs::metadata(path).map_err(io)?)?;
    let bytes = std::fs::read(path).map_err(io)?;
    String::from_utf8(bytes).map_err(|_| PrivateFileError::NotText(path.to_owned()))
}

#[cfg(unix)]
fn check_mode(path: &Path, meta: std::fs::Metadata) -> Result<(), PrivateFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PrivateFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_: &Path, _: std::fs::Metadata) -> Result<(), PrivateFileError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_durable_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!path.with_extension("tmp").exists());
        let missing = dir.path().join("no-such-dir").join("state");
        let e = write_atomic(&missing, b"x").unwrap_err();
        assert_eq!(e.path, missing.with_extension("tmp"), "{e}");
    }

    #[test]
    fn a_private_write_makes_its_directories_and_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a").join("b").join("key");
        write_private(&path, b"secret").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(read_private(&path).unwrap(), "secret");
    }

    #[test]
    fn only_owner_only_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "secret").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o660, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let got = read_private(&path);
            assert_eq!(got.is_ok(), ok, "mode {mode:o}: {got:?}");
            if let Err(e) = got {
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
        }
        assert!(matches!(
            read_private(&dir.path().join("missing")),
            Err(PrivateFileError::Io { .. })
        ));
    }
}
