//! The protocol between the fcm daemon and `fcm-agent`, the small program
//! in every guest: the messages both ends compile, and the framing that
//! carries them over one byte stream (a virtio-serial port under QEMU, a
//! vsock connection under Firecracker, a socketpair in tests). The whole
//! protocol, with its rules, is in `docs/agent.md`; in short:
//!
//! - **Frames**: `FC A9 | length u32 LE | crc32 u32 LE | payload`, the
//!   payload a postcard-encoded [`ToAgent`] or [`FromAgent`] of at most
//!   [`MAX_PAYLOAD`] bytes. A reader that meets anything else (the tail of
//!   a frame cut by a reconnect, garbage) skips to the next frame whose
//!   checksum holds ([`Decoder`]).
//! - **Sessions**: the daemon opens each connection with
//!   [`ToAgent::Hello`] (its version and a fresh session number); the agent
//!   ends whatever an earlier session left under way and answers
//!   [`FromAgent::Hello`] with the same number. Either side ignores what
//!   comes before that.
//! - **Operations** are multiplexed: each has an [`Id`] the daemon picks;
//!   every message about it carries it. One ends with exactly one of
//!   `Exited` (a program), `Done` or `Failed`.
//! - **Flow control**: per operation, at most [`WINDOW`] bytes of data are
//!   in flight each way; the receiver returns `Credit` as it consumes them.
//!   A large copy therefore never starves a concurrent exec, and neither
//!   end ever buffers more than a window per operation.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The protocol's version: bumped by any change an older peer cannot read.
pub const VERSION: u32 = 1;
/// The oldest agent version this protocol's daemon talks to.
pub const MIN_AGENT_VERSION: u32 = 1;
/// The name of the virtio-serial port (QEMU).
pub const PORT_NAME: &str = "fcm.agent.0";
/// The vsock port the agent listens on (Firecracker).
pub const VSOCK_PORT: u32 = 10789;
/// The largest payload of one frame.
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// The most data one frame carries.
pub const CHUNK: usize = 64 * 1024;
/// Bytes of data in flight per operation and direction.
pub const WINDOW: u32 = 1 << 20;

const MAGIC: [u8; 2] = [0xFC, 0xA9];
const HEADER: usize = 10;

/// An operation's number, chosen by the daemon, unique in a session.
pub type Id = u64;

/// A terminal for a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tty {
    pub cols: u16,
    pub rows: u16,
    /// `$TERM` for the program.
    pub term: String,
}

/// A program to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    pub id: Id,
    /// The program (looked up on `PATH` when it has no `/`) and its
    /// arguments, each as it is.
    pub argv: Vec<String>,
    /// Added to (or replacing in) a default environment: `PATH`, `HOME`,
    /// `USER`, `LOGNAME`, `SHELL` (of the user), and `TERM` on a terminal.
    pub env: Vec<(String, String)>,
    /// The working directory (default: the user's home, else `/`).
    pub cwd: Option<String>,
    /// Run as this user (a name or a number; default root).
    pub user: Option<String>,
    /// On a terminal (stdout and stderr are then one stream).
    pub tty: Option<Tty>,
    /// Killed (its process group, SIGKILL) this long after the start.
    pub timeout_ms: Option<u64>,
}

/// How a VM made from an image (`fcm image build`/`import`) runs it: the
/// part of the image's OCI config fcm honours. The daemon writes it, as
/// JSON, on the VM's config drive as [`IMAGE_CONFIG_MEMBER`]; the guest's
/// boot puts it at [`IMAGE_CONFIG_PATH`], where fcm's init (`fcm-agent
/// init`) runs `entrypoint` + `cmd` as the VM's service and the agent takes
/// `env`, `workdir` and `user` as the defaults of every `exec`, as `docker
/// exec` does. A VM of the base image has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// The OCI `Entrypoint`: the program and its first arguments.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// The OCI `Cmd`: the arguments after the entrypoint, or the whole
    /// command when there is none.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// The OCI `Env`: `NAME=value` entries, in order.
    #[serde(default)]
    pub env: Vec<String>,
    /// The OCI `WorkingDir` (default `/`).
    #[serde(default)]
    pub workdir: Option<String>,
    /// The OCI `User`: `name`, `uid`, `name:group` or `uid:gid` (default root).
    #[serde(default)]
    pub user: Option<String>,
}

