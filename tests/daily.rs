//! The everyday commands end to end, on one real guest (QEMU backend) in
//! its own namespace, to keep the suite's time small: `create --disk`,
//! `exec` (CLI and API), `cp` (files, directories, a hostile directory out
//! of the guest, errors), `logs`, and `resize` of the stopped VM with the
//! guest seeing its new disk.

mod common;

use std::fs;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use std::time::{Duration, Instant};

use common::{Fcm, e2e_ready};

const GIB: f64 = (1u64 << 30) as f64;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The size of the guest's root file system in bytes, as `df` sees it.
fn guest_df(f: &Fcm, vm: &str) -> f64 {
    let out = f.ok(&["exec", vm, "--", "df", "-B1", "--output=size", "/"]);
    out.lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .next()
        .unwrap_or_else(|| panic!("df said: {out}"))
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Every file under `dir` with its content, relative names sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in fs::read_dir(d).expect("read_dir").flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).expect("rel").display().to_string();
            if p.is_dir() {
                out.push((format!("{rel}/"), Vec::new()));
                walk(base, &p, out);
            } else {
                out.push((rel, fs::read(&p).expect("read")));
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Every path under `dir` (symlinks not followed), with its kind and mode.
fn kinds(dir: &Path) -> Vec<(String, char, u32)> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<(String, char, u32)>) {
        for e in fs::read_dir(d).expect("read_dir").flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).expect("lstat");
            let t = m.file_type();
            let kind = if t.is_symlink() {
                'l'
            } else if t.is_dir() {
                'd'
            } else if t.is_file() {
                'f'
            } else {
                '?'
            };
            let rel = p.strip_prefix(base).expect("rel").display().to_string();
            out.push((rel, kind, m.mode()));
            if kind == 'd' {
                walk(base, &p, out);
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// A guest directory holding what must never be made on the host (device
/// nodes, a FIFO, setuid/setgid files, a sticky dir, hard links, a symlink
/// out) copied out as root: only files, directories and the symlink itself
/// arrive, without special bits, nothing changes beside the destination,
/// and the warning names each skipped entry.
fn hostile_tree_comes_out_safe(f: &Fcm, vm: &str) {
    f.ok(&[
        "exec",
        vm,
        "--",
        "sh",
        "-c",
        "set -e; d=/root/hostile; rm -rf $d /root/outside.txt; mkdir -p $d/sub; \
         echo plain > $d/plain.txt; echo deep > $d/sub/deep.txt; \
         mknod $d/blk b 7 0; mknod $d/chr c 1 3; mkfifo $d/fifo; \
         echo suid > $d/suid; chmod 4755 $d/suid; echo sgid > $d/sgid; chmod 2755 $d/sgid; \
         mkdir $d/sticky; chmod 1777 $d/sticky; \
         echo outside > /root/outside.txt; ln /root/outside.txt $d/hl-out; \
         echo pair > $d/pair-a; ln $d/pair-a $d/pair-b; ln -s /etc/passwd $d/abs",
    ]);
    let top = f.dir.path().join("hostile-top");
    let sentinel = top.join("sentinel");
    fs::create_dir_all(&sentinel).expect("mkdir");
    fs::write(sentinel.join("keep"), "sentinel\n").expect("write");
    let (before, passwd) = (kinds(&top), sha256(Path::new("/etc/passwd")));
    let out = top.join("out");
    let o = f.run(&[
        "cp",
        &format!("{vm}:/root/hostile"),
        &out.display().to_string(),
    ]);
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning: skipped "))
        .unwrap_or_else(|| panic!("no warning in: {stderr}"));
    eprintln!("cp of a hostile tree: {warning}");

    let got = kinds(&out);
    for (name, kind, mode) in &got {
        assert!(
            "fdl".contains(*kind),
            "{name} is not a file, dir or symlink"
        );
        assert_eq!(mode & 0o7000, 0, "{name} has mode {mode:o}");
    }
    // The guest's tar stores the second name of a linked pair as a hard
    // link; which one is second is the guest's directory order.
    let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
    let linked = if names.contains(&"pair-a") {
        "pair-b"
    } else {
        "pair-a"
    };
    let mut expected = vec![
        "abs",
        "hl-out",
        "plain.txt",
        "sgid",
        "sticky",
        "sub",
        "sub/deep.txt",
        "suid",
        if linked == "pair-a" {
            "pair-b"
        } else {
            "pair-a"
        },
    ];
    expected.sort();
    assert_eq!(names, expected, "{stderr}");
    for skipped in [
        "blk (block device)",
        "chr (character device)",
        "fifo (FIFO)",
        &format!("{linked} (hard link)"),
    ] {
        assert!(warning.contains(skipped), "{skipped} not in: {warning}");
    }
    let abs = out.join("abs");
    assert!(
        fs::symlink_metadata(&abs)
            .expect("abs")
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_link(&abs).ok(), Some("/etc/passwd".into()));
    assert_eq!(
        fs::read_to_string(out.join("hl-out")).ok().as_deref(),
        Some("outside\n")
    );
    assert_eq!(
        fs::read_to_string(out.join("suid")).ok().as_deref(),
        Some("suid\n")
    );
    // Nothing beside the destination changed.
    let after: Vec<_> = kinds(&top)
        .into_iter()
        .filter(|(n, _, _)| n != "out" && !n.starts_with("out/"))
        .collect();
    assert_eq!(after, before);
    assert_eq!(
        fs::read_to_string(sentinel.join("keep")).ok().as_deref(),
        Some("sentinel\n")
    );
    assert_eq!(sha256(Path::new("/etc/passwd")), passwd);
}

#[test]
fn one_guest_disk_exec_cp_logs_and_resize() {
    if !e2e_ready() {
        return;
    }
    let f = Fcm::start("daily", &[]);
    let token = f.token();
    let v = f.create(&["--disk", "4G"]);
    let vm = v["name"].as_str().expect("name").to_owned();
    assert_eq!(v["disk_bytes"], 4u64 << 30, "{v}");

    // The guest grew its file system to the 4 GiB disk at boot.
    let size = guest_df(&f, &vm);
    assert!(
        (3.6 * GIB..=4.0 * GIB).contains(&size),
        "df shows {:.2} GiB, not about 4",
        size / GIB
    );

    // exec through the CLI: exit code, separate streams, stdin.
    let out = f.run(&[
        "exec",
        &vm,
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to-out\n");
    assert_eq!(text(&out.stderr), "to-err\n");
    let out = f.run_with_stdin(&["exec", &vm, "--", "tr", "a-z", "A-Z"], b"piped in\n");
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "PIPED IN\n")
    );
    // Arguments reach the guest as they are: no shell sees them.
    let out = f.ok(&[
        "exec", &vm, "--", "printf", "%s|", "a b", "$(id)", "it's", "*",
    ]);
    assert_eq!(out, "a b|$(id)|it's|*|");

    // exec through the API.
    let (s, body) = f.api(
        "POST",
        &format!("/vms/{vm}/exec"),
        Some(&token),
        Some(br#"{"cmd": ["sh", "-c", "echo to-out; echo to-err >&2; exit 7"]}"#),
    );
    assert_eq!(s, 200, "{body}");
    let r = json(&body);
    assert_eq!(
        (
            r["exit_code"].as_i64(),
            r["stdout"].as_str(),
            r["stderr"].as_str(),
            r["truncated"].as_bool(),
            r["timed_out"].as_bool()
        ),
        (
            Some(7),
            Some("to-out\n"),
            Some("to-err\n"),
            Some(false),
            Some(false)
        ),
        "{body}"
    );
    // Bytes that are not UTF-8 come back as base64, exactly.
    let (_, body) = f.api(
        "POST",
        &format!("/vms/{vm}/exec"),
        Some(&token),
        Some(br#"{"cmd": ["printf", "\\377\\033[2J"]}"#),
    );
    let r = json(&body);
    assert_eq!(
        (r["encoding"].as_str(), r["stdout"].as_str()),
        (Some("base64"), Some("/xtbMko=")),
        "{body}"
    );

    // A command that outlives its timeout is killed, and fcm says so.
    let t = Instant::now();
    let out = f.run(&[
        "exec",
        &vm,
        "--timeout",
        "2",
        "--",
        "sh",
        "-c",
        "sleep 300; echo late",
    ]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("killed"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("late"));
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    let left = f.run(&["exec", &vm, "--", "pgrep", "-x", "sleep"]);
    assert_eq!(
        left.status.code(),
        Some(1),
        "the command survived: {}",
        text(&left.stdout)
    );

    // A huge output is capped at 1 MiB and flagged.
    let (_, body) = f.api(
        "POST",
        &format!("/vms/{vm}/exec"),
        Some(&token),
        Some(br#"{"cmd": ["sh", "-c", "yes | head -c 3000000"]}"#),
    );
    let r = json(&body);
    assert_eq!(r["truncated"], true);
    assert_eq!(r["stdout"].as_str().map(str::len), Some(1 << 20));
    assert_eq!(r["exit_code"], 0);

    // cp: a 10 MB random file in and back out, byte for byte.
    let work = f.dir.path().join("work");
    fs::create_dir_all(&work).expect("work");
    let random = work.join("random.bin");
    let ok = std::process::Command::new("head")
        .args(["-c", "10000000", "/dev/urandom"])
        .stdout(fs::File::create(&random).expect("create"))
        .status()
        .expect("head")
        .success();
    assert!(ok);
    let t = Instant::now();
    f.ok(&["cp", &random.display().to_string(), &format!("{vm}:/root/")]);
    let in_guest = f.ok(&["exec", &vm, "--", "sha256sum", "/root/random.bin"]);
    assert!(in_guest.starts_with(&sha256(&random)), "{in_guest}");
    let back = work.join("back.bin");
    f.ok(&[
        "cp",
        &format!("{vm}:/root/random.bin"),
        &back.display().to_string(),
    ]);
    assert_eq!(sha256(&back), sha256(&random));
    eprintln!("10 MB in and out: {:?}", t.elapsed());

    // cp: a directory (nested, odd names) in and back out.
    let src = work.join("tree");
    fs::create_dir_all(src.join("sub/deeper")).expect("mkdir");
    fs::write(src.join("a.txt"), "alpha\n").expect("write");
    fs::write(src.join("sub/it's a file"), "quote and space\n").expect("write");
    fs::write(src.join("sub/deeper/z.bin"), [0u8, 255, 10, 27]).expect("write");
    f.ok(&[
        "cp",
        &src.display().to_string(),
        &format!("{vm}:/root/copied"),
    ]);
    assert_eq!(
        f.ok(&["exec", &vm, "--", "cat", "/root/copied/sub/it's a file"]),
        "quote and space\n"
    );
    let out_dir = work.join("out");
    fs::create_dir_all(&out_dir).expect("mkdir");
    f.ok(&[
        "cp",
        &format!("{vm}:/root/copied"),
        &format!("{}/", out_dir.display()),
    ]);
    assert_eq!(tree(&out_dir.join("copied")), tree(&src));
    hostile_tree_comes_out_safe(&f, &vm);

    // cp errors say what is wrong.
    let out = f.run(&["cp", &random.display().to_string(), "no-such-vm:/root/"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no VM named"),
        "{}",
        text(&out.stderr)
    );
    let out = f.run(&[
        "cp",
        &format!("{vm}:/root/missing.txt"),
        &work.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("has no file /root/missing.txt"),
        "{}",
        text(&out.stderr)
    );
    let out = f.run(&["cp", "/no/such/local/file", &format!("{vm}:/root/")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/no/such/local/file"),
        "{}",
        text(&out.stderr)
    );
    // The file API itself: 404 for a missing file, raw bytes for a present one.
    let (s, _) = f.api(
        "GET",
        &format!("/vms/{vm}/files?path=%2Froot%2Fmissing"),
        Some(&token),
        None,
    );
    assert_eq!(s, 404);
    let (s, body) = f.api(
        "GET",
        &format!("/vms/{vm}/files?path=%2Froot%2Fcopied%2Fa.txt"),
        Some(&token),
        None,
    );
    assert_eq!((s, body.as_str()), (200, "alpha\n"));

    // logs: the kernel's boot lines, guest control characters escaped.
    let logs = f.ok(&["logs", &vm]);
    assert!(
        logs.contains("Linux version"),
        "no boot lines in: {}",
        &logs[..logs.len().min(500)]
    );
    assert!(!logs.contains('\x1b'), "raw ESC in logs output");
    let json_lines = f.ok(&["logs", &vm, "--json"]);
    let chunk = json(json_lines.lines().next().unwrap_or_default());
    assert_eq!(chunk["offset"], 0);

    // resize: refused while running (409), then on the stopped VM.
    let (s, body) = f.api(
        "POST",
        &format!("/vms/{vm}/resize"),
        Some(&token),
        Some(br#"{"disk": "6G"}"#),
    );
    assert_eq!(s, 409, "{body}");
    let stop = f.run(&["stop", &vm]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    eprintln!("stop: {}", text(&stop.stderr));
    let out = f.run(&["resize", &vm, "--disk", "2G"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("can only grow"),
        "{}",
        text(&out.stderr)
    );
    let (s, _) = f.api(
        "POST",
        &format!("/vms/{vm}/resize"),
        Some(&token),
        Some(br#"{"disk": 1073741824}"#),
    );
    assert_eq!(s, 400);
    let r = json(&f.ok(&["resize", &vm, "--disk", "6G", "--json"]));
    assert_eq!(r["disk_bytes"], 6u64 << 30);
    f.ok(&["start", &vm]);
    let size = guest_df(&f, &vm);
    assert!(
        (5.6 * GIB..=6.0 * GIB).contains(&size),
        "after resize df shows {:.2} GiB, not about 6",
        size / GIB
    );
    let in_guest = f.ok(&["exec", &vm, "--", "sha256sum", "/root/random.bin"]);
    assert!(
        in_guest.starts_with(&sha256(&random)),
        "data changed: {in_guest}"
    );
}
