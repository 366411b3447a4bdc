//! `fcm/base` in the builder's storage, made from the base guest's root
//! file system (an ext4 image), so `FROM fcm/base` works with no registry.
//! It is labelled with the rootfs's size and mtime and made again when
//! those change. (`scripts/base-image.sh` does the same for the set-up.)

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::ImageError;
use super::builder::{Builder, temp_name};

/// The built-in base image's name.
pub const BASE_IMAGE: &str = "fcm/base";
/// The label on `fcm/base` saying which rootfs it was made from.
pub const BASE_LABEL: &str = "fcm.base-rootfs";

/// One maker at a time in this process.
static MAKING: Mutex<()> = Mutex::new(());

/// The label value of a rootfs: its size and mtime.
pub fn base_label(rootfs: &Path) -> Result<String, ImageError> {
    let m = std::fs::metadata(rootfs).map_err(ImageError::io("could not stat", rootfs))?;
    Ok(format!("{}-{}.{:09}", m.size(), m.mtime(), m.mtime_nsec()))
}

fn current_label(builder: &Builder) -> Option<(String, String)> {
    let out = builder
        .buildah(&["inspect", "--type", "image", BASE_IMAGE])
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let label = v["OCIv1"]["config"]["Labels"][BASE_LABEL]
        .as_str()?
        .to_owned();
    let id = v["FromImageID"].as_str()?.to_owned();
    Some((label, id))
}

/// Makes `fcm/base` from `base_rootfs` when it is missing or was made
/// from another rootfs; true when it made it. The rootfs is loop-mounted
/// read-only on a private mount point under `state_dir` (root only),
/// always unmounted.
pub fn ensure_base(
    builder: &Builder,
    base_rootfs: &Path,
    state_dir: &Path,
) -> Result<bool, ImageError> {
    let _one = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    let want = base_label(base_rootfs)?;
    let old = current_label(builder);
    if old.as_ref().is_some_and(|(l, _)| *l == want) {
        return Ok(false);
    }
    let work = state_dir.join(format!(".image-base-{}", temp_name()));
    std::fs::create_dir_all(work.join("mnt")).map_err(ImageError::io("could not make", &work))?;
    crate::host::set_mode(&work, 0o700).map_err(ImageError::io("could not protect", &work))?;
    let r = make(builder, base_rootfs, &work, &want);
    let _ = std::fs::remove_dir_all(&work);
    r?;
    if let Some((_, id)) = old {
        // The old base lost its name; it goes unless something uses it.
        let _ = builder.buildah(&["rmi", &id]);
    }
    Ok(true)
}

fn tool(e: crate::host::HostError) -> ImageError {
    ImageError::Tool {
        cmd: "base image".into(),
        detail: e.to_string(),
    }
}

fn make(builder: &Builder, rootfs: &Path, work: &Path, label: &str) -> Result<(), ImageError> {
    let mnt = work.join("mnt");
    let tarball = work.join("base.tar");
    let t = Duration::from_secs(600);
    let mnt_s = mnt.to_string_lossy().into_owned();
    crate::host::run_timeout(
        "mount",
        ["-o", "loop,ro", &rootfs.to_string_lossy(), &mnt_s],
        Duration::from_secs(60),
    )
    .map_err(tool)?;
    let packed = crate::host::run_timeout(
        "tar",
        [
            "-C",
            &mnt_s,
            "--numeric-owner",
            "--xattrs",
            "-cf",
            &tarball.to_string_lossy(),
            ".",
        ],
        t,
    );
    let unmounted = crate::host::run_timeout("umount", [&mnt_s], Duration::from_secs(60));
    packed.map_err(tool)?;
    unmounted.map_err(tool)?;
    let ctr = temp_name();
    builder.buildah(&["from", "--name", &ctr, "scratch"])?;
    let tar_s = tarball.to_string_lossy().into_owned();
    let r = (|| {
        builder.buildah(&["add", &ctr, &tar_s, "/"])?;
        builder.buildah(&["config", "--label", &format!("{BASE_LABEL}={label}"), &ctr])?;
        builder.buildah(&["commit", "--quiet", &ctr, BASE_IMAGE])
    })();
    let _ = builder.buildah(&["rm", &ctr]);
    r.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_is_the_one_the_set_up_script_writes() {
        // scripts/base-image.sh labels with `stat -c '%s-%.9Y'`.
        let t = tempfile::tempdir().expect("tmp");
        let f = t.path().join("rootfs.img");
        std::fs::write(&f, vec![0u8; 12345]).expect("write");
        let script =
            crate::host::run("stat", ["-c", "%s-%.9Y", &f.to_string_lossy()]).expect("stat");
        assert_eq!(base_label(&f).expect("label"), script.trim());
    }
}
