//! `fcm cp SRC DST`: files and directories between this machine and a VM.
//! A file goes as raw bytes (`GET`/`PUT /vms/{vm}/files`), a directory as
//! tar (`/vms/{vm}/archive`): made by the local `tar` on the way in,
//! unpacked in process by `unpack` on the way out (only files, directories
//! and symlinks; what else the guest sent is named in a warning). Like
//! `cp -r`: a destination that is an existing directory, or ends in `/`,
//! receives the source under its own name. Progress shows on a terminal.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Failure;
use super::api::{Client, seg};
use super::progress::{Counter, Counting, meter};
use super::unpack::{UnpackError, unpack};
use crate::cli::CpArgs;
use crate::host::Piped;
use crate::wire::api::{ExecRequest, ExecResponse, VmView, Written};
use crate::wire::size::human;
use crate::wire::text::visible;

/// How long one local tar may run.
const TAR_TIMEOUT: Duration = Duration::from_secs(1800);

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Spec {
    Local(PathBuf),
    Remote { vm: String, path: String },
}

/// `<vm>:<path>` when the part before the first `:` is a bare word (no
/// `/`); anything else is local (write `./a:b` for a local name with a colon).
fn parse_spec(s: &str) -> Spec {
    match s.split_once(':') {
        Some((vm, path)) if !vm.is_empty() && !vm.contains('/') => Spec::Remote {
            vm: vm.to_owned(),
            path: if path.is_empty() {
                ".".into()
            } else {
                path.into()
            },
        },
        _ => Spec::Local(PathBuf::from(s)),
    }
}

/// The last component of a guest path (`/a/b/` → `b`).
fn guest_basename(path: &str) -> Option<&str> {
    let t = path.trim_end_matches('/');
    let name = t.rsplit('/').next().unwrap_or(t);
    (!name.is_empty() && name != "." && name != "..").then_some(name)
}

fn query_path(p: &str) -> String {
    seg(p)
}

pub(super) fn cp(a: CpArgs) -> Result<(), Failure> {
    match (parse_spec(&a.src), parse_spec(&a.dst)) {
        (Spec::Local(src), Spec::Remote { vm, path }) => upload(&src, &vm, &path, a.quiet),
        (Spec::Remote { vm, path }, Spec::Local(dst)) => download(&vm, &path, &dst, a.quiet),
        (Spec::Local(_), Spec::Local(_)) => Err(Failure::usage(
            "one side of fcm cp must be in a VM, written <vm>:<path>",
            Some("e.g. fcm cp notes.txt cosmic-nova:/root/".into()),
        )),
        (Spec::Remote { .. }, Spec::Remote { .. }) => Err(Failure::usage(
            "fcm cp copies between this machine and a VM, not between two VMs",
            Some("copy to a local directory first, then on to the other VM".into()),
        )),
    }
}

/// The VM must exist and run: asked first, so that an error is a clear
/// answer and not a transfer cut short.
fn running_vm(c: &Client, vm: &str) -> Result<(), Failure> {
    let v: VmView = c.get(&format!("/vms/{}", seg(vm)))?;
    if v.state != "running" {
        return Err(Failure::new(
            format!(
                "VM {} is {}; it must be running to copy files",
                v.name, v.state
            ),
            Some(format!("start it with: fcm start {}", v.name)),
        ));
    }
    Ok(())
}

/// Whether `path` is a directory in the guest (asked through exec).
fn guest_is_dir(c: &Client, vm: &str, path: &str) -> Result<bool, Failure> {
    let req = ExecRequest {
        cmd: vec!["test".into(), "-d".into(), path.into()],
        timeout_secs: Some(30),
        ..Default::default()
    };
    let r: ExecResponse = c.post_within(
        &format!("/vms/{}/exec", seg(vm)),
        &req,
        Duration::from_secs(90),
    )?;
    Ok(r.exit_code == 0)
}

fn io_failure(what: &str, path: &Path, e: &io::Error) -> Failure {
    let hint =
        (e.kind() == io::ErrorKind::NotFound).then(|| "check the path (and its spelling)".into());
    Failure::new(format!("{what} {}: {e}", path.display()), hint)
}

fn unpack_failure(target: &Path, e: &UnpackError) -> Failure {
    let hint = match e {
        UnpackError::Archive(_) => {
            Some("try again; if it keeps failing, the guest sent a bad archive")
        }
        UnpackError::TooManyEntries { .. } => Some("copy its subdirectories one by one"),
        UnpackError::Destination { .. } | UnpackError::Write { .. } => {
            Some("check the destination's free space and permissions")
        }
    };
    Failure::new(
        format!(
            "unpacking into {} failed: {}",
            target.display(),
            crate::error::chain(e)
        ),
        hint.map(Into::into),
    )
}

