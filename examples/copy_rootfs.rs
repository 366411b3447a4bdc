//! Copies a rootfs image the way the daemon does for each new VM
//! (`fcm::host::disk::copy_rootfs`: a reflink where the filesystem supports it,
//! otherwise a sparse SEEK_DATA/SEEK_HOLE + copy_file_range copy).
//! Used by `bench/lifecycle.sh` to compare with `cp --sparse=always`.
//!
//!     cargo build --release --example copy_rootfs
//!     target/release/examples/copy_rootfs FROM TO
//!
//! Prints the copy method and the in-process time, e.g. `sparse 812.4 ms`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use fcm::host::disk::{CopyMethod, copy_rootfs};

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [from, to] = args.as_slice() else {
        eprintln!("usage: copy_rootfs FROM TO   (TO must not exist)");
        return ExitCode::from(2);
    };
    let start = Instant::now();
    match copy_rootfs(from, to) {
        Ok(method) => {
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            let method = match method {
                CopyMethod::Reflink => "reflink",
                CopyMethod::Sparse => "sparse",
            };
            println!("{method} {ms:.1} ms");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                msg.push_str(&format!(": {c}"));
                cur = c.source();
            }
            eprintln!("copy_rootfs: {msg}");
            ExitCode::FAILURE
        }
    }
}
