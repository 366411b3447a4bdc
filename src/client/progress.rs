//! Progress on a terminal: a spinner with the elapsed time for waits
//! (create, start, stop), a byte counter with the rate for transfers. Both
//! draw on stderr only when stderr is a terminal, and print nothing else.

use std::io::{IsTerminal, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::wire::size::human;

/// Whether progress should be drawn (stderr is a terminal).
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Draws `render(elapsed)` every 100 ms until dropped, then clears the line.
pub struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(render: impl Fn(Duration) -> String + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = on_terminal().then(|| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let t0 = Instant::now();
                while !stop.load(Ordering::Acquire) {
                    let mut e = std::io::stderr().lock();
                    let _ = write!(e, "\r\x1b[2K{}", render(t0.elapsed()));
                    let _ = e.flush();
                    drop(e);
                    thread::sleep(Duration::from_millis(100));
                }
                let _ = write!(std::io::stderr(), "\r\x1b[2K");
            })
        });
        Self { stop, thread }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A spinner: `⠋ creating VM (waiting for SSH)  3.2 s`.
pub fn spinner(label: String) -> Ticker {
    const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    Ticker::start(move |t| {
        let frame = FRAMES[(t.as_millis() / 100) as usize % FRAMES.len()];
        format!("{frame} {label}  {:.1} s", t.as_secs_f32())
    })
}

/// Bytes moved so far, shared between a [`Counting`] reader and its meter.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A reader that counts what passes through it.
pub struct Counting<R> {
    inner: R,
    counter: Counter,
}

impl<R: Read> Counting<R> {
    pub fn new(inner: R, counter: Counter) -> Self {
        Self { inner, counter }
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A transfer meter: `label  12.0 MiB / 40 MiB  3.1 MiB/s`; `None` when
/// `quiet` or not on a terminal.
pub fn meter(label: String, counter: &Counter, total: Option<u64>, quiet: bool) -> Option<Ticker> {
    if quiet || !on_terminal() {
        return None;
    }
    let c = counter.clone();
    Some(Ticker::start(move |t| {
        let done = c.get();
        let rate = done as f64 / t.as_secs_f64().max(0.001);
        let of = total
            .map(|n| format!(" / {}", human(n)))
            .unwrap_or_default();
        format!("{label}  {}{of}  {}/s", human(done), human(rate as u64))
    }))
}
