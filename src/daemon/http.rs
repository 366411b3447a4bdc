//! The HTTP transport of the API: worker threads take requests from
//! tiny_http, check the token and the body size, and hand the typed route
//! to `api::handle`. Every answer is JSON.

use std::io::Read;
use std::sync::Arc;
use std::thread;

use super::api::{self, ApiError, MAX_BODY, Route};
use super::auth::{TOKEN_HINT, bearer, token_matches};
use super::manager::Manager;
use super::sessions::Sessions;

/// Requests served at once.
pub const WORKERS: usize = 16;

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

fn read_body(req: &mut tiny_http::Request) -> Result<Vec<u8>, ApiError> {
    let too_big = || ApiError::new(413, format!("request body is larger than {MAX_BODY} bytes"));
    if req.body_length().is_some_and(|n| n > MAX_BODY) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::new(400, format!("could not read the request body: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(too_big());
    }
    Ok(body)
}

fn serve_one(mut req: tiny_http::Request, m: &Manager, s: &Sessions, token: &str) {
    let method = req.method().as_str().to_owned();
    let url = req.url().to_owned();
    let result = (|| {
        let route = api::route(&method, &url)?;
        if route != Route::Health {
            authorise(&req, token)?;
        }
        let body = read_body(&mut req)?;
        // A panicking handler answers 500 and its worker lives on.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            api::handle(m, s, route, &body)
        }))
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                500,
                "internal error: the daemon hit a bug handling this request (see its log)",
            ))
        })
    })();
    let (status, body, allow) = match result {
        Ok(r) => (r.status, r.body, None),
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
