//! Directory watchers of the in-sandbox API: the polling kind the sync
//! SDK uses (`filesystem.Filesystem/CreateWatcher`, `GetWatcherEvents`,
//! `RemoveWatcher`) and the streamed one of the async and JS SDKs
//! (`WatchDir`, polled every [`POLL`]). The guest has no watcher of fcm's,
//! so each poll lists the directory in the guest (`find`, the path an
//! argument) and the daemon tells the events from the listing before: a path new since the
//! last call is CREATE, one whose size or mtime changed WRITE, one gone
//! REMOVE. What happened in between and was undone (made, then removed)
//! is not seen; a rename is a REMOVE and a CREATE.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::connect::{self, Chunked, Code, RpcError};
use super::envd::{absolute, str_field};
use super::{E2b, Request};
use crate::daemon::lock;

/// How often a streamed watch lists the directory.
const POLL: Duration = Duration::from_secs(1);
/// A quiet watch stream sends a keepalive this often (a client gone is
/// noticed then).
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Watchers kept at once (all sandboxes); when full, one is let go to
/// make room (its next GetWatcherEvents: not found).
pub(super) const WATCHERS_MAX: usize = 256;

/// A path's type, size and mtime, as listed.
type Listing = BTreeMap<String, String>;

pub(super) struct Watcher {
    sandbox: String,
    path: String,
    depth: u32,
    seen: Listing,
}

fn parse_listing(out: &[u8]) -> Listing {
    String::from_utf8_lossy(out)
        .split('\0')
        .filter_map(|r| {
            let (state, path) = r.split_once('\t')?;
            Some((path.to_owned(), state.to_owned()))
        })
        .collect()
}

/// The events from one listing to the next, in path order.
fn events(before: &Listing, now: &Listing) -> Vec<Value> {
    let mut out = Vec::new();
    for (path, state) in now {
        match before.get(path) {
            None => out.push(json!({ "name": path, "type": "EVENT_TYPE_CREATE" })),
            Some(s) if s != state => out.push(json!({ "name": path, "type": "EVENT_TYPE_WRITE" })),
            Some(_) => {}
        }
    }
    for path in before.keys().filter(|p| !now.contains_key(*p)) {
        out.push(json!({ "name": path, "type": "EVENT_TYPE_REMOVE" }));
    }
    out
}

impl E2b {
    fn listing(&self, id: &str, path: &str, depth: u32) -> Result<Listing, RpcError> {
        let (code, out, err) = self.helper(
            id,
            &[
                "[ -d \"$1\" ] || { [ -e \"$1\" ] && exit 3; exit 2; }; find \"$1\" -mindepth 1 -maxdepth \"$2\" -printf '%y %s %T@\\t%P\\0'",
                path,
                &depth.to_string(),
            ],
        )?;
        match code {
            0 => Ok(parse_listing(&out)),
            2 => Err(RpcError::new(
                Code::NotFound,
                format!("{path} does not exist"),
            )),
            3 => Err(RpcError::new(
                Code::InvalidArgument,
                format!("{path} is not a directory"),
            )),
            _ => Err(RpcError::new(
                Code::Internal,
                format!("watch {path}: {err}"),
            )),
        }
    }

    pub(super) fn create_watcher(&self, id: &str, msg: &Value) -> Result<Value, RpcError> {
        let path = absolute(str_field(msg, "path")?);
        let depth = if msg.get("recursive").and_then(Value::as_bool) == Some(true) {
            64
        } else {
            1
        };
        let seen = self.listing(id, &path, depth)?;
        let watcher_id = format!("w{}", &super::new_sandbox_id()[1..]);
        let mut watchers = lock(&self.watchers);
        while watchers.len() >= WATCHERS_MAX {
            let Some(oldest) = watchers.keys().next().cloned() else {
                break;
            };
            watchers.remove(&oldest);
        }
        watchers.insert(
            watcher_id.clone(),
            Watcher {
                sandbox: id.to_owned(),
                path,
                depth,
                seen,
            },
        );
        Ok(json!({ "watcherId": watcher_id }))
    }

