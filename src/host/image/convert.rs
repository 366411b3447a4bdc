//! An image in buildah's storage → an ext4 `rootfs.img` (label `fcm-root`)
//! made by `mkfs.ext4 -d` from the mounted tree, the image's config
//! (`fcm_proto::ImageConfig`) and what the tree offers the daemon (tmux,
//! sshd, a shell). The tree is the image's: symlinks in it are resolved
//! inside it, never on the host.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use fcm_proto::ImageConfig;
use serde::{Deserialize, Serialize};

use super::builder::{Builder, LogSink};
use super::{ImageError, Limits};

const MIB: u64 = 1 << 20;

/// What the image's tree offers (found at conversion).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tools {
    /// An executable `tmux` in /usr/bin, /bin or /usr/local/bin.
    pub tmux: bool,
    /// An executable `/usr/sbin/sshd`.
    pub sshd: bool,
    /// An executable `/bin/sh`.
    pub shell: bool,
}

/// The size of `rootfs.img` for a tree of `used` bytes: used × 1.25 +
/// 64 MiB, rounded up to a MiB (the VM's disk is extended from it at
/// create, and the guest grows the file system).
pub fn image_size_for(used: u64) -> u64 {
    let raw = used.saturating_add(used / 4).saturating_add(64 * MIB);
    raw.div_ceil(MIB).min(u64::MAX / MIB) * MIB
}

/// Bytes and inodes a tree needs in ext4 (4 KiB blocks).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// Walks a tree without following symlinks, counting each inode once;
/// stops as soon as it is over `limit` bytes.
pub(super) fn usage(root: &Path, limit: u64) -> Result<Usage, ImageError> {
    let mut u = Usage::default();
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(ImageError::io("could not read", &dir))?;
        for e in entries {
            let e = e.map_err(ImageError::io("could not read", &dir))?;
            let m = std::fs::symlink_metadata(e.path())
                .map_err(ImageError::io("could not stat", e.path()))?;
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            u.inodes += 1;
            let ft = m.file_type();
            u.bytes += if ft.is_dir() {
                stack.push(e.path());
                4096
            } else if ft.is_file() {
                m.len().div_ceil(4096) * 4096
            } else if ft.is_symlink() && m.len() > 59 {
                4096
            } else {
                0
            };
            if u.bytes > limit {
                return Err(ImageError::TooBig { limit });
            }
        }
    }
    Ok(u)
}

/// `path` (absolute, in the image) resolved inside `root`, following the
/// image's symlinks as the guest would (absolute targets from `root`,
/// `..` stopping at it), at most 40 of them.
pub(super) fn resolve_in(root: &Path, path: &str) -> Option<PathBuf> {
    let mut todo: Vec<String> = path.split('/').rev().map(str::to_owned).collect();
    let mut at: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                at.pop();
                continue;
            }
            _ => {}
        }
        let mut p = root.to_path_buf();
        p.extend(&at);
        p.push(&c);
        let m = std::fs::symlink_metadata(&p).ok()?;
        if m.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = std::fs::read_link(&p).ok()?;
            if target.is_absolute() {
                at.clear();
            }
            let parts: Vec<String> = target
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                    Component::ParentDir => Some("..".into()),
                    _ => None,
                })
                .collect();
            todo.extend(parts.into_iter().rev());
        } else {
            at.push(c);
        }
    }
    let mut p = root.to_path_buf();
    p.extend(&at);
    Some(p)
}

