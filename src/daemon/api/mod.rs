//! The HTTP API: `(method, path, body)` parsed into a typed request in one
//! `match`, handlers (one file per resource) returning
//! `Result<Reply, ApiError>`, and one function mapping error kinds to
//! status codes (`status.rs`). See `docs/openapi.yaml`.

mod checkpoints;
mod cluster;
mod cluster_stats;
mod guest;
mod sessions;
mod status;
mod vms;

pub use cluster::{serve, vm_of};
pub use guest::{Answer, stream};
pub use status::{cause_status_of, guest_status_of, session_status_of, status_of};

use serde::Serialize;
use serde_json::Value;

use super::manager::{ImageSource, Manager};
use super::metrics;
use super::sessions::Sessions;
use crate::wire::api::ErrorBody;
use crate::wire::text::printable;

/// Largest JSON request body accepted (413 above)...
pub const MAX_BODY: usize = 64 * 1024;
/// ...except for `POST /vms/{vm}/exec`, whose stdin may be up to 8 MiB
/// (as base64). File and archive uploads are streamed, not buffered
/// (`guest::TRANSFER_MAX`).
pub const MAX_EXEC_BODY: usize = 12 << 20;

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Passes,
    /// `GET /hosts`: the hosts of the cluster (docs/cluster.md).
    Hosts,
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
    PauseVm(String),
    ResumeVm(String),
    ForkVm(String),
    WakeVm(String),
    ListCheckpoints(String),
    CreateCheckpoint(String),
    RestoreCheckpoint(String, String),
    DeleteCheckpoint(String, String),
    ResizeVm(String),
    Exec(String),
    Logs {
        vm: String,
        offset: u64,
        max: usize,
    },
    GetFile {
        vm: String,
        path: String,
    },
    PutFile {
        vm: String,
        path: String,
    },
    GetArchive {
        vm: String,
        path: String,
    },
    PutArchive {
        vm: String,
        path: String,
    },
    ListImages,
    /// `POST /images?name=N[&dockerfile=P]` (a build context) or
    /// `?name=N&import=1` (an archive): streamed both ways.
    PostImage {
        name: String,
        source: ImageSource,
    },
    GetImage(String),
    DeleteImage(String),
    /// `GET /stats`: every VM's resource use.
    Stats,
    VmStats(String),
    /// `GET /metrics`: Prometheus text (the metrics token opens it too).
    Metrics,
    /// `GET /events[?vm=V]`: NDJSON, streamed on a thread of its own.
    Events(Option<String>),
}

impl Route {
    /// Routes whose bodies are streamed (files, archives), not JSON.
    pub fn streams(&self) -> bool {
        matches!(
            self,
            Self::GetFile { .. }
                | Self::PutFile { .. }
                | Self::GetArchive { .. }
                | Self::PutArchive { .. }
                | Self::PostImage { .. }
        )
    }

    /// The largest body this route accepts.
    pub fn body_limit(&self) -> usize {
        match self {
            Self::Exec(_) => MAX_EXEC_BODY,
            _ => MAX_BODY,
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub hint: Option<String>,
    /// For a 405: the methods the path takes (the `Allow` header).
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            hint: None,
            allow: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn body(&self) -> Value {
        // Messages may quote a guest (ssh's stderr, tmux): never send its
        // control sequences on.
        let body = ErrorBody {
            error: printable(&self.message),
            status: self.status,
            hint: self.hint.as_deref().map(printable),
        };
        serde_json::to_value(body).unwrap_or(Value::Null)
    }
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

pub(super) fn ok<T: Serialize>(status: u16, v: T) -> Result<Reply, ApiError> {
    serde_json::to_value(v)
        .map(|body| Reply { status, body })
        .map_err(|e| ApiError::new(500, format!("could not encode the response: {e}")))
}

/// The value of `key` in a URL's query string, percent-decoded.
pub(super) fn query(url: &str, key: &str) -> Result<Option<String>, ApiError> {
    let Some((_, q)) = url.split_once('?') else {
        return Ok(None);
    };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return percent_decode(v).map(Some).ok_or_else(|| {
                ApiError::new(
                    400,
                    format!("query parameter {key} is not valid percent-encoded UTF-8"),
                )
            });
        }
    }
    Ok(None)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn number<T: std::str::FromStr>(url: &str, key: &str, default: T) -> Result<T, ApiError> {
    match query(url, key)? {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            ApiError::new(
                400,
                format!("query parameter {key} must be a non-negative integer"),
            )
        }),
    }
}

