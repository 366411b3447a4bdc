//! Guests whose RAM can be shared (forks). A VM with shared RAM boots with
//! its memory in a memfd the daemon makes and hands over (`-object
//! memory-backend-file,…,mem-path=/proc/self/fd/N,share=on`): its pages
//! can be copied while the guest is stopped. A fork saves only the
//! devices' state (`x-ignore-shared`: the RAM is the memfd), copies the
//! RAM into a new memfd that is then sealed (the image: it never changes
//! again), and each fork maps that image privately (`share=off`, copy on
//! write) and loads the devices with `-incoming defer` and
//! `migrate-incoming`. Pages the forks do not write stay shared.

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use super::qmp::{migration_done, qmp, qmp_session};
use super::{MIGRATION_TIMEOUT, QMP};
use crate::host;
use crate::host::vmm::VmmError;

/// The device state of a guest being forked, inside a state directory.
pub const DEVICES: &str = "devices.state";
/// The id of the RAM backend: the name the RAM block has in a migration
/// stream, so every launch of a VM with shared RAM must use it.
pub const RAM_ID: &str = "ram";

/// A new memfd of `bytes` (zeros), that can be sealed later.
pub fn memfd(name: &str, bytes: u64) -> std::io::Result<File> {
    use rustix::fs::{MemfdFlags, memfd_create};
    let fd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let f = File::from(fd);
    f.set_len(bytes)?;
    Ok(f)
}

/// The descriptor number of a QEMU's shared RAM (its memfd), from its
/// command line; none for a QEMU whose RAM is not a shared memfd (a VM
/// made before shared RAM, or a fork still on its image: it can be forked
/// after a stop and start).
pub fn shared_ram_fd(pid: u32) -> Option<u32> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline
        .split(|b| *b == 0)
        .filter_map(|a| std::str::from_utf8(a).ok())
        .filter(|a| a.starts_with("memory-backend-file,") && a.contains(",share=on"))
        .find_map(|a| {
            a.split(',')
                .find_map(|kv| kv.strip_prefix("mem-path=/proc/self/fd/"))?
                .parse()
                .ok()
        })
}

/// Copies the (stopped) guest's RAM out of QEMU `pid`'s memfd into a new
/// memfd, only the parts that hold data, and seals it: the fork image.
pub fn ram_image(pid: u32) -> Result<File, VmmError> {
    let fail = |e: String| VmmError::Save(format!("copying the guest's memory: {e}"));
    let fd = shared_ram_fd(pid).ok_or_else(|| {
        fail(
            "its memory is not shared (a VM made before forks, or a fork not restarted since)"
                .into(),
        )
    })?;
    let src = File::open(format!("/proc/{pid}/fd/{fd}")).map_err(|e| fail(e.to_string()))?;
    let size = src.metadata().map_err(|e| fail(e.to_string()))?.len();
    let image = memfd("fcm-fork-image", size).map_err(|e| fail(e.to_string()))?;
    copy_data(&src, &image, size).map_err(|e| fail(e.to_string()))?;
    use rustix::fs::{SealFlags, fcntl_add_seals};
    fcntl_add_seals(
        &image,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )
    .map_err(|e| fail(format!("sealing the image: {e}")))?;
    Ok(image)
}

/// Writes a fork image into the file `path` (only its data; holes stay
/// holes), synced: a template's RAM on disk.
pub fn store_image(image: &File, path: &Path) -> std::io::Result<()> {
    let size = image.metadata()?.len();
    let out = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    out.set_len(size)?;
    copy_data(image, &out, size)?;
    out.sync_all()
}

/// A sealed fork image (a memfd) with the content of the file `path`
/// ([`store_image`]'s).
pub fn load_image(path: &Path) -> Result<File, VmmError> {
    let fail = |e: String| VmmError::Load(format!("{}: {e}", path.display()));
    let src = File::open(path).map_err(|e| fail(e.to_string()))?;
    let size = src.metadata().map_err(|e| fail(e.to_string()))?.len();
    let image = memfd("fcm-template-image", size).map_err(|e| fail(e.to_string()))?;
    copy_data(&src, &image, size).map_err(|e| fail(e.to_string()))?;
    use rustix::fs::{SealFlags, fcntl_add_seals};
    fcntl_add_seals(
        &image,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )
    .map_err(|e| fail(format!("sealing the image: {e}")))?;
    Ok(image)
}

