//! Directory watchers of the in-sandbox API, the polling kind the sync
//! SDKs use (`filesystem.Filesystem/CreateWatcher`, `GetWatcherEvents`,
//! `RemoveWatcher`): the guest has no watcher of fcm's, so each call lists
//! the directory in the guest (`find`, the path an argument) and the
//! daemon tells the events from the listing before: a path new since the
//! last call is CREATE, one whose size or mtime changed WRITE, one gone
//! REMOVE. What happened in between and was undone (made, then removed)
//! is not seen; a rename is a REMOVE and a CREATE.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::E2b;
use super::connect::{Code, RpcError};
use super::envd::{absolute, str_field};
use crate::daemon::lock;

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