fn guest_path(url: &str) -> Result<String, ApiError> {
    query(url, "path")?
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            ApiError::new(400, "the query parameter path is missing")
                .with_hint("e.g. ?path=/root/notes.txt (percent-encoded)")
        })
}

/// The route of `(method, path segments)`, if there is one.
fn match_route(method: &str, segs: &[&str]) -> Option<Route> {
    let vm = |s: &str| s.to_owned();
    Some(match (method, segs) {
        ("GET", ["health"]) => Route::Health,
        ("GET", ["passes"]) => Route::Passes,
        ("GET", ["hosts"]) => Route::Hosts,
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
        ("POST", ["vms", v, "pause"]) => Route::PauseVm(vm(v)),
        ("POST", ["vms", v, "resume"]) => Route::ResumeVm(vm(v)),
        // GET too: Caddy's forward_auth asks with GET.
        ("GET" | "POST", ["vms", v, "wake"]) => Route::WakeVm(vm(v)),
        ("POST", ["vms", v, "fork"]) => Route::ForkVm(vm(v)),
        ("GET", ["vms", v, "checkpoints"]) => Route::ListCheckpoints(vm(v)),
        ("POST", ["vms", v, "checkpoints"]) => Route::CreateCheckpoint(vm(v)),
        ("POST", ["vms", v, "checkpoints", c, "restore"]) => {
            Route::RestoreCheckpoint(vm(v), c.to_string())
        }
        ("DELETE", ["vms", v, "checkpoints", c]) => Route::DeleteCheckpoint(vm(v), c.to_string()),
        ("POST", ["vms", v, "resize"]) => Route::ResizeVm(vm(v)),
        ("POST", ["vms", v, "exec"]) => Route::Exec(vm(v)),
        ("GET", ["vms", v, "logs"]) => Route::Logs {
            vm: vm(v),
            offset: 0,
            max: super::manager::LOG_CHUNK_MAX,
        },
        ("GET", ["vms", v, "files"]) => Route::GetFile {
            vm: vm(v),
            path: String::new(),
        },
        ("PUT", ["vms", v, "files"]) => Route::PutFile {
            vm: vm(v),
            path: String::new(),
        },
        ("GET", ["vms", v, "archive"]) => Route::GetArchive {
            vm: vm(v),
            path: String::new(),
        },
        ("PUT", ["vms", v, "archive"]) => Route::PutArchive {
            vm: vm(v),
            path: String::new(),
        },
        ("GET", ["images"]) => Route::ListImages,
        ("POST", ["images"]) => Route::PostImage {
            name: String::new(),
            source: ImageSource::Import,
        },
        // Image names hold `/` (`fcm/base`): the rest of the path, or one
        // percent-encoded segment.
        ("GET", ["images", rest @ ..]) => Route::GetImage(image_name(rest)?),
        ("DELETE", ["images", rest @ ..]) => Route::DeleteImage(image_name(rest)?),
        ("GET", ["stats"]) => Route::Stats,
        ("GET", ["vms", v, "stats"]) => Route::VmStats(vm(v)),
        ("GET", ["metrics"]) => Route::Metrics,
        ("GET", ["events"]) => Route::Events(None),
        _ => return None,
    })
}

/// An image's name from the segments after `/images/`.
fn image_name(segs: &[&str]) -> Option<String> {
    if segs.is_empty() || segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    percent_decode(&segs.join("/"))
}

