//! The E2B API (docs/e2b.md): the official E2B SDKs pointed at fcm with
//! `E2B_API_URL` and `E2B_SANDBOX_URL` (or `E2B_DOMAIN`) drive fcm VMs.
//! Served on the API port beside fcm's own routes; the HTTP door
//! (`http/e2b.rs`) tells an E2B request by its path or its sandbox headers
//! ([`classify`]), checks its key here ([`E2b::admits`]) and hands it, on
//! a thread of its own, to [`E2b::serve`], which answers in E2B's forms.
//!
//! | part | what |
//! |---|---|
//! | `control` | the control API: `/sandboxes`, `/v2/sandboxes` (create, list, get, kill, timeout, pause, connect, resume) |
//! | `domain` | `E2B_DOMAIN` through Caddy: the site file of `api.<domain>` and `49983-<id>.<domain>` |
//! | `envd` | the in-sandbox API: `/health`, `/files`, the Connect RPCs of `process.Process` and `filesystem.Filesystem` |
//! | `metrics` | `GET /sandboxes/{id}/metrics`: one sample read in the guest |
//! | `process` | `process.Process`: Start (PTYs too) streamed onto the agent's exec, Connect, List, SendSignal, SendInput, CloseStdin, Update (a PTY's size) |
//! | `watch` | directory watchers, the polling kind (CreateWatcher, GetWatcherEvents, RemoveWatcher) |
//! | `connect` | the Connect protocol's JSON forms: envelopes, error codes |
//! | `multipart` | `multipart/form-data` uploads, streamed part by part |
//!
//! A sandbox IS an fcm VM: its name is the sandbox id, its E2B block
//! (`store::E2bRecord`: template, metadata, env vars, deadline) lives
//! beside its record, and every `fcm` command works on it. Nothing E2B
//! runs in the guest: processes and files go through the guest seam
//! (fcm-agent).

mod connect;
mod control;
mod domain;
mod envd;
mod metrics;
mod multipart;
mod process;
mod watch;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::auth::token_matches;
use super::guest::Control;
use super::manager::{Manager, ManagerError};
use super::sessions::Sessions;

pub use domain::Upstream;

/// The port envd listens on in an E2B sandbox: the SDK names it in the
/// `E2b-Sandbox-Port` header and in `E2B_DOMAIN` host names.
pub const ENVD_PORT: u16 = 49983;
/// The envd version fcm answers as: the SDKs gate features on it (0.4.0:
/// no forced user; 0.5.7: octet-stream uploads).
pub const ENVD_VERSION: &str = "0.5.7";
/// What the E2B API says a sandbox's client is.
const CLIENT_ID: &str = "fcm";
/// Largest JSON body of a control request or a unary RPC.
const JSON_MAX: u64 = 1 << 20;
/// Processes started through `process.Process/Start` running at once.
const PROCESSES_MAX: usize = 1024;

/// A request's head, as the door read it.
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// A query parameter, percent-decoded (`+` is a space).
    fn query(&self, key: &str) -> Option<String> {
        let (_, q) = self.target.split_once('?')?;
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k).as_deref() == Some(key))
                .then(|| decode(v))
                .flatten()
        })
    }
}

fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Percent-decoding of a query component (`+` as a space); none if it is
/// not valid UTF-8 or a `%` escape is broken.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// What an E2B request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// The control API (`/sandboxes`, `/v2/sandboxes`), keyed by `X-API-KEY`.
    Control,
    /// The in-sandbox API of this sandbox, keyed by its `X-Access-Token`.
    Envd(String),
}

