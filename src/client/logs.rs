//! `fcm logs <vm> [-f]`: the VM's console log (`GET /vms/{vm}/logs`),
//! control characters from the guest shown as escapes.

use std::io::Write;
use std::time::Duration;

use super::api::{Client, seg};
use super::{Failure, out_json};
use crate::cli::LogsArgs;
use crate::wire::api::LogChunk;
use crate::wire::text::visible;

/// How often `-f` asks for more.
const POLL: Duration = Duration::from_millis(500);

pub(super) fn logs(a: LogsArgs) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let mut offset = 0u64;
    loop {
        let chunk: LogChunk = c.get(&format!("/vms/{}/logs?offset={offset}", seg(&a.vm)))?;
        // More is there unless this read made no progress (the log ends in
        // half a UTF-8 character the guest is still writing).
        let more = chunk.next_offset < chunk.size && chunk.next_offset > chunk.offset;
        if chunk.reset && offset > 0 && !a.json {
            eprintln!("--- the console log was rotated; following its new start ---");
        }
        if a.json {
            out_json(&chunk)?;
        } else if !chunk.data.is_empty() {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(visible(&chunk.data).as_bytes());
            let _ = o.flush();
        }
        offset = chunk.next_offset;
        if more {
            continue;
        }
        if !a.follow {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}