/// Fills in what a route takes from the query string (400 if it is bad).
fn with_query(r: Route, url: &str) -> Result<Route, ApiError> {
    Ok(match r {
        Route::Logs { vm, .. } => Route::Logs {
            vm,
            offset: number(url, "offset", 0u64)?,
            max: number(url, "max", super::manager::LOG_CHUNK_MAX)?,
        },
        Route::GetFile { vm, .. } => Route::GetFile {
            vm,
            path: guest_path(url)?,
        },
        Route::PutFile { vm, .. } => Route::PutFile {
            vm,
            path: guest_path(url)?,
        },
        Route::GetArchive { vm, .. } => Route::GetArchive {
            vm,
            path: guest_path(url)?,
        },
        Route::PutArchive { vm, .. } => Route::PutArchive {
            vm,
            path: guest_path(url)?,
        },
        Route::PostImage { .. } => {
            let name = query(url, "name")?
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    ApiError::new(400, "the query parameter name is missing").with_hint(
                        "e.g. POST /images?name=web:1 with a build context (tar) as the body",
                    )
                })?;
            let import = match query(url, "import")?.as_deref() {
                None | Some("0" | "false") => false,
                Some("1" | "true") => true,
                Some(other) => {
                    return Err(ApiError::new(
                        400,
                        format!("import must be 1, true, 0 or false, not {other:?}"),
                    ));
                }
            };
            // For a build only (an import has no Dockerfile).
            let dockerfile = query(url, "dockerfile")?.filter(|d| !d.is_empty() && !import);
            let source = if import {
                ImageSource::Import
            } else {
                ImageSource::Build { dockerfile }
            };
            Route::PostImage { name, source }
        }
        Route::Events(_) => Route::Events(query(url, "vm")?.filter(|v| !v.is_empty())),
        other => other,
    })
}

/// Methods the API serves on some path.
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];

/// Parses a request line into a route; `Err` is 404, or 405 with the
/// methods the path does take (for the `Allow` header).
pub fn route(method: &str, url: &str) -> Result<Route, ApiError> {
    let path = url.split('?').next().unwrap_or_default();
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    if let Some(r) = match_route(method, &segs) {
        return with_query(r, url);
    }
    let allowed: Vec<&str> = METHODS
        .into_iter()
        .filter(|m| match_route(m, &segs).is_some())
        .collect();
    if allowed.is_empty() {
        return Err(ApiError::new(
            404,
            format!("no such endpoint: {method} {path}"),
        ));
    }
    let mut e = ApiError::new(405, format!("method {method} is not allowed on {path}"))
        .with_hint(format!("this path takes {}", allowed.join(", ")));
    e.allow = Some(allowed.join(", "));
    Err(e)
}

pub(super) fn parse_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(400, format!("malformed JSON body: {e}"))
            .with_hint("send a JSON object, e.g. {\"cpus\": 2}")
    })
}