    pub(super) fn watcher_events(&self, id: &str, msg: &Value) -> Result<Value, RpcError> {
        let wid = str_field(msg, "watcherId")?.to_owned();
        let (path, depth) = {
            let watchers = lock(&self.watchers);
            let w = watchers
                .get(&wid)
                .filter(|w| w.sandbox == id)
                .ok_or_else(|| RpcError::new(Code::NotFound, "no such watcher"))?;
            (w.path.clone(), w.depth)
        };
        // Listed without the table's lock (a call into the guest).
        let now = self.listing(id, &path, depth)?;
        let mut watchers = lock(&self.watchers);
        let w = watchers
            .get_mut(&wid)
            .ok_or_else(|| RpcError::new(Code::NotFound, "no such watcher"))?;
        let evs = events(&w.seen, &now);
        w.seen = now;
        Ok(json!({ "events": evs }))
    }

    /// `WatchDir`: the directory's events as a stream, polled every
    /// [`POLL`], until the client goes, its deadline (`Connect-Timeout-Ms`)
    /// passes, or the directory cannot be listed any more.
    pub(super) fn watch_dir(
        &self,
        id: &str,
        req: &Request,
        body: &mut dyn Read,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        let first = connect::read_envelope(body, 1 << 20).and_then(|msg| {
            let path = absolute(str_field(&msg, "path")?);
            let depth = if msg.get("recursive").and_then(Value::as_bool) == Some(true) {
                64
            } else {
                1
            };
            let seen = self.listing(id, &path, depth)?;
            Ok((path, depth, seen))
        });
        out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/connect+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
        let mut c = Chunked { out };
        let (path, depth, mut seen) = match first {
            Ok(x) => x,
            Err(e) => {
                c.send(&connect::end_stream(Some(&e)))?;
                return c.finish();
            }
        };
        let deadline = req
            .header("Connect-Timeout-Ms")
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        // A WatchDirResponse: the oneof's member at its top (`{"start": {}}`).
        let send =
            |c: &mut Chunked<'_>, v: Value| c.send(&connect::envelope(0, v.to_string().as_bytes()));
        send(&mut c, json!({ "start": {} }))?;
        let mut quiet_since = Instant::now();
        let error = loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break None;
            }
            std::thread::sleep(POLL);
            let now = match self.listing(id, &path, depth) {
                Ok(l) => l,
                Err(e) => break Some(e),
            };
            let evs = events(&seen, &now);
            seen = now;
            if evs.is_empty() {
                if quiet_since.elapsed() >= KEEPALIVE {
                    send(&mut c, json!({ "keepalive": {} }))?;
                    quiet_since = Instant::now();
                }
                continue;
            }
            for ev in evs {
                send(&mut c, json!({ "filesystem": ev }))?;
            }
            quiet_since = Instant::now();
        };
        c.send(&connect::end_stream(error.as_ref()))?;
        c.finish()
    }

    pub(super) fn remove_watcher(&self, id: &str, msg: &Value) -> Result<Value, RpcError> {
        let wid = str_field(msg, "watcherId")?;
        let mut watchers = lock(&self.watchers);
        match watchers.get(wid) {
            Some(w) if w.sandbox == id => {
                watchers.remove(wid);
                Ok(json!({}))
            }
            _ => Err(RpcError::new(Code::NotFound, "no such watcher")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_become_events() {
        let a = parse_listing(b"f 1 10.0\ta.txt\0d 4096 10.0\tsub\0f 2 10.0\tsub/x\0");
        let b = parse_listing(b"f 5 11.0\ta.txt\0d 4096 10.0\tsub\0f 0 12.0\tnew\tname\0");
        assert_eq!(a.len(), 3);
        let e = events(&a, &b);
        let got: Vec<(String, String)> = e
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap_or_default().to_owned(),
                    v["type"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("a.txt".to_owned(), "EVENT_TYPE_WRITE".to_owned()),
                ("new\tname".to_owned(), "EVENT_TYPE_CREATE".to_owned()),
                ("sub/x".to_owned(), "EVENT_TYPE_REMOVE".to_owned()),
            ]
        );
        assert!(events(&b, &b).is_empty());
    }
}
