//! The E2B control API (e2b-dev/infra `spec/openapi.yml`), translated onto
//! the manager's operations: a sandbox is a VM named by its sandbox id,
//! with its E2B block beside its record.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde_json::{Value, json};

use super::{
    CLIENT_ID, E2b, ENVD_VERSION, Request, new_sandbox_id, plausible_id, read_json, respond,
    respond_error, respond_json, rfc3339, status_message, unix_now,
};
use crate::daemon::store::{self, E2bRecord};
use crate::names::VmId;
use crate::wire::api::{CreateRequest, ForkRequest, VmView};

/// The template E2B's SDKs ask for by default: fcm's base image. Any other
/// template is an fcm image of that name.
pub const BASE_TEMPLATE: &str = "base";
/// A sandbox's timeout when the request gives none: 5 minutes, what E2B's
/// SDK documentation promises for `Sandbox.create()` (SDK 2.63 sends none,
/// leaving it to the API).
const TIMEOUT_DEFAULT: u64 = 300;
/// The longest timeout a sandbox may be given (E2B's longest).
const TIMEOUT_MAX: u64 = 24 * 3600;
/// Most forks one request makes (the SDK's own bound).
const FORK_MAX: u64 = 20;
/// Sandboxes in one page of a list when the request names no limit.
const LIMIT_DEFAULT: usize = 100;
const LIMIT_MAX: usize = 1000;

/// A failed control request: status and message.
pub(super) type Failure = (u16, String);

fn not_found(id: &str) -> Failure {
    (404, format!("sandbox \"{id}\" not found"))
}

fn timeout_of(v: &Value) -> Result<u64, Failure> {
    match v.get("timeout") {
        None | Some(Value::Null) => Ok(TIMEOUT_DEFAULT),
        Some(t) => t
            .as_u64()
            .filter(|t| (1..=TIMEOUT_MAX).contains(t))
            .ok_or_else(|| {
                (
                    400,
                    format!("timeout must be a number of seconds from 1 to {TIMEOUT_MAX}"),
                )
            }),
    }
}

/// A JSON object of strings (`metadata`, `envVars`).
fn strings(v: &Value, key: &str) -> Result<BTreeMap<String, String>, Failure> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err((400, format!("{key}.{k} must be a string"))),
            })
            .collect(),
        Some(_) => Err((400, format!("{key} must be an object of strings"))),
    }
}

/// The methods a control path takes, if it is one.
fn allowed(segs: &[&str]) -> Option<&'static str> {
    match segs {
        ["sandboxes"] => Some("GET, POST"),
        ["sandboxes", _] => Some("GET, DELETE"),
        [
            "sandboxes",
            _,
            "timeout" | "pause" | "connect" | "resume" | "fork",
        ] => Some("POST"),
        _ => None,
    }
}

/// E2B's two states: a VM on its way to or from running counts as
/// running, every other as paused.
fn state_of(v: &VmView) -> &'static str {
    match v.state.as_str() {
        "running" | "creating" | "starting" | "resuming" | "restoring" | "checkpointing" => {
            "running"
        }
        _ => "paused",
    }
}

impl E2b {
    pub(super) fn control(
        &self,
        req: &Request,
        body: &mut dyn Read,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        let path = req.path().trim_end_matches('/').to_owned();
        let segs: Vec<&str> = path.split('/').skip(1).collect();
        let segs: &[&str] = match segs.as_slice() {
            ["v2", rest @ ..] => rest,
            s => s,
        };
        let result = match (req.method.as_str(), segs) {
            ("POST", ["sandboxes"]) => read_json(body).and_then(|v| self.create(&v)),
            ("GET", ["sandboxes"]) => return self.list(req, out),
            ("GET", ["sandboxes", id]) => self.detail(id).map(|v| (200, v)),
            ("DELETE", ["sandboxes", id]) => self.kill(id).map(|()| (204, Value::Null)),
            ("POST", ["sandboxes", id, "timeout"]) => {
                read_json(body).and_then(|v| self.set_timeout(id, &v))
            }
            ("POST", ["sandboxes", id, "pause"]) => self.pause(id).map(|()| (204, Value::Null)),
            ("POST", ["sandboxes", id, "connect"]) => {
                read_json(body).and_then(|v| self.connect(id, &v, false))
            }
            ("POST", ["sandboxes", id, "resume"]) => {
                read_json(body).and_then(|v| self.connect(id, &v, true))
            }
            ("POST", ["sandboxes", id, "fork"]) => read_json(body).and_then(|v| self.fork(id, &v)),
            ("GET", ["sandboxes", id, "metrics"]) => self.metrics(id).map(|v| (200, v)),
            (_, ["sandboxes", _, "logs" | "refreshes" | "snapshots"])
            | (_, ["sandboxes", "metrics"]) => Err((
                501,
                format!("{} {path} is not served by fcm yet", req.method),
            )),
            (m, segs) => match allowed(segs) {
                Some(allow) => {
                    return respond(
                        out,
                        405,
                        "application/json",
                        &[("Allow", allow.into())],
                        &super::error_body(405, &format!("method {m} is not allowed on {path}")),
                    );
                }
                None => Err((404, format!("no such endpoint: {m} {path}"))),
            },
        };
        match result {
            Ok((204, _)) => respond(out, 204, "", &[], b""),
            Ok((status, v)) => respond_json(out, status, &v),
            Err((status, message)) => {
                if status >= 500 {
                    eprintln!("fcm daemon: E2B {} {path}: {message}", req.method);
                }
                respond_error(out, status, &message)
            }
        }
    }

