//! The in-sandbox API (e2b-dev/E2B `spec/envd/`), answered by the daemon
//! for the sandbox's guest: `/health`, `/files` (down and up, streamed),
//! `process.Process` (Start streams a program's output as Connect
//! envelopes; List; SendSignal) and `filesystem.Filesystem` (Stat,
//! ListDir, MakeDir, Remove, Move), each onto the guest seam: the agent's
//! streamed exec and file transfers, and coreutils/findutils programs run
//! with the paths as arguments (never inside a script's text).

use std::io::{self, Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::connect::{Chunked, Code, RpcError};
use super::multipart::{self, Multipart};
use super::{E2b, Request, read_json, respond, respond_error, respond_json, status_message};
use crate::daemon::manager::ManagerError;
use crate::wire::api::{Encoding, ExecRequest};

/// The home of the user programs run as (root): relative paths start there.
const HOME: &str = "/root";
/// Time a helper program (stat, find, mkdir...) may take.
const HELPER_TIMEOUT: u64 = 60;
/// Longest listing a ListDir answers with.
const LIST_MAX: usize = 16 << 20;
/// `find -printf` of one entry: type, size, mode, permissions, owner,
/// group, mtime, symlink target, path (last: it may hold tabs); NUL-ended.
const ENTRY_FORMAT: &str = "%y\\t%s\\t%m\\t%M\\t%u\\t%g\\t%T@\\t%l\\t%p\\0";

pub(super) fn rpc_of(e: &ManagerError) -> RpcError {
    let (status, message) = status_message(e);
    RpcError::new(Code::of_status(status), message)
}

/// A request's guest path, absolute (relative ones from the home).
pub(super) fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else if path.is_empty() || path == "~" {
        HOME.to_owned()
    } else if let Some(rest) = path.strip_prefix("~/") {
        format!("{HOME}/{rest}")
    } else {
        format!("{HOME}/{path}")
    }
}

fn base_name(path: &str) -> String {
    let t = path.trim_end_matches('/');
    if t.is_empty() {
        return "/".into();
    }
    t.rsplit('/').next().unwrap_or(t).to_owned()
}

/// One `find -printf` record as an envd `EntryInfo`.
fn entry(rec: &str) -> Option<Value> {
    let f: Vec<&str> = rec.splitn(9, '\t').collect();
    let [kind, size, mode, perms, owner, group, mtime, target, path] = f.as_slice() else {
        return None;
    };
    let kind = match *kind {
        "d" => "FILE_TYPE_DIRECTORY",
        "l" => "FILE_TYPE_SYMLINK",
        _ => "FILE_TYPE_FILE",
    };
    let secs = mtime
        .split('.')
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let mut v = json!({
        "name": base_name(path),
        "type": kind,
        "path": path,
        "size": size.parse::<u64>().unwrap_or(0),
        "mode": u32::from_str_radix(mode, 8).unwrap_or(0),
        "permissions": perms,
        "owner": owner,
        "group": group,
        "modifiedTime": super::rfc3339(secs),
        "isSymlink": !target.is_empty(),
    });
    if !target.is_empty() {
        v["symlinkTarget"] = json!(target);
    }
    Some(v)
}

fn entries(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .split('\0')
        .filter(|r| !r.is_empty())
        .filter_map(entry)
        .collect()
}

pub(super) fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str, RpcError> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| RpcError::new(Code::InvalidArgument, format!("{key} is missing")))
}

