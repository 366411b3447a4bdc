//! A small synchronous client of etcd's v3 API as JSON over HTTP (the gRPC
//! gateway etcd serves beside gRPC: `/v3/kv/range`, `/v3/kv/txn`,
//! `/v3/lease/grant`, `/v3/lease/keepalive`...). Keys and values travel as
//! base64; 64-bit numbers come back as strings and zero values are left out.
//! Every request has a deadline; the members are tried in turn, starting
//! with the last one that answered. The `etcd-client` crate would bring an
//! async runtime the daemon does not have.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EtcdError {
    /// No member answered (each one's failure, in turn).
    #[error("no etcd member answered: {0}")]
    Unreachable(String),
    /// A member answered with an error (etcd's message).
    #[error("etcd refused {path}: {message}")]
    Refused { path: String, message: String },
    #[error("etcd's answer to {path} is not what fcm expects: {message}")]
    Malformed { path: String, message: String },
}

/// Largest answer read from etcd (a listing of every host and VM).
const MAX_ANSWER: u64 = 32 << 20;

/// One key's value and its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// One operation of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete(String),
    Get(String),
}

/// A condition of a transaction (all must hold for its success branch).
#[derive(Debug, Clone)]
pub enum Cmp {
    /// The key does not exist.
    Absent(String),
    /// The key's value is exactly this.
    ValueIs(String, Vec<u8>),
}

/// What a transaction did: which branch ran, and the values its `Get`s read.
#[derive(Debug, Default)]
pub struct TxnResult {
    pub succeeded: bool,
    pub got: Vec<Kv>,
}

pub struct Etcd {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    /// The member that answered last: asked first next time.
    current: AtomicUsize,
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

/// An int64 of etcd's JSON: a string, a number, or absent (zero).
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The key just past every key that starts with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    pub fn new(endpoints: &[String], timeout: Duration) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout(timeout)
            .build();
        Self {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_owned())
                .collect(),
            agent,
            current: AtomicUsize::new(0),
        }
    }

    /// POSTs `body` to `path` on the first member that answers.
    fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..n {
            let at = (first + i) % n;
            let url = format!("{}{path}", self.endpoints[at]);
            match self.agent.post(&url).send_json(body.clone()) {
                Ok(resp) => {
                    self.current.store(at, Ordering::Relaxed);
                    return read(resp, path);
                }
                // etcd answered with an error of its own (a bad request, a
                // lease not found): the same from every member.
                Err(ureq::Error::Status(code, resp)) if code < 500 => {
                    self.current.store(at, Ordering::Relaxed);
                    let v = read(resp, path).unwrap_or(Value::Null);
                    let message = v["message"]
                        .as_str()
                        .or_else(|| v["error"].as_str())
                        .map_or_else(|| format!("status {code}"), str::to_owned);
                    return Err(EtcdError::Refused {
                        path: path.into(),
                        message,
                    });
                }
                // 5xx (no leader, a timeout inside etcd) or no answer: the next one.
                Err(e) => failures.push(format!("{}: {e}", self.endpoints[at])),
            }
        }
        Err(EtcdError::Unreachable(failures.join("; ")))
    }

    /// The value of one key.
    pub fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let v = self.call("/v3/kv/range", &json!({ "key": b64(key.as_bytes()) }))?;
        Ok(kvs(&v["kvs"], "/v3/kv/range")?.into_iter().next())
    }

    /// Every key under `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        let v = self.call(
            "/v3/kv/range",
            &json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix)) }),
        )?;
        kvs(&v["kvs"], "/v3/kv/range")
    }

    pub fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/kv/put", &put_body(key, value, lease))
            .map(drop)
    }

    pub fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.call("/v3/kv/deleterange", &json!({ "key": b64(key.as_bytes()) }))
            .map(drop)
    }

    /// A transaction: if every `cmp` holds, `then`, else `otherwise`.
    pub fn txn(&self, cmp: &[Cmp], then: &[Op], otherwise: &[Op]) -> Result<TxnResult, EtcdError> {
        let compare: Vec<Value> = cmp
            .iter()
            .map(|c| match c {
                Cmp::Absent(k) => json!({
                    "key": b64(k.as_bytes()), "target": "CREATE",
                    "result": "EQUAL", "create_revision": "0"
                }),
                Cmp::ValueIs(k, v) => json!({
                    "key": b64(k.as_bytes()), "target": "VALUE",
                    "result": "EQUAL", "value": b64(v)
                }),
            })
            .collect();
        let ops = |ops: &[Op]| -> Vec<Value> {
            ops.iter()
                .map(|o| match o {
                    Op::Put { key, value, lease } => {
                        json!({ "request_put": put_body(key, value, *lease) })
                    }
                    Op::Delete(k) => {
                        json!({ "request_delete_range": { "key": b64(k.as_bytes()) } })
                    }
                    Op::Get(k) => json!({ "request_range": { "key": b64(k.as_bytes()) } }),
                })
                .collect()
        };
        let path = "/v3/kv/txn";
        let v = self.call(
            path,
            &json!({ "compare": compare, "success": ops(then), "failure": ops(otherwise) }),
        )?;
        let mut got = Vec::new();
        for r in v["responses"].as_array().into_iter().flatten() {
            got.extend(kvs(&r["response_range"]["kvs"], path)?);
        }
        Ok(TxnResult {
            succeeded: v["succeeded"].as_bool().unwrap_or(false),
            got,
        })
    }

    /// A new lease of `ttl` seconds: its id.
    pub fn grant(&self, ttl: u64) -> Result<i64, EtcdError> {
        let path = "/v3/lease/grant";
        let v = self.call(path, &json!({ "TTL": ttl }))?;
        match int(&v["ID"]) {
            0 => Err(EtcdError::Malformed {
                path: path.into(),
                message: "no lease id".into(),
            }),
            id => Ok(id),
        }
    }

    /// Renews a lease: the seconds it now has left, 0 when it has expired.
    pub fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        Ok(int(&v["result"]["TTL"]))
    }

    /// Ends a lease now (its keys go with it); a lease already gone is no error.
    pub fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        match self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() })) {
            Err(EtcdError::Refused { message, .. }) if message.contains("not found") => Ok(()),
            r => r.map(drop),
        }
    }
}