/// Copies the data ranges of `src` (holes skipped) to the same offsets of `dst`.
pub(super) fn copy_data(src: &File, dst: &File, size: u64) -> std::io::Result<()> {
    use rustix::fs::{SeekFrom, seek};
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < size {
        let start = match seek(src.as_fd(), SeekFrom::Data(off)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = seek(src.as_fd(), SeekFrom::Hole(start))?.min(size);
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], at)?;
            // Untouched pages read as zeros: leave them holes.
            if buf[..n].iter().any(|b| *b != 0) {
                dst.write_all_at(&buf[..n], at)?;
            }
            at += n as u64;
        }
        off = end;
    }
    Ok(())
}

/// Stops the guest of the QEMU whose directory is `dir` and writes its
/// device state only (its RAM is shared, and skipped) into `into/DEVICES`,
/// synced. The guest stays stopped until `continue_guest`; later saves
/// (pause, checkpoint) stream the RAM again.
pub fn save_devices(dir: &Path, into: &Path) -> Result<(), VmmError> {
    let sock = dir.join(QMP);
    let save = |e: String| VmmError::Save(e);
    qmp(&sock, &serde_json::json!({"execute": "stop"})).map_err(save)?;
    let path = into.join(DEVICES);
    let file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| save(format!("{}: {e}", path.display())))?;
    let caps = |on: bool| {
        serde_json::json!({"execute": "migrate-set-capabilities", "arguments": {
            "capabilities": [{"capability": "x-ignore-shared", "state": on}]}})
    };
    let result = (|| {
        qmp_session(
            &sock,
            &[
                serde_json::json!({"execute": "getfd", "arguments": {"fdname": "fcm-fork"}}),
                caps(true),
                serde_json::json!({"execute": "migrate-set-parameters",
                    "arguments": {"max-bandwidth": 1u64 << 40}}),
                serde_json::json!({"execute": "migrate", "arguments": {"uri": "fd:fcm-fork"}}),
            ],
            Some(file.as_fd()),
        )?;
        host::wait_until(MIGRATION_TIMEOUT, Duration::from_millis(10), || {
            match qmp(&sock, &serde_json::json!({"execute": "query-migrate"})) {
                Ok(v) => migration_done(&v),
                Err(e) => Some(Err(e)),
            }
        })
        .unwrap_or_else(|| Err("saving the devices did not complete".into()))?;
        file.sync_all()
            .map_err(|e| format!("{}: {e}", path.display()))
    })();
    // Whatever happened, the next pause or checkpoint streams the RAM.
    let reset = qmp(&sock, &caps(false));
    result.and(reset.map(|_| ())).map_err(save)
}

/// Tells a QEMU started with `-incoming defer` to load the device state
/// on its descriptor `fd` with its RAM from its image (`x-ignore-shared`).
pub fn migrate_incoming(dir: &Path, fd: i32) -> Result<(), String> {
    qmp_session(
        &dir.join(QMP),
        &[
            serde_json::json!({"execute": "migrate-set-capabilities", "arguments": {
                "capabilities": [{"capability": "x-ignore-shared", "state": true}]}}),
            serde_json::json!({"execute": "migrate-incoming", "arguments": {"uri": format!("fd:{fd}")}}),
        ],
        None,
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_holds_the_data_and_is_sealed() {
        let src = memfd("t", 8 << 20).expect("memfd");
        src.write_all_at(b"hello", 3 << 20).expect("write");
        src.write_all_at(b"end", (8 << 20) - 3).expect("write");
        let dst = memfd("t2", 8 << 20).expect("memfd");
        copy_data(&src, &dst, 8 << 20).expect("copy");
        let mut b = [0u8; 5];
        dst.read_exact_at(&mut b, 3 << 20).expect("read");
        assert_eq!(&b, b"hello");
        let mut e = [0u8; 3];
        dst.read_exact_at(&mut e, (8 << 20) - 3).expect("read");
        assert_eq!(&e, b"end");
    }

    #[test]
    fn the_shared_ram_descriptor_is_read_from_a_command_line() {
        // This test's own process has no such argument.
        assert_eq!(shared_ram_fd(std::process::id()), None);
    }
}
