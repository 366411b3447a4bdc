//! Why an operation on a VM failed, kept typed up to the API's status
//! mapping (`daemon::api::status_of`): the host's own error, never a string
//! made of it at the leaf. So a disk that another VMM holds is a conflict,
//! a missing program a missing prerequisite, a full file system
//! "insufficient storage" ([`Kind`]), each with a hint, while the user
//! still reads the whole chain of causes.

use std::error::Error;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::daemon::store::StoreError;
use crate::error::chain;
use crate::host::HostError;
use crate::host::cgroup::CgroupError;
use crate::host::config_drive::ConfigDriveError;
use crate::host::disk::DiskError;
use crate::host::disk_lock::DiskLockError;
use crate::host::network::NetworkError;
use crate::host::vmm::VmmError;

#[derive(Debug, Error)]
pub enum Cause {
    /// The VMM failed (saving, loading or continuing a guest), or what a
    /// launch needs first (the disk's lock, the cgroup) could not be had.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The VMM did not start: why, and what its log (`console.log`, where
    /// QEMU and Firecracker write their own complaints) gained meanwhile.
    #[error("{}{}", chain(vmm), logged(log))]
    Launch { vmm: Box<VmmError>, log: String },
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    ConfigDrive(#[from] ConfigDriveError),
    #[error(transparent)]
    Host(#[from] HostError),
    /// A file or directory of the VM could not be made, written or moved.
    #[error("{}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("its saved state {} is missing", .0.display())]
    SavedStateMissing(PathBuf),
    /// Several steps failed (a teardown keeps going): each one's message.
    #[error("{}", .0.join("; "))]
    Several(Vec<String>),
    /// A cause, and what came of it: a second failure while putting things
    /// back, or what the VM is left as. Its kind is the first cause's.
    #[error("{}{note}", chain(cause.as_ref()))]
    Also { cause: Box<Cause>, note: String },
}

/// What kind of failure a [`Cause`] is: what the API answers (409, 503,
/// 507, 500) and what the user is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// Another process holds the VM's disk; `pids`: the VMMs of this VM
    /// found running on it ("123, 456"), empty when none was found.
    DiskInUse { disk: &'a Path, pids: &'a str },
    /// A program the host must provide is missing, or the host lacks what
    /// fcm needs of it (cgroup controllers).
    Missing,
    /// The file system under the VM's files is full, or over its quota.
    StorageFull,
    /// The host or the VMM failed otherwise.
    Failed,
}

fn logged(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!("; its log ends: {log}")
    }
}

impl Cause {
    /// A `map_err` for an I/O error on `path`.
    pub(super) fn file(path: &Path) -> impl FnOnce(io::Error) -> Cause + use<> {
        let path = path.to_owned();
        move |source| Cause::File { path, source }
    }

    /// This cause, followed by `note` in its message.
    pub(super) fn also(self, note: impl Into<String>) -> Cause {
        Cause::Also {
            cause: Box::new(self),
            note: note.into(),
        }
    }

    /// The host's error under this cause, to look into.
    fn inner(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Vmm(e) => Some(e),
            Self::Launch { vmm, .. } => Some(vmm.as_ref()),
            Self::Network(e) => Some(e),
            Self::Disk(e) => Some(e),
            Self::Store(e) => Some(e),
            Self::ConfigDrive(e) => Some(e),
            Self::Host(e) => Some(e),
            Self::File { source, .. } => Some(source),
            Self::SavedStateMissing(_) | Self::Several(_) | Self::Also { .. } => None,
        }
    }

    /// The VMM's error under this cause, if it is one.
    fn vmm(&self) -> Option<&VmmError> {
        match self {
            Self::Vmm(e) => Some(e),
            Self::Launch { vmm, .. } => Some(vmm),
            _ => None,
        }
    }

    pub fn kind(&self) -> Kind<'_> {
        if let Self::Also { cause, .. } = self {
            return cause.kind();
        }
        match self.vmm() {
            Some(VmmError::DiskInUse { disk, pids }) => return Kind::DiskInUse { disk, pids },
            Some(VmmError::DiskLock(DiskLockError::Busy { path })) => {
                return Kind::DiskInUse {
                    disk: path,
                    pids: "",
                };
            }
            Some(
                VmmError::MissingBinary { .. } | VmmError::Cgroup(CgroupError::NoHierarchy { .. }),
            ) => return Kind::Missing,
            _ => {}
        }
        match self.inner() {
            Some(e) if storage_full(e) => Kind::StorageFull,
            _ => Kind::Failed,
        }
    }

    /// What the user should do next, for the kinds where fcm knows.
    pub fn hint(&self) -> Option<String> {
        if let Self::Also { cause, .. } = self {
            return cause.hint();
        }
        match self.kind() {
            Kind::DiskInUse { disk, pids: "" } => Some(format!(
                "a process other than a VMM of this VM holds the disk: find it with: \
                 fuser -v {}; end it, then try again",
                disk.display()
            )),
            Kind::DiskInUse { pids, .. } => Some(format!(
                "a VMM of this VM runs without the daemon knowing (pid {pids}): restart the \
                 daemon, which adopts a VMM it finds running, or end it with: kill {}; then \
                 try again",
                pids.replace(", ", " ")
            )),
            Kind::Missing => {
                matches!(self.vmm(), Some(VmmError::MissingBinary { .. })).then(|| {
                    "install it, or set its path in the daemon config (docs/config.md)".into()
                })
            }
            Kind::StorageFull => Some(
                "the file system of the daemon's state directory is full (df -h shows it): \
                 free space, e.g. destroy VMs or remove checkpoints you no longer need \
                 (fcm checkpoints <vm>, fcm checkpoint rm <vm> <checkpoint>), then try again"
                    .into(),
            ),
            Kind::Failed => None,
        }
    }
}

