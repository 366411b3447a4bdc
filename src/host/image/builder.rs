//! The builder: buildah by default (podman or docker for the build step
//! where configured; conversion always reads buildah's storage). One
//! storage for fcm (`images.storage` as `--root`, else the default), always
//! the `vfs` driver. Every run has a deadline and is killed with its whole
//! process group past it, or when the caller's log sink fails.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::ImageError;
use super::scan::ArchiveFormat;

/// Where the builder's output lines go as they come; an error stops the
/// build (the client went away).
pub type LogSink<'a> = dyn FnMut(&str) -> io::Result<()> + 'a;

/// Output lines longer than this are cut.
const LINE_CAP: usize = 4096;
/// Lines of the builder's output kept for an error message.
const TAIL_LINES: usize = 20;
/// Deadline of the builder's small calls (inspect, from, mount, rm).
const SMALL: Duration = Duration::from_secs(120);

/// Which program builds a Dockerfile (`images.builder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuilderKind {
    #[default]
    Buildah,
    /// `podman build` into the same storage as buildah's.
    Podman,
    /// `docker build`, then `docker save` into the import path.
    Docker,
}

/// The builder, as configured.
#[derive(Debug, Clone)]
pub struct Builder {
    pub kind: BuilderKind,
    /// containers/storage's root (`--root`); `None`: the default.
    pub storage: Option<PathBuf>,
    /// The deadline of every long run (a build, a pull, an add).
    pub timeout: Duration,
}

/// Where a build of `context` keeps the builder's scratch files: beside
/// the context, in the build's own stage (removed with it).
pub(super) fn scratch_of(context: &Path) -> PathBuf {
    context.with_file_name("builder-tmp")
}

/// A fresh name for a temporary builder image or container.
pub(super) fn temp_name() -> String {
    let n: u64 = rand::thread_rng().r#gen();
    format!("fcm-build-{n:016x}")
}

fn package_of(program: &str) -> &'static str {
    match program {
        "podman" => "podman",
        "docker" => "docker.io",
        _ => "buildah",
    }
}

impl Builder {
    pub fn new(kind: BuilderKind, storage: Option<PathBuf>, timeout: Duration) -> Self {
        Self {
            kind,
            storage,
            timeout,
        }
    }

    /// Whether the programs this builder needs are installed.
    pub fn check(&self) -> Result<(), ImageError> {
        let mut need = vec!["buildah", "mkfs.ext4"];
        match self.kind {
            BuilderKind::Podman => need.push("podman"),
            BuilderKind::Docker => need.push("docker"),
            BuilderKind::Buildah => {}
        }
        for p in need {
            if crate::host::find_program(Path::new(p)).is_none() {
                return Err(ImageError::NotInstalled {
                    program: p.into(),
                    package: if p == "mkfs.ext4" {
                        "e2fsprogs"
                    } else {
                        package_of(p)
                    }
                    .into(),
                });
            }
        }
        Ok(())
    }