/// The config drive member holding a VM's [`ImageConfig`] (JSON).
pub const IMAGE_CONFIG_MEMBER: &str = "fcm-image.json";
/// Where the guest's boot puts the [`ImageConfig`] (JSON).
pub const IMAGE_CONFIG_PATH: &str = "/run/fcm/image.json";
/// On the kernel command line of a VM made from an image: the initramfs
/// boots it with fcm's own init (`fcm-agent init`) instead of the image's.
pub const IMAGE_BOOT_PARAM: &str = "fcm.image";

/// A guest's new identity, for a VM made from another's memory (a fork):
/// every field present is set; absent ones are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub hostname: Option<String>,
    /// `/etc/machine-id` (32 hex digits).
    pub machine_id: Option<String>,
    /// The MAC of the first network interface (`aa:bb:cc:dd:ee:ff`).
    pub mac: Option<String>,
    /// The interface's address, `a.b.c.d/prefix`, replacing the others.
    pub address: Option<String>,
    /// The default route's gateway.
    pub gateway: Option<String>,
    /// SSH host keys: (file name under `/etc/ssh`, content); sshd is told
    /// to reload them.
    pub ssh_host_keys: Vec<(String, String)>,
}

/// What the daemon sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToAgent {
    /// The first message of a connection: ends what an earlier session
    /// left under way; answered by [`FromAgent::Hello`].
    Hello {
        version: u32,
        session: u64,
    },
    /// Answered by `Pong`.
    Ping {
        id: Id,
    },
    /// Starts a program: `Started`, then `Stdout`/`Stderr`, then `Exited`.
    Exec(Exec),
    /// Bytes for an operation: a program's stdin, a file or tar written.
    Data {
        id: Id,
        data: Vec<u8>,
    },
    /// No more `Data` for the operation (stdin's end, a write's end).
    End {
        id: Id,
    },
    /// The daemon took this many bytes of the operation's output.
    Credit {
        id: Id,
        bytes: u32,
    },
    /// A program's terminal has a new size.
    Resize {
        id: Id,
        cols: u16,
        rows: u16,
    },
    /// Sends a signal to a program's process group.
    Signal {
        id: Id,
        signal: i32,
    },
    /// Abandons an operation: a program is killed, a write discarded.
    Cancel {
        id: Id,
    },
    /// A regular file: `Opened { size }`, `Data`…, `End`.
    ReadFile {
        id: Id,
        path: String,
    },
    /// A directory's contents as tar: `Opened`, `Data`…, `End`.
    ReadTree {
        id: Id,
        path: String,
    },
    /// Writes a file from the `Data` that follow (to a temporary name,
    /// renamed over `path` at `End`): `Done(Written)`.
    WriteFile {
        id: Id,
        path: String,
        mode: u32,
    },
    /// Unpacks the tar in the `Data` that follow into a directory (made if
    /// missing): `Done(Written)`.
    WriteTree {
        id: Id,
        path: String,
    },
    Stat {
        id: Id,
        path: String,
    },
    List {
        id: Id,
        path: String,
    },
    Mkdir {
        id: Id,
        path: String,
        parents: bool,
    },
    Remove {
        id: Id,
        path: String,
        recursive: bool,
    },
    Rename {
        id: Id,
        from: String,
        to: String,
    },
    /// Sets the guest's clock: `Done(Clock)` with the time read back.
    SetClock {
        id: Id,
        unix_secs: i64,
        nanos: u32,
    },
    /// Mixes these bytes into the guest's entropy pool and reseeds it.
    Reseed {
        id: Id,
        entropy: Vec<u8>,
    },
    /// Syncs and freezes the root file system (`FIFREEZE`); the agent
    /// thaws it by itself after `watchdog_secs` unless thawed before:
    /// `Done(Frozen)`.
    Freeze {
        id: Id,
        watchdog_secs: u32,
    },
    /// Thaws what `Freeze` froze (also when nothing is frozen).
    Thaw {
        id: Id,
    },
    /// Asks the guest's init for a clean shutdown.
    Shutdown {
        id: Id,
    },
    /// Takes a new identity (a fork): `Done(Ok)`.
    SetIdentity {
        id: Id,
        identity: Identity,
    },
}

/// The kinds of failure, for the daemon to map to its own errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailKind {
    /// The path does not exist, or the program was not found.
    NotFound,
    /// The path is not of the kind asked for (a directory, not a file…).
    WrongKind,
    TooLarge,
    /// A bad request (bad path, bad user, a frame out of place).
    Invalid,
    /// The guest could not do it (permissions, I/O, no such ioctl…).
    Failed,
    /// This agent does not know the request.
    Unsupported,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailKind,
    pub message: String,
}

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Unix seconds.
    pub mtime: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub stat: Stat,
}

