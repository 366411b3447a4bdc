//! `process.Process` of the in-sandbox API: Start (a program through
//! the agent's streamed exec, its output streamed back as Connect
//! envelopes as it is produced), List and SendSignal of the programs it
//! started.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::thread;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::connect::{self, Chunked, Code, RpcError};
use super::envd::{absolute, rpc_of, str_field};
use super::{E2b, PROCESSES_MAX, Proc, Request};
use crate::daemon::lock;
use crate::wire::api::ExecRequest;

/// A process stream with nothing to say sends a keepalive this often (a
/// client gone is noticed at the latest then).
const KEEPALIVE: Duration = Duration::from_secs(15);

impl E2b {
    pub(super) fn processes(&self, id: &str) -> Value {
        let procs = lock(&self.procs);
        let list: Vec<Value> = procs
            .iter()
            .filter(|(_, p)| p.sandbox == id)
            .map(|(pid, p)| {
                let mut v = json!({ "config": p.config, "pid": pid });
                if let Some(t) = &p.tag {
                    v["tag"] = json!(t);
                }
                v
            })
            .collect();
        json!({ "processes": list })
    }

    pub(super) fn signal(&self, id: &str, msg: &Value) -> Result<Value, RpcError> {
        let sel = msg.get("process").cloned().unwrap_or(Value::Null);
        let signal = match msg.get("signal") {
            Some(Value::String(s)) if s == "SIGNAL_SIGKILL" => 9,
            Some(Value::String(s)) if s == "SIGNAL_SIGTERM" => 15,
            Some(Value::Number(n)) if n.as_i64() == Some(9) || n.as_i64() == Some(15) => {
                n.as_i64().unwrap_or(9) as i32
            }
            _ => {
                return Err(RpcError::new(
                    Code::InvalidArgument,
                    "signal must be SIGKILL or SIGTERM",
                ));
            }
        };
        let control = {
            let procs = lock(&self.procs);
            procs
                .iter()
                .find(|(pid, p)| {
                    p.sandbox == id
                        && (sel.get("pid").and_then(Value::as_u64) == Some(u64::from(**pid))
                            || (sel.get("tag").and_then(Value::as_str).is_some()
                                && sel.get("tag").and_then(Value::as_str) == p.tag.as_deref()))
                })
                .map(|(_, p)| Arc::clone(&p.control))
        };
        let Some(control) = control else {
            return Err(RpcError::new(Code::NotFound, "no such process"));
        };
        control.signal(signal);
        Ok(json!({}))
    }

    /// `process.Process/Start`: the program through the agent's streamed
    /// exec; its output as it comes, as `start`, `data` and `end` events.
    pub(super) fn start(
        &self,
        id: &str,
        env_vars: &std::collections::BTreeMap<String, String>,
        req: &Request,
        body: &mut dyn Read,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        let started = connect::read_envelope(body, 1 << 20).and_then(|msg| {
            let process = msg.get("process").cloned().unwrap_or(Value::Null);
            if msg.get("pty").is_some_and(|p| !p.is_null()) {
                return Err(RpcError::new(
                    Code::Unimplemented,
                    "PTYs are not served by fcm yet",
                ));
            }
            let cmd = str_field(&process, "cmd")?.to_owned();
            let mut argv = vec![cmd];
            if let Some(args) = process.get("args").and_then(Value::as_array) {
                for a in args {
                    argv.push(a.as_str().unwrap_or_default().to_owned());
                }
            }
            let mut env = env_vars.clone();
            if let Some(envs) = process.get("envs").and_then(Value::as_object) {
                for (k, v) in envs {
                    env.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
                }
            }
            let cwd = process
                .get("cwd")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .map(absolute);
            // The client's deadline, if it gave one; else none (its
            // connection bounds the program).
            let timeout = req
                .header("Connect-Timeout-Ms")
                .and_then(|t| t.trim().parse::<u64>().ok())
                .map(|ms| {
                    ms.div_ceil(1000)
                        .clamp(1, crate::daemon::manager::exec::EXEC_TIMEOUT_MAX)
                })
                .unwrap_or(0);
            let exec = ExecRequest {
                cmd: argv,
                env,
                cwd,
                timeout_secs: Some(timeout),
                ..ExecRequest::default()
            };
            if lock(&self.procs).len() >= PROCESSES_MAX {
                return Err(RpcError::new(
                    Code::ResourceExhausted,
                    "too many processes run at once",
                ));
            }
            let (_, p) = self.m.exec_start(id, &exec).map_err(|e| rpc_of(&e))?;
            let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
            let tag = msg.get("tag").and_then(Value::as_str).map(str::to_owned);
            lock(&self.procs).insert(
                pid,
                Proc {
                    sandbox: id.to_owned(),
                    tag,
                    config: process,
                    control: p.control(),
                },
            );
            Ok((pid, p))
        });
        out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/connect+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
        let mut c = Chunked { out };
        let (pid, p) = match started {
            Ok(x) => x,
            Err(e) => {
                c.send(&connect::end_stream(Some(&e)))?;
                return c.finish();
            }
        };
        let streamed = pump(&mut c, pid, p);
        lock(&self.procs).remove(&pid);
        streamed?;
        c.finish()
    }
}

fn event(v: Value) -> Vec<u8> {
    connect::envelope(0, json!({ "event": v }).to_string().as_bytes())
}

/// Streams a started program: `start`, its output as produced, `end`,
/// the end of the stream. A client gone kills the program.
fn pump(
    c: &mut Chunked<'_>,
    pid: u32,
    mut p: Box<dyn crate::daemon::guest::Process>,
) -> io::Result<()> {
    // No stdin: the program reads an end of file.
    drop(p.stdin());
    let (tx, rx) = sync_channel::<(bool, Vec<u8>)>(16);
    for (is_err, r) in [(false, p.stdout()), (true, p.stderr())] {
        let Some(mut r) = r else { continue };
        let tx = tx.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send((is_err, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(tx);
    let control = p.control();
    let mut go = || -> io::Result<()> {
        c.send(&event(json!({ "start": { "pid": pid } })))?;
        loop {
            let ev = match rx.recv_timeout(KEEPALIVE) {
                Ok((is_err, data)) => {
                    let key = if is_err { "stderr" } else { "stdout" };
                    json!({ "data": { key: B64.encode(&data) } })
                }
                Err(RecvTimeoutError::Timeout) => json!({ "keepalive": {} }),
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            c.send(&event(ev))?;
        }
    };
    if let Err(e) = go() {
        // The client went away: the program goes too.
        control.kill();
        return Err(e);
    }
    let end = match p.wait() {
        Ok(exit) => {
            let status = if exit.timed_out {
                "signal: killed (its deadline passed)".to_owned()
            } else {
                format!("exit status {}", exit.code)
            };
            event(json!({ "end": { "exitCode": exit.code, "exited": true, "status": status } }))
        }
        Err(e) => {
            c.send(&connect::end_stream(Some(&RpcError::new(
                Code::Unavailable,
                crate::error::chain(&e).to_string(),
            ))))?;
            return Ok(());
        }
    };
    c.send(&end)?;
    c.send(&connect::end_stream(None))
}
