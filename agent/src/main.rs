//! `fcm-agent`: parses its command line and serves the daemon's channel;
//! everything else is the library (`fcm_agent`).

use fcm_agent::channel::{self, Channel};
use fcm_agent::system::Linux;
use fcm_agent::{AGENT, Agent, Config};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str = "\
usage: fcm-agent [--unix PATH]
       fcm-agent init
       fcm-agent grow-root --min-bytes N

fcm's agent, run by the guest's init (and restarted by it). It serves the
fcm daemon over one channel and never exits on its own.

With no option: the virtio-serial port named fcm.agent.0 (QEMU), found in
/sys/class/virtio-ports, else vsock port 10789 (Firecracker).

`fcm-agent init` is fcm's own init, PID 1 of a VM made from an image
(docs/guest.md): it mounts, grows /, runs and restarts the agent, sshd and
the image's service, reaps orphans, and shuts down on SIGTERM/SIGINT.
`fcm-agent grow-root --min-bytes N` waits (20 s at most) until the disk of
/ is N bytes, then grows / to it online (a warm create of a larger disk).

Options:
  --unix PATH   listen on a Unix socket at PATH instead (for development and
                tests; a socket left there is replaced). Each connection
                replaces the one before, as with vsock.
  --help        this text
  --version     the agent's version and protocol version

Exit status: 2 for a bad command line; otherwise it runs until killed.";

fn parse(args: &[String]) -> Result<Option<Channel>, String> {
    match args {
        [] => Ok(Some(Channel::Auto)),
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            Ok(None)
        }
        [flag] if flag == "--version" => {
            println!("{AGENT} (protocol {})", fcm_proto::VERSION);
            Ok(None)
        }
        [flag, path] if flag == "--unix" && !path.is_empty() => {
            Ok(Some(Channel::Unix(path.into())))
        }
        _ => Err(format!("unexpected arguments: {}", args.join(" "))),
    }
}

/// The agent's notes of the programs it runs (`Config::programs_dir`).
const PROGRAMS: &str = "/run/fcm/agent-programs";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() == 1 && args[0] == "init" {
        fcm_agent::init::run();
    }
    if let [cmd, flag, n] = args.as_slice()
        && cmd == "grow-root"
        && flag == "--min-bytes"
    {
        let Ok(min) = n.parse::<u64>() else {
            eprintln!("fcm-agent: grow-root: --min-bytes takes a number of bytes");
            return ExitCode::from(2);
        };
        return match fcm_agent::init::grow_root_to(min, std::time::Duration::from_secs(20)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fcm-agent: grow-root: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let channel = match parse(&args) {
        Ok(Some(c)) => c,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fcm-agent: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Files the agent makes get 0644/0755 unless asked otherwise, and no
    // program inherits the directory init started it in.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let _ = rustix::process::chdir("/");
    // A VM made from an image: its env, workdir and user are the defaults
    // of every exec (read once, at the start).
    let image = match fcm_agent::image::load(std::path::Path::new(fcm_proto::IMAGE_CONFIG_PATH)) {
        Ok(image) => image,
        Err(e) => {
            eprintln!("fcm-agent: warning: {e}; exec keeps its own defaults");
            None
        }
    };
    let config = Config {
        programs_dir: Some(PROGRAMS.into()),
        image,
        ..Config::default()
    };
    // An agent that died left its programs running: they end now (their
    // operations ended with its connection).
    for leftover in fcm_agent::end_leftovers(&config) {
        eprintln!("fcm-agent: ended the programs of session {leftover}, left by an earlier agent");
    }
    let agent = Agent::new(config, Arc::new(Linux::default()));
    eprintln!(
        "fcm-agent: {AGENT} (protocol {}) starting",
        fcm_proto::VERSION
    );
    loop {
        let e = channel::run(&agent, &channel);
        eprintln!("fcm-agent: {e}; trying again");
        std::thread::sleep(Duration::from_secs(1));
    }
}
