//! The one place that maps error kinds to HTTP status codes (404 unknown
//! VM, 409 wrong state or a conflict, 400 bad input, 503 a missing
//! prerequisite, 507 a full disk, 500 a failure of the host or a bug), and
//! the [`ApiError`]s that carry them with their hints.

use super::ApiError;
use crate::daemon::guest::GuestError;
use crate::daemon::manager::{Cause, Kind, ManagerError};
use crate::daemon::sessions::SessionError;
use crate::error::chain;

/// The one place that maps error kinds to HTTP status codes.
pub fn status_of(e: &ManagerError) -> u16 {
    match e {
        ManagerError::InvalidName(_) | ManagerError::BadRequest(_) => 400,
        ManagerError::NotFound(_) => 404,
        ManagerError::Ambiguous(_)
        | ManagerError::WrongState { .. }
        | ManagerError::NameTaken(_)
        | ManagerError::TooManyVms(_)
        | ManagerError::NotForkable { .. } => 409,
        ManagerError::Broken { .. } => 409,
        ManagerError::Missing { .. }
        | ManagerError::PoolExhausted(_)
        | ManagerError::ShuttingDown
        | ManagerError::ClusterUnreachable { .. }
        | ManagerError::Recovering(_) => 503,
        ManagerError::CreateStep { cause, .. } | ManagerError::Operation { cause, .. } => {
            cause_status_of(cause)
        }
        ManagerError::CheckpointNotFound { .. } => 404,
        ManagerError::CheckpointExists { .. } => 409,
        ManagerError::Guest(e) => guest_status_of(e),
        ManagerError::ImageNotFound(_) => 404,
        ManagerError::ImageInUse { .. }
        | ManagerError::BaseImage(_)
        | ManagerError::NoTmux { .. }
        | ManagerError::NoSshd { .. } => 409,
        ManagerError::TooLarge(_) => 413,
        ManagerError::Image(e) => crate::daemon::manager::image_status(e),
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        let status = status_of(&e);
        let hint = e.hint();
        let mut a = ApiError::new(status, chain(&e));
        a.hint = hint;
        a
    }
}

/// Status codes of the causes of failed operations: a disk another
/// process holds is a conflict, a missing program a missing prerequisite,
/// a full file system 507 (Insufficient Storage); the rest is a failure of
/// the host or the VMM.
pub fn cause_status_of(c: &Cause) -> u16 {
    match c.kind() {
        Kind::DiskInUse { .. } => 409,
        Kind::Missing => 503,
        Kind::StorageFull => 507,
        Kind::Failed => 500,
    }
}

/// Status codes of session errors; a VM error keeps its own.
pub fn session_status_of(e: &SessionError) -> u16 {
    match e {
        SessionError::Vm(e) => status_of(e),
        SessionError::InvalidId(_) => 400,
        SessionError::NotFound { .. } => 404,
        SessionError::Exists { .. } => 409,
        SessionError::Guest { source, .. } => match guest_status_of(source) {
            500 => 500,
            _ => 502,
        },
        SessionError::Tmux { .. } => 502,
    }
}

/// Status codes of guest (exec, files) errors.
pub fn guest_status_of(e: &GuestError) -> u16 {
    match e {
        GuestError::BadRequest(_) | GuestError::Refused { .. } => 400,
        GuestError::NotFound { .. } => 404,
        GuestError::TooLarge { .. } => 413,
        GuestError::Unreachable { .. } | GuestError::Failed { .. } => 502,
        GuestError::Host { .. } => 500,
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        let status = session_status_of(&e);
        let hint = e.hint();
        let mut a = ApiError::new(status, chain(&e));
        a.hint = hint;
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_statuses() {
        let s = |e: ManagerError| ApiError::from(e).status;
        assert_eq!(s(ManagerError::NotFound("x".into())), 404);
        assert_eq!(
            s(ManagerError::WrongState {
                name: "a".into(),
                state: "stopped",
                wanted: "running",
                action: "stop it"
            }),
            409
        );
        assert_eq!(
            s(ManagerError::Missing {
                what: "guest kernel",
                path: "/x".into(),
                hint: "h"
            }),
            503
        );
        assert_eq!(s(ManagerError::BadRequest("x".into())), 400);
        // A failed operation answers by its cause.
        use crate::host::disk::DiskError;
        use crate::host::vmm::VmmError;
        let full = ManagerError::CreateStep {
            step: "copy rootfs",
            cause: Box::new(Cause::Disk(DiskError::Copy {
                from: "/base.img".into(),
                to: "/vm/rootfs.img".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            })),
        };
        let a = ApiError::from(full);
        assert_eq!(a.status, 507);
        assert!(
            a.message
                .starts_with("create failed at step \"copy rootfs\": could not copy ")
                && a.message.ends_with("No space left on device (os error 28)"),
            "{}",
            a.message
        );
        assert!(a.hint.is_some_and(|h| h.contains("df -h")));
        let op = |cause| ManagerError::Operation {
            action: "start",
            name: "web".into(),
            cause: Box::new(cause),
        };
        let held = op(Cause::Vmm(VmmError::DiskInUse {
            disk: "/vm/rootfs.img".into(),
            pids: "42".into(),
        }));
        assert_eq!(s(held), 409);
        let missing = op(Cause::Vmm(VmmError::MissingBinary {
            program: "firecracker",
            path: "/x".into(),
        }));
        assert_eq!(s(missing), 503);
        let died = op(Cause::Launch {
            vmm: Box::new(VmmError::NotReady {
                program: "qemu-system-x86_64",
                detail: "it exited".into(),
            }),
            log: "qemu: could not open /dev/net/tun".into(),
        });
        let a = ApiError::from(died);
        assert_eq!(a.status, 500);
        assert!(
            a.message
                .ends_with("its log ends: qemu: could not open /dev/net/tun")
        );
    }

    #[test]
    fn session_error_statuses() {
        let stopped = SessionError::Vm(ManagerError::WrongState {
            name: "cosmic-nova".into(),
            state: "stopped",
            wanted: "running",
            action: "use it",
        });
        assert_eq!(session_status_of(&stopped), 409);
        let missing = SessionError::NotFound {
            vm: "cosmic-nova".into(),
            session: "s-1".into(),
        };
        assert_eq!(session_status_of(&missing), 404);
    }
}