/// How an operation other than a program ended well.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Done {
    Ok,
    Written {
        bytes: u64,
    },
    Stat(Stat),
    List(Vec<Entry>),
    /// `frozen` false: the file system could only be synced.
    Frozen {
        frozen: bool,
    },
    /// The guest's clock, read right after it was set.
    Clock {
        unix_secs: i64,
        nanos: u32,
    },
}

/// What the agent sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromAgent {
    /// The answer to [`ToAgent::Hello`], with the same session number.
    Hello {
        version: u32,
        session: u64,
        /// The agent's build, for messages (`fcm-agent 0.1.0`).
        agent: String,
    },
    Pong {
        id: Id,
        uptime_ms: u64,
    },
    /// A program started.
    Started {
        id: Id,
        pid: u32,
    },
    /// A program's output (everything, on a terminal).
    Stdout {
        id: Id,
        data: Vec<u8>,
    },
    Stderr {
        id: Id,
        data: Vec<u8>,
    },
    /// A program ended: its exit code, or the signal that ended it.
    Exited {
        id: Id,
        code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
    },
    /// A read began; `size` when known (a file).
    Opened {
        id: Id,
        size: Option<u64>,
    },
    /// Bytes of a read.
    Data {
        id: Id,
        data: Vec<u8>,
    },
    /// The end of a read's bytes (followed by nothing for that id).
    End {
        id: Id,
    },
    /// The agent took this many bytes the daemon sent for the operation.
    Credit {
        id: Id,
        bytes: u32,
    },
    Done {
        id: Id,
        done: Done,
    },
    Failed {
        id: Id,
        failure: Failure,
    },
}

impl FromAgent {
    /// The operation a message is about (none for `Hello`).
    pub fn id(&self) -> Option<Id> {
        match self {
            Self::Hello { .. } => None,
            Self::Pong { id, .. }
            | Self::Started { id, .. }
            | Self::Stdout { id, .. }
            | Self::Stderr { id, .. }
            | Self::Exited { id, .. }
            | Self::Opened { id, .. }
            | Self::Data { id, .. }
            | Self::End { id }
            | Self::Credit { id, .. }
            | Self::Done { id, .. }
            | Self::Failed { id, .. } => Some(*id),
        }
    }
}

/// Why a message could not be framed.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    TooLarge(usize),
    Encode(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge(n) => write!(f, "a message of {n} bytes (at most {MAX_PAYLOAD})"),
            Self::Encode(e) => write!(f, "could not encode a message: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// One message as a frame, ready to write in one call.
pub fn frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let payload = postcard::to_stdvec(msg).map_err(|e| FrameError::Encode(e.to_string()))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(payload.len()));
    }
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// What [`Decoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T> {
    /// A message.
    Message(T),
    /// A whole frame whose payload is no message this side knows (a newer
    /// peer's): skipped.
    Unknown,
    /// More bytes are needed.
    More,
}

/// Reads frames out of a byte stream, bounded: it holds at most one frame
/// ([`Decoder::CAPACITY`] bytes). Bytes that do not start a frame with a
/// good checksum are skipped (counted in `skipped`), so a reader finds its
/// way back after garbage or a frame cut short.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes dropped so far for not being part of a good frame.
    pub skipped: u64,
}

impl Decoder {
    /// The most a decoder holds.
    pub const CAPACITY: usize = HEADER + MAX_PAYLOAD;

    pub fn new() -> Self {
        Self::default()
    }

    /// How many more bytes [`Decoder::push`] takes now.
    pub fn room(&self) -> usize {
        Self::CAPACITY - self.buf.len()
    }