/// Runs a parsed request.
pub fn handle(m: &Manager, s: &Sessions, r: Route, body: &[u8]) -> Result<Reply, ApiError> {
    match r {
        Route::Health => vms::health(m),
        Route::Passes => ok(200, m.passes()),
        Route::Hosts => match m.cluster() {
            Some(c) => ok(200, c.hosts()),
            None => Err(ApiError::new(
                503,
                "the host's cluster membership is not set up yet",
            )),
        },
        Route::ListVms => {
            super::fault::panic_point("api:panic-in-list");
            // In a cluster: every host's VMs (docs/cluster.md).
            match m.cluster() {
                Some(c) => ok(200, c.list_vms(m.list())),
                None => ok(200, m.list()),
            }
        }
        Route::CreateVm => vms::create(m, parse_body(body)?),
        Route::GetVm(v) => ok(200, m.get(&v)?),
        Route::VmSsh(v) => vms::ssh_info(m, &v),
        Route::StopVm(v) => vms::stop(m, s, &v, parse_body(body)?),
        Route::StartVm(v) => vms::start(m, &v, parse_body(body)?),
        Route::DestroyVm(v) => vms::destroy(m, s, &v),
        Route::ListSessions(v) => ok(200, s.list(m, &v)?),
        Route::CreateSession(v) => sessions::create(m, s, &v, parse_body(body)?),
        Route::DeleteSession(v, id) => ok(200, s.kill(m, &v, &id)?),
        Route::PauseVm(v) => checkpoints::pause(m, s, &v, parse_body(body)?),
        Route::ResumeVm(v) => checkpoints::resume(m, &v, parse_body(body)?),
        Route::WakeVm(v) => ok(200, m.wake(&v)?),
        Route::ForkVm(v) => vms::fork(m, &v, parse_body(body)?),
        Route::ListCheckpoints(v) => checkpoints::list(m, &v),
        Route::CreateCheckpoint(v) => checkpoints::create(m, &v, parse_body(body)?),
        Route::RestoreCheckpoint(v, c) => checkpoints::restore(m, s, &v, &c, parse_body(body)?),
        Route::DeleteCheckpoint(v, c) => checkpoints::delete(m, &v, &c),
        Route::ResizeVm(v) => ok(200, m.resize(&v, parse_body(body)?)?),
        Route::Exec(v) => guest::exec(m, &v, parse_body(body)?),
        Route::Logs { vm, offset, max } => ok(200, m.logs(&vm, offset, max)?),
        Route::ListImages => ok(200, m.images()?),
        Route::GetImage(name) => ok(200, m.image(&name)?),
        Route::DeleteImage(name) => ok(200, m.remove_image(&name)?),
        Route::Stats => ok(200, metrics::all(m)),
        Route::VmStats(v) => ok(200, metrics::one(m, &v)?),
        Route::GetFile { .. }
        | Route::PutFile { .. }
        | Route::GetArchive { .. }
        | Route::PutArchive { .. }
        | Route::PostImage { .. }
        | Route::Metrics
        | Route::Events(_) => Err(ApiError::new(
            500,
            "a streamed route reached the JSON handler",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::api::CreateRequest;

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
        assert_eq!(
            route("POST", "/vms/x/checkpoints/c1/restore").expect("route"),
            Route::RestoreCheckpoint("x".into(), "c1".into())
        );
        assert_eq!(
            route("DELETE", "/vms/x/checkpoints/c1").expect("route"),
            Route::DeleteCheckpoint("x".into(), "c1".into())
        );
        assert_eq!(
            route("POST", "/vms/x/fork").expect("route"),
            Route::ForkVm("x".into())
        );
        assert_eq!(
            route("POST", "/vms/x/pause").expect("route"),
            Route::PauseVm("x".into())
        );
        assert_eq!(
            route("PUT", "/vms/x/checkpoints")
                .expect_err("405")
                .allow
                .as_deref(),
            Some("GET, POST")
        );
        assert_eq!(
            route("GET", "/vms/x/files?path=%2Froot%2Fa%20b%27c&x=1").expect("route"),
            Route::GetFile {
                vm: "x".into(),
                path: "/root/a b'c".into()
            }
        );
        assert_eq!(
            route("GET", "/vms/x/files").expect_err("no path").status,
            400
        );
        assert_eq!(
            route("GET", "/vms/x/files?path=%ff")
                .expect_err("bad utf8")
                .status,
            400
        );
        assert_eq!(
            route("GET", "/vms/x/files?path=%4")
                .expect_err("bad escape")
                .status,
            400
        );
        assert_eq!(
            route("GET", "/vms/x/logs?offset=42").expect("route"),
            Route::Logs {
                vm: "x".into(),
                offset: 42,
                max: super::super::manager::LOG_CHUNK_MAX
            }
        );
        assert_eq!(
            route("GET", "/vms/x/logs?offset=-1")
                .expect_err("neg")
                .status,
            400
        );
        assert_eq!(route("DELETE", "/vms/x/exec").expect_err("405").status, 405);
        assert!(
            route("PUT", "/vms/x/archive?path=/tmp")
                .expect("route")
                .streams()
        );
        assert_eq!(Route::Exec("x".into()).body_limit(), MAX_EXEC_BODY);
        assert_eq!(route("PUT", "/vms").expect_err("405").status, 405);
        assert_eq!(
            route("TRACE", "/vms/x").expect_err("405").allow.as_deref(),
            Some("GET, DELETE")
        );
        assert_eq!(route("GET", "/etc/passwd").expect_err("404").status, 404);
        assert_eq!(route("GET", "/stats").expect("route"), Route::Stats);
        assert_eq!(
            route("GET", "/vms/x/stats").expect("route"),
            Route::VmStats("x".into())
        );
        assert_eq!(route("GET", "/metrics").expect("route"), Route::Metrics);
        assert_eq!(
            route("GET", "/events?vm=web").expect("route"),
            Route::Events(Some("web".into()))
        );
        assert_eq!(route("GET", "/events").expect("route"), Route::Events(None));
        assert_eq!(route("GET", "/vms/a/b/c/d/e").expect_err("404").status, 404);
    }

    #[test]
    fn malformed_json_is_400() {
        let e = parse_body::<CreateRequest>(b"{not json").expect_err("bad");
        assert_eq!(e.status, 400);
        let e = parse_body::<CreateRequest>(br#"{"cpus":"many"}"#).expect_err("bad");
        assert_eq!(e.status, 400);
        assert!(parse_body::<CreateRequest>(b"").is_ok());
    }
}
