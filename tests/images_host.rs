//! host::image with the real buildah (root): a Dockerfile FROM fcm/base
//! built and converted to ext4; builds that fail; OCI and docker archives
//! and a busybox-only rootfs imported; hostile archives refused or kept
//! inside the image, with every file outside it unchanged. Each test has a
//! containers storage of its own in a temp dir, removed at its end.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fcm::host::image::{
    BASE_IMAGE, BuildRequest, Builder, BuilderKind, ImageError, ImageName, ImportRequest, Limits,
    Source, Store, Tools, build, ensure_base, import,
};
use tempfile::TempDir;

const BASE_ROOTFS: &str = "/var/lib/firecracker/base-rootfs.img";

/// Why these tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    if !fcm::host::is_root() {
        return Some("not root (buildah's chroot builds and loop mounts need it)".into());
    }
    for p in ["buildah", "mkfs.ext4", "debugfs", "busybox"] {
        if fcm::host::find_program(Path::new(p)).is_none() {
            return Some(format!("{p} is not installed"));
        }
    }
    None
}

macro_rules! need {
    ($($base:expr)?) => {
        if let Some(why) = missing() {
            eprintln!("SKIPPED: {why}");
            return;
        }
        $(if $base && !Path::new(BASE_ROOTFS).exists() {
            eprintln!("SKIPPED: no {BASE_ROOTFS} (run scripts/setup.sh)");
            return;
        })?
    };
}

struct Env {
    tmp: TempDir,
    builder: Builder,
    store: Store,
}

impl Env {
    fn new(timeout: Duration) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("fcm-images-")
            .tempdir_in("/var/tmp")
            .expect("tmp");
        let storage = tmp.path().join("storage");
        let builder = Builder::new(BuilderKind::Buildah, Some(storage), timeout);
        let store = Store::open(&tmp.path().join("state")).expect("store");
        Self {
            tmp,
            builder,
            store,
        }
    }

    fn buildah(&self, args: &[&str]) -> String {
        let root = self.tmp.path().join("storage");
        let out = Command::new("buildah")
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(root.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .expect("buildah");
        assert!(
            out.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The builder's storage holds no temporary image or container.
    fn assert_no_temporaries(&self) {
        let all = self.buildah(&["images", "--all", "--format", "{{.Name}}"])
            + &self.buildah(&["containers", "--all", "--format", "{{.ContainerName}}"]);
        assert!(!all.contains("fcm-build-"), "temporaries left: {all}");
    }

    /// Nothing half-made in the store.
    fn assert_store_has(&self, n: usize) {
        assert_eq!(self.store.list().len(), n, "{:?}", self.store.list());
        let stray: Vec<_> = std::fs::read_dir(self.store.dir())
            .expect("ls")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }

    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, data).expect("write");
        p
    }
}

fn limits() -> Limits {
    Limits::default()
}

fn debugfs(img: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(img)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tar of files (name, mode, data) made with the tar crate.
fn tar_files(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, mode, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("append");
    }
    b.into_inner().expect("tar")
}

fn noop_log() -> impl FnMut(&str) -> std::io::Result<()> {
    |_| Ok(())
}

