//! The HTTP API: `(method, path, body)` parsed into a typed request in one
//! `match`, handlers returning `Result<Reply, ApiError>`, and one function
//! mapping error kinds to status codes. See `docs/openapi.yaml`.

use serde::Serialize;
use serde_json::{Value, json};

use super::manager::{CreateRequest, Manager, ManagerError, chain};
use crate::sessions::{SessionError, Sessions};

/// Largest request body accepted (413 above).
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    ListVms,
    CreateVm,
    GetVm(String),
    VmSsh(String),
    StopVm(String),
    StartVm(String),
    DestroyVm(String),
    ListSessions(String),
    CreateSession(String),
    DeleteSession(String, String),
}

#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub hint: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn body(&self) -> Value {
        let mut v = json!({ "error": self.message, "status": self.status });
        if let Some(h) = &self.hint {
            v["hint"] = json!(h);
        }
        v
    }
}

/// The one place that maps error kinds to HTTP status codes.
pub fn status_of(e: &ManagerError) -> u16 {
    match e {
        ManagerError::InvalidName(_) | ManagerError::BadRequest(_) => 400,
        ManagerError::NotFound(_) => 404,
        ManagerError::Ambiguous(_)
        | ManagerError::WrongState { .. }
        | ManagerError::NameTaken(_) => 409,
        ManagerError::Missing { .. } | ManagerError::PoolExhausted(_) => 503,
        ManagerError::CreateStep { .. } | ManagerError::Operation { .. } => 500,
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        let status = status_of(&e);
        let hint = e.hint();
        let mut a = ApiError::new(status, chain(&e));
        a.hint = hint;
        a
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        let status = e.status();
        let hint = e.hint();
        let mut a = ApiError::new(status, chain(&e));
        a.hint = hint;
        a
    }
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

fn ok<T: Serialize>(status: u16, v: T) -> Result<Reply, ApiError> {
    serde_json::to_value(v)
        .map(|body| Reply { status, body })
        .map_err(|e| ApiError::new(500, format!("could not encode the response: {e}")))
}

/// Parses a request line into a route; `Err` is 404 or 405.
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    let path = path.split('?').next().unwrap_or_default();
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let vm = |s: &str| s.to_owned();
    let r = match (method, segs.as_slice()) {
        ("GET", ["health"]) => Route::Health,
        ("GET", ["vms"]) => Route::ListVms,
        ("POST", ["vms"]) => Route::CreateVm,
        ("GET", ["vms", v]) => Route::GetVm(vm(v)),
        ("DELETE", ["vms", v]) => Route::DestroyVm(vm(v)),
        ("GET", ["vms", v, "ssh"]) => Route::VmSsh(vm(v)),
        ("POST", ["vms", v, "stop"]) => Route::StopVm(vm(v)),
        ("POST", ["vms", v, "start"]) => Route::StartVm(vm(v)),
        ("GET", ["vms", v, "sessions"]) => Route::ListSessions(vm(v)),
        ("POST", ["vms", v, "sessions"]) => Route::CreateSession(vm(v)),
        ("DELETE", ["vms", v, "sessions", s]) => Route::DeleteSession(vm(v), s.to_string()),
        (
            _,
            ["health"]
            | ["vms"]
            | ["vms", _]
            | ["vms", _, "ssh" | "stop" | "start" | "sessions"]
            | ["vms", _, "sessions", _],
        ) => {
            return Err(ApiError::new(
                405,
                format!("method {method} is not allowed on {path}"),
            ));
        }
        _ => {
            return Err(ApiError::new(
                404,
                format!("no such endpoint: {method} {path}"),
            ));
        }
    };
    Ok(r)
}

fn parse_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(400, format!("malformed JSON body: {e}"))
            .with_hint("send a JSON object, e.g. {\"cpus\": 2}")
    })
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    wait_ssh: Option<bool>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionRequest {
    name: Option<String>,
}