fn put_body(key: &str, value: &[u8], lease: i64) -> Value {
    let mut body = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
    if lease != 0 {
        body["lease"] = json!(lease.to_string());
    }
    body
}

fn read(resp: ureq::Response, path: &str) -> Result<Value, EtcdError> {
    use std::io::Read;
    let mut text = Vec::new();
    resp.into_reader()
        .take(MAX_ANSWER)
        .read_to_end(&mut text)
        .map_err(|e| EtcdError::Unreachable(format!("reading the answer to {path}: {e}")))?;
    serde_json::from_slice(&text).map_err(|e| EtcdError::Malformed {
        path: path.into(),
        message: e.to_string(),
    })
}

#[derive(Deserialize)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    create_revision: Value,
    #[serde(default)]
    mod_revision: Value,
    #[serde(default)]
    lease: Value,
}

fn kvs(v: &Value, path: &str) -> Result<Vec<Kv>, EtcdError> {
    let bad = |message: String| EtcdError::Malformed {
        path: path.into(),
        message,
    };
    let raw: Vec<RawKv> = match v {
        Value::Null => Vec::new(),
        v => serde_json::from_value(v.clone()).map_err(|e| bad(e.to_string()))?,
    };
    raw.into_iter()
        .map(|r| {
            let key = B64
                .decode(&r.key)
                .ok()
                .and_then(|k| String::from_utf8(k).ok())
                .ok_or_else(|| bad("a key that is not base64 of UTF-8".into()))?;
            let value = B64
                .decode(&r.value)
                .map_err(|_| bad(format!("the value of {key} is not base64")))?;
            Ok(Kv {
                key,
                value,
                create_revision: int(&r.create_revision),
                mod_revision: int(&r.mod_revision),
                lease: int(&r.lease),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_and_numbers() {
        assert_eq!(prefix_end("/fcm/hosts/"), b"/fcm/hosts0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(int(&Value::Null), 0);
        let v = json!([{ "key": "L2E=", "value": "eA==", "create_revision": "2", "lease": "9" }]);
        let got = kvs(&v, "t").expect("kvs");
        assert_eq!(got[0].key, "/a");
        assert_eq!(got[0].value, b"x");
        assert_eq!(
            (got[0].create_revision, got[0].mod_revision, got[0].lease),
            (2, 0, 9)
        );
        assert!(kvs(&json!([{ "key": "%%%" }]), "t").is_err());
    }

    #[test]
    fn no_member_is_unreachable_not_a_hang() {
        // A port nothing listens on (loopback only).
        let e = Etcd::new(&["http://127.0.0.1:9".into()], Duration::from_millis(300));
        assert!(matches!(e.get("/x"), Err(EtcdError::Unreachable(_))));
    }
}