#[test]
fn a_dockerfile_from_fcm_base_builds_into_an_ext4_image() {
    need!(true);
    let env = Env::new(Duration::from_secs(600));
    let started = std::time::Instant::now();
    let phase = |what: &str| eprintln!("{:>6.1} s  {what}", started.elapsed().as_secs_f32());
    let state = env.tmp.path().join("state");
    assert!(ensure_base(&env.builder, Path::new(BASE_ROOTFS), &state).expect("base"));
    assert!(!ensure_base(&env.builder, Path::new(BASE_ROOTFS), &state).expect("base again"));
    phase("fcm/base made, and found current");
    let dockerfile = b"FROM fcm/base\n\
        RUN mkdir -p /srv/www && echo made-by-run > /srv/www/run.txt\n\
        COPY index.html /srv/www/index.html\n\
        ENV GREETING=hello\n\
        WORKDIR /srv/www\n\
        CMD [\"python3\", \"-m\", \"http.server\", \"8000\"]\n";
    let ctx = env.file(
        "ctx.tar",
        &tar_files(&[
            ("Dockerfile", 0o644, dockerfile),
            ("index.html", 0o644, b"<h1>from the context</h1>\n"),
        ]),
    );
    let mut lines = Vec::new();
    let mut log = |l: &str| {
        lines.push(l.to_owned());
        Ok(())
    };
    let req = BuildRequest {
        name: ImageName::new("acme/web:1").expect("name"),
        context: ctx.clone(),
        dockerfile: None,
        limits: limits(),
    };
    let meta = build(&env.store, &env.builder, &req, &mut log).expect("build");
    phase("built and converted");
    assert!(
        lines.iter().any(|l| l.contains("STEP 2/6: RUN")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("converting to ext4")),
        "{lines:?}"
    );
    assert_eq!(meta.source, Source::Build);
    assert_eq!(meta.config.cmd, ["python3", "-m", "http.server", "8000"]);
    assert!(meta.config.env.contains(&"GREETING=hello".to_string()));
    assert_eq!(meta.config.workdir.as_deref(), Some("/srv/www"));
    assert_eq!(
        meta.tools,
        Tools {
            tmux: true,
            sshd: true,
            shell: true
        }
    );
    assert!(meta.digest.starts_with("sha256:") && meta.digest.len() == 71);
    let got = env.store.get("acme/web:1").expect("stored");
    assert_eq!(got, meta);
    let img = env.store.rootfs(&meta);
    assert!(debugfs(&img, "cat /srv/www/index.html").contains("from the context"));
    assert!(debugfs(&img, "cat /srv/www/run.txt").contains("made-by-run"));
    assert!(debugfs(&img, "ls -l /usr/sbin").contains("sshd"));
    let super_block = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&img)
        .output()
        .expect("dumpe2fs");
    let sb = String::from_utf8_lossy(&super_block.stdout);
    assert!(sb.contains("Filesystem volume name:   fcm-root"), "{sb}");
    assert!(
        meta.size_bytes > 100 << 20
            && meta.size_bytes <= std::fs::metadata(&img).expect("stat").len()
    );
    env.assert_no_temporaries();
    env.assert_store_has(1);

    // A syntax error and a failing RUN: the builder's words, nothing stored.
    for (df, words) in [
        (&b"FROM fcm/base\nRUNN echo x\n"[..], "RUNN"),
        (
            &b"FROM fcm/base\nRUN echo about-to-fail; exit 3\n"[..],
            "about-to-fail",
        ),
    ] {
        let ctx = env.file("bad.tar", &tar_files(&[("Dockerfile", 0o644, df)]));
        let req = BuildRequest {
            name: ImageName::new("bad").expect("name"),
            context: ctx,
            dockerfile: None,
            limits: limits(),
        };
        let e = build(&env.store, &env.builder, &req, &mut noop_log()).expect_err("fails");
        assert!(matches!(e, ImageError::BuildFailed { .. }), "{e:?}");
        assert!(e.to_string().contains(words), "{e}");
        env.assert_no_temporaries();
        env.assert_store_has(1);
    }

    phase("two failing builds");
    // A Dockerfile named with -f that is not there.
    let req = BuildRequest {
        dockerfile: Some("nope/Dockerfile".into()),
        ..req
    };
    let e = build(&env.store, &env.builder, &req, &mut noop_log()).expect_err("no dockerfile");
    assert!(e.to_string().contains("no nope/Dockerfile"), "{e}");

    // A build past its deadline is killed; so is one whose client left.
    let slow = env.file(
        "slow.tar",
        &tar_files(&[("Dockerfile", 0o644, b"FROM fcm/base\nRUN sleep 300\n")]),
    );
    let quick = Builder::new(
        BuilderKind::Buildah,
        env.builder.storage.clone(),
        Duration::from_secs(10),
    );
    let req = BuildRequest {
        name: ImageName::new("slow").expect("name"),
        context: slow,
        dockerfile: None,
        limits: limits(),
    };
    let t = std::time::Instant::now();
    let e = build(&env.store, &quick, &req, &mut noop_log()).expect_err("timeout");
    assert!(e.to_string().contains("images.build_timeout_secs"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(120), "{:?}", t.elapsed());
    phase("a build killed at its deadline");
    // The client goes away once the RUN step is running: the build and
    // its RUN (in buildah's chroot) are killed, nothing is left.
    let running = env.file(
        "running.tar",
        &tar_files(&[(
            "Dockerfile",
            0o644,
            b"FROM fcm/base\nRUN echo started-sleeping && exec sleep 301\n",
        )]),
    );
    let req = BuildRequest {
        context: running,
        ..req
    };
    let mut gone = |l: &str| {
        if l.trim() == "started-sleeping" {
            Err(std::io::Error::other("client went away"))
        } else {
            Ok(())
        }
    };
    let e = build(&env.store, &env.builder, &req, &mut gone).expect_err("gone");
    assert!(matches!(e, ImageError::LogGone(_)), "{e:?}");
    let sleeping = || {
        fcm::host::find_processes(&["sleep"], "301")
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c == "sleep\u{0}301\u{0}")
            })
            .collect::<Vec<_>>()
    };
    let left = fcm::host::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        sleeping().is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "the build's RUN outlived it: {:?}",
        sleeping()
    );
    phase("a build killed when its log sink failed");
    env.assert_no_temporaries();
    env.assert_store_has(1);
    assert!(env.store.get(BASE_IMAGE).is_none());
    phase("checked; removing the test's storage");
}

