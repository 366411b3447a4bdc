//! `process.Process` of the in-sandbox API: Start (a program through
//! the agent's streamed exec, on a terminal for a PTY, its output streamed
//! back as Connect envelopes as it is produced), and of the programs it
//! started: Connect (its output from then on), List, SendSignal, SendInput,
//! CloseStdin, Update (a PTY's size).

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::connect::{self, Chunked, Code, RpcError};
use super::envd::{absolute, rpc_of, str_field};
use super::{E2b, Input, PROCESSES_MAX, Proc, Request, Watchers};
use crate::daemon::guest::Control;
use crate::daemon::lock;
use crate::wire::api::ExecRequest;

/// A process stream with nothing to say sends a keepalive this often (a
/// client gone is noticed at the latest then).
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Envelopes queued for a connected watcher before it is let go.
const WATCH_QUEUE: usize = 256;

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
        let (control, _) = self.find(id, &sel)?;
        control.signal(signal);
        Ok(json!({}))
    }

    /// The process a selector (`{pid}` or `{tag}`) names in this sandbox.
    fn find(&self, id: &str, sel: &Value) -> Result<(Arc<dyn Control>, Input), RpcError> {
        let pid = sel.get("pid").and_then(Value::as_u64);
        let tag = sel.get("tag").and_then(Value::as_str);
        lock(&self.procs)
            .iter()
            .find(|(p_id, p)| {
                p.sandbox == id
                    && (pid == Some(u64::from(**p_id))
                        || (tag.is_some() && tag == p.tag.as_deref()))
            })
            .map(|(_, p)| (Arc::clone(&p.control), Arc::clone(&p.input)))
            .ok_or_else(|| RpcError::new(Code::NotFound, "no such process"))
    }

    /// `SendInput`: bytes to a process's stdin (or its terminal).
    pub(super) fn send_input(&self, id: &str, msg: &Value) -> Result<Value, RpcError> {
        let sel = msg.get("process").cloned().unwrap_or(Value::Null);
        let input = msg.get("input").cloned().unwrap_or(Value::Null);
        let data = input
            .get("stdin")
            .or_else(|| input.get("pty"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                RpcError::new(Code::InvalidArgument, "input.stdin or input.pty is missing")
            })?;
        let data = B64.decode(data).map_err(|e| {
            RpcError::new(Code::InvalidArgument, format!("input is not base64: {e}"))
        })?;
        let (_, writer) = self.find(id, &sel)?;
        let mut w = lock(&writer);
        let Some(w) = w.as_mut() else {
            return Err(RpcError::new(
                Code::FailedPrecondition,
                "the process has no stdin (start it with stdin, or it was closed)",
            ));
        };
        w.write_all(&data).and_then(|()| w.flush()).map_err(|e| {
            RpcError::new(Code::Unavailable, format!("could not write its input: {e}"))
        })?;
        Ok(json!({}))
    }

    /// `CloseStdin`: the process reads an end of file.
    pub(super) fn close_stdin(&self, id: &str, msg: &Value) -> Result<Value, RpcError> {
        let sel = msg.get("process").cloned().unwrap_or(Value::Null);
        let (_, writer) = self.find(id, &sel)?;
        drop(lock(&writer).take());
        Ok(json!({}))
    }

    /// `Update`: a PTY's new size.
    pub(super) fn update_pty(&self, id: &str, msg: &Value) -> Result<Value, RpcError> {
        let sel = msg.get("process").cloned().unwrap_or(Value::Null);
        let (control, _) = self.find(id, &sel)?;
        if let Some((cols, rows)) = pty_size(msg.get("pty")) {
            control.resize(cols, rows);
        }
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
        let watchers: Watchers = Arc::new(Mutex::new(Vec::new()));
        let started = connect::read_envelope(body, 1 << 20).and_then(|msg| {
            let process = msg.get("process").cloned().unwrap_or(Value::Null);
            // A PTY: the program on a terminal of that size (its output
            // comes as `pty` data, its input by SendInput).
            let pty = msg
                .get("pty")
                .filter(|p| !p.is_null())
                .map(|p| pty_size(Some(p)).unwrap_or((80, 24)));
            let with_stdin =
                pty.is_some() || msg.get("stdin").and_then(Value::as_bool) == Some(true);
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
            let term = env.get("TERM").cloned();
            let exec = ExecRequest {
                cmd: argv,
                env,
                cwd,
                timeout_secs: Some(timeout),
                tty: pty.map(|_| true),
                cols: pty.map(|(c, _)| c),
                rows: pty.map(|(_, r)| r),
                term: pty.and(term),
                ..ExecRequest::default()
            };
            if lock(&self.procs).len() >= PROCESSES_MAX {
                return Err(RpcError::new(
                    Code::ResourceExhausted,
                    "too many processes run at once",
                ));
            }
            let (_, mut p) = self.m.exec_start(id, &exec).map_err(|e| rpc_of(&e))?;
            // Without stdin the program reads an end of file at once.
            let input = p.stdin().filter(|_| with_stdin);
            let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
            let tag = msg.get("tag").and_then(Value::as_str).map(str::to_owned);
            lock(&self.procs).insert(
                pid,
                Proc {
                    sandbox: id.to_owned(),
                    tag,
                    config: process,
                    control: p.control(),
                    input: Arc::new(Mutex::new(input)),
                    watchers: Arc::clone(&watchers),
                },
            );
            Ok((pid, p, pty.is_some()))
        });
        out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/connect+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
        let mut c = Chunked { out };
        let (pid, p, on_pty) = match started {
            Ok(x) => x,
            Err(e) => {
                c.send(&connect::end_stream(Some(&e)))?;
                return c.finish();
            }
        };
        let attached = pump(&mut c, pid, p, on_pty, &watchers);
        lock(&self.procs).remove(&pid);
        if attached {
            c.finish()
        } else {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    /// `process.Process/Connect`: a running process's output and end from
    /// now on, as a stream of its own.
    pub(super) fn connect_process(
        &self,
        id: &str,
        body: &mut dyn Read,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        let found = connect::read_envelope(body, 1 << 20).and_then(|msg| {
            let sel = msg.get("process").cloned().unwrap_or(Value::Null);
            let pid = sel.get("pid").and_then(Value::as_u64);
            let procs = lock(&self.procs);
            let (pid, p) = procs
                .iter()
                .find(|(p_id, p)| {
                    p.sandbox == id
                        && (pid == Some(u64::from(**p_id))
                            || sel
                                .get("tag")
                                .and_then(Value::as_str)
                                .is_some_and(|t| p.tag.as_deref() == Some(t)))
                })
                .ok_or_else(|| RpcError::new(Code::NotFound, "no such process"))?;
            let (tx, rx) = sync_channel::<Vec<u8>>(WATCH_QUEUE);
            lock(&p.watchers).push(tx);
            Ok((*pid, rx))
        });
        out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/connect+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
        let mut c = Chunked { out };
        let (pid, rx) = match found {
            Ok(x) => x,
            Err(e) => {
                c.send(&connect::end_stream(Some(&e)))?;
                return c.finish();
            }
        };
        c.send(&event(json!({ "start": { "pid": pid } })))?;
        loop {
            match rx.recv_timeout(KEEPALIVE) {
                Ok(envelope) => c.send(&envelope)?,
                Err(RecvTimeoutError::Timeout) => c.send(&event(json!({ "keepalive": {} })))?,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        c.send(&connect::end_stream(None))?;
        c.finish()
    }
}

/// `{size: {cols, rows}}` of a PTY message, each clamped to 1..=1000.
fn pty_size(pty: Option<&Value>) -> Option<(u16, u16)> {
    let size = pty?.get("size")?;
    let dim = |k: &str, d: u16| {
        size.get(k)
            .and_then(Value::as_u64)
            .map_or(d, |v| v.clamp(1, 1000) as u16)
    };
    Some((dim("cols", 80), dim("rows", 24)))
}

fn event(v: Value) -> Vec<u8> {
    connect::envelope(0, json!({ "event": v }).to_string().as_bytes())
}

/// Streams a started program: `start`, its output as produced, `end`,
/// the end of the stream; its output and end to its watchers too. A client
/// gone does not end the program (E2B's way: it may connect again, or be
/// killed); its output is then read on and dropped. False when the client
/// went away.
fn pump(
    c: &mut Chunked<'_>,
    pid: u32,
    mut p: Box<dyn crate::daemon::guest::Process>,
    on_pty: bool,
    watchers: &Watchers,
) -> bool {
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
    let mut attached = true;
    // To the client while it listens, and to every watcher that keeps up.
    let mut send = |c: &mut Chunked<'_>, envelope: &[u8], watched: bool| {
        if attached && c.send(envelope).is_err() {
            attached = false;
        }
        if watched {
            lock(watchers).retain(|w| w.try_send(envelope.to_vec()).is_ok());
        }
    };
    send(c, &event(json!({ "start": { "pid": pid } })), false);
    loop {
        match rx.recv_timeout(KEEPALIVE) {
            Ok((is_err, data)) => {
                let key = match (on_pty, is_err) {
                    (true, _) => "pty",
                    (false, true) => "stderr",
                    (false, false) => "stdout",
                };
                send(
                    c,
                    &event(json!({ "data": { key: B64.encode(&data) } })),
                    true,
                );
            }
            Err(RecvTimeoutError::Timeout) => send(c, &event(json!({ "keepalive": {} })), false),
            Err(RecvTimeoutError::Disconnected) => break,
        }
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
            let error = RpcError::new(Code::Unavailable, crate::error::chain(&e).to_string());
            lock(watchers).clear();
            return attached && c.send(&connect::end_stream(Some(&error))).is_ok();
        }
    };
    send(c, &end, true);
    // The watchers end their streams once their queues are dropped.
    lock(watchers).clear();
    attached && c.send(&connect::end_stream(None)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_sizes_are_read_and_clamped() {
        assert_eq!(
            pty_size(Some(&json!({"size": {"cols": 101, "rows": 33}}))),
            Some((101, 33))
        );
        assert_eq!(
            pty_size(Some(&json!({"size": {"cols": 0, "rows": 99999}}))),
            Some((1, 1000))
        );
        assert_eq!(pty_size(Some(&json!({"size": {}}))), Some((80, 24)));
        assert_eq!(pty_size(Some(&json!({}))), None);
        assert_eq!(pty_size(None), None);
        let e = event(json!({"start": {"pid": 7}}));
        assert_eq!(e[0], 0);
        assert_eq!(&e[5..], br#"{"event":{"start":{"pid":7}}}"#);
    }
}
