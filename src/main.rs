//! `fcm`: parse the command line, run the daemon or a client command,
//! print the error (and a hint) if it failed. Exit codes: 0 success,
//! 1 the operation failed, 2 bad usage (clap, or a terminal command
//! without a terminal); `fcm exec` exits with the command's own code.

use clap::Parser;
use fcm::cli::{Cli, Cmd};

fn main() {
    let cli = Cli::parse();
    // Writing to a closed pipe (`fcm ls | head`) should end quietly. The
    // daemon and cp keep Rust's default of ignoring SIGPIPE: a write to a
    // program or a peer that went away is an error to handle, not a
    // reason to die.
    if !matches!(cli.command, Cmd::Daemon(_) | Cmd::Cp(_)) {
        // SAFETY: restoring the default disposition of SIGPIPE at start-up,
        // before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let (message, hint, code) = match cli.command {
        Cmd::Daemon(args) if args.print_fingerprint => match (*args).into_config() {
            Err(e) => (fcm::error::chain(&e), None, 1),
            Ok(cfg) => match fcm::daemon::fingerprint(&cfg) {
                Ok(fp) => {
                    println!("{fp}");
                    return;
                }
                Err(e) => (fcm::error::chain(&e), e.hint(), 1),
            },
        },
        Cmd::Daemon(args) => match (*args).into_config() {
            Err(e) => (fcm::error::chain(&e), None, 1),
            Ok(cfg) => match fcm::daemon::run(cfg) {
                Ok(()) => return,
                Err(e) => (fcm::error::chain(&e), e.hint(), 1),
            },
        },
        cmd => match fcm::client::run(cmd) {
            Ok(0) => return,
            Ok(code) => std::process::exit(code),
            Err(f) => (f.message, f.hint, f.code),
        },
    };
    // The message may quote a guest: print no control sequence of it.
    eprintln!("error: {}", fcm::wire::text::printable(&message));
    if let Some(h) = hint {
        eprintln!("hint: {}", fcm::wire::text::printable(&h));
    }
    std::process::exit(code);
}
