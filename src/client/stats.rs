//! `fcm stats [VM] [--json] [-w]` (`GET /stats`, `GET /vms/{vm}/stats`):
//! a table of VMs' resource use, like `docker stats`; and `fcm events
//! [--vm VM] [--json]` (`GET /events`): the daemon's events as they come.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::time::Duration;

use super::api::{Client, seg};
use super::{Failure, out, out_json};
use crate::cli::StatsArgs;
use crate::wire::size::human;
use crate::wire::stats::{Event, VmStats};
use crate::wire::text::printable;

/// The refresh of `-w` when the daemon's sampler is off.
const DEFAULT_REFRESH: Duration = Duration::from_secs(2);
/// The longest line of the event stream read.
const LINE_MAX: u64 = 64 * 1024;

pub(super) fn stats(a: StatsArgs) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let tty = std::io::stdout().is_terminal();
    loop {
        let list: Vec<VmStats> = match &a.vm {
            Some(vm) => vec![c.get(&format!("/vms/{}/stats", seg(vm)))?],
            None => match &a.host {
                Some(h) => c.get(&format!("/stats?host={}", seg(h)))?,
                None => c.get("/stats")?,
            },
        };
        if a.json {
            match (&a.vm, list.first()) {
                (Some(_), Some(one)) => out_json(one)?,
                _ => out_json(&list)?,
            }
        } else {
            if a.watch && tty {
                // Home and clear, then the table: a redraw in place.
                print!("\x1b[H\x1b[2J");
            }
            for line in table(&list) {
                out(&line);
            }
        }
        if !a.watch {
            return Ok(());
        }
        let _ = std::io::stdout().flush();
        let every = list
            .first()
            .map(|s| Duration::from_millis(s.interval_ms))
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_REFRESH);
        std::thread::sleep(every);
    }
}

/// Used over total, or `-` where unknown.
fn pair(used: Option<u64>, total: u64) -> String {
    match used {
        Some(u) => format!("{} / {}", human(u), human(total)),
        None => format!("- / {}", human(total)),
    }
}

/// The table's lines: a header, then one line per VM; in a cluster (the
/// VMs say their host) a HOST column first.
fn table(list: &[VmStats]) -> Vec<String> {
    let hosts = list.iter().any(|s| s.host.is_some());
    let host_col = |h: &str| {
        if hosts {
            format!("{:<16} ", printable(h))
        } else {
            String::new()
        }
    };
    let mut lines = vec![format!(
        "{}{:<22} {:<13} {:>6}  {:<21} {:<21} {:<21} {}",
        host_col("HOST"),
        "NAME",
        "STATE",
        "CPU%",
        "MEM (RSS / LIMIT)",
        "GUEST MEM",
        "DISK (USED / ALLOC)",
        "NET RX / TX"
    )];
    for s in list {
        let guest_mem = s.memory.guest.as_ref().map_or_else(
            || "-".to_owned(),
            |g| pair(Some(g.used_bytes), g.total_bytes),
        );
        lines.push(format!(
            "{}{:<22} {:<13} {:>6.1}  {:<21} {:<21} {:<21} {} / {}",
            host_col(s.host.as_deref().unwrap_or("")),
            printable(&s.name),
            printable(&s.state),
            s.cpu.percent,
            pair(Some(s.memory.vmm_rss_bytes), s.memory.limit_bytes),
            guest_mem,
            pair(
                s.disk.guest.as_ref().map(|g| g.used_bytes),
                s.disk.allocated_bytes
            ),
            human(s.net.rx_bytes),
            human(s.net.tx_bytes),
        ));
    }
    lines
}

pub(super) fn events(vm: Option<&str>, json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let path = match vm {
        Some(v) => format!("/events?vm={}", seg(v)),
        None => "/events".to_owned(),
    };
    let (_, body) = c.get_bytes(&path)?;
    let mut r = BufReader::new(body);
    loop {
        let mut line = String::new();
        match (&mut r).take(LINE_MAX).read_line(&mut line) {
            Ok(0) => {
                return Err(Failure::new(
                    "the daemon ended the event stream",
                    Some("is the daemon still running?".into()),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(Failure::new(format!("reading the event stream: {e}"), None));
            }
        }
        let line = line.trim_end();
        if json {
            // The daemon's line as it came (its heartbeats too).
            out(&printable(line));
            continue;
        }
        match serde_json::from_str::<Event>(line) {
            Ok(e) => {
                if let Some(text) = human_event(&e) {
                    out(&text);
                }
            }
            Err(_) => out(&format!("? {}", printable(line))),
        }
    }
}

/// One event as a person reads it; none for heartbeats.
fn human_event(e: &Event) -> Option<String> {
    let vm = printable(e.vm.as_deref().unwrap_or("-"));
    let what = match e.kind.as_str() {
        "heartbeat" => return None,
        "state" => format!(
            "{vm}: {} -> {}",
            e.from.as_deref().unwrap_or("(new)"),
            e.to.as_deref().unwrap_or("?")
        ),
        "operation" => {
            let op = e.op.as_deref().unwrap_or("?");
            match (e.phase.as_deref(), e.ok) {
                (Some("end"), Some(true)) => {
                    format!("{vm}: {op} done in {} ms", e.ms.unwrap_or(0))
                }
                (Some("end"), _) => format!(
                    "{vm}: {op} failed after {} ms: {}",
                    e.ms.unwrap_or(0),
                    printable(e.error.as_deref().unwrap_or("?"))
                ),
                _ => format!("{vm}: {op} ..."),
            }
        }
        "lagged" => format!(
            "(missed {} events: this client read too slowly)",
            e.missed.unwrap_or(0)
        ),
        other => format!("{vm}: {}", printable(other)),
    };
    Some(format!("{}  {what}", printable(&e.time)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_sentences() {
        let e: Event = serde_json::from_str(
            r#"{"seq":3,"time":"T","type":"operation","op":"start","vm":"x","phase":"end","ok":true,"ms":812}"#,
        )
        .expect("event");
        assert_eq!(
            human_event(&e).as_deref(),
            Some("T  x: start done in 812 ms")
        );
        let e: Event =
            serde_json::from_str(r#"{"type":"heartbeat","time":"T"}"#).expect("heartbeat");
        assert_eq!(human_event(&e), None);
    }

    #[test]
    fn the_table_has_a_line_per_vm() {
        let s = VmStats {
            name: "web".into(),
            state: "stopped".into(),
            ..VmStats::default()
        };
        let t = table(std::slice::from_ref(&s));
        assert_eq!(t.len(), 2);
        assert!(t[1].starts_with("web "), "{}", t[1]);
        assert!(t[0].starts_with("NAME "), "{}", t[0]);
        // In a cluster: a HOST column first.
        let t = table(&[VmStats {
            host: Some("h1".into()),
            ..s
        }]);
        assert!(t[0].starts_with("HOST "), "{}", t[0]);
        assert!(
            t[1].starts_with("h1 ") && t[1].contains(" web "),
            "{}",
            t[1]
        );
    }
}
