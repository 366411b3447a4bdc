//! The web console's static files (`ui/` in the repository, embedded in
//! the binary): answered by the API port's door itself, on the poller's
//! thread, so a stranger fetching them costs no thread and takes no slot
//! of the authenticated requests (they hold no secret: the page asks for
//! the token). Each answer is said whole and the connection closed; the
//! large file (xterm.js) goes out gzipped (about 120 KiB) when the
//! browser accepts it, compressed once, at the first request; an answer
//! above [`DOOR_ANSWER`] is written by a thread of its own with a slot of
//! the gate's (as `GET /health` has), since the poller gives last words
//! only a second and TLS buffers only 64 KiB of them.
//!
//! `GET /` redirects to `/ui/`; `/ui/ws` is the terminal's WebSocket
//! ([`super::ui_ws`]); any other path under `/ui/` that is not one of the
//! files is a 404 (there is no file system behind it: `..` means nothing).

use std::io::Write;
use std::net::Shutdown;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use flate2::Compression;
use flate2::write::GzEncoder;

use super::Ctx;
use super::message::Head;
use crate::daemon::poller::{Opened, Step};

/// The page's Content-Security-Policy. Scripts only from the daemon
/// (no inline script, no eval); styles may be inline because xterm.js
/// writes its own `<style>` elements; connections only to the daemon
/// (`'self'` covers the same-origin `ws:`/`wss:` in CSP 3 browsers).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../../ui/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../ui/app.js"),
    },
    Asset {
        name: "term.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../ui/term.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../ui/app.css"),
    },
    Asset {
        name: "vendor/xterm.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../ui/vendor/xterm.js"),
    },
    Asset {
        name: "vendor/xterm.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../ui/vendor/xterm.css"),
    },
    Asset {
        name: "vendor/addon-fit.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../ui/vendor/addon-fit.js"),
    },
    Asset {
        name: "vendor/xterm.LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../../ui/vendor/xterm.LICENSE"),
    },
    Asset {
        name: "vendor/addon-fit.LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../../ui/vendor/addon-fit.LICENSE"),
    },
];

/// Answers up to this size are said by the door itself.
const DOOR_ANSWER: usize = 48 * 1024;
/// Files smaller than this go out as they are.
const GZIP_ABOVE: usize = 16 * 1024;

/// Each asset's gzipped body and ETag, made once.
struct Prepared {
    gzipped: Vec<Option<Vec<u8>>>,
    etags: Vec<String>,
}

fn prepared() -> &'static Prepared {
    static P: OnceLock<Prepared> = OnceLock::new();
    P.get_or_init(|| Prepared {
        gzipped: ASSETS
            .iter()
            .map(|a| (a.body.len() > GZIP_ABOVE).then(|| gzip(a.body)).flatten())
            .collect(),
        etags: ASSETS
            .iter()
            .map(|a| {
                let d = ring::digest::digest(&ring::digest::SHA256, a.body);
                let hex: String = d.as_ref()[..12]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("\"{hex}\"")
            })
            .collect(),
    })
}

fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    e.write_all(body).ok()?;
    e.finish().ok()
}

/// The path of a request target, without its query.
fn path_of(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or(target)
}

/// What the door does with this head when it is the web console's: the
/// redirect, a file, the WebSocket, or a 404/405; `None` for the API.
pub(super) fn admit(ctx: &Arc<Ctx>, head: &Head, len: usize) -> Option<Step> {
    let path = path_of(&head.target);
    if path == "/" || path == "/ui" {
        return Some(Step::Answer(if get_or_head(head) {
            redirect("/ui/")
        } else {
            not_allowed()
        }));
    }
    let rest = path.strip_prefix("/ui/")?;
    if rest == "ws" {
        return Some(super::ui_ws::admit(ctx, head, len));
    }
    if !get_or_head(head) {
        return Some(Step::Answer(not_allowed()));
    }
    let Some(i) = ASSETS.iter().position(|a| a.name == rest) else {
        return Some(Step::Answer(plain(
            404,
            "no such file in the web console\n",
        )));
    };
    let answer = file(head, i);
    if answer.len() <= DOOR_ANSWER {
        return Some(Step::Answer(answer));
    }
    // Too big to say from the poller (its last words have a second, and a
    // TLS session buffers 64 KiB of them): a thread writes it, with a slot
    // counted with the requests and the API's write deadline.
    let slot = match ctx.gate.open() {
        Ok(s) => s,
        Err(_) => return Some(Step::Answer(plain(503, "the daemon is busy; reload\n"))),
    };
    Some(Step::Pass(Box::new(move |o| {
        let Opened { sock, tls, .. } = o;
        let mut io = super::transport(sock, tls);
        super::door::spawn("fcm-http-ui", move || {
            io.set_deadline(Some(Instant::now() + super::WRITE_DEADLINE));
            // The browser may have gone away; nothing to do about it.
            let _ = io.write_all(&answer).and_then(|()| io.flush());
            io.close_tls();
            let _ = io.socket().shutdown(Shutdown::Both);
            drop(slot);
        });
        Ok(())
    })))
}

