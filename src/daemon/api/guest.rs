//! Handlers of `/vms/{vm}/exec`, `/vms/{vm}/files` and `/vms/{vm}/archive`:
//! exec answers JSON; files and archives stream raw bytes both ways.

use std::io::Read;

use super::{ApiError, Reply, Route, ok};
use crate::daemon::guest::Download;
use crate::daemon::manager::Manager;
use crate::wire::api::ExecRequest;

/// What a request gets back: JSON, or a stream of bytes.
pub enum Answer {
    Json(Reply),
    Bytes {
        content_type: &'static str,
        length: Option<u64>,
        body: Box<dyn Read + Send>,
    },
}

pub(super) fn exec(m: &Manager, vm: &str, req: ExecRequest) -> Result<Reply, ApiError> {
    ok(200, m.exec(vm, req)?)
}

fn bytes(d: Download, content_type: &'static str) -> Answer {
    Answer::Bytes {
        content_type,
        length: d.length,
        body: d.body,
    }
}

/// Runs a streamed route; `body` is the request's (unread) body.
pub fn stream(
    m: &std::sync::Arc<Manager>,
    r: Route,
    body: &mut dyn Read,
) -> Result<Answer, ApiError> {
    let json = |v| ok(200, v).map(Answer::Json);
    match r {
        Route::PostImage { name, source } => Ok(Answer::Bytes {
            content_type: "application/x-ndjson",
            length: None,
            body: Box::new(m.image_job(&name, source, body)?),
        }),
        Route::GetFile { vm, path } => {
            Ok(bytes(m.read_file(&vm, &path)?, "application/octet-stream"))
        }
        Route::GetArchive { vm, path } => {
            Ok(bytes(m.read_archive(&vm, &path)?, "application/x-tar"))
        }
        Route::PutFile { vm, path } => json(m.write_file(&vm, &path, body)?),
        Route::PutArchive { vm, path } => json(m.write_archive(&vm, &path, body)?),
        _ => Err(ApiError::new(
            500,
            "a JSON route reached the stream handler",
        )),
    }
}
