//! `fcm completions <shell>` and `fcm man`: generated from the clap
//! definitions in `crate::cli`, so they never disagree with the parser.

use clap::CommandFactory;

use super::Failure;
use crate::cli::Cli;

pub(super) fn completions(shell: clap_complete::Shell) -> Result<(), Failure> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "fcm", &mut std::io::stdout());
    Ok(())
}

/// The manual page of fcm (roff), subcommands included.
pub fn man_page() -> Result<Vec<u8>, std::io::Error> {
    let cmd = Cli::command();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    out.extend_from_slice(b".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        out.extend_from_slice(format!(".TP\n\\fBfcm {name}\\fR\n").as_bytes());
        out.extend_from_slice(roff_text(&about).as_bytes());
        out.push(b'\n');
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let flag = match (arg.get_long(), arg.get_short()) {
                (Some(l), Some(s)) => format!("-{s}, --{l}"),
                (Some(l), None) => format!("--{l}"),
                (None, Some(s)) => format!("-{s}"),
                (None, None) => format!("<{}>", id.to_uppercase()),
            };
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            out.extend_from_slice(
                format!(
                    ".RS\n.TP\n{}\n{}\n.RE\n",
                    roff_text(&flag),
                    roff_text(&help)
                )
                .as_bytes(),
            );
        }
    }
    man.render_options_section(&mut out)?;
    out.extend_from_slice(
        b".SH EXIT STATUS\n0 success, 1 the operation failed, 2 bad usage. \\fBfcm exec\\fR exits with the command's status (124 when it was killed at its timeout).\n",
    );
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Text for roff: backslashes doubled, no line starting with a control character.
fn roff_text(s: &str) -> String {
    s.replace('\\', "\\\\")
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) fn man() -> Result<(), Failure> {
    use std::io::Write;
    let page =
        man_page().map_err(|e| Failure::new(format!("could not render the manual: {e}"), None))?;
    let _ = std::io::stdout().write_all(&page);
    Ok(())
}