/// Whether an I/O error in `e`'s chain says the file system is full (or
/// over its quota).
fn storage_full(e: &(dyn Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && matches!(
                io.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            )
        {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enospc() -> io::Error {
        io::Error::from_raw_os_error(libc::ENOSPC)
    }

    #[test]
    fn a_full_file_system_is_found_under_any_host_error() {
        let copy = Cause::Disk(DiskError::Copy {
            from: "/base.img".into(),
            to: "/vm/rootfs.img".into(),
            source: enospc(),
        });
        assert_eq!(copy.kind(), Kind::StorageFull);
        assert!(copy.hint().is_some_and(|h| h.contains("df -h")));
        // The message is the chain, as before: the step, then the OS's words.
        assert_eq!(
            copy.to_string(),
            "could not copy /base.img to /vm/rootfs.img"
        );
        assert!(chain(&copy).ends_with("No space left on device (os error 28)"));
        let quota =
            Cause::file(Path::new("/vm/paused"))(io::Error::from_raw_os_error(libc::EDQUOT));
        assert_eq!(quota.kind(), Kind::StorageFull);
        assert_eq!(Cause::Vmm(VmmError::Io(enospc())).kind(), Kind::StorageFull);
        let other = Cause::file(Path::new("/vm"))(io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(other.kind(), Kind::Failed);
        assert_eq!(other.hint(), None);
        // A note after it keeps its kind.
        assert_eq!(
            copy.also("; and the guest could not continue").kind(),
            Kind::StorageFull
        );
    }

    #[test]
    fn a_disk_held_by_another_process_is_a_conflict_naming_it() {
        let found = Cause::Launch {
            vmm: Box::new(VmmError::DiskInUse {
                disk: "/vm/rootfs.img".into(),
                pids: "123, 456".into(),
            }),
            log: String::new(),
        };
        assert!(matches!(
            found.kind(),
            Kind::DiskInUse {
                pids: "123, 456",
                ..
            }
        ));
        let hint = found.hint().expect("hint");
        assert!(
            hint.contains("pid 123, 456") && hint.contains("kill 123 456"),
            "{hint}"
        );
        let unknown = Cause::Vmm(VmmError::DiskLock(DiskLockError::Busy {
            path: "/vm/rootfs.img".into(),
        }));
        assert!(matches!(unknown.kind(), Kind::DiskInUse { pids: "", .. }));
        let hint = unknown.hint().expect("hint");
        assert!(hint.contains("fuser -v /vm/rootfs.img"), "{hint}");
    }

    #[test]
    fn a_vmm_that_did_not_start_says_what_its_log_gained() {
        let c = Cause::Launch {
            vmm: Box::new(VmmError::NotReady {
                program: "qemu-system-x86_64",
                detail: "it exited".into(),
            }),
            log: "qemu-system-x86_64: -netdev tap,fd=3: Device or resource busy".into(),
        };
        assert_eq!(c.kind(), Kind::Failed);
        assert_eq!(
            chain(&c),
            "qemu-system-x86_64 did not come up: it exited; its log ends: \
             qemu-system-x86_64: -netdev tap,fd=3: Device or resource busy"
        );
        let missing = Cause::Launch {
            vmm: Box::new(VmmError::MissingBinary {
                program: "firecracker",
                path: "/usr/local/bin/firecracker".into(),
            }),
            log: String::new(),
        };
        assert_eq!(missing.kind(), Kind::Missing);
        assert!(missing.hint().is_some_and(|h| h.contains("docs/config.md")));
    }
}
