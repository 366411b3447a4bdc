//! The tree is the architecture: this test keeps it so. It reads every
//! source file under `src/` and fails when a side imports what it must not
//! (see ARCHITECTURE.md, "Sides"):
//! - `client` never reaches into `daemon`;
//! - `host` knows neither `daemon` nor `client`;
//! - `daemon` never reaches into `client`;
//! - `wire`, `names`, `error` and `config` are shared: they import no side
//!   (`config` may name `wire` for its defaults);
//! - no file is over 600 lines unless its first comment says why.

use std::fs;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level part of `src/` a file belongs to (`client`, `daemon`,
/// `host`, `wire`, or the file's own stem for shared files).
fn part(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel
        .components()
        .next()
        .expect("component")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// Code without comments and string literals, so a doc line that names a
/// module is not an import.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// The top-level modules a file names through `crate::…` (and, for
/// `main.rs`, through `fcm::…`).
fn imported_parts(code: &str) -> Vec<String> {
    let mut parts = Vec::new();
    for prefix in ["crate::", "fcm::"] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            rest = &rest[i + prefix.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                parts.push(name);
            }
            // `crate::{a, b}` names several parts.
            if rest.starts_with('{') {
                let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
                for item in group.split(',') {
                    let n: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !n.is_empty() {
                        parts.push(n);
                    }
                }
            }
        }
    }
    parts
}

fn forbidden_for(part: &str) -> &'static [&'static str] {
    match part {
        "client" => &["daemon"],
        "host" => &["daemon", "client", "cli"],
        "daemon" => &["client", "cli"],
        "wire" | "names" | "error" => &["daemon", "client", "host", "config", "cli"],
        "config" => &["daemon", "client", "host", "cli"],
        "cli" => &["daemon", "client", "host"],
        _ => &[],
    }
}

#[test]
fn sides_import_only_what_they_may() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 10, "found only {} files in src/", files.len());
    let mut bad = Vec::new();
    for f in &files {
        let p = part(&src, f);
        let code = code_of(&fs::read_to_string(f).expect("read"));
        for imported in imported_parts(&code) {
            if forbidden_for(&p).contains(&imported.as_str()) {
                bad.push(format!(
                    "{} ({p}) imports crate::{imported}",
                    f.strip_prefix(&src).expect("rel").display()
                ));
            }
        }
    }
    bad.sort();
    bad.dedup();
    assert!(bad.is_empty(), "imports across sides:\n{}", bad.join("\n"));
}

#[test]
fn the_checker_catches_a_daemon_import_in_the_client() {
    let code = code_of(
        "use crate::daemon::manager::Manager;\n// crate::host in a comment\nlet s = \"crate::cli\";\n",
    );
    assert_eq!(imported_parts(&code), vec!["daemon".to_string()]);
    assert!(forbidden_for("client").contains(&"daemon"));
    let grouped = code_of("use crate::{wire, host::ssh};\n");
    assert_eq!(imported_parts(&grouped), vec!["wire", "host"]);
}

#[test]
fn long_files_say_why() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut long = Vec::new();
    for f in &files {
        let text = fs::read_to_string(f).expect("read");
        let lines = text.lines().count();
        let first = text.lines().next().unwrap_or_default();
        if lines > 600 && !first.contains("long because") {
            long.push(format!(
                "{}: {lines} lines",
                f.strip_prefix(&src).expect("rel").display()
            ));
        }
    }
    assert!(
        long.is_empty(),
        "files over 600 lines whose first comment does not say why (\"long because …\"):\n{}",
        long.join("\n")
    );
}
