//! Runs one program in a guest through its agent, the way the daemon does
//! (docs/agent.md): `Hello`, `Exec` with no cwd, user or env of its own (so
//! the guest's defaults apply), then its output to stdout and stderr and its
//! exit status as this program's. Or, with `--address`, a `SetIdentity`
//! of the first interface's address and default route (what a fork sends);
//! with `--shutdown`, a `Shutdown` (what `fcm stop` sends first).
//! For scripted guest tests (scripts/test-image-boot.sh) that drive a VMM's
//! agent socket directly.
//!
//! usage: cargo run -p fcm-agent --example exec -- SOCKET PROGRAM [ARG...]
//!        cargo run -p fcm-agent --example exec -- SOCKET --address A.B.C.D/N GATEWAY
//!        cargo run -p fcm-agent --example exec -- SOCKET --shutdown

use fcm_proto::{Decoder, Exec, FromAgent, Identity, Next, ToAgent, VERSION, frame};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

fn send(s: &mut UnixStream, msg: &ToAgent) -> Result<(), String> {
    let bytes = frame(msg).map_err(|e| e.to_string())?;
    s.write_all(&bytes).map_err(|e| format!("write: {e}"))
}

fn run(socket: &str, argv: &[String]) -> Result<i32, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("{socket}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + DEADLINE;
    // The agent may be starting: say Hello until it answers.
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut said_exec = false;
    let mut last_hello = None::<Instant>;
    loop {
        if Instant::now() > deadline {
            return Err(format!("no answer within {} s", DEADLINE.as_secs()));
        }
        if !said_exec && last_hello.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
            send(
                &mut s,
                &ToAgent::Hello {
                    version: VERSION,
                    session: 1,
                },
            )?;
            last_hello = Some(Instant::now());
        }
        match s.read(&mut buf) {
            Ok(0) => return Err("the agent closed the channel".into()),
            Ok(n) => {
                decoder.push(&buf[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(format!("read: {e}")),
        }
        loop {
            let msg = match decoder.decode::<FromAgent>() {
                Next::Message(m) => m,
                Next::Unknown => continue,
                Next::More => break,
            };
            match msg {
                FromAgent::Hello { .. } if !said_exec => {
                    said_exec = true;
                    if let [flag] = argv
                        && flag == "--shutdown"
                    {
                        send(&mut s, &ToAgent::Shutdown { id: 1 })?;
                        continue;
                    }
                    if let [flag, address, gateway] = argv
                        && flag == "--address"
                    {
                        let identity = Identity {
                            address: Some(address.clone()),
                            gateway: Some(gateway.clone()),
                            ..Identity::default()
                        };
                        send(&mut s, &ToAgent::SetIdentity { id: 1, identity })?;
                        continue;
                    }
                    send(
                        &mut s,
                        &ToAgent::Exec(Exec {
                            id: 1,
                            argv: argv.to_vec(),
                            env: Vec::new(),
                            cwd: None,
                            user: None,
                            tty: None,
                            timeout_ms: Some(20_000),
                        }),
                    )?;
                    send(&mut s, &ToAgent::End { id: 1 })?;
                }
                FromAgent::Stdout { data, .. } => {
                    let _ = std::io::stdout().write_all(&data);
                }
                FromAgent::Stderr { data, .. } => {
                    let _ = std::io::stderr().write_all(&data);
                }
                FromAgent::Exited { code, signal, .. } => {
                    return Ok(code.unwrap_or(128 + signal.unwrap_or(0)));
                }
                FromAgent::Done { .. } => return Ok(0),
                FromAgent::Failed { failure, .. } => return Err(format!("{failure:?}")),
                _ => {}
            }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, argv @ ..] = args.as_slice() else {
        eprintln!("usage: exec SOCKET PROGRAM [ARG...]");
        return ExitCode::from(2);
    };
    if argv.is_empty() {
        eprintln!("usage: exec SOCKET PROGRAM [ARG...]");
        return ExitCode::from(2);
    }
    match run(socket, argv) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("exec: {e}");
            ExitCode::from(1)
        }
    }
}
