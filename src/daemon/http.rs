//! The HTTP transport of the API: worker threads take requests from
//! tiny_http, check the token and the body size, and hand the typed route
//! to `api::handle`. Every answer is JSON but file and archive transfers,
//! whose bodies are streamed both ways (`api::stream`).

use std::io::Read;
use std::sync::Arc;
use std::thread;

use super::api::{self, Answer, ApiError, Route};
use super::auth::{TOKEN_HINT, bearer, token_matches};
use super::manager::Manager;
use super::sessions::Sessions;

/// Requests served at once.
pub const WORKERS: usize = 16;
/// How much of a refused upload is read (and dropped) before answering.
const STREAM_DRAIN_MAX: u64 = 16 << 20;

/// Serves the API until the server is closed; returns when every worker has.
pub fn serve(server: tiny_http::Server, m: Arc<Manager>, s: Arc<Sessions>, token: Arc<String>) {
    let server = Arc::new(server);
    let workers: Vec<_> = (0..WORKERS)
        .filter_map(|i| {
            let (srv, m, s, t) = (
                Arc::clone(&server),
                Arc::clone(&m),
                Arc::clone(&s),
                Arc::clone(&token),
            );
            thread::Builder::new()
                .name(format!("fcm-http-{i}"))
                .spawn(move || {
                    while let Ok(req) = srv.recv() {
                        serve_one(req, &m, &s, &t);
                    }
                })
                .map_err(|e| eprintln!("fcm daemon: no HTTP worker thread: {e}"))
                .ok()
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

fn authorise(req: &tiny_http::Request, token: &str) -> Result<(), ApiError> {
    let auth = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str());
    match bearer(auth) {
        Some(t) if token_matches(t, token) => Ok(()),
        Some(_) => Err(ApiError::new(401, "invalid token").with_hint(TOKEN_HINT)),
        None => Err(ApiError::new(401, "missing bearer token").with_hint(TOKEN_HINT)),
    }
}

fn read_body(req: &mut tiny_http::Request, max: usize) -> Result<Vec<u8>, ApiError> {
    let too_big = || ApiError::new(413, format!("request body is larger than {max} bytes"));
    if req.body_length().is_some_and(|n| n > max) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::new(400, format!("could not read the request body: {e}")))?;
    if body.len() > max {
        return Err(too_big());
    }
    Ok(body)
}

/// Runs a handler; a panic in it answers 500 and the worker lives on.
fn guarded(f: impl FnOnce() -> Result<Answer, ApiError>) -> Result<Answer, ApiError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(ApiError::new(
            500,
            "internal error: the daemon hit a bug handling this request (see its log)",
        ))
    })
}

fn serve_one(mut req: tiny_http::Request, m: &Manager, s: &Sessions, token: &str) {
    let method = req.method().as_str().to_owned();
    let url = req.url().to_owned();
    let result = (|| {
        let route = api::route(&method, &url)?;
        if route != Route::Health {
            authorise(&req, token)?;
        }
        if route.streams() {
            let reader = req.as_reader();
            let answer = guarded(|| api::stream(m, route, reader));
            if answer.is_err() {
                // Refused before the upload was read (unknown VM, bad
                // path): read a bounded part of it, so that a client still
                // sending can read the answer.
                let _ = std::io::copy(
                    &mut req.as_reader().take(STREAM_DRAIN_MAX),
                    &mut std::io::sink(),
                );
            }
            return answer;
        }
        let body = read_body(&mut req, route.body_limit())?;
        guarded(|| api::handle(m, s, route, &body).map(Answer::Json))
    })();
    let (status, body, allow) = match result {
        Ok(Answer::Json(r)) => (r.status, r.body, None),
        Ok(Answer::Bytes {
            content_type,
            length,
            body,
        }) => {
            let mut headers = Vec::new();
            if let Ok(h) =
                tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
            {
                headers.push(h);
            }
            let length = length.and_then(|n| usize::try_from(n).ok());
            let resp =
                tiny_http::Response::new(tiny_http::StatusCode(200), headers, body, length, None);
            // A client that goes away mid-transfer ends it; nothing to report.
            let _ = req.respond(resp);
            return;
        }
        Err(e) => {
            if e.status >= 500 {
                eprintln!("fcm daemon: {method} {url}: {}", e.message);
            }
            (e.status, e.body(), e.allow.clone())
        }
    };
    let mut data = body.to_string();
    data.push('\n');
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]);
    let mut resp = tiny_http::Response::from_string(data).with_status_code(status);
    if let Ok(h) = header {
        resp = resp.with_header(h);
    }
    if let Some(allow) = allow
        && let Ok(h) = tiny_http::Header::from_bytes(&b"Allow"[..], allow.as_bytes())
    {
        resp = resp.with_header(h);
    }
    // The client may have gone away; nothing to do about it.
    let _ = req.respond(resp);
}