    /// The global arguments of buildah/podman: the storage.
    fn storage_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(root) = &self.storage {
            a.push("--root".into());
            a.push(root.into());
            a.push("--runroot".into());
            a.push(root.join("run").into());
        }
        a.push("--storage-driver".into());
        a.push("vfs".into());
        a
    }

    fn args<S: AsRef<OsStr>>(&self, rest: &[S]) -> Vec<OsString> {
        let mut a = self.storage_args();
        a.extend(rest.iter().map(|s| s.as_ref().to_owned()));
        a
    }

    /// A small buildah call whose stdout is the answer.
    pub(super) fn buildah<S: AsRef<OsStr>>(&self, rest: &[S]) -> Result<String, ImageError> {
        self.buildah_for(rest, SMALL)
    }

    fn buildah_for<S: AsRef<OsStr>>(&self, rest: &[S], t: Duration) -> Result<String, ImageError> {
        let args = self.args(rest);
        match crate::host::run_outcome("buildah", &args, None, Some(t)) {
            Ok(o) if o.code == Some(0) => Ok(o.stdout),
            Ok(o) => Err(ImageError::Tool {
                cmd: o.cmd,
                detail: match o.code {
                    None => format!("timed out after {} s", t.as_secs()),
                    Some(c) => format!("exit status {c}: {}", o.stderr),
                },
            }),
            Err(crate::host::HostError::Spawn { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                Err(not_installed("buildah"))
            }
            Err(e) => Err(ImageError::Tool {
                cmd: "buildah".into(),
                detail: e.to_string(),
            }),
        }
    }

    /// Runs a long builder step, its output (stdout and stderr merged)
    /// to `log` line by line, killed with its process group at the
    /// deadline or when `log` fails.
    pub(super) fn stream(
        &self,
        program: &str,
        args: &[OsString],
        log: &mut LogSink<'_>,
    ) -> Result<(), ImageError> {
        self.stream_in(program, args, None, log)
    }

    /// [`Self::stream`] with the builder's scratch files (`TMPDIR`: a
    /// `RUN`'s run directory, left behind when the build is killed) in
    /// `tmpdir`, which the caller removes.
    fn stream_in(
        &self,
        program: &str,
        args: &[OsString],
        tmpdir: Option<&Path>,
        log: &mut LogSink<'_>,
    ) -> Result<(), ImageError> {
        let cmd_line = crate::host::process::render(program, args);
        let (mut reader, writer) =
            io::pipe().map_err(ImageError::io("could not make a pipe for", program))?;
        let writer2 = writer
            .try_clone()
            .map_err(ImageError::io("could not make a pipe for", program))?;
        let mut command = Command::new(program);
        if let Some(dir) = tmpdir {
            std::fs::create_dir_all(dir).map_err(ImageError::io("could not make", dir))?;
            command.env("TMPDIR", dir);
        }
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer2);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                not_installed(program)
            } else {
                ImageError::Tool {
                    cmd: cmd_line.clone(),
                    detail: e.to_string(),
                }
            }
        })?;
        // Our copies of the pipe's write end must go, or EOF never comes.
        drop(command);
        let pid = child.id();
        // The group's leader is our unreaped child until the end: its
        // process group id cannot be another's.
        let kill_group = || {
            if let Some(p) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
        };
        let deadline = Instant::now() + self.timeout;
        let mut tail: std::collections::VecDeque<String> = Default::default();
        let mut line: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        let mut gone: Option<io::Error> = None;
        let mut timed_out = false;
        let mut emit = |line: &mut Vec<u8>, gone: &mut Option<io::Error>| {
            let text = String::from_utf8_lossy(line)
                .trim_end_matches('\r')
                .to_owned();
            line.clear();
            if gone.is_none()
                && let Err(e) = log(&text)
            {
                *gone = Some(e);
            }
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text);
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                timed_out = true;
                kill_group();
                break;
            }
            let step = left.min(Duration::from_millis(500));
            let ts = rustix::event::Timespec::try_from(step).unwrap_or(rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 500_000_000,
            });
            let mut pfd = [rustix::event::PollFd::new(
                &reader,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut pfd, Some(&ts)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => {}
                Err(_) => break,
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            for &b in &buf[..n] {
                if b == b'\n' {
                    emit(&mut line, &mut gone);
                } else if line.len() < LINE_CAP {
                    line.push(b);
                }
            }
            if gone.is_some() {
                kill_group();
                break;
            }
        }
        if !line.is_empty() {
            emit(&mut line, &mut gone);
        }
        drop(reader);
        // Bounded: the group was killed, or its output ended (it exits).
        let status = crate::host::wait_until(
            deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5),
            Duration::from_millis(20),
            || child.try_wait().ok().flatten(),
        );
        let status = match status {
            Some(s) => Some(s),
            None => {
                timed_out = true;
                kill_group();
                child.wait().ok()
            }
        };
        if let Some(e) = gone {
            return Err(ImageError::LogGone(e));
        }
        let tail: Vec<String> = tail.into_iter().collect();
        let failed = |status: String| ImageError::BuildFailed {
            cmd: cmd_line.clone(),
            status,
            tail: tail.join("\n"),
        };
        if timed_out {
            return Err(failed(format!(
                "timed out after {} s (images.build_timeout_secs)",
                self.timeout.as_secs()
            )));
        }
        match status.map(|s| s.code()) {
            Some(Some(0)) => Ok(()),
            Some(Some(c)) => Err(failed(format!("exited with status {c}"))),
            _ => Err(failed("was killed by a signal".into())),
        }
    }

    /// Builds `context` with its Dockerfile into the image `tag` in
    /// buildah's storage.
    pub(super) fn build(
        &self,
        context: &Path,
        dockerfile: &Path,
        tag: &str,
        log: &mut LogSink<'_>,
    ) -> Result<(), ImageError> {
        let build: Vec<OsString> = vec![
            "-f".into(),
            dockerfile.into(),
            "-t".into(),
            tag.into(),
            context.into(),
        ];
        match self.kind {
            BuilderKind::Buildah | BuilderKind::Podman => {
                let program = if self.kind == BuilderKind::Podman {
                    "podman"
                } else {
                    "buildah"
                };
                let verb = if program == "podman" { "build" } else { "bud" };
                let mut args = self.args(&[verb, "--isolation", "chroot", "--layers=false"]);
                args.extend(build);
                self.stream_in(program, &args, Some(&scratch_of(context)), log)
            }
            BuilderKind::Docker => {
                let mut args: Vec<OsString> = vec!["build".into()];
                args.extend(build);
                self.stream("docker", &args, log)?;
                let saved = context.with_extension("docker.tar");
                let save: Vec<OsString> =
                    vec!["save".into(), "-o".into(), saved.clone().into(), tag.into()];
                let r = self.stream("docker", &save, log);
                let _ = crate::host::run_timeout("docker", ["rmi", tag], SMALL);
                r?;
                let id = self.pull(&saved, ArchiveFormat::Docker, log);
                let _ = std::fs::remove_file(&saved);
                self.buildah(&["tag", &id?, tag]).map(drop)
            }
        }
    }

    fn pull(
        &self,
        archive: &Path,
        format: ArchiveFormat,
        log: &mut LogSink<'_>,
    ) -> Result<String, ImageError> {
        let transport = match format {
            ArchiveFormat::Oci => "oci-archive:",
            _ => "docker-archive:",
        };
        let mut src = OsString::from(transport);
        src.push(archive);
        // The id is the last line of its output.
        let mut last = String::new();
        let mut sink = |l: &str| {
            last = l.trim().to_owned();
            log(l)
        };
        let args = self.args(&[OsString::from("pull"), OsString::from("--quiet"), src]);
        self.stream("buildah", &args, &mut sink)?;
        if last.len() < 12 || !last.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(ImageError::BadOutput(format!(
                "buildah pull gave no image id: {last:?}"
            )));
        }
        Ok(last)
    }

    /// Loads an archive into buildah's storage as the image `tag`.
    pub(super) fn load(
        &self,
        archive: &Path,
        format: ArchiveFormat,
        tag: &str,
        log: &mut LogSink<'_>,
    ) -> Result<(), ImageError> {
        match format {
            ArchiveFormat::Oci | ArchiveFormat::Docker => {
                let before = self.names();
                let id = self.pull(archive, format, log)?;
                let tagged = self.buildah(&["tag", &id, tag]).map(drop);
                // The archive's own names are dropped: only `tag` stays.
                self.drop_new_names(&before, tag);
                tagged
            }
            ArchiveFormat::RootfsTar => {
                let ctr = format!("{tag}-ctr");
                let r = self
                    .buildah(&["from", "--name", &ctr, "scratch"])
                    .and_then(|_| {
                        let args = self.args(&[
                            OsStr::new("add"),
                            OsStr::new(&ctr),
                            archive.as_os_str(),
                            OsStr::new("/"),
                        ]);
                        self.stream("buildah", &args, log)
                    })
                    .and_then(|()| {
                        self.buildah_for(&["commit", "--quiet", &ctr, tag], self.timeout)
                            .map(drop)
                    });
                let _ = self.buildah(&["rm", &ctr]);
                r
            }
        }
    }

    /// Every (name, image id) in the storage.
    fn names(&self) -> Vec<(String, String)> {
        let out = self
            .buildah(&[
                "images",
                "--format",
                "{{.Name}}:{{.Tag}} {{.ID}}",
                "--no-trunc",
            ])
            .unwrap_or_default();
        out.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let (n, i) = (it.next()?, it.next()?);
                (!n.starts_with("<none>"))
                    .then(|| (n.to_owned(), i.trim_start_matches("sha256:").to_owned()))
            })
            .collect()
    }

    /// Removes the names a pull gave (those not in `before`) but `keep`:
    /// an archive's own names never stay in fcm's storage. A name it
    /// took from another image (even `fcm/base`) is removed too: the base
    /// is made again by the next `ensure_base`.
    fn drop_new_names(&self, before: &[(String, String)], keep: &str) {
        for (n, i) in self.names() {
            if !before.contains(&(n.clone(), i)) && !n.contains(keep) {
                // rmi of one of several names only removes that name.
                let _ = self.buildah(&["rmi", &n]);
            }
        }
    }

    /// Removes a temporary image (its name; the image goes with its last name).
    pub(super) fn remove_image(&self, tag: &str) {
        let _ = self.buildah(&["rmi", tag]);
    }

    /// Removes leftover temporary containers and images (`fcm-build-*`),
    /// as after a crash mid-build.
    pub fn sweep(&self) {
        if let Ok(out) = self.buildah(&["containers", "--all", "--format", "{{.ContainerName}}"]) {
            for c in out
                .lines()
                .map(str::trim)
                .filter(|c| c.starts_with("fcm-build-"))
            {
                let _ = self.buildah(&["umount", c]);
                let _ = self.buildah(&["rm", c]);
            }
        }
        if let Ok(out) = self.buildah(&["images", "--format", "{{.Name}}"]) {
            for i in out.lines().map(str::trim).filter(|i| {
                i.rsplit('/')
                    .next()
                    .is_some_and(|n| n.starts_with("fcm-build-"))
            }) {
                let _ = self.buildah(&["rmi", "-f", i]);
            }
        }
    }
}

fn not_installed(program: &str) -> ImageError {
    ImageError::NotInstalled {
        program: program.into(),
        package: package_of(program).into(),
    }
}