/// Which E2B request this is, if it is one: a request naming a sandbox
/// (the `E2b-Sandbox-Id` header, or a `Host` of `49983-<id>.<domain>`)
/// is for that sandbox's envd; a path under `/sandboxes` or
/// `/v2/sandboxes` is the control API. Everything else is fcm's own.
pub fn classify(path: &str, headers: &[(String, String)]) -> Option<Call> {
    if let Some(id) = header_in(headers, "E2b-Sandbox-Id") {
        return Some(Call::Envd(id.trim().to_owned()));
    }
    let host = header_in(headers, "Host").unwrap_or_default();
    if let Some(rest) = host.strip_prefix(&format!("{ENVD_PORT}-")) {
        let id = rest.split(['.', ':']).next().unwrap_or_default();
        return Some(Call::Envd(id.to_owned()));
    }
    let path = path.split('?').next().unwrap_or_default();
    let control = ["/sandboxes", "/v2/sandboxes"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")));
    control.then_some(Call::Control)
}

/// A sandbox id: `i` and 19 lowercase letters or digits, which is also a
/// valid VM name (the sandbox's VM is named by it).
fn new_sandbox_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let mut id = String::from("i");
    for _ in 0..19 {
        id.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    id
}

/// Whether `s` can be a sandbox id at all (only those reach the VM table):
/// one [`new_sandbox_id`] gave, or a fork's (`<id>-<n>`).
fn plausible_id(s: &str) -> bool {
    let (id, n) = s.split_once('-').unwrap_or((s, "1"));
    id.len() == 20
        && id.starts_with('i')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && (1..=3).contains(&n.len())
        && n.bytes().all(|b| b.is_ascii_digit())
}

/// A process started through `process.Process/Start`, while it runs.
struct Proc {
    sandbox: String,
    tag: Option<String>,
    config: Value,
    control: Arc<dyn Control>,
    /// Its stdin (or terminal input), when it was started with one; taken
    /// (closed) by CloseStdin.
    input: Input,
    /// Clients connected to it after its start (`process.Process/Connect`):
    /// each gets its output and end as envelopes, through a bounded queue
    /// (one that falls behind is let go).
    watchers: Watchers,
}

type Watchers = Arc<Mutex<Vec<std::sync::mpsc::SyncSender<Vec<u8>>>>>;

/// A process's input, written by SendInput one call at a time.
type Input = Arc<Mutex<Option<Box<dyn Write + Send>>>>;

/// The E2B API's state: the daemon's pieces it translates onto, the key
/// its sandbox tokens derive from, the processes it runs.
pub struct E2b {
    m: Arc<Manager>,
    s: Arc<Sessions>,
    token: Arc<String>,
    /// Serialises changes of sandboxes' E2B blocks (read, change, write).
    blocks: Mutex<()>,
    procs: Mutex<BTreeMap<u32, Proc>>,
    next_pid: AtomicU32,
    /// Directory watchers by id (at most `watch::WATCHERS_MAX`).
    watchers: Mutex<BTreeMap<String, watch::Watcher>>,
    /// The site that publishes the API through Caddy (`E2B_DOMAIN`).
    site: domain::Site,
}

/// A refused request: its status and message, in E2B's error form.
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl E2b {
    /// `site`: how Caddy reaches the API, when E2B through Caddy is
    /// wanted ([`E2b::publish_site`]).
    pub fn new(
        m: Arc<Manager>,
        s: Arc<Sessions>,
        token: Arc<String>,
        site: Option<Upstream>,
    ) -> Self {
        Self {
            site: domain::Site::new(site),
            m,
            s,
            token,
            blocks: Mutex::new(()),
            procs: Mutex::new(BTreeMap::new()),
            next_pid: AtomicU32::new(1000),
            watchers: Mutex::new(BTreeMap::new()),
        }
    }

    /// A sandbox's `envdAccessToken` ([`access_token`]).
    pub fn access_token(&self, sandbox: &str) -> String {
        access_token(&self.token, sandbox)
    }

    /// Whether the request's key admits it ([`check_key`]).
    pub fn admits(&self, call: &Call, headers: &[(String, String)]) -> Result<(), Refusal> {
        check_key(&self.token, call, headers)
    }

    /// Serves one admitted request: `body` is its (unread) body, `out` the
    /// connection, which ends after the answer.
    pub fn serve(&self, call: Call, req: &Request, body: &mut dyn Read, out: &mut dyn Write) {
        let written = match call {
            Call::Control => self.control(req, body, out),
            Call::Envd(id) => self.envd(&id, req, body, out),
        };
        // A client gone mid-answer: nothing to tell it.
        let _ = written;
    }

    /// Housekeeping: every sandbox past its deadline is destroyed, or
    /// paused when it was made with `autoPause`; each through the
    /// manager's own operation (journalled in its record).
    pub fn expire(&self) {
        let now = unix_now();
        for v in self.m.list() {
            let Some(info) = &v.e2b else { continue };
            if info.end_at.is_none_or(|t| t > now) {
                continue;
            }
            if info.auto_pause && v.state == "running" {
                self.s.forget_vm(&v.name);
                match self.m.pause(&v.name) {
                    Ok(_) => {
                        let _ = self.update(&v.name, |b| b.end_at = None);
                        eprintln!(
                            "fcm daemon: sandbox {} reached its timeout: paused (autoPause)",
                            v.name
                        );
                    }
                    Err(e) => eprintln!(
                        "fcm daemon: sandbox {} reached its timeout; pausing it failed: {}",
                        v.name,
                        crate::error::chain(&e)
                    ),
                }
            } else if !info.auto_pause {
                self.s.forget_vm(&v.name);
                match self.m.destroy(&v.name) {
                    Ok(_) => eprintln!(
                        "fcm daemon: sandbox {} reached its timeout: destroyed",
                        v.name
                    ),
                    Err(e) => eprintln!(
                        "fcm daemon: sandbox {} reached its timeout; destroying it failed: {}",
                        v.name,
                        crate::error::chain(&e)
                    ),
                }
            }
        }
    }

    /// Changes a sandbox's E2B block; none if the VM is not a sandbox.
    fn update(
        &self,
        sandbox: &str,
        f: impl FnOnce(&mut super::store::E2bRecord),
    ) -> Result<Option<super::store::E2bRecord>, ManagerError> {
        let _held = super::lock(&self.blocks);
        let v = self.m.get(sandbox)?;
        let Ok(id) = crate::names::VmId::parse(&v.id) else {
            return Ok(None);
        };
        let dir = &self.m.config().state_dir;
        let Some(mut b) = super::store::load_e2b(dir, &id) else {
            return Ok(None);
        };
        f(&mut b);
        super::store::save_e2b(dir, &id, &b).map_err(|e| {
            ManagerError::BadRequest(format!(
                "could not save the sandbox: {}",
                crate::error::chain(&e)
            ))
        })?;
        Ok(Some(b))
    }
}

/// A sandbox's `envdAccessToken`: HMAC-SHA256 of its id under the
/// daemon's token, so it admits that sandbox only, survives restarts, and
/// changes when the token does.
fn access_token(token: &str, sandbox: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
    let tag = ring::hmac::sign(&key, format!("fcm-e2b-envd\0{sandbox}").as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a request's key admits it: the control API takes the fcm token
/// as `X-API-KEY`; a sandbox's envd takes its own access token as
/// `X-Access-Token`, or the fcm token there. (E2B's keys only: a bearer
/// token is not looked at, so a wrong E2B key is refused whatever else the
/// request carries.)
fn check_key(token: &str, call: &Call, headers: &[(String, String)]) -> Result<(), Refusal> {
    let fcm = |t: Option<&str>| t.is_some_and(|t| token_matches(t.trim(), token));
    let ok = match call {
        Call::Control => fcm(header_in(headers, "X-API-KEY")),
        Call::Envd(id) => header_in(headers, "X-Access-Token")
            .is_some_and(|t| token_matches(t.trim(), &access_token(token, id)) || fcm(Some(t))),
    };
    if ok {
        return Ok(());
    }
    let message = match call {
        Call::Control if header_in(headers, "X-API-KEY").is_none() => {
            "missing API key: send the fcm token as X-API-KEY (E2B_API_KEY)"
        }
        Call::Control => "invalid API key: it is not the daemon's token",
        Call::Envd(_) => "invalid access token for this sandbox",
    };
    Err(Refusal {
        status: 401,
        message: message.into(),
    })
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        507 => "Insufficient Storage",
        _ => "",
    }
}

/// A whole answer with its length; the connection closes after it.
fn respond(
    out: &mut dyn Write,
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    if status != 204 {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    out.write_all(head.as_bytes())?;
    if status != 204 {
        out.write_all(body)?;
    }
    out.flush()
}

fn respond_json(out: &mut dyn Write, status: u16, v: &Value) -> io::Result<()> {
    respond(
        out,
        status,
        "application/json",
        &[],
        v.to_string().as_bytes(),
    )
}

/// An error in E2B's form: `{code, message}`.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    json!({"code": status, "message": crate::wire::text::printable(message)})
        .to_string()
        .into_bytes()
}

fn respond_error(out: &mut dyn Write, status: u16, message: &str) -> io::Result<()> {
    respond(
        out,
        status,
        "application/json",
        &[],
        &error_body(status, message),
    )
}

/// A whole answer the door says (before the request is admitted).
pub fn refusal_response(r: &Refusal) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = respond(
        &mut v,
        r.status,
        "application/json",
        &[],
        &error_body(r.status, &r.message),
    );
    v
}

/// A manager's error as an E2B status and message.
fn status_message(e: &ManagerError) -> (u16, String) {
    (super::api::status_of(e), crate::error::chain(e).to_string())
}

/// Reads a JSON body of at most [`JSON_MAX`] bytes (an empty one is `{}`).
fn read_json(body: &mut dyn Read) -> Result<Value, (u16, String)> {
    let mut buf = Vec::new();
    body.take(JSON_MAX + 1)
        .read_to_end(&mut buf)
        .map_err(|e| (400, format!("could not read the body: {e}")))?;
    if buf.len() as u64 > JSON_MAX {
        return Err((413, format!("the body is larger than {JSON_MAX} bytes")));
    }
    if buf.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&buf).map_err(|e| (400, format!("malformed JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn requests_are_told_by_path_and_sandbox_headers() {
        assert_eq!(classify("/v2/sandboxes", &[]), Some(Call::Control));
        assert_eq!(classify("/sandboxes/x/pause", &[]), Some(Call::Control));
        assert_eq!(classify("/sandboxesx", &[]), None);
        assert_eq!(classify("/vms", &[]), None);
        assert_eq!(classify("/health", &[]), None);
        assert_eq!(
            classify("/health", &h(&[("e2b-sandbox-id", "iabc")])),
            Some(Call::Envd("iabc".into()))
        );
        assert_eq!(
            classify("/files", &h(&[("Host", "49983-iabc.10-0-0-1.sslip.io")])),
            Some(Call::Envd("iabc".into()))
        );
        assert_eq!(classify("/vms", &h(&[("Host", "127.0.0.1:7777")])), None);
    }

    #[test]
    fn keys_admit_what_they_are_for() {
        let t = "the-fcm-token";
        let a = Call::Envd("ia".into());
        let b = Call::Envd("ib".into());
        let ta = access_token(t, "ia");
        assert_eq!(ta.len(), 64);
        assert_ne!(ta, access_token(t, "ib"));
        assert_ne!(ta, access_token("another-token", "ia"));
        assert!(check_key(t, &a, &h(&[("X-Access-Token", &ta)])).is_ok());
        assert_eq!(
            check_key(t, &b, &h(&[("X-Access-Token", &ta)]))
                .err()
                .map(|r| r.status),
            Some(401)
        );
        assert!(check_key(t, &b, &h(&[("X-Access-Token", t)])).is_ok());
        assert!(check_key(t, &a, &[]).is_err());
        assert!(check_key(t, &Call::Control, &h(&[("X-API-KEY", t)])).is_ok());
        assert!(check_key(t, &Call::Control, &h(&[("X-Api-Key", "wrong")])).is_err());
        // A sandbox's token is not an API key.
        assert!(check_key(t, &Call::Control, &h(&[("X-API-KEY", &ta)])).is_err());
        assert!(
            check_key(
                t,
                &Call::Control,
                &h(&[("Authorization", "Bearer the-fcm-token")])
            )
            .is_err()
        );
    }

    #[test]
    fn ids_are_vm_names_and_queries_decode() {
        let id = new_sandbox_id();
        assert_eq!(id.len(), 20);
        assert!(crate::names::VmName::parse(&id).is_ok());
        assert!(plausible_id(&id));
        assert!(!plausible_id("../x"));
        assert!(!plausible_id("0"));
        assert!(plausible_id(&format!("{id}-12")));
        assert!(!plausible_id(&format!("{id}-")));
        assert!(!plausible_id(&format!("{id}-1-2")));
        let r = Request {
            method: "GET".into(),
            target: "/v2/sandboxes?metadata=a%3Db%26c%3Dd%2520e&limit=2".into(),
            headers: Vec::new(),
        };
        assert_eq!(r.query("metadata").as_deref(), Some("a=b&c=d%20e"));
        assert_eq!(r.query("limit").as_deref(), Some("2"));
        assert_eq!(r.query("state"), None);
        assert_eq!(decode("%4"), None);
    }
}