    /// The sandbox's VM and E2B block; 404 for anything that is not one.
    pub(super) fn sandbox(&self, id: &str) -> Result<(VmView, E2bRecord), Failure> {
        if !plausible_id(id) {
            return Err(not_found(id));
        }
        let v = match self.m.get(id) {
            Ok(v) => v,
            Err(e) => {
                let (status, message) = status_message(&e);
                return Err(if status == 404 {
                    not_found(id)
                } else {
                    (status, message)
                });
            }
        };
        let block = VmId::parse(&v.id)
            .ok()
            .and_then(|vm| store::load_e2b(&self.m.config().state_dir, &vm))
            .filter(|b| b.sandbox_id == id)
            .ok_or_else(|| not_found(id))?;
        Ok((v, block))
    }

    /// What create, connect and resume answer.
    fn created(&self, b: &E2bRecord) -> Value {
        json!({
            "templateID": b.template,
            "sandboxID": b.sandbox_id,
            "clientID": CLIENT_ID,
            "envdVersion": ENVD_VERSION,
            "envdAccessToken": self.access_token(&b.sandbox_id),
            "domain": self.domain(),
        })
    }

    fn listed(&self, v: &VmView, b: &E2bRecord) -> Value {
        json!({
            "templateID": b.template,
            "alias": b.template,
            "sandboxID": b.sandbox_id,
            "clientID": CLIENT_ID,
            "startedAt": rfc3339(b.started_at),
            "endAt": rfc3339(b.end_at.unwrap_or_else(unix_now)),
            "cpuCount": v.cpus,
            "memoryMB": v.memory_mib,
            "diskSizeMB": v.disk_bytes.unwrap_or(0) >> 20,
            "metadata": b.metadata,
            "state": state_of(v),
            "envdVersion": ENVD_VERSION,
        })
    }

    fn create(&self, body: &Value) -> Result<(u16, Value), Failure> {
        let template = match body.get("templateID") {
            None | Some(Value::Null) => BASE_TEMPLATE.to_owned(),
            Some(Value::String(t)) if t.is_empty() => BASE_TEMPLATE.to_owned(),
            Some(Value::String(t)) => t.clone(),
            Some(_) => return Err((400, "templateID must be a string".into())),
        };
        // A template is an fcm image (fcm image ls); base is the base image.
        let image = if template == BASE_TEMPLATE {
            None
        } else {
            match self.m.image(&template) {
                Ok(i) => Some(i.name),
                Err(e) if matches!(status_message(&e).0, 400 | 404) => {
                    return Err((
                        404,
                        format!(
                            "template \"{}\" not found: templates are fcm images (fcm image ls), and \"{BASE_TEMPLATE}\" the base image",
                            crate::wire::text::printable(&template)
                        ),
                    ));
                }
                Err(e) => return Err(status_message(&e)),
            }
        };
        let timeout = timeout_of(body)?;
        let metadata = strings(body, "metadata")?;
        let env_vars = strings(body, "envVars")?;
        let auto_pause = body
            .get("autoPause")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let id = new_sandbox_id();
        let req = CreateRequest {
            name: Some(id.clone()),
            image,
            // Reached by its own names; a VM URL's Caddy reload would cut
            // requests in flight through Caddy (E2B_DOMAIN).
            url: Some(false),
            ..CreateRequest::default()
        };
        let view = self.m.create(req).map_err(|e| status_message(&e))?;
        let now = unix_now();
        let block = E2bRecord {
            sandbox_id: id.clone(),
            template,
            metadata,
            env_vars,
            started_at: now,
            end_at: Some(now + timeout),
            auto_pause,
        };
        let saved = VmId::parse(&view.id)
            .map_err(|e| e.to_string())
            .and_then(|vm| {
                store::save_e2b(&self.m.config().state_dir, &vm, &block)
                    .map_err(|e| crate::error::chain(&e).to_string())
            });
        if let Err(e) = saved {
            // Not a sandbox without its block: undo the VM.
            let _ = self.m.destroy(&id);
            return Err((500, format!("could not record the sandbox: {e}")));
        }
        if view.ready != Some(true) && !self.m.wait_ready(&view.id) {
            eprintln!(
                "fcm daemon: sandbox {id}: its guest did not answer in time; it may still be booting"
            );
        }
        Ok((201, self.created(&block)))
    }