fn upload(src: &Path, vm: &str, dst: &str, quiet: bool) -> Result<(), Failure> {
    let meta = fs::metadata(src).map_err(|e| io_failure("cannot read", src, &e))?;
    let c = Client::from_env()?;
    running_vm(&c, vm)?;
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..");
    let into_dir = dst.ends_with('/') || guest_is_dir(&c, vm, dst)?;
    let target = match (into_dir, &name) {
        (true, Some(n)) => format!("{}/{n}", dst.trim_end_matches('/')),
        (true, None) => dst.trim_end_matches('/').to_owned(),
        (false, _) => dst.to_owned(),
    };
    let target = if target.is_empty() {
        "/".into()
    } else {
        target
    };
    let counter = Counter::default();
    let label = format!("{} → {vm}:{target}", src.display());
    let w: Written = if meta.is_dir() {
        let mut tar = Piped::spawn(
            "tar",
            ["-c".as_ref(), "-C".as_ref(), src.as_os_str(), ".".as_ref()],
            TAR_TIMEOUT,
        )
        .map_err(|e| Failure::new(crate::error::chain(&e), Some("install tar".into())))?;
        let out = tar
            .stdout()
            .ok_or_else(|| Failure::new("tar gave no output", None))?;
        let result = {
            let _m = meter(label, &counter, None, quiet);
            c.put_bytes(
                &format!("/vms/{}/archive?path={}", seg(vm), query_path(&target)),
                Counting::new(out, counter.clone()),
            )
        };
        let end = tar.finish();
        let w = result?;
        if end.code != Some(0) {
            return Err(Failure::new(
                format!("tar of {} failed: {}", src.display(), end.stderr),
                None,
            ));
        }
        w
    } else {
        let f = fs::File::open(src).map_err(|e| io_failure("cannot read", src, &e))?;
        let _m = meter(label, &counter, Some(meta.len()), quiet);
        c.put_bytes(
            &format!("/vms/{}/files?path={}", seg(vm), query_path(&target)),
            Counting::new(f, counter.clone()),
        )?
    };
    if !quiet && super::progress::on_terminal() {
        eprintln!("copied {} to {vm}:{}", human(w.bytes), visible(&w.path));
    }
    Ok(())
}

fn download(vm: &str, src: &str, dst: &Path, quiet: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    running_vm(&c, vm)?;
    let is_dir = guest_is_dir(&c, vm, src)?;
    let into_dir = dst.is_dir() || dst.to_string_lossy().ends_with('/');
    // The local path comes from the user's two arguments only, never from
    // the guest (whose names stay inside `target`, see `unpack`).
    let target = match (into_dir, guest_basename(src)) {
        (true, Some(n)) => dst.join(n),
        _ => dst.to_path_buf(),
    };
    let counter = Counter::default();
    let label = format!("{vm}:{} → {}", visible(src), target.display());
    if is_dir {
        let (_, body) = c.get_bytes(&format!(
            "/vms/{}/archive?path={}",
            seg(vm),
            query_path(src)
        ))?;
        fs::create_dir_all(&target).map_err(|e| io_failure("cannot create", &target, &e))?;
        let report = {
            let _m = meter(label, &counter, None, quiet);
            unpack(Counting::new(body, counter.clone()), &target)
        }
        .map_err(|e| unpack_failure(&target, &e))?;
        if let Some(w) = report.warning() {
            eprintln!("warning: {w}");
        }
    } else {
        let (length, body) =
            c.get_bytes(&format!("/vms/{}/files?path={}", seg(vm), query_path(src)))?;
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let part = dir.join(format!(
            ".{}.fcm-part",
            target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "download".into())
        ));
        let result = (|| {
            // A new file (0o666 less the umask: never setuid), made with
            // O_EXCL so that nothing already at `part`, a symlink included,
            // is written through; a leftover of an earlier attempt goes first.
            match fs::remove_file(&part) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_failure("cannot remove", &part, &e));
                }
                _ => {}
            }
            let mut f = fs::File::options()
                .write(true)
                .create_new(true)
                .open(&part)
                .map_err(|e| io_failure("cannot write", &part, &e))?;
            let n = {
                let _m = meter(label, &counter, length, quiet);
                io::copy(&mut Counting::new(body, counter.clone()), &mut f)
                    .map_err(|e| Failure::new(format!("the transfer broke off: {e}"), None))?
            };
            if length.is_some_and(|l| l != n) {
                return Err(Failure::new(
                    format!("the transfer broke off after {n} bytes"),
                    None,
                ));
            }
            f.sync_all()
                .map_err(|e| io_failure("cannot write", &part, &e))?;
            fs::rename(&part, &target).map_err(|e| io_failure("cannot write", &target, &e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&part);
        }
        result?;
    }
    if !quiet && super::progress::on_terminal() {
        eprintln!("copied {} from {vm}:{}", human(counter.get()), visible(src));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            parse_spec("cosmic-nova:/root/x"),
            Spec::Remote {
                vm: "cosmic-nova".into(),
                path: "/root/x".into()
            }
        );
        assert_eq!(
            parse_spec("vm:"),
            Spec::Remote {
                vm: "vm".into(),
                path: ".".into()
            }
        );
        assert_eq!(parse_spec("./a:b"), Spec::Local("./a:b".into()));
        assert_eq!(parse_spec("/tmp/x"), Spec::Local("/tmp/x".into()));
        assert_eq!(parse_spec(":x"), Spec::Local(":x".into()));
    }

    #[test]
    fn basenames() {
        assert_eq!(guest_basename("/var/log/"), Some("log"));
        assert_eq!(guest_basename("notes.txt"), Some("notes.txt"));
        assert_eq!(guest_basename("/"), None);
        assert_eq!(guest_basename("."), None);
    }
}
