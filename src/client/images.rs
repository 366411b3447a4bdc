//! `fcm image build|import|ls|rm`: the build context or the archive is
//! sent to the daemon as a stream (so a remote client works), and the
//! builder's log comes back as it runs (NDJSON, `wire::api::ImageEvent`).

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use super::api::{Client, seg};
use super::{Failure, format_time, out, out_json};
use crate::cli::ImageAction;
use crate::wire::api::{ImageEvent, ImageView};
use crate::wire::size::human;
use crate::wire::text::printable;

/// Where a Dockerfile from outside the context goes in the context sent.
const OUTSIDE_DOCKERFILE: &str = ".fcm-Dockerfile";
/// The longest line of the daemon's answer read (a log line is capped
/// well below it by the daemon).
const LINE_MAX: u64 = 1 << 20;

pub(super) fn image(a: ImageAction) -> Result<(), Failure> {
    match a {
        ImageAction::Build {
            path,
            file,
            tag,
            json,
        } => build(&path, file.as_deref(), &tag, json),
        ImageAction::Import { file, tag, json } => import(&file, &tag, json),
        ImageAction::Ls { json } => ls(json),
        ImageAction::Rm { name, json } => rm(&name, json),
    }
}

fn query(s: &str) -> String {
    // The same encoding as a path segment suits a query value.
    seg(s)
}

fn build(ctx: &Path, file: Option<&Path>, tag: &str, json: bool) -> Result<(), Failure> {
    if !ctx.is_dir() {
        return Err(Failure::usage(
            format!("the build context {} is not a directory", ctx.display()),
            Some(
                "fcm image build [PATH] -t NAME: PATH holds the Dockerfile and the files it COPYs"
                    .into(),
            ),
        ));
    }
    let dockerfile = file.map_or_else(|| ctx.join("Dockerfile"), Path::to_owned);
    if !dockerfile.is_file() {
        return Err(Failure::usage(
            format!("no Dockerfile at {}", dockerfile.display()),
            Some("give one with -f FILE".into()),
        ));
    }
    // Inside the context: named by its path there; outside: sent along.
    let abs = |p: &Path| fs::canonicalize(p).map_err(|e| io_failure(p, &e));
    let (ctx_abs, df_abs) = (abs(ctx)?, abs(&dockerfile)?);
    let (name_in_ctx, extra) = match df_abs.strip_prefix(&ctx_abs) {
        Ok(rel) => (rel.to_string_lossy().into_owned(), None),
        Err(_) => (OUTSIDE_DOCKERFILE.to_owned(), Some(df_abs.clone())),
    };
    let body = tar_stream(ctx_abs, extra)?;
    let path = format!(
        "/images?name={}&dockerfile={}",
        query(tag),
        query(&name_in_ctx)
    );
    send(&path, body, json)
}

fn import(file: &Path, tag: &str, json: bool) -> Result<(), Failure> {
    let meta = fs::metadata(file).map_err(|e| io_failure(file, &e))?;
    let path = format!("/images?name={}&import=1", query(tag));
    if meta.is_dir() {
        // An OCI image layout: sent as an OCI archive (a tar of it).
        if !file.join("oci-layout").is_file() {
            return Err(Failure::usage(
                format!("{} is a directory but not an OCI image layout (no oci-layout file)", file.display()),
                Some("import an OCI layout directory, an OCI or docker-save archive, or a root file-system tarball".into()),
            ));
        }
        let abs = fs::canonicalize(file).map_err(|e| io_failure(file, &e))?;
        return send(&path, tar_stream(abs, None)?, json);
    }
    let f = fs::File::open(file).map_err(|e| io_failure(file, &e))?;
    send(&path, Box::new(f), json)
}

fn io_failure(p: &Path, e: &io::Error) -> Failure {
    Failure::new(format!("cannot read {}: {e}", p.display()), None)
}

/// A tar of `dir` (and `extra` as [`OUTSIDE_DOCKERFILE`]), made on a
/// thread as it is read. Symbolic links are sent as links.
fn tar_stream(dir: PathBuf, extra: Option<PathBuf>) -> Result<Box<dyn Read + Send>, Failure> {
    let (reader, writer) =
        io::pipe().map_err(|e| Failure::new(format!("cannot make a pipe: {e}"), None))?;
    std::thread::spawn(move || {
        let mut t = tar::Builder::new(writer);
        t.follow_symlinks(false);
        let made = t.append_dir_all(".", &dir).and_then(|()| match &extra {
            Some(df) => t.append_path_with_name(df, OUTSIDE_DOCKERFILE),
            None => Ok(()),
        });
        match made.and_then(|()| t.finish()) {
            Ok(()) => {}
            Err(e) => {
                eprintln!("fcm: could not pack {}: {e}", dir.display());
                // The daemon then sees a cut archive and refuses it.
            }
        }
    });
    Ok(Box::new(reader))
}

/// Sends the upload and prints the log as it comes; the last line says
/// what was stored, or why nothing was.
fn send(path: &str, body: Box<dyn Read + Send>, json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let answer = c.post_stream(path, body)?;
    let mut lines = BufReader::new(answer);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(LINE_MAX)
            .read_line(&mut line)
            .map_err(|e| Failure::new(format!("the daemon's answer broke off: {e}"), None))?;
        if n == 0 {
            return Err(Failure::new(
                "the daemon's answer ended before the build did",
                Some("see the daemon's log".into()),
            ));
        }
        if line.trim().is_empty() {
            continue;
        }
        let event: ImageEvent = serde_json::from_str(line.trim()).map_err(|e| {
            Failure::new(format!("the daemon's answer is not understood: {e}"), None)
        })?;
        match event {
            ImageEvent::Log(l) => {
                let mut err = io::stderr().lock();
                let _ = writeln!(err, "{}", printable(&l));
            }
            ImageEvent::Image(v) => {
                if json {
                    return out_json(&v);
                }
                out(&format!(
                    "stored image {} ({}, {})",
                    v.name,
                    v.digest.as_deref().map_or("-", short_digest),
                    human(v.size_bytes)
                ));
                out(&format!(
                    "  create a VM from it: fcm create --image {}",
                    v.name
                ));
                return Ok(());
            }
            ImageEvent::Error(e) => return Err(Failure::new(e.error, e.hint)),
        }
    }
}

fn short_digest(d: &str) -> &str {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    &hex[..hex.len().min(12)]
}

fn ls(json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let list: Vec<ImageView> = c.get("/images")?;
    if json {
        return out_json(&list);
    }
    out(&format!(
        "{:<28} {:<12} {:>9} {:<10} {:<14} COMMAND",
        "NAME", "DIGEST", "SIZE", "CREATED", "SOURCE"
    ));
    for i in list {
        out(&format!(
            "{:<28} {:<12} {:>9} {:<10} {:<14} {}",
            i.name,
            i.digest.as_deref().map_or("-", short_digest),
            human(i.size_bytes),
            format_time(i.created_at),
            i.source,
            if i.command.is_empty() {
                "-".into()
            } else {
                printable(&i.command.join(" "))
            }
        ));
    }
    Ok(())
}

fn rm(name: &str, json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let v: ImageView = c.delete(&format!("/images/{}", seg(name)))?;
    if json {
        return out_json(&v);
    }
    out(&format!("removed image {}", v.name));
    Ok(())
}
