//! Bring your own image (issue 20), end to end, as a user would: a real
//! builder (buildah), real guests under QEMU, a real Caddy.
//!
//! - A Dockerfile `FROM fcm/base` with RUN apt-get, COPY, ENV, WORKDIR and
//!   CMD becomes a VM whose package, file, variable and directory are there
//!   and whose URL serves the directory through Caddy (the package from a
//!   repository served in the test's namespace); a broken Dockerfile
//!   and a failing RUN say the builder's words and store nothing; an image
//!   in use cannot be removed.
//! - A busybox-only image (no libc, no init, no sshd, no tmux) boots with
//!   fcm's init: exec and cp work, console refuses clearly; archives the
//!   builder writes (OCI, docker-archive) import and boot; a hostile
//!   tarball is refused and touches nothing outside; with templates on, its
//!   second VM is a warm create from the image's own template.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::caddy::{start_caddy, write_caddy_config};
use common::pty::OnPty;
use common::{Fcm, e2e_ready, wait_for};

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Whether the builder is here (the set-up installs it); fails otherwise,
/// like a missing guest asset.
fn builder_ready() -> bool {
    let ok = Command::new("buildah")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "buildah is not installed: run scripts/setup.sh (it installs it)"
    );
    ok
}

fn images(f: &Fcm) -> Vec<serde_json::Value> {
    serde_json::from_str(f.ok(&["image", "ls", "--json"]).trim()).expect("image ls --json")
}

fn exec(f: &Fcm, vm: &str, argv: &[&str]) -> String {
    let mut args = vec!["exec", vm, "--"];
    args.extend_from_slice(argv);
    f.ok(&args)
}

/// Every file under `dir` with its content (a listing to compare).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let md = fs::symlink_metadata(&p).expect("metadata");
            if md.is_dir() {
                stack.push(p.clone());
            }
            out.push((p.clone(), fs::read(&p).unwrap_or_default()));
        }
    }
    out.sort();
    out
}

/// No build or import left anything half-made in the store.
fn no_leftovers(f: &Fcm) {
    let dir = f.state().join("images");
    let left: Vec<String> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "leftovers in {}: {left:?}", dir.display());
}

/// A Debian package repository of one small package (`hello`, fetched
/// with apt-get download as any package the set-up installs), served over
/// HTTP inside the test's namespace: the builder's RUN runs there, where
/// nothing but the namespace is reachable.
struct AptRepo(std::process::Child);

impl Drop for AptRepo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const REPO_PORT: u16 = 8099;

