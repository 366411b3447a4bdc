//! The one writer of a connection: a thread that owns the stream's write
//! half and writes the frames every other thread queues on a bounded
//! channel (so a slow daemon slows the senders down, never the reader).
//!
//! Each frame is stamped with its session's generation; the writer drops
//! the frames of a session that has ended, so the operations of an earlier
//! session never speak after a new `Hello` answer.

use crate::lock;
use fcm_proto::{FrameError, FromAgent, frame};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Frames queued at most (each at most 256 KiB, most far smaller).
const QUEUE: usize = 16;
/// The most one write gathers from the queue.
const BATCH: usize = 256 * 1024;

#[derive(Debug)]
pub(crate) enum SendError {
    /// The message does not fit in a frame.
    TooLarge,
    /// The connection is gone.
    Closed,
}

enum Out {
    Frame(u64, Vec<u8>),
    /// Answered once everything queued before it was written.
    Flush(SyncSender<()>),
}

#[derive(Debug, Default)]
struct Shared {
    /// The generation of the session whose frames are written.
    current: AtomicU64,
    /// The connection ended: frames are dropped.
    closed: AtomicBool,
    /// Held while writing.
    writing: Mutex<()>,
}

/// A handle on the writer, for one session's generation.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: SyncSender<Out>,
    shared: Arc<Shared>,
    epoch: u64,
}

impl Outbox {
    /// Starts the writer thread; the handle returned writes for no session
    /// yet (generation 0).
    pub fn start<W: Write + Send + 'static>(writer: W) -> io::Result<Outbox> {
        let (tx, rx) = sync_channel(QUEUE);
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        thread::Builder::new()
            .name("writer".into())
            .spawn(move || write_loop(rx, writer, &s))?;
        Ok(Outbox {
            tx,
            shared,
            epoch: 0,
        })
    }

    /// A handle for the session `epoch`.
    pub fn for_session(&self, epoch: u64) -> Outbox {
        Outbox {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
            epoch,
        }
    }

    /// From now on only this handle's session is written.
    pub fn begin(&self) {
        self.shared.current.store(self.epoch, Ordering::SeqCst);
    }

    /// Queues one message (waiting while the queue is full).
    pub fn send(&self, msg: &FromAgent) -> Result<(), SendError> {
        let bytes = frame(msg).map_err(|e| match e {
            FrameError::TooLarge(_) => SendError::TooLarge,
            FrameError::Encode(_) => SendError::Closed,
        })?;
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(SendError::Closed);
        }
        self.tx
            .send(Out::Frame(self.epoch, bytes))
            .map_err(|_| SendError::Closed)
    }

    /// Waits (at most `timeout`) until what was queued before is written.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = sync_channel(1);
        self.tx.send(Out::Flush(tx)).is_ok() && rx.recv_timeout(timeout).is_ok()
    }

    /// Ends the connection's writing: nothing more is written (senders are
    /// not blocked: what they queue is dropped). Waits up to `timeout` for
    /// a write under way to finish, so a next connection on the same
    /// device never sees this one's bytes between its own.
    pub fn close(&self, timeout: Duration) {
        self.shared.closed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.shared.writing.try_lock().is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn write_loop<W: Write>(rx: Receiver<Out>, mut writer: W, shared: &Shared) {
    let mut broken = false;
    let mut batch = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.clear();
        let mut next = Some(first);
        while let Some(out) = next.take() {
            match out {
                Out::Frame(epoch, bytes) => {
                    if epoch == shared.current.load(Ordering::SeqCst) {
                        batch.extend_from_slice(&bytes);
                    }
                }
                Out::Flush(done) => flushes.push(done),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !broken && !batch.is_empty() {
            let _writing = lock(&shared.writing);
            if !shared.closed.load(Ordering::SeqCst)
                && writer
                    .write_all(&batch)
                    .and_then(|()| writer.flush())
                    .is_err()
            {
                // The reader sees the stream's end too; drop what follows.
                broken = true;
            }
        }
        for done in flushes.drain(..) {
            let _ = done.try_send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fcm_proto::{Decoder, Next};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn decoded(sink: &Sink) -> Vec<FromAgent> {
        let mut d = Decoder::new();
        d.push(&lock(&sink.0));
        let mut out = Vec::new();
        while let Next::Message(m) = d.decode::<FromAgent>() {
            out.push(m);
        }
        out
    }

    #[test]
    fn only_the_current_sessions_frames_are_written() {
        let sink = Sink::default();
        let base = Outbox::start(sink.clone()).expect("start");
        let (one, two) = (base.for_session(1), base.for_session(2));
        one.begin();
        one.send(&FromAgent::End { id: 1 }).expect("send");
        assert!(one.flush(Duration::from_secs(5)));
        two.begin();
        one.send(&FromAgent::End { id: 2 }).expect("send");
        two.send(&FromAgent::End { id: 3 }).expect("send");
        assert!(two.flush(Duration::from_secs(5)));
        let ids: Vec<_> = decoded(&sink).iter().filter_map(FromAgent::id).collect();
        assert_eq!(ids, vec![1, 3]);
        // Too large for a frame: refused to the sender, nothing written.
        let big = FromAgent::Data {
            id: 4,
            data: vec![0; fcm_proto::MAX_PAYLOAD + 1],
        };
        assert!(matches!(two.send(&big), Err(SendError::TooLarge)));
        two.close(Duration::from_secs(1));
        assert!(matches!(
            two.send(&FromAgent::End { id: 5 }),
            Err(SendError::Closed)
        ));
    }
}
