//! Hostile archives: what the pre-scan refuses is refused with its
//! message; what it allows (an absolute symlink a later layer writes
//! through, a hard link through it, a device node, a setuid root file)
//! stays inside the image. Either way, no file outside the image changes.

use super::*;

/// One raw entry (the tar crate's setters refuse `..` and absolute names).
struct Raw {
    name: String,
    kind: tar::EntryType,
    link: String,
    mode: u32,
    data: &'static [u8],
    dev: Option<(u32, u32)>,
}

fn raw(name: &str, kind: tar::EntryType, link: &str, mode: u32, data: &'static [u8]) -> Raw {
    Raw {
        name: name.to_owned(),
        kind,
        link: link.to_owned(),
        mode,
        data,
        dev: None,
    }
}

fn tar_raw(entries: &[Raw]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        }
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        if let Some((maj, min)) = e.dev {
            h.set_device_major(maj).expect("major");
            h.set_device_minor(min).expect("minor");
        }
        h.set_cksum();
        b.append(&h, e.data).expect("append");
    }
    b.into_inner().expect("tar")
}

fn sha256(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A `docker save` archive of these layers.
fn docker_archive(layers: &[Vec<u8>]) -> Vec<u8> {
    let ids: Vec<String> = layers
        .iter()
        .map(|l| format!("\"sha256:{}\"", sha256(l)))
        .collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        ids.join(",")
    );
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("\"{i}/layer.tar\""))
        .collect();
    let manifest = format!(
        r#"[{{"Config":"config.json","RepoTags":["localhost/hostile:latest"],"Layers":[{}]}}]"#,
        names.join(",")
    );
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("manifest.json".into(), manifest.into_bytes()),
        ("config.json".into(), config.into_bytes()),
    ];
    for (i, l) in layers.iter().enumerate() {
        files.push((format!("{i}/layer.tar"), l.clone()));
    }
    let refs: Vec<(&str, u32, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), 0o644, d.as_slice()))
        .collect();
    tar_files(&refs)
}

/// Every path under `dir` with its kind, mode, links, size and content hash.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("ls").flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).expect("stat");
            let content = if m.is_file() {
                sha256(&std::fs::read(&p).expect("read"))
            } else if m.is_dir() {
                stack.push(p.clone());
                String::new()
            } else {
                String::new()
            };
            out.insert(
                p,
                format!("{:o} {} {} {}", m.mode(), m.nlink(), m.len(), content),
            );
        }
    }
    out
}

#[test]
fn hostile_archives_are_refused_or_kept_inside_the_image() {
    need!();
    let env = Env::new(Duration::from_secs(600));
    // The host's files the archives aim at: a marker in a directory of
    // its own, and the directory around it.
    let host = tempfile::Builder::new()
        .prefix("fcm-host-")
        .tempdir_in("/var/tmp")
        .expect("tmp");
    let target = host.path().join("target");
    std::fs::create_dir(&target).expect("mk");
    std::fs::write(target.join("marker"), b"the host's own file\n").expect("marker");
    let t = target.to_str().expect("utf8").to_owned();
    let marker = format!("{t}/marker");
    let before = snapshot(host.path());
    let ups = "../".repeat(12);
    let up_marker = format!("{ups}{}", marker.trim_start_matches('/'));
    use tar::EntryType::{Block, Link, Regular, Symlink};

    let refused: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "dotdot.tar",
            tar_raw(&[raw(&up_marker, Regular, "", 0o644, b"pwned\n")]),
            format!("the archive: entry {up_marker} leaves the image"),
        ),
        (
            "absolute.tar",
            tar_raw(&[raw(&marker, Regular, "", 0o644, b"pwned\n")]),
            format!("the archive: entry {marker} is an absolute path"),
        ),
        (
            "hardlink.tar",
            tar_raw(&[raw("etc/passwd-link", Link, &marker, 0o644, b"")]),
            format!("hard link etc/passwd-link points outside the image ({marker})"),
        ),
        (
            "layer2-dotdot.tar",
            docker_archive(&[
                tar_raw(&[raw("etc/ok", Regular, "", 0o644, b"ok\n")]),
                tar_raw(&[raw(&up_marker, Regular, "", 0o644, b"pwned\n")]),
            ]),
            format!("layer 2 (layer.tar): entry {up_marker} leaves the image"),
        ),
    ];
    for (file, data, msg) in refused {
        let req = ImportRequest {
            name: ImageName::new("hostile").expect("name"),
            archive: env.file(file, &data),
            limits: limits(),
        };
        let e = import(&env.store, &env.builder, &req, &mut noop_log()).expect_err(file);
        assert!(e.to_string().contains(&msg), "{file}: {e}");
        env.assert_store_has(0);
    }

    // Allowed by the pre-scan: an absolute symlink to the host's directory
    // that a later layer writes through, a hard link through it, a device
    // node and a setuid root file. buildah extracts in a chroot of the
    // image's tree: they land in the image, or the import fails.
    let mut dev = raw("dev/sda-evil", Block, "", 0o660, b"");
    dev.dev = Some((8, 0));
    // The link's target exists in the image too, so the writes through it
    // succeed, inside the image.
    let mut parts = Vec::new();
    let mut at = String::new();
    for c in t.trim_start_matches('/').split('/') {
        at = format!("{at}{c}/");
        parts.push(raw(&at, tar::EntryType::Directory, "", 0o755, b""));
    }
    parts.extend([
        raw("etc/", tar::EntryType::Directory, "", 0o755, b""),
        raw("etc/evil", Symlink, &t, 0o777, b""),
        raw("dev/", tar::EntryType::Directory, "", 0o755, b""),
        dev,
        raw("usr/", tar::EntryType::Directory, "", 0o755, b""),
        raw("usr/bin/", tar::EntryType::Directory, "", 0o755, b""),
        raw("usr/bin/rootshell", Regular, "", 0o4755, b"#!/bin/sh\n"),
    ]);
    let layer1 = tar_raw(&parts);
    let layer2 = tar_raw(&[
        raw("etc/evil/x", Regular, "", 0o644, b"pwned\n"),
        raw("etc/evil/marker", Regular, "", 0o644, b"pwned\n"),
        raw("stolen", Link, "etc/evil/marker", 0o644, b""),
    ]);
    let req = ImportRequest {
        name: ImageName::new("contained").expect("name"),
        archive: env.file("symlink-layers.tar", &docker_archive(&[layer1, layer2])),
        limits: limits(),
    };
    let meta = import(&env.store, &env.builder, &req, &mut noop_log()).expect("contained");
    {
        let img = env.store.rootfs(&meta);
        assert!(debugfs(&img, &format!("cat {t}/x")).contains("pwned"));
        assert!(debugfs(&img, "cat /stolen").contains("pwned"));
        let dev = debugfs(&img, "stat /dev/sda-evil");
        assert!(dev.contains("Type: block"), "{dev}");
        let suid = debugfs(&img, "stat /usr/bin/rootshell");
        assert!(
            suid.contains("Mode:  04755") && suid.contains("User:     0"),
            "{suid}"
        );
        let evil = debugfs(&img, "stat /etc/evil");
        assert!(evil.contains(&format!("Fast link dest: \"{t}\"")), "{evil}");
    }
    env.assert_no_temporaries();
    assert_eq!(
        snapshot(host.path()),
        before,
        "a file outside the image changed"
    );
    assert_eq!(
        std::fs::read(target.join("marker")).expect("marker"),
        b"the host's own file\n"
    );
    assert!(!target.join("x").exists());
}