    fn list(&self, req: &Request, out: &mut dyn Write) -> io::Result<()> {
        let wanted_meta: Vec<(String, String)> = req
            .query("metadata")
            .map(|m| {
                m.split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        (
                            super::decode(k).unwrap_or_default(),
                            super::decode(v).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let states: Vec<String> = req
            .query("state")
            .map(|s| s.split(',').map(|x| x.trim().to_owned()).collect())
            .unwrap_or_default();
        let limit = match req.query("limit").map(|l| l.parse::<usize>()) {
            None => LIMIT_DEFAULT,
            Some(Ok(l)) if (1..=LIMIT_MAX).contains(&l) => l,
            Some(_) => {
                return respond_error(out, 400, &format!("limit must be from 1 to {LIMIT_MAX}"));
            }
        };
        let from = match req.query("nextToken").map(|t| t.parse::<usize>()) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => return respond_error(out, 400, "nextToken is not one fcm gave"),
        };
        let dir = &self.m.config().state_dir;
        let mut all: Vec<(VmView, E2bRecord)> = self
            .m
            .list()
            .into_iter()
            .filter(|v| v.e2b.is_some())
            .filter_map(|v| {
                let b = store::load_e2b(dir, &VmId::parse(&v.id).ok()?)?;
                Some((v, b))
            })
            .filter(|(v, b)| {
                wanted_meta
                    .iter()
                    .all(|(k, val)| b.metadata.get(k) == Some(val))
                    && (states.is_empty() || states.iter().any(|s| s == state_of(v)))
            })
            .collect();
        all.sort_by(|a, b| {
            (a.1.started_at, &a.1.sandbox_id).cmp(&(b.1.started_at, &b.1.sandbox_id))
        });
        let page: Vec<Value> = all
            .iter()
            .skip(from)
            .take(limit)
            .map(|(v, b)| self.listed(v, b))
            .collect();
        let next = from + page.len();
        let extra: Vec<(&str, String)> = if next < all.len() {
            vec![("x-next-token", next.to_string())]
        } else {
            Vec::new()
        };
        respond(
            out,
            200,
            "application/json",
            &extra,
            Value::Array(page).to_string().as_bytes(),
        )
    }

    fn detail(&self, id: &str) -> Result<Value, Failure> {
        let (v, b) = self.sandbox(id)?;
        let mut d = self.listed(&v, &b);
        d["envdAccessToken"] = json!(self.access_token(id));
        d["domain"] = json!(self.domain());
        Ok(d)
    }

    fn kill(&self, id: &str) -> Result<(), Failure> {
        self.sandbox(id)?;
        self.s.forget_vm(id);
        self.m.destroy(id).map_err(|e| status_message(&e))?;
        Ok(())
    }

    fn set_timeout(&self, id: &str, body: &Value) -> Result<(u16, Value), Failure> {
        let t = match body.get("timeout") {
            None | Some(Value::Null) => return Err((400, "timeout is missing".into())),
            Some(_) => timeout_of(body)?,
        };
        self.sandbox(id)?;
        let end = unix_now() + t;
        self.update(id, |b| b.end_at = Some(end))
            .map_err(|e| status_message(&e))?
            .ok_or_else(|| not_found(id))?;
        Ok((204, Value::Null))
    }

    fn pause(&self, id: &str) -> Result<(), Failure> {
        let (v, _) = self.sandbox(id)?;
        if state_of(&v) == "paused" {
            return Err((409, format!("sandbox \"{id}\" is already paused")));
        }
        self.s.forget_vm(id);
        self.m.pause(id).map_err(|e| status_message(&e))?;
        self.update(id, |b| b.end_at = None)
            .map_err(|e| status_message(&e))?;
        Ok(())
    }

    /// Fork: `count` new sandboxes from the running sandbox's memory,
    /// processes and disk, taken once (`fcm fork`; the source pauses for a
    /// moment and runs on, its deadline untouched). Each gets the source's
    /// template, metadata, env vars and autoPause, and a timeout of its own.
    /// One result per fork: the sandbox, or why that one failed.
    fn fork(&self, id: &str, body: &Value) -> Result<(u16, Value), Failure> {
        let count = match body.get("count") {
            None | Some(Value::Null) => 1,
            Some(c) => c
                .as_u64()
                .filter(|c| (1..=FORK_MAX).contains(c))
                .ok_or_else(|| (400, format!("count must be from 1 to {FORK_MAX}")))?,
        };
        let timeout = timeout_of(body)?;
        let (_, source) = self.sandbox(id)?;
        // One fresh id; with a count above 1 the forks are <id>-1, <id>-2...
        let base = new_sandbox_id();
        let forks = self
            .m
            .fork(
                id,
                ForkRequest {
                    count: Some(count as u32),
                    name: Some(base),
                },
            )
            .map_err(|e| status_message(&e))?;
        let dir = &self.m.config().state_dir;
        let now = unix_now();
        let results: Vec<Value> = forks
            .into_iter()
            .map(|r| {
                let saved = r.map_err(|e| status_message(&e)).and_then(|view| {
                    let block = E2bRecord {
                        sandbox_id: view.name.clone(),
                        started_at: now,
                        end_at: Some(now + timeout),
                        ..source.clone()
                    };
                    let vm = VmId::parse(&view.id).map_err(|e| (500, e.to_string()))?;
                    store::save_e2b(dir, &vm, &block).map_err(|e| {
                        let _ = self.m.destroy(&view.name);
                        (
                            500,
                            format!("could not record the sandbox: {}", crate::error::chain(&e)),
                        )
                    })?;
                    Ok(block)
                });
                match saved {
                    Ok(block) => json!({ "sandbox": self.created(&block) }),
                    Err((code, message)) => {
                        json!({ "error": { "code": code, "message": message } })
                    }
                }
            })
            .collect();
        Ok((201, Value::Array(results)))
    }

    /// Connect (a running sandbox: 200; a paused one resumed: 201) or
    /// resume (only a paused one). Either sets the timeout anew.
    fn connect(&self, id: &str, body: &Value, resume: bool) -> Result<(u16, Value), Failure> {
        let timeout = timeout_of(body)?;
        let (v, _) = self.sandbox(id)?;
        let paused = state_of(&v) == "paused";
        if resume && !paused {
            return Err((409, format!("sandbox \"{id}\" is already running")));
        }
        if paused {
            let resumed = match v.state.as_str() {
                "stopped" => self.m.start(id),
                _ => self.m.resume(id),
            };
            let view = resumed.map_err(|e| status_message(&e))?;
            if !self.m.wait_ready(&view.id) {
                eprintln!(
                    "fcm daemon: sandbox {id}: its guest did not answer in time after resuming"
                );
            }
        }
        let auto_pause = body.get("autoPause").and_then(Value::as_bool);
        let end = unix_now() + timeout;
        let b = self
            .update(id, |b| {
                // A connect never shortens a running sandbox's life.
                b.end_at = Some(if paused {
                    end
                } else {
                    b.end_at.map_or(end, |t| t.max(end))
                });
                if let Some(a) = auto_pause {
                    b.auto_pause = a;
                }
            })
            .map_err(|e| status_message(&e))?
            .ok_or_else(|| not_found(id))?;
        Ok((if paused { 201 } else { 200 }, self.created(&b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked() {
        assert_eq!(timeout_of(&json!({})).expect("default"), TIMEOUT_DEFAULT);
        assert_eq!(timeout_of(&json!({"timeout": 5})).expect("5"), 5);
        assert!(timeout_of(&json!({"timeout": 0})).is_err());
        assert!(timeout_of(&json!({"timeout": "5"})).is_err());
        assert!(timeout_of(&json!({"timeout": TIMEOUT_MAX + 1})).is_err());
        let m = strings(&json!({"metadata": {"a": "b"}}), "metadata").expect("ok");
        assert_eq!(m.get("a").map(String::as_str), Some("b"));
        assert!(strings(&json!({"metadata": {"a": 1}}), "metadata").is_err());
        assert!(strings(&json!({"metadata": []}), "metadata").is_err());
    }
}
