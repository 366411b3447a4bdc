use clap::Parser;

fn main() {
    // Writing to a closed pipe (`fcm ls | head`) should end quietly.
    // SAFETY: restoring the default disposition of SIGPIPE at start-up.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = fcm::cli::Cli::parse();
    if let Err(f) = fcm::cli::run(cli) {
        eprintln!("error: {}", f.message);
        if let Some(h) = f.hint {
            eprintln!("hint: {h}");
        }
        std::process::exit(1);
    }
}