fn executable(root: &Path, path: &str) -> bool {
    resolve_in(root, path)
        .and_then(|p| std::fs::symlink_metadata(p).ok())
        .is_some_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

pub(super) fn tools_of(root: &Path) -> Tools {
    Tools {
        tmux: ["/usr/bin/tmux", "/bin/tmux", "/usr/local/bin/tmux"]
            .iter()
            .any(|p| executable(root, p)),
        sshd: executable(root, "/usr/sbin/sshd"),
        shell: executable(root, "/bin/sh"),
    }
}

/// The image's config and digest from `buildah inspect`.
pub(super) fn config_of(inspect: &str) -> Result<(ImageConfig, String), ImageError> {
    let bad = |m: &str| ImageError::BadOutput(format!("buildah inspect: {m}"));
    let v: serde_json::Value = serde_json::from_str(inspect).map_err(|e| bad(&e.to_string()))?;
    let c = &v["OCIv1"]["config"];
    let strings = |k: &str| -> Vec<String> {
        c[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let text = |k: &str| c[k].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let config = ImageConfig {
        entrypoint: strings("Entrypoint"),
        cmd: strings("Cmd"),
        env: strings("Env"),
        workdir: text("WorkingDir"),
        user: text("User"),
    };
    let id = v["FromImageID"].as_str().unwrap_or_default();
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("no image id"));
    }
    Ok((config, format!("sha256:{id}")))
}

/// Converts the image `image` (in buildah's storage) into
/// `<stage>/rootfs.img`; returns its config, tools and digest.
pub(super) fn convert(
    builder: &Builder,
    image: &str,
    stage: &Path,
    limits: &Limits,
    log: &mut LogSink<'_>,
) -> Result<(ImageConfig, Tools, String), ImageError> {
    let inspect = builder.buildah(&["inspect", "--type", "image", image])?;
    let (config, digest) = config_of(&inspect)?;
    let ctr = format!("{image}-ctr");
    builder.buildah(&["from", "--pull=never", "--name", &ctr, image])?;
    let r = (|| {
        let dir = builder.buildah(&["mount", &ctr])?;
        let dir = PathBuf::from(dir.trim());
        let used = usage(&dir, limits.max_unpacked_bytes)?;
        let size = image_size_for(used.bytes);
        let tools = tools_of(&dir);
        let _ = log(&format!(
            "converting to ext4: {} MiB of files, a {} MiB rootfs.img",
            used.bytes / MIB,
            size / MIB
        ));
        let img = stage.join("rootfs.img");
        let inodes = used.inodes + used.inodes / 3 + 4096;
        let args: Vec<std::ffi::OsString> = vec![
            "-q".into(),
            "-F".into(),
            "-b".into(),
            "4096".into(),
            "-N".into(),
            inodes.to_string().into(),
            "-L".into(),
            "fcm-root".into(),
            "-d".into(),
            dir.into(),
            img.into(),
            format!("{}M", size / MIB).into(),
        ];
        let out = crate::host::run_outcome("mkfs.ext4", &args, None, Some(builder.timeout))
            .map_err(|e| ImageError::Tool {
                cmd: "mkfs.ext4".into(),
                detail: e.to_string(),
            })?;
        if out.code != Some(0) {
            return Err(ImageError::Tool {
                cmd: out.cmd,
                detail: format!("{:?}: {}", out.code, out.stderr),
            });
        }
        Ok(tools)
    })();
    let _ = builder.buildah(&["umount", &ctr]);
    let _ = builder.buildah(&["rm", &ctr]);
    Ok((config, r?, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_with_room() {
        assert_eq!(image_size_for(0), 64 * MIB);
        assert_eq!(image_size_for(400 * MIB), 564 * MIB);
        assert_eq!(image_size_for(1), 65 * MIB);
        assert_eq!(image_size_for(4 * MIB + 1), 70 * MIB);
        assert_eq!(image_size_for(u64::MAX) % MIB, 0);
    }

    #[test]
    fn symlinks_resolve_inside_the_tree_and_tools_are_found() {
        let t = tempfile::tempdir().expect("tmp");
        let r = t.path();
        std::fs::create_dir_all(r.join("usr/bin")).expect("mk");
        std::fs::create_dir_all(r.join("usr/sbin")).expect("mk");
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).expect("ln");
        std::fs::write(r.join("usr/bin/busybox"), b"x").expect("w");
        crate::host::set_mode(&r.join("usr/bin/busybox"), 0o755).expect("chmod");
        std::os::unix::fs::symlink("busybox", r.join("usr/bin/sh")).expect("ln");
        // An absolute symlink is the image's, not the host's: /usr/bin/tmux
        // exists on many hosts, never in this tree.
        std::os::unix::fs::symlink("/../../usr/bin/tmux-real", r.join("usr/bin/tmux")).expect("ln");
        std::os::unix::fs::symlink("/etc/passwd", r.join("usr/sbin/sshd")).expect("ln");
        assert_eq!(
            tools_of(r),
            Tools {
                tmux: false,
                sshd: false,
                shell: true
            }
        );
        assert_eq!(resolve_in(r, "/bin/sh"), Some(r.join("usr/bin/busybox")));
        assert_eq!(resolve_in(r, "/usr/sbin/sshd"), None);
        std::os::unix::fs::symlink("loop", r.join("loop")).expect("ln");
        assert_eq!(resolve_in(r, "/loop"), None);
    }

    #[test]
    fn usage_counts_and_stops_at_the_cap() {
        let t = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(t.path().join("d")).expect("mk");
        std::fs::write(t.path().join("d/f"), vec![0u8; 5000]).expect("w");
        std::fs::hard_link(t.path().join("d/f"), t.path().join("g")).expect("ln");
        let u = usage(t.path(), 1 << 30).expect("usage");
        assert_eq!(
            u,
            Usage {
                bytes: 4096 + 8192,
                inodes: 2
            }
        );
        let e = usage(t.path(), 5000).expect_err("cap");
        assert!(e.to_string().contains("max_unpacked_bytes"), "{e}");
    }

    #[test]
    fn config_comes_from_inspect() {
        let j = r#"{"FromImageID":"96838aa1219c9eca072329721186208413725641c275c62d315e0b05e1563f5b",
            "OCIv1":{"config":{"Env":["PATH=/bin","GREETING=hi"],"Cmd":["python3","-m","http.server"],
            "WorkingDir":"/srv/www","User":""}}}"#;
        let (c, d) = config_of(j).expect("config");
        assert_eq!(c.cmd, ["python3", "-m", "http.server"]);
        assert_eq!(c.env[1], "GREETING=hi");
        assert_eq!((c.workdir.as_deref(), c.user), (Some("/srv/www"), None));
        assert!(c.entrypoint.is_empty());
        assert!(d.starts_with("sha256:96838aa1"));
        assert!(config_of("{}").is_err());
    }
}
