//! console, attach, sessions, kill.

use std::io::IsTerminal;

use super::api::{Client, seg};
use super::{Failure, console, format_time, out, out_json};
use crate::wire::api::{SessionInfo, SessionRequest};
use crate::wire::text::printable;
use crate::wire::text::visible;

/// Console and attach drive a terminal: without one, fail at once (2).
fn need_terminal(what: &str, vm: &str) -> Result<(), Failure> {
    if std::io::stdin().is_terminal() {
        return Ok(());
    }
    Err(Failure::usage(
        format!("fcm {what} needs a terminal, and standard input is not one"),
        Some(format!(
            "to run a command without a terminal use: fcm exec {} -- CMD...",
            visible(vm)
        )),
    ))
}

pub(super) fn console(vm: &str, new: bool) -> Result<(), Failure> {
    need_terminal("console", vm)?;
    let c = Client::from_env()?;
    let session = if new {
        let s: SessionInfo = c.post(
            &format!("/vms/{}/sessions", seg(vm)),
            &SessionRequest::default(),
        )?;
        Some(s.id)
    } else {
        None
    };
    let a = console::attach(c.token(), vm, session.as_deref(), !new)?;
    eprintln!("\r\n{}", a.message(vm));
    Ok(())
}

pub(super) fn attach(vm: &str, session: &str) -> Result<(), Failure> {
    need_terminal("attach", vm)?;
    let c = Client::from_env()?;
    let a = console::attach(c.token(), vm, Some(session), false)?;
    eprintln!("\r\n{}", a.message(vm));
    Ok(())
}

pub(super) fn list(vm: &str, json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let list: Vec<SessionInfo> = c.get(&format!("/vms/{}/sessions", seg(vm)))?;
    if json {
        return out_json(&list);
    }
    if list.is_empty() {
        eprintln!("no sessions in {vm}; open one with: fcm console {vm}");
        return Ok(());
    }
    out(&format!(
        "{:<12} {:<20} {:<9} COMMAND",
        "SESSION", "CREATED", "ATTACHED"
    ));
    for x in list {
        out(&format!(
            "{:<12} {:<20} {:<9} {}",
            x.id,
            format_time(x.created),
            x.attached,
            printable(&x.command)
        ));
    }
    Ok(())
}

pub(super) fn kill(vm: &str, session: &str, json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let s: SessionInfo = c.delete(&format!("/vms/{}/sessions/{}", seg(vm), seg(session)))?;
    if json {
        return out_json(&s);
    }
    out(&format!("{}: done", s.id));
    Ok(())
}
