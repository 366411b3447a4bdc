//! `fcm`: parse the command line, run the daemon or a client command,
//! print the error (and a hint) if it failed. Exit codes: 0 success,
//! 1 the operation failed, 2 bad usage (clap).

use clap::Parser;
use fcm::cli::{Cli, Cmd};

fn main() {
    // Writing to a closed pipe (`fcm ls | head`) should end quietly.
    // SAFETY: restoring the default disposition of SIGPIPE at start-up.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let (message, hint) = match cli.command {
        Cmd::Daemon(args) => match (*args).into_config() {
            Err(e) => (fcm::error::chain(&e), None),
            Ok(cfg) => match fcm::daemon::run(cfg) {
                Ok(()) => return,
                Err(e) => (fcm::error::chain(&e), e.hint()),
            },
        },
        cmd => match fcm::client::run(cmd) {
            Ok(()) => return,
            Err(f) => (f.message, f.hint),
        },
    };
    // The message may quote a guest: print no control sequence of it.
    eprintln!("error: {}", fcm::wire::text::printable(&message));
    if let Some(h) = hint {
        eprintln!("hint: {}", fcm::wire::text::printable(&h));
    }
    std::process::exit(1);
}