/// A busybox-only root file system: /bin/busybox and its applet links.
fn busybox_rootfs() -> Vec<u8> {
    let bin = std::fs::read("/bin/busybox").expect("busybox");
    let list = Command::new("busybox")
        .arg("--list")
        .output()
        .expect("list");
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_cksum();
        b.append_data(&mut h, d, &[][..]).expect("dir");
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(bin.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    b.append_data(&mut h, "bin/busybox", &bin[..])
        .expect("busybox");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet == "busybox" || applet.contains('/') {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("link");
    }
    b.into_inner().expect("tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(data).expect("gz");
    g.finish().expect("gz")
}

#[test]
fn archives_import_and_a_busybox_rootfs_has_a_shell_only() {
    need!();
    let env = Env::new(Duration::from_secs(600));
    let rootfs = env.file("busybox.tar.gz", &gzip(&busybox_rootfs()));
    let req = ImportRequest {
        name: ImageName::new("busybox").expect("name"),
        archive: rootfs.clone(),
        limits: limits(),
    };
    let meta = import(&env.store, &env.builder, &req, &mut noop_log()).expect("import rootfs");
    assert_eq!(meta.source, Source::RootfsTar);
    assert_eq!(
        meta.tools,
        Tools {
            shell: true,
            tmux: false,
            sshd: false
        }
    );
    let img = env.store.rootfs(&meta);
    assert!(debugfs(&img, "stat /bin/sh").contains("Fast link dest: \"busybox\""));
    env.assert_no_temporaries();

    // The builder's own archives of an image with a config round-trip.
    let ctr = env.buildah(&["from", "--name", "tiny-ctr", "scratch"]);
    assert_eq!(ctr.trim(), "tiny-ctr");
    env.buildah(&["add", "tiny-ctr", rootfs.to_str().expect("utf8"), "/"]);
    env.buildah(&[
        "config",
        "--cmd",
        r#"["/bin/sh","-c","echo hi"]"#,
        "--env",
        "A=b",
        "--workingdir",
        "/tmp",
        "--user",
        "1000:1000",
        "tiny-ctr",
    ]);
    env.buildah(&["commit", "--quiet", "tiny-ctr", "tiny"]);
    env.buildah(&["rm", "tiny-ctr"]);
    let oci = env.tmp.path().join("tiny.oci.tar");
    let docker = env.tmp.path().join("tiny.docker.tar");
    env.buildah(&[
        "push",
        "--quiet",
        "tiny",
        &format!("oci-archive:{}", oci.display()),
    ]);
    env.buildah(&[
        "push",
        "--quiet",
        "tiny",
        &format!("docker-archive:{}:tiny:latest", docker.display()),
    ]);
    for (file, name, source) in [
        (&oci, "tiny/oci", Source::OciArchive),
        (&docker, "tiny/docker", Source::DockerArchive),
    ] {
        let req = ImportRequest {
            name: ImageName::new(name).expect("name"),
            archive: file.clone(),
            limits: limits(),
        };
        let meta = import(&env.store, &env.builder, &req, &mut noop_log()).expect(name);
        assert_eq!(meta.source, source);
        assert_eq!(meta.config.cmd, ["/bin/sh", "-c", "echo hi"], "{name}");
        assert!(meta.config.env.contains(&"A=b".to_string()), "{name}");
        assert_eq!(meta.config.workdir.as_deref(), Some("/tmp"));
        assert_eq!(meta.config.user.as_deref(), Some("1000:1000"));
        assert!(meta.tools.shell && !meta.tools.tmux);
        assert!(debugfs(&env.store.rootfs(&meta), "ls -l /bin").contains("busybox"));
    }
    env.assert_no_temporaries();
    // Only the image we made stays in the builder's storage under its name.
    let names = env.buildah(&["images", "--format", "{{.Name}}"]);
    assert_eq!(
        names.lines().filter(|n| n.contains("tiny")).count(),
        1,
        "{names}"
    );
    env.assert_store_has(3);
    // What a crash mid-build leaves in the builder's storage goes at sweep.
    env.buildah(&["from", "--name", "fcm-build-crashed-ctr", "scratch"]);
    env.buildah(&[
        "commit",
        "--quiet",
        "fcm-build-crashed-ctr",
        "fcm-build-crashed",
    ]);
    env.builder.sweep();
    env.assert_no_temporaries();
    assert!(
        env.buildah(&["images", "--format", "{{.Name}}"])
            .contains("tiny")
    );
    let over = ImportRequest {
        name: ImageName::new("big").expect("name"),
        archive: oci.clone(),
        limits: Limits {
            max_upload_bytes: 1 << 30,
            max_unpacked_bytes: 1 << 20,
        },
    };
    let e = import(&env.store, &env.builder, &over, &mut noop_log()).expect_err("cap");
    assert!(e.to_string().contains("images.max_unpacked_bytes"), "{e}");
    let upload = ImportRequest {
        limits: Limits {
            max_upload_bytes: 1 << 20,
            max_unpacked_bytes: 1 << 30,
        },
        ..over
    };
    let e = import(&env.store, &env.builder, &upload, &mut noop_log()).expect_err("upload cap");
    assert_eq!(
        e.to_string(),
        "the upload is larger than 1048576 bytes (images.max_upload_bytes)"
    );
    env.assert_store_has(3);
}

#[path = "images_host/hostile.rs"]
mod hostile;
