//! Reading secret files (private keys, password files) only when no one but
//! their owner can read them, as OpenSSH does for its private keys.

use std::path::{Path, PathBuf};

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