impl E2b {
    pub(super) fn envd(
        &self,
        id: &str,
        req: &Request,
        body: &mut dyn Read,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        // As E2B's proxy: a sandbox that is not there, or not running, is
        // a 502 (the SDK's is_running() reads it as false).
        let block = match self.sandbox(id) {
            Ok((v, b)) if v.state == "running" => b,
            Ok(_) => return respond_error(out, 502, &format!("sandbox \"{id}\" is not running")),
            Err((404, _)) => {
                return respond_error(out, 502, &format!("sandbox \"{id}\" not found"));
            }
            Err((status, message)) => return respond_error(out, status, &message),
        };
        let path = req.path().to_owned();
        match (req.method.as_str(), path.as_str()) {
            ("GET", "/health") => respond(out, 204, "", &[], b""),
            ("GET", "/files") => self.download(id, req, out),
            ("POST", "/files") => self.upload(id, req, body, out),
            ("POST", "/process.Process/Start") => self.start(id, &block.env_vars, req, body, out),
            ("POST", "/process.Process/Connect") => self.connect_process(id, body, out),
            ("POST", "/filesystem.Filesystem/WatchDir") => self.watch_dir(id, req, body, out),
            ("POST", p)
                if p.starts_with("/process.Process/")
                    || p.starts_with("/filesystem.Filesystem/") =>
            {
                let answer = read_json(body)
                    .map_err(|(s, m)| RpcError::new(Code::of_status(s), m))
                    .and_then(|msg| self.unary(id, &path, &msg));
                match answer {
                    Ok(v) => respond_json(out, 200, &v),
                    Err(e) => respond(
                        out,
                        e.code.http_status(),
                        "application/json",
                        &[],
                        e.body().to_string().as_bytes(),
                    ),
                }
            }
            (m, p) => respond_error(out, 404, &format!("no such endpoint in a sandbox: {m} {p}")),
        }
    }

    fn unary(&self, id: &str, path: &str, msg: &Value) -> Result<Value, RpcError> {
        match path {
            "/process.Process/List" => Ok(self.processes(id)),
            "/process.Process/SendSignal" => self.signal(id, msg),
            "/process.Process/SendInput" => self.send_input(id, msg),
            "/filesystem.Filesystem/CreateWatcher" => self.create_watcher(id, msg),
            "/filesystem.Filesystem/GetWatcherEvents" => self.watcher_events(id, msg),
            "/filesystem.Filesystem/RemoveWatcher" => self.remove_watcher(id, msg),
            "/process.Process/CloseStdin" => self.close_stdin(id, msg),
            "/process.Process/Update" => self.update_pty(id, msg),
            "/filesystem.Filesystem/Stat" => {
                let p = absolute(str_field(msg, "path")?);
                Ok(json!({ "entry": self.stat(id, &p)? }))
            }
            "/filesystem.Filesystem/ListDir" => self.list_dir(id, msg),
            "/filesystem.Filesystem/MakeDir" => {
                let p = absolute(str_field(msg, "path")?);
                let (code, _, err) =
                    self.helper(id, &["[ -e \"$1\" ] && exit 3; mkdir -p -- \"$1\"", &p])?;
                match code {
                    0 => Ok(json!({ "entry": self.stat(id, &p)? })),
                    3 => Err(RpcError::new(
                        Code::AlreadyExists,
                        format!("{p} already exists"),
                    )),
                    _ => Err(RpcError::new(Code::Internal, format!("mkdir {p}: {err}"))),
                }
            }
            "/filesystem.Filesystem/Remove" => {
                let p = absolute(str_field(msg, "path")?);
                let (code, _, err) = self.helper(
                    id,
                    &[
                        "[ -e \"$1\" ] || [ -L \"$1\" ] || exit 2; rm -rf -- \"$1\"",
                        &p,
                    ],
                )?;
                match code {
                    0 => Ok(json!({})),
                    2 => Err(RpcError::new(Code::NotFound, format!("{p} does not exist"))),
                    _ => Err(RpcError::new(Code::Internal, format!("rm {p}: {err}"))),
                }
            }
            "/filesystem.Filesystem/Move" => {
                let from = absolute(str_field(msg, "source")?);
                let to = absolute(str_field(msg, "destination")?);
                let (code, _, err) = self.helper(
                    id,
                    &[
                        "[ -e \"$1\" ] || [ -L \"$1\" ] || exit 2; mkdir -p -- \"$(dirname -- \"$2\")\" && mv -T -- \"$1\" \"$2\"",
                        &from,
                        &to,
                    ],
                )?;
                match code {
                    0 => Ok(json!({ "entry": self.stat(id, &to)? })),
                    2 => Err(RpcError::new(
                        Code::NotFound,
                        format!("{from} does not exist"),
                    )),
                    _ => Err(RpcError::new(
                        Code::Internal,
                        format!("mv {from} {to}: {err}"),
                    )),
                }
            }
            p => Err(RpcError::new(
                Code::Unimplemented,
                format!("{} is not served by fcm yet", p.trim_start_matches('/')),
            )),
        }
    }