fn apt_repo(f: &Fcm, dir: &Path) -> AptRepo {
    fs::create_dir_all(dir).expect("repo dir");
    let got = Command::new("apt-get")
        .args(["download", "-q", "hello"])
        .current_dir(dir)
        .output()
        .expect("apt-get download");
    assert!(
        got.status.success(),
        "apt-get download hello failed (the set-up's package source): {}",
        String::from_utf8_lossy(&got.stderr)
    );
    let deb = fs::read_dir(dir)
        .expect("repo")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");
    let control = Command::new("dpkg-deb")
        .arg("-f")
        .arg(&deb)
        .output()
        .expect("dpkg-deb");
    assert!(control.status.success(), "dpkg-deb -f failed");
    let sum = Command::new("sha256sum")
        .arg(&deb)
        .output()
        .expect("sha256sum");
    let sha = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string();
    let mut packages = String::from_utf8_lossy(&control.stdout)
        .trim_end()
        .to_string();
    packages.push_str(&format!(
        "\nFilename: ./{}\nSize: {}\nSHA256: {sha}\n\n",
        deb.file_name().expect("name").to_string_lossy(),
        fs::metadata(&deb).expect("deb").len()
    ));
    fs::write(dir.join("Packages"), packages).expect("Packages");
    let child =
        f.ns.cmd("python3")
            .args([
                "-m",
                "http.server",
                &REPO_PORT.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 http.server");
    let up = wait_for(Duration::from_secs(10), || {
        common::tcp_open(&f.ns, "127.0.0.1", REPO_PORT).then_some(())
    });
    assert!(up.is_some(), "the package repository did not come up");
    AptRepo(child)
}

#[test]
fn a_dockerfile_becomes_a_vm_with_its_package_file_env_workdir_and_url() {
    if !e2e_ready() || !builder_ready() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("fcm-images-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let (caddyfile, _sites, config) = write_caddy_config(tmp.path());
    let f = Fcm::start("images", &["--config", &config.display().to_string()]);
    let _caddy = start_caddy(&f, &caddyfile, tmp.path());
    let _repo = apt_repo(&f, &tmp.path().join("repo"));

    let ctx = tmp.path().join("ctx");
    fs::create_dir_all(&ctx).expect("ctx");
    fs::write(ctx.join("index.html"), "<h1>served from the image</h1>\n").expect("index");
    fs::write(
        ctx.join("Dockerfile"),
        "FROM fcm/base\n\
         RUN echo 'deb [trusted=yes] http://127.0.0.1:8099/ ./' >/etc/apt/sources.list.d/fcm-test.list && \
         apt-get update -o Dir::Etc::sourcelist=/etc/apt/sources.list.d/fcm-test.list \
         -o Dir::Etc::sourceparts=- && apt-get install -y --no-install-recommends hello\n\
         COPY index.html /srv/www/index.html\n\
         ENV GREETING=hello-from-the-image\n\
         WORKDIR /srv/www\n\
         CMD [\"python3\", \"-m\", \"http.server\", \"8000\"]\n",
    )
    .expect("Dockerfile");
    let out = f.run(&["image", "build", &ctx.display().to_string(), "-t", "web:1"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "build failed: {stdout}\n{stderr}");
    assert!(stderr.contains("STEP"), "no build log streamed: {stderr}");
    assert!(stdout.contains("web:1"), "{stdout}");

    let list = images(&f);
    let web = list
        .iter()
        .find(|i| i["name"] == "web:1")
        .unwrap_or_else(|| panic!("web:1 not listed: {list:?}"));
    assert_eq!(web["source"], "build");
    assert!(
        web["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{web}"
    );
    assert!(web["size_bytes"].as_u64().is_some_and(|s| s > 0), "{web}");
    assert!(list.iter().any(|i| i["name"] == "fcm/base"), "{list:?}");

    let vm = f.create(&["--image", "web:1"]);
    let name = vm["name"].as_str().expect("name").to_string();
    assert_eq!(vm["image"], "web:1", "{vm}");
    assert_eq!(exec(&f, &name, &["hello"]).trim(), "Hello, world!");
    assert!(exec(&f, &name, &["cat", "/srv/www/index.html"]).contains("served from the image"));
    assert_eq!(
        exec(&f, &name, &["sh", "-c", "echo $GREETING"]).trim(),
        "hello-from-the-image"
    );
    assert_eq!(exec(&f, &name, &["pwd"]).trim(), "/srv/www");
    // The image's CMD is the VM's service, behind the VM's URL.
    let url = vm["url"].as_str().expect("url").to_string();
    let page = wait_for(Duration::from_secs(90), || {
        let (s, body) = common::caddy::fetch(&f, &url);
        (s == 200 && body.contains("served from the image")).then_some(body)
    });
    assert!(
        page.is_some(),
        "{url} never served the image's directory: {:?}",
        common::caddy::fetch(&f, &url)
    );
    // `ls` says which image a VM is made from.
    assert_eq!(f.vm(&name)["image"], "web:1");

    // In use: 409, and nothing removed.
    let out = f.run(&["image", "rm", "web:1"]);
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success() && stderr.contains("in use"),
        "{stderr}"
    );
    let (code, _) = f.api("DELETE", "/images/web%3A1", Some(&f.token()), None);
    assert_eq!(code, 409);
    assert!(images(&f).iter().any(|i| i["name"] == "web:1"));

    // A syntax error and a failing RUN: the builder's words, nothing stored.
    let before = images(&f).len();
    for (tag, dockerfile, words) in [
        ("broken:1", "FROM fcm/base\nRUNN echo hi\n", "RUNN"),
        (
            "failing:1",
            "FROM fcm/base\nRUN echo about-to-fail && exit 3\n",
            "exit status 3",
        ),
    ] {
        let d = tmp.path().join(tag.replace(':', "-"));
        fs::create_dir_all(&d).expect("dir");
        fs::write(d.join("Dockerfile"), dockerfile).expect("Dockerfile");
        let out = f.run(&["image", "build", &d.display().to_string(), "-t", tag]);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{tag} built: {stdout}");
        assert!(
            stderr.contains(words),
            "{tag}: the builder's message is missing: {stderr}"
        );
    }
    assert_eq!(images(&f).len(), before, "a failed build stored something");
    no_leftovers(&f);

    // Bad names are refused before anything is sent to the builder.
    let out = f.run(&[
        "image",
        "build",
        &ctx.display().to_string(),
        "-t",
        "../evil",
    ]);
    assert!(!out.status.success());
    let out = f.run(&["create", "--image", "no-such-image"]);
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success() && stderr.contains("no-such-image"),
        "{stderr}"
    );

    f.ok(&["destroy", &name]);
    f.ok(&["image", "rm", "web:1"]);
    assert!(!images(&f).iter().any(|i| i["name"] == "web:1"));
    no_leftovers(&f);
}

/// A root file system of Debian's busybox-static only: `/bin/busybox` and
/// its applets as links. No libc, no init, no sshd, no tmux.
fn busybox_tarball(dir: &Path) -> PathBuf {
    let root = dir.join("bb-root");
    fs::create_dir_all(root.join("bin")).expect("bin");
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    // Relative links (`busybox --install -s` would point them at the
    // host's path of the binary).
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    assert!(list.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("link");
        }
    }
    for d in ["etc", "root", "tmp", "www"] {
        fs::create_dir_all(root.join(d)).expect("dir");
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    fs::write(root.join("www/index.html"), "busybox says hi\n").expect("index");
    let tar = dir.join("bb.tar");
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&root)
        .arg(".")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "tar failed");
    tar
}

#[test]
fn a_busybox_only_image_boots_takes_exec_and_cp_and_warm_creates() {
    if !e2e_ready() || !builder_ready() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("fcm-images-bb-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let f = Fcm::start("imagesbb", &["--templates", "on"]);
    let tar = busybox_tarball(tmp.path());
    let out = f.run(&["image", "import", &tar.display().to_string(), "-t", "bb"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "import failed: {stdout}\n{stderr}");
    let bb = images(&f)
        .into_iter()
        .find(|i| i["name"] == "bb")
        .expect("bb listed");
    assert_eq!(bb["source"], "rootfs-tar");
    assert_eq!(bb["tmux"], false);

    let vm = f.create(&["--image", "bb"]);
    let name = vm["name"].as_str().expect("name").to_string();
    assert_eq!(
        exec(&f, &name, &["sh", "-c", "echo hi from $(hostname)"]).trim(),
        format!("hi from {name}")
    );
    // PID 1 is fcm's init, not the image's (it has none).
    let init = exec(&f, &name, &["cat", "/proc/1/cmdline"]);
    assert!(
        init.contains("fcm-agent") && init.contains("init"),
        "{init:?}"
    );
    // cp both ways.
    let local = tmp.path().join("note.txt");
    fs::write(&local, "copied in\n").expect("note");
    f.ok(&[
        "cp",
        &local.display().to_string(),
        &format!("{name}:/tmp/note.txt"),
    ]);
    assert_eq!(exec(&f, &name, &["cat", "/tmp/note.txt"]), "copied in\n");
    let back = tmp.path().join("back.txt");
    f.ok(&[
        "cp",
        &format!("{name}:/tmp/note.txt"),
        &back.display().to_string(),
    ]);
    assert_eq!(fs::read_to_string(&back).expect("back"), "copied in\n");
    // No tmux in the image: console says so and what to do instead.
    let mut console = OnPty::start(&f, &["console", &name], 80, 24);
    let said = console.wait_for("fcm exec -it", 30);
    assert!(said.contains("tmux"), "{said}");
    assert_ne!(
        console.wait_exit(10),
        Some(0),
        "console worked without tmux"
    );
    // No sshd either: fcm ssh says so.
    let out = f.run(&["ssh", &name, "--", "true"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success() && stderr.contains("sshd"), "{stderr}");

    // The image's own template: made after its first VM; the next VM of
    // the image is a warm create from it.
    let ready = wait_for(Duration::from_secs(300), || {
        fs::read_to_string(f.log())
            .ok()?
            .contains("template of image bb ready")
            .then_some(())
    });
    assert!(
        ready.is_some(),
        "no template of bb:\n{}",
        fs::read_to_string(f.log()).unwrap_or_default()
    );
    let warm = f.create(&["--image", "bb"]);
    let warm_name = warm["name"].as_str().expect("name").to_string();
    let log = fs::read_to_string(f.log()).unwrap_or_default();
    assert!(
        log.contains(&format!("{warm_name}: warm create from template")),
        "not a warm create:\n{log}"
    );
    assert_eq!(exec(&f, &warm_name, &["hostname"]).trim(), warm_name);
    let ip = warm["ip"].as_str().expect("ip");
    let addrs = exec(&f, &warm_name, &["ip", "-4", "addr", "show", "eth0"]);
    assert!(addrs.contains(&format!("{ip}/")), "{addrs}");

    // Archives the builder writes import and boot.
    let b = |args: &[&str]| {
        let o = Command::new("buildah")
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .expect("buildah");
        assert!(
            o.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let tag = format!("fcm-test-bb-{}", std::process::id());
    let ctr = b(&["from", "scratch"]);
    b(&["add", &ctr, &tar.display().to_string(), "/"]);
    b(&["config", "--cmd", "httpd -f -p 8000 -h /www", &ctr]);
    b(&["commit", "-q", &ctr, &tag]);
    b(&["rm", &ctr]);
    let oci = tmp.path().join("bb-oci.tar");
    let docker = tmp.path().join("bb-docker.tar");
    b(&["push", &tag, &format!("oci-archive:{}", oci.display())]);
    b(&[
        "push",
        &tag,
        &format!("docker-archive:{}:{tag}:latest", docker.display()),
    ]);
    b(&["rmi", &tag]);
    for (file, name, source) in [
        (&oci, "bb-oci", "oci-archive"),
        (&docker, "bb-docker", "docker-archive"),
    ] {
        f.ok(&["image", "import", &file.display().to_string(), "-t", name]);
        let i = images(&f)
            .into_iter()
            .find(|i| i["name"] == name)
            .expect("listed");
        assert_eq!(i["source"], source, "{i}");
        assert_eq!(
            i["command"],
            serde_json::json!(["httpd", "-f", "-p", "8000", "-h", "/www"])
        );
    }
    let served = f.create(&["--image", "bb-oci", "--cold"]);
    let ip = served["ip"].as_str().expect("ip").to_string();
    let page = wait_for(Duration::from_secs(60), || {
        let o = f.ns.exec(&[
            "curl",
            "-s",
            "--max-time",
            "3",
            &format!("http://{ip}:8000/"),
        ]);
        let body = String::from_utf8_lossy(&o.stdout).into_owned();
        body.contains("busybox says hi").then_some(body)
    });
    assert!(
        page.is_some(),
        "the imported image's CMD does not serve port 8000"
    );

    // A hostile tarball: refused, and nothing outside the image changed.
    let victim = tmp.path().join("victim");
    fs::create_dir_all(&victim).expect("victim");
    fs::write(victim.join("marker"), "untouched").expect("marker");
    let before = snapshot(tmp.path());
    let evil = tmp.path().join("evil.tar");
    {
        let mut t = tar::Builder::new(fs::File::create(&evil).expect("evil"));
        let mut h = tar::Header::new_gnu();
        let data = b"pwned";
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // The tar crate refuses to write `..` through set_path: raw bytes.
        let name = format!("../../../../..{}/marker", victim.display());
        let gnu = h.as_gnu_mut().expect("gnu");
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        t.append(&h, &data[..]).expect("append");
        t.finish().expect("finish");
    }
    let out = f.run(&["image", "import", &evil.display().to_string(), "-t", "evil"]);
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "a tarball escaping with ../ was imported"
    );
    assert!(stderr.contains(".."), "{stderr}");
    assert_eq!(
        fs::read_to_string(victim.join("marker")).expect("marker"),
        "untouched"
    );
    let after = snapshot(tmp.path());
    let changed: Vec<_> = after
        .iter()
        .filter(|e| !before.contains(e) && e.0 != evil)
        .map(|e| e.0.clone())
        .collect();
    assert!(
        changed.is_empty(),
        "files outside the image changed: {changed:?}"
    );
    assert!(!images(&f).iter().any(|i| i["name"] == "evil"));
    no_leftovers(&f);
}