    /// Adds bytes read from the stream (at most [`Decoder::room`]; the
    /// rest is the caller's to push after `decode`).
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        self.buf.extend_from_slice(&bytes[..n]);
        n
    }

    /// Drops everything held (after a reconnect).
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    fn skip(&mut self, n: usize) {
        self.buf.drain(..n);
        self.skipped += n as u64;
    }

    /// The next message, if a whole frame is held.
    pub fn decode<T: DeserializeOwned>(&mut self) -> Next<T> {
        loop {
            // To the next magic.
            match self.buf.windows(2).position(|w| w == MAGIC) {
                Some(0) => {}
                Some(i) => self.skip(i),
                None => {
                    // Keep a last byte that may be the magic's first.
                    let keep = usize::from(self.buf.last() == Some(&MAGIC[0]));
                    let n = self.buf.len() - keep;
                    self.skip(n);
                    return Next::More;
                }
            }
            if self.buf.len() < HEADER {
                return Next::More;
            }
            let len =
                u32::from_le_bytes([self.buf[2], self.buf[3], self.buf[4], self.buf[5]]) as usize;
            if len > MAX_PAYLOAD {
                self.skip(1);
                continue;
            }
            if self.buf.len() < HEADER + len {
                return Next::More;
            }
            let crc = u32::from_le_bytes([self.buf[6], self.buf[7], self.buf[8], self.buf[9]]);
            let payload = &self.buf[HEADER..HEADER + len];
            if crc32fast::hash(payload) != crc {
                self.skip(1);
                continue;
            }
            let msg = postcard::from_bytes::<T>(payload);
            self.buf.drain(..HEADER + len);
            return match msg {
                Ok(m) => Next::Message(m),
                Err(_) => Next::Unknown,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> (Vec<ToAgent>, u64) {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let mut rest = bytes;
        loop {
            let n = d.push(rest);
            rest = &rest[n..];
            loop {
                match d.decode::<ToAgent>() {
                    Next::Message(m) => out.push(m),
                    Next::Unknown => {}
                    Next::More => break,
                }
            }
            if rest.is_empty() {
                return (out, d.skipped);
            }
        }
    }

    #[test]
    fn frames_round_trip_in_any_pieces() {
        let msgs = vec![
            ToAgent::Hello {
                version: VERSION,
                session: 7,
            },
            ToAgent::Data {
                id: 3,
                data: vec![0xFC; CHUNK],
            },
            ToAgent::Exec(Exec {
                id: 4,
                argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: vec![("A".into(), "b".into())],
                cwd: None,
                user: Some("nobody".into()),
                tty: Some(Tty {
                    cols: 80,
                    rows: 24,
                    term: "xterm".into(),
                }),
                timeout_ms: Some(5000),
            }),
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend(frame(m).expect("frame"));
        }
        // Whole, and a byte at a time.
        assert_eq!(decode_all(&wire), (msgs.clone(), 0));
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            if let Next::Message(m) = d.decode::<ToAgent>() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn garbage_and_cut_frames_are_skipped() {
        let good = frame(&ToAgent::Ping { id: 1 }).expect("frame");
        let other = frame(&ToAgent::Ping { id: 2 }).expect("frame");
        let mut wire = b"garbage \xFC\xA9\xff\xff\xff\xff".to_vec();
        // A frame cut short by a reconnect, then a whole one.
        wire.extend_from_slice(&good[..good.len() - 1]);
        wire.extend_from_slice(&other);
        // A frame whose checksum is wrong.
        let mut bad = frame(&ToAgent::Ping { id: 3 }).expect("frame");
        let last = bad.len() - 1;
        bad[last] ^= 1;
        wire.extend_from_slice(&bad);
        wire.extend_from_slice(&good);
        let (msgs, skipped) = decode_all(&wire);
        assert_eq!(msgs, vec![ToAgent::Ping { id: 2 }, ToAgent::Ping { id: 1 }]);
        assert!(skipped > 0);
    }

    #[test]
    fn a_decoder_never_holds_more_than_a_frame() {
        let mut d = Decoder::new();
        let flood = vec![0xFCu8; Decoder::CAPACITY * 3];
        let mut rest = &flood[..];
        while !rest.is_empty() {
            let n = d.push(rest);
            rest = &rest[n..];
            assert!(matches!(d.decode::<ToAgent>(), Next::More));
            assert!(d.room() > 0 || n == 0);
        }
        // A claimed length over the cap is garbage, not a wait.
        let mut d = Decoder::new();
        d.push(&[0xFC, 0xA9, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0]);
        assert!(matches!(d.decode::<ToAgent>(), Next::More));
        assert!(d.skipped > 0);
    }

    #[test]
    fn an_unknown_message_is_skipped_whole() {
        // A newer peer's message: a variant index this side lacks.
        let payload = [200u8, 1, 2, 3];
        let mut wire = MAGIC.to_vec();
        wire.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        wire.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        wire.extend_from_slice(&payload);
        wire.extend(frame(&ToAgent::Ping { id: 9 }).expect("frame"));
        let mut d = Decoder::new();
        d.push(&wire);
        assert_eq!(d.decode::<ToAgent>(), Next::Unknown);
        assert_eq!(
            d.decode::<ToAgent>(),
            Next::Message(ToAgent::Ping { id: 9 })
        );
    }

    #[test]
    fn oversize_messages_are_refused() {
        let big = ToAgent::Data {
            id: 1,
            data: vec![0; MAX_PAYLOAD + 1],
        };
        assert!(matches!(frame(&big), Err(FrameError::TooLarge(_))));
    }
}