    /// Runs `sh -c SCRIPT sh ARGS...` in the guest: the script is fcm's
    /// own, the request's paths only its arguments. Exit code, stdout,
    /// stderr.
    pub(super) fn helper(
        &self,
        id: &str,
        script_args: &[&str],
    ) -> Result<(i32, Vec<u8>, String), RpcError> {
        let mut cmd = vec!["sh".to_owned(), "-c".to_owned()];
        let (script, args) = script_args.split_first().unwrap_or((&"true", &[]));
        cmd.push((*script).to_owned());
        cmd.push("sh".to_owned());
        cmd.extend(args.iter().map(|a| (*a).to_owned()));
        let r = self
            .m
            .exec(
                id,
                ExecRequest {
                    cmd,
                    timeout_secs: Some(HELPER_TIMEOUT),
                    ..ExecRequest::default()
                },
            )
            .map_err(|e| rpc_of(&e))?;
        let (stdout, stderr) = match r.encoding {
            Encoding::Utf8 => (r.stdout.into_bytes(), r.stderr),
            Encoding::Base64 => (
                B64.decode(r.stdout.as_bytes()).unwrap_or_default(),
                String::from_utf8_lossy(&B64.decode(r.stderr.as_bytes()).unwrap_or_default())
                    .into_owned(),
            ),
        };
        if r.truncated {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                "the answer is larger than fcm passes on (1 MiB)",
            ));
        }
        Ok((r.exit_code, stdout, stderr.trim().to_owned()))
    }

    fn stat(&self, id: &str, path: &str) -> Result<Value, RpcError> {
        let script = format!(
            "[ -e \"$1\" ] || [ -L \"$1\" ] || exit 2; find \"$1\" -maxdepth 0 -printf '{ENTRY_FORMAT}'"
        );
        let (code, out, err) = self.helper(id, &[&script, path])?;
        match code {
            0 => entries(&out)
                .into_iter()
                .next()
                .ok_or_else(|| RpcError::new(Code::Internal, format!("stat {path}: no answer"))),
            2 => Err(RpcError::new(
                Code::NotFound,
                format!("{path} does not exist"),
            )),
            _ => Err(RpcError::new(Code::Internal, format!("stat {path}: {err}"))),
        }
    }

    fn list_dir(&self, id: &str, msg: &Value) -> Result<Value, RpcError> {
        let p = absolute(str_field(msg, "path")?);
        let depth = msg
            .get("depth")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, 64);
        let script = format!(
            "[ -d \"$1\" ] || {{ [ -e \"$1\" ] && exit 3; exit 2; }}; find \"$1\" -mindepth 1 -maxdepth \"$2\" -printf '{ENTRY_FORMAT}'"
        );
        let (code, out, err) = self.helper(id, &[&script, &p, &depth.to_string()])?;
        if out.len() > LIST_MAX {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                "the listing is too long",
            ));
        }
        match code {
            0 => Ok(json!({ "entries": entries(&out) })),
            2 => Err(RpcError::new(Code::NotFound, format!("{p} does not exist"))),
            3 => Err(RpcError::new(
                Code::InvalidArgument,
                format!("{p} is not a directory"),
            )),
            _ => Err(RpcError::new(Code::Internal, format!("list {p}: {err}"))),
        }
    }

    fn download(&self, id: &str, req: &Request, out: &mut dyn Write) -> io::Result<()> {
        let Some(path) = req.query("path").map(|p| absolute(&p)) else {
            return respond_error(out, 400, "the query parameter path is missing");
        };
        let mut d = match self.m.read_file(id, &path) {
            Ok(d) => d,
            Err(e) => {
                let (status, message) = status_message(&e);
                return respond_error(out, status, &message);
            }
        };
        match d.length {
            Some(n) => {
                out.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )?;
                io::copy(&mut d.body, out)?;
                out.flush()
            }
            None => {
                out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
                let mut c = Chunked { out };
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = d.body.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    c.send(&buf[..n])?;
                }
                c.finish()
            }
        }
    }

    /// A file's directory, made if missing (E2B writes make them).
    fn parent_made(&self, id: &str, path: &str) -> Result<(), (u16, String)> {
        let (code, _, err) = self
            .helper(id, &["mkdir -p -- \"$(dirname -- \"$1\")\"", path])
            .map_err(|e| (e.code.http_status(), e.message))?;
        if code != 0 {
            return Err((
                400,
                format!("could not make the directory of {path}: {err}"),
            ));
        }
        Ok(())
    }

    fn write_one(&self, id: &str, path: &str, data: &mut dyn Read) -> Result<Value, (u16, String)> {
        self.parent_made(id, path)?;
        self.m
            .write_file(id, path, data)
            .map_err(|e| status_message(&e))?;
        Ok(json!({ "name": base_name(path), "type": "file", "path": path }))
    }

    fn upload(
        &self,
        id: &str,
        req: &Request,
        body: &mut dyn Read,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        let named = req.query("path").map(|p| absolute(&p));
        let content_type = req.header("Content-Type").unwrap_or_default().to_owned();
        let mut written = Vec::new();
        let result = match multipart::boundary(&content_type) {
            Some(boundary) => {
                let mut parts = Multipart::new(body, &boundary);
                loop {
                    let part = match parts.next_part() {
                        Ok(Some(p)) => p,
                        Ok(None) => break Ok(()),
                        Err(e) => break Err((400, format!("malformed multipart body: {e}"))),
                    };
                    // The first part goes to ?path= when given; each other
                    // to its file name (several files at once).
                    let path = match (written.is_empty(), &named, part.filename) {
                        (true, Some(p), _) => p.clone(),
                        (_, _, Some(f)) if !f.is_empty() => absolute(&f),
                        _ => break Err((400, "a part names no file (path or filename)".into())),
                    };
                    match self.write_one(id, &path, &mut parts) {
                        Ok(v) => written.push(v),
                        Err(e) => break Err(e),
                    }
                }
            }
            None => match &named {
                Some(p) => self.write_one(id, p, body).map(|v| written.push(v)),
                None => Err((400, "the query parameter path is missing".into())),
            },
        };
        match result {
            Ok(()) => respond_json(out, 200, &Value::Array(written)),
            Err((status, message)) => respond_error(out, status, &message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_records_become_entries() {
        let out = b"f\t12\t644\t-rw-r--r--\troot\troot\t1733480000.5\t\t/root/a\tb\0d\t4096\t755\tdrwxr-xr-x\troot\troot\t1733480000.0\t\t/root/d\0l\t3\t777\tlrwxrwxrwx\troot\troot\t1.0\t/etc\t/root/l\0";
        let e = entries(out);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0]["name"], "a\tb");
        assert_eq!(e[0]["type"], "FILE_TYPE_FILE");
        assert_eq!(e[0]["size"], 12);
        assert_eq!(e[0]["mode"], 0o644);
        assert_eq!(e[1]["type"], "FILE_TYPE_DIRECTORY");
        assert_eq!(e[2]["symlinkTarget"], "/etc");
        assert_eq!(absolute("x/y"), "/root/x/y");
        assert_eq!(absolute("/x"), "/x");
        assert_eq!(base_name("/a/b/"), "b");
    }
}