pub fn handle(m: &Manager, sessions: &Sessions, r: Route, body: &[u8]) -> Result<Reply, ApiError> {
    match r {
        Route::Health => ok(
            200,
            json!({"ok": true, "version": env!("CARGO_PKG_VERSION"), "backend": m.backend().as_str()}),
        ),
        Route::ListVms => ok(200, m.list()),
        Route::CreateVm => {
            let req: CreateRequest = parse_body(body)?;
            let wait = req.wait_ssh.unwrap_or(true);
            let mut view = m.create(req)?;
            if wait {
                let ready = m.wait_ssh(view.ip);
                view.ssh_ready = Some(ready);
                if !ready {
                    view.warnings.push(format!(
                        "the VM is running but SSH did not answer within {} s; see {}/{}/console.log",
                        m.config().ssh_timeout_secs,
                        m.config().state_dir.display(),
                        view.id
                    ));
                }
            }
            ok(201, view)
        }
        Route::GetVm(v) => ok(200, m.get(&v)?),
        Route::VmSsh(v) => ok(200, m.ssh_info(&v)?),
        Route::StopVm(v) => {
            let _: StartRequest = parse_body(body)?;
            sessions.forget_vm(&v);
            ok(200, m.stop(&v)?)
        }
        Route::StartVm(v) => {
            let req: StartRequest = parse_body(body)?;
            let mut view = m.start(&v)?;
            if req.wait_ssh.unwrap_or(true) {
                view.ssh_ready = Some(m.wait_ssh(view.ip));
            }
            ok(200, view)
        }
        Route::DestroyVm(v) => {
            sessions.forget_vm(&v);
            ok(200, m.destroy(&v)?)
        }
        Route::ListSessions(v) => ok(200, sessions.list(m, &v)?),
        Route::CreateSession(v) => {
            let req: SessionRequest = parse_body(body)?;
            ok(201, sessions.create(m, &v, req.name.as_deref())?)
        }
        Route::DeleteSession(v, s) => ok(200, sessions.kill(m, &v, &s)?),
    }
}

/// Constant-time comparison of the presented token with the daemon's.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0 && !b.is_empty()
}

/// The bearer token from an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, tok) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| tok.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        assert_eq!(route("GET", "/vms").expect("route"), Route::ListVms);
        assert_eq!(route("GET", "/vms/").expect("route"), Route::ListVms);
        assert_eq!(route("POST", "/vms").expect("route"), Route::CreateVm);
        assert_eq!(
            route("GET", "/vms/cosmic-nova").expect("route"),
            Route::GetVm("cosmic-nova".into())
        );
        assert_eq!(
            route("POST", "/vms/x/stop").expect("route"),
            Route::StopVm("x".into())
        );
        assert_eq!(
            route("DELETE", "/vms/x/sessions/s1").expect("route"),
            Route::DeleteSession("x".into(), "s1".into())
        );
        assert_eq!(route("PUT", "/vms").expect_err("405").status, 405);
        assert_eq!(route("GET", "/etc/passwd").expect_err("404").status, 404);
        assert_eq!(route("GET", "/vms/a/b/c/d/e").expect_err("404").status, 404);
    }

    #[test]
    fn tokens_compare() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("", ""));
        assert_eq!(bearer(Some("Bearer xyz")), Some("xyz"));
        assert_eq!(bearer(Some("bearer  xyz ")), Some("xyz"));
        assert_eq!(bearer(Some("Basic xyz")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn malformed_json_is_400() {
        let e = parse_body::<CreateRequest>(b"{not json").expect_err("bad");
        assert_eq!(e.status, 400);
        let e = parse_body::<CreateRequest>(br#"{"cpus":"many"}"#).expect_err("bad");
        assert_eq!(e.status, 400);
        assert!(parse_body::<CreateRequest>(b"").is_ok());
    }

    #[test]
    fn error_statuses() {
        let s = |e: ManagerError| ApiError::from(e).status;
        assert_eq!(s(ManagerError::NotFound("x".into())), 404);
        assert_eq!(
            s(ManagerError::WrongState {
                name: "a".into(),
                state: "stopped",
                wanted: "running",
                action: "stop it"
            }),
            409
        );
        assert_eq!(
            s(ManagerError::Missing {
                what: "guest kernel",
                path: "/x".into(),
                hint: "h"
            }),
            503
        );
        assert_eq!(s(ManagerError::BadRequest("x".into())), 400);
    }
}
