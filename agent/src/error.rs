//! An operation's failure, as the daemon receives it: a [`FailKind`] and a
//! sentence. Every error in the agent ends up as one of these, so this one
//! type is the agent's error type.

use fcm_proto::{FailKind, Failure};
use std::fmt;
use std::io;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub kind: FailKind,
    pub message: String,
}

impl OpError {
    pub fn new(kind: FailKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(FailKind::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(FailKind::NotFound, message)
    }

    pub fn wrong_kind(message: impl Into<String>) -> Self {
        Self::new(FailKind::WrongKind, message)
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(FailKind::Failed, message)
    }

    /// The operation was cancelled, or its session ended.
    pub fn cancelled() -> Self {
        Self::failed("cancelled")
    }

    /// An I/O error about `what` (a path, a program), its kind read from
    /// the errno.
    pub fn io(what: impl fmt::Display, err: &io::Error) -> Self {
        let kind = match err.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => FailKind::NotFound,
            Some(libc::EISDIR) => FailKind::WrongKind,
            Some(libc::ENAMETOOLONG | libc::EINVAL) => FailKind::Invalid,
            Some(libc::EFBIG) => FailKind::TooLarge,
            _ if err.kind() == io::ErrorKind::NotFound => FailKind::NotFound,
            _ => FailKind::Failed,
        };
        Self::new(kind, format!("{what}: {err}"))
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for OpError {}

impl From<OpError> for Failure {
    fn from(e: OpError) -> Self {
        Failure {
            kind: e.kind,
            message: e.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_picks_the_kind() {
        let e = OpError::io("/x", &io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.kind, FailKind::NotFound);
        assert!(e.message.starts_with("/x: "), "{}", e.message);
        let e = OpError::io("/x", &io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.kind, FailKind::Failed);
        let e = OpError::io("/x", &io::Error::from_raw_os_error(libc::EISDIR));
        assert_eq!(e.kind, FailKind::WrongKind);
    }
}