fn get_or_head(head: &Head) -> bool {
    head.method == "GET" || head.method == "HEAD"
}

/// The headers every answer of the console carries.
fn security_headers() -> String {
    format!(
        "Content-Security-Policy: {CSP}\r\nX-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\n\
         Cross-Origin-Opener-Policy: same-origin\r\nCross-Origin-Resource-Policy: same-origin\r\n"
    )
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        304 => "Not Modified",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn plain(status: u16, text: &str) -> Vec<u8> {
    let mut v = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\n{}Connection: close\r\n\r\n",
        reason(status),
        text.len(),
        security_headers()
    )
    .into_bytes();
    v.extend_from_slice(text.as_bytes());
    v
}

fn not_allowed() -> Vec<u8> {
    let mut v = plain(405, "the web console's files are read with GET\n");
    // Allow goes in the head: after the status line.
    if let Some(at) = v.windows(2).position(|w| w == b"\r\n") {
        v.splice(at + 2..at + 2, b"Allow: GET, HEAD\r\n".iter().copied());
    }
    v
}

fn redirect(to: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nCache-Control: no-store\r\n\
         {}Connection: close\r\n\r\n",
        security_headers()
    )
    .into_bytes()
}

/// A file's answer: 304 when the browser has it, gzipped when it takes
/// that, with an ETag (the browser asks again each time: `no-cache`).
fn file(head: &Head, i: usize) -> Vec<u8> {
    let (asset, p) = (&ASSETS[i], prepared());
    let etag = &p.etags[i];
    let common = format!(
        "Content-Type: {}\r\nCache-Control: no-cache\r\nETag: {etag}\r\nVary: Accept-Encoding\r\n{}\
         Connection: close\r\n",
        asset.content_type,
        security_headers()
    );
    if head
        .header("If-None-Match")
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return format!("HTTP/1.1 304 Not Modified\r\n{common}\r\n").into_bytes();
    }
    let gz = p.gzipped[i]
        .as_deref()
        .filter(|_| head.has_token("Accept-Encoding", "gzip"));
    let (body, encoding) = match gz {
        Some(g) => (g, "Content-Encoding: gzip\r\n"),
        None => (asset.body, ""),
    };
    let mut v = format!(
        "HTTP/1.1 200 OK\r\n{common}{encoding}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if head.method != "HEAD" {
        v.extend_from_slice(body);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_exact() {
        assert_eq!(path_of("/ui/app.js?v=1"), "/ui/app.js");
        assert!(ASSETS.iter().any(|a| a.name == "vendor/xterm.js"));
        assert!(!ASSETS.iter().any(|a| a.name.contains("..")));
    }

    #[test]
    fn big_files_are_gzipped_and_tagged() {
        let p = prepared();
        let i = ASSETS
            .iter()
            .position(|a| a.name == "vendor/xterm.js")
            .expect("xterm");
        let gz = p.gzipped[i].as_ref().expect("gzipped");
        assert!(gz.len() < ASSETS[i].body.len() / 2, "{}", gz.len());
        assert_eq!(p.etags[i].len(), 26);
    }

    #[test]
    fn answers_carry_the_security_headers() {
        let a = String::from_utf8(plain(404, "x")).expect("text");
        assert!(a.contains("Content-Security-Policy: default-src 'self'"));
        assert!(a.contains("X-Content-Type-Options: nosniff"));
        let n = String::from_utf8(not_allowed()).expect("text");
        assert!(n.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n"));
    }
}
