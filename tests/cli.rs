//! The command line itself, without a daemon: every argument has help
//! text, the completion scripts and the manual page are generated from
//! it, and terminal commands refuse at once without a terminal.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use fcm::cli::Cli;

fn fcm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fcm"))
}

/// Arguments without help text, as `fcm sub --arg`, anywhere in the tree.
fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
    for a in cmd.get_arguments() {
        let id = a.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        if a.get_help().is_none() && a.get_long_help().is_none() {
            out.push(format!("{path} {id}"));
        }
    }
    for sub in cmd.get_subcommands() {
        if sub.get_about().is_none() {
            out.push(format!("{path} {} (the command itself)", sub.get_name()));
        }
        undocumented(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

#[test]
fn every_argument_and_command_has_help() {
    let mut missing = Vec::new();
    undocumented(&Cli::command(), "fcm", &mut missing);
    assert!(
        missing.is_empty(),
        "without help text:\n{}",
        missing.join("\n")
    );
    // The walker itself notices a bare argument.
    let bare = clap::Command::new("x").arg(clap::Arg::new("thing"));
    let mut found = Vec::new();
    undocumented(&bare, "x", &mut found);
    assert_eq!(found, vec!["x thing"]);
}

#[test]
fn bash_accepts_the_completion_script_and_the_man_page_renders() {
    let out = fcm().args(["completions", "bash"]).output().expect("fcm");
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        script.contains("resize") && script.contains("--disk"),
        "incomplete script"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fcm.bash");
    std::fs::write(&file, &script).expect("write");
    let check = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -e; bash -n {0}; source {0}; complete -p fcm",
            file.display()
        ))
        .output()
        .expect("bash");
    assert!(
        check.status.success(),
        "bash rejects the script: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    for shell in ["zsh", "fish"] {
        let out = fcm().args(["completions", shell]).output().expect("fcm");
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let man = fcm().arg("man").output().expect("fcm man");
    let page = String::from_utf8_lossy(&man.stdout).into_owned();
    assert!(man.status.success() && page.contains(".TH"), "{page}");
    for needle in ["fcm exec", "fcm cp", "--disk", "EXIT STATUS"] {
        assert!(page.contains(needle), "man page lacks {needle}");
    }
}

#[test]
fn console_and_attach_without_a_terminal_fail_at_once() {
    for args in [
        &["console", "cosmic-nova"][..],
        &["attach", "cosmic-nova", "main"],
    ] {
        let t = Instant::now();
        let out = fcm()
            .args(args)
            // No daemon anywhere: the check must come before any connection.
            .env("FCM_HOST", "127.0.0.1:9")
            .env("FCM_TOKEN", "x")
            .stdin(Stdio::null())
            .output()
            .expect("fcm");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t.elapsed()
        );
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("needs a terminal") && err.contains("fcm exec"),
            "{err}"
        );
    }
}
