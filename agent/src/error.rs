//! What a failed command's error means to its caller, and the one table of
//! exit codes.
//!
//! The library returns typed errors ([`WrongPassword`],
//! [`ClientError`], [`FuseUnavailable`], ...) wrapped in `anyhow` context
//! as they rise; [`ErrorKind::of`] finds the first cause that says what
//! kind of failure it was (as rustic_core's `ErrorKind` classifies its
//! errors), and [`ErrorKind::exit_code`] gives the command's exit status.
//! The codes follow restic's where restic has one (1: fatal, 3: a backup
//! that could not read some files, 12: wrong password); the others are
//! ringvault's own and stable.

use crate::client::ClientError;
use crate::mount::FuseUnavailable;
use crate::repo::WrongPassword;

/// Exit code: the command failed (restic's 1).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: the backup or restore finished but skipped some entries
/// (restic's 3 for a backup that could not read some source files).
pub const EXIT_INCOMPLETE: u8 = 3;
/// Exit code of `check` and `cluster status`: every chunk has a healthy
/// copy, some fewer than N; or a server is down.
pub const EXIT_DEGRADED: u8 = 4;
/// Exit code: the cluster could not be reached.
pub const EXIT_UNREACHABLE: u8 = 10;
/// Exit code: the password does not open the repository (restic's 12).
pub const EXIT_WRONG_PASSWORD: u8 = 12;
/// Exit code: the servers refused the request for this certificate (its
/// role does not allow it, or it is revoked).
pub const EXIT_FORBIDDEN: u8 = 13;
/// Exit code of `ringvault mount` when this machine cannot mount FUSE file
/// systems ([`FuseUnavailable`]).
pub const EXIT_FUSE_UNAVAILABLE: u8 = 14;

/// The kind of a failed command's error, as far as its caller (a script, a
/// service manager) can act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The password opens none of the repository's keys.
    WrongPassword,
    /// No configured server answered.
    Unreachable,
    /// The servers refused this certificate's request.
    Forbidden,
    /// This machine cannot mount FUSE file systems.
    FuseUnavailable,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The kind of the first cause in `e`'s chain (outermost first) that
    /// has one; [`ErrorKind::Other`] when none has.
    pub fn of(e: &anyhow::Error) -> Self {
        e.chain()
            .find_map(|cause| {
                if cause.is::<WrongPassword>() {
                    return Some(Self::WrongPassword);
                }
                if cause.is::<FuseUnavailable>() {
                    return Some(Self::FuseUnavailable);
                }
                match cause.downcast_ref::<ClientError>()? {
                    ClientError::Unreachable(_) => Some(Self::Unreachable),
                    ClientError::Forbidden(_) => Some(Self::Forbidden),
                    _ => None,
                }
            })
            .unwrap_or(Self::Other)
    }

    /// The exit code a command that failed with this kind of error ends
    /// with.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::WrongPassword => EXIT_WRONG_PASSWORD,
            Self::Unreachable => EXIT_UNREACHABLE,
            Self::Forbidden => EXIT_FORBIDDEN,
            Self::FuseUnavailable => EXIT_FUSE_UNAVAILABLE,
            Self::Other => EXIT_FAILURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::PruneError;
    use anyhow::Context;

    #[test]
    fn the_first_cause_with_a_kind_gives_the_exit_code_through_any_context() {
        let wrapped = |e: anyhow::Error| {
            Err::<(), _>(e)
                .context("opening the repository")
                .context("ringvault backup")
                .unwrap_err()
        };
        let cases = [
            (anyhow::Error::new(WrongPassword), EXIT_WRONG_PASSWORD),
            (
                anyhow::Error::new(ClientError::Unreachable("no answer".into())),
                EXIT_UNREACHABLE,
            ),
            (
                anyhow::Error::new(ClientError::Forbidden("revoked".into())),
                EXIT_FORBIDDEN,
            ),
            (
                anyhow::Error::new(FuseUnavailable {
                    reason: "no /dev/fuse".into(),
                }),
                EXIT_FUSE_UNAVAILABLE,
            ),
            (
                anyhow::Error::new(PruneError::Forbidden(ClientError::Forbidden(
                    "prune needs an admin certificate".into(),
                ))),
                EXIT_FORBIDDEN,
            ),
            (
                anyhow::Error::new(ClientError::NotFound("chunk".into())),
                EXIT_FAILURE,
            ),
            (anyhow::anyhow!("anything else"), EXIT_FAILURE),
        ];
        for (e, code) in cases {
            let text = format!("{e:#}");
            assert_eq!(ErrorKind::of(&wrapped(e)).exit_code(), code, "{text}");
        }
    }
}
