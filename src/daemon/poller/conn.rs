//! One connection as the poller holds it: a non-blocking socket, TLS when
//! the port speaks it (rustls driven by hand: `read_tls`,
//! `process_new_packets`, `write_tls`, each returning at once), the bytes
//! the client has sent so far, and what is left to say.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

use super::super::gate::Slot;

/// The TLS record type of a handshake: what a TLS client sends first.
const TLS_HANDSHAKE: u8 = 0x16;
/// At most this much of a refused client's input is read (and dropped)
/// after the answer, so that closing does not reset the connection.
const DRAIN_MAX: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// On a TLS port, before the first byte: TLS or a plain client?
    Sniff,
    /// The TLS handshake is under way.
    Handshake,
    /// Reading the request (an HTTP head, a terminal handshake line).
    Open,
    /// Kept alive after an answer, waiting for the next request.
    Idle,
    /// Saying the last words (`flushed`: said, the write side shut; now
    /// reading what the client still sends, up to [`DRAIN_MAX`]).
    Answering { flushed: bool },
}

/// What a read found.
#[derive(Debug, Default)]
pub struct Filled {
    /// New bytes were added to the input.
    pub more: bool,
}

pub struct Conn {
    pub sock: TcpStream,
    pub tls: Option<ServerConnection>,
    pub phase: Phase,
    /// What the client sent (plaintext under TLS).
    pub input: Vec<u8>,
    /// The client closed its side (or said close_notify).
    pub eof: bool,
    /// Plain bytes still to send.
    output: Vec<u8>,
    drained: usize,
    /// The interest registered with the poller (readable, writable).
    pub interest: (bool, bool),
    /// A kept-alive connection's slot (released when it moves on).
    pub kept: Option<Slot>,
}

/// A connection handed over (to a thread) or back (to the poller): the
/// socket, its TLS state, and what the client sent that nobody read yet.
pub struct Opened {
    pub sock: TcpStream,
    pub tls: Option<ServerConnection>,
    pub input: Vec<u8>,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Conn {
    pub fn new(sock: TcpStream, phase: Phase) -> Self {
        Self {
            sock,
            tls: None,
            phase,
            input: Vec::new(),
            eof: false,
            output: Vec::new(),
            drained: 0,
            interest: (true, false),
            kept: None,
        }
    }

    pub fn from_opened(o: Opened, phase: Phase) -> Self {
        let mut c = Self::new(o.sock, phase);
        c.tls = o.tls;
        c.input = o.input;
        c
    }

    /// The socket back in blocking mode, without timeouts, for a thread.
    pub fn into_opened(self) -> io::Result<Opened> {
        self.sock.set_nonblocking(false)?;
        // A kept-alive connection's earlier request may have set them.
        self.sock.set_read_timeout(None)?;
        self.sock.set_write_timeout(None)?;
        Ok(Opened {
            sock: self.sock,
            tls: self.tls,
            input: self.input,
        })
    }

    /// On a TLS port: the first byte, without taking it. `Ok(None)`: not
    /// here yet; `Ok(Some(true))`: a TLS handshake (a `ServerConnection`
    /// is made); `Ok(Some(false))`: a plain client. EOF is an error.
    pub fn sniff(&mut self, cfg: &Arc<ServerConfig>) -> io::Result<Option<bool>> {
        let mut b = [0u8; 1];
        match self.sock.peek(&mut b) {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) if b[0] == TLS_HANDSHAKE => {
                let tls = ServerConnection::new(Arc::clone(cfg)).map_err(io::Error::other)?;
                self.tls = Some(tls);
                self.phase = Phase::Handshake;
                Ok(Some(true))
            }
            Ok(_) => Ok(Some(false)),
            Err(e) if would_block(&e) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the TLS handshake is still under way.
    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Reads what is there without waiting, until the socket would block
    /// or the input holds more than `max` bytes; under TLS, also sends what
    /// the handshake has to say. An `Err` ends the connection.
    pub fn fill(&mut self, max: usize) -> io::Result<Filled> {
        let before = self.input.len();
        let mut buf = [0u8; 8192];
        match &mut self.tls {
            None => {
                while !self.eof && self.input.len() <= max {
                    match (&self.sock).read(&mut buf) {
                        Ok(0) => self.eof = true,
                        Ok(n) => self.input.extend_from_slice(&buf[..n]),
                        Err(e) if would_block(&e) => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Some(tls) => {
                let mut sock_eof = false;
                loop {
                    // What rustls has decrypted (a kept-alive connection may
                    // come back with some), then more from the socket.
                    if let Err(e) = tls.process_new_packets() {
                        // rustls has queued an alert: try to say it.
                        let _ = tls.write_tls(&mut &self.sock);
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    loop {
                        if self.input.len() > max {
                            break;
                        }
                        match tls.reader().read(&mut buf) {
                            Ok(0) => {
                                self.eof = true;
                                break;
                            }
                            Ok(n) => self.input.extend_from_slice(&buf[..n]),
                            Err(e) if would_block(&e) => break,
                            // Closed without close_notify.
                            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                                self.eof = true;
                                break;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    if self.eof || sock_eof || self.input.len() > max {
                        break;
                    }
                    match tls.read_tls(&mut &self.sock) {
                        Ok(0) => sock_eof = true,
                        Ok(_) => {}
                        Err(e) if would_block(&e) => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                if sock_eof {
                    self.eof = true;
                }
                self.flush()?;
            }
        }
        Ok(Filled {
            more: self.input.len() > before,
        })
    }

    /// Sends what is waiting, without blocking. `Ok(true)`: all of it is out.
    pub fn flush(&mut self) -> io::Result<bool> {
        match &mut self.tls {
            Some(tls) => {
                while tls.wants_write() {
                    match tls.write_tls(&mut &self.sock) {
                        Ok(_) => {}
                        Err(e) if would_block(&e) => return Ok(false),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            None => {
                while !self.output.is_empty() {
                    match (&self.sock).write(&self.output) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            self.output.drain(..n);
                        }
                        Err(e) if would_block(&e) => return Ok(false),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(true)
    }

    /// Whether bytes wait to be sent.
    pub fn wants_write(&self) -> bool {
        match &self.tls {
            Some(t) => t.wants_write(),
            None => !self.output.is_empty(),
        }
    }

    /// Queues the last words (under TLS, encrypted, then close_notify;
    /// nothing can be said before the handshake is done) and moves to
    /// [`Phase::Answering`].
    pub fn answer(&mut self, bytes: &[u8]) {
        match &mut self.tls {
            Some(t) if !t.is_handshaking() => {
                let _ = t.writer().write_all(bytes);
                t.send_close_notify();
            }
            Some(_) => {}
            None => self.output.extend_from_slice(bytes),
        }
        self.phase = Phase::Answering { flushed: false };
    }

    /// One step of [`Phase::Answering`]: send the answer, shut the write
    /// side, then read and drop what the client still sends. `Ok(true)`:
    /// finished, close it.
    pub fn answering(&mut self) -> io::Result<bool> {
        if self.phase == (Phase::Answering { flushed: false }) {
            if !self.flush()? {
                return Ok(false);
            }
            let _ = self.sock.shutdown(Shutdown::Write);
            self.phase = Phase::Answering { flushed: true };
        }
        let mut sink = [0u8; 8192];
        while self.drained < DRAIN_MAX {
            match (&self.sock).read(&mut sink) {
                Ok(0) => return Ok(true),
                Ok(n) => self.drained += n,
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Says `bytes` if the socket takes them at once (one try), then the
    /// connection is dropped: for a connection pushed out.
    pub fn farewell(mut self, bytes: &[u8]) {
        if self.phase == Phase::Open {
            self.answer(bytes);
            let _ = self.flush();
        }
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    /// The interest this connection needs now: (readable, writable).
    pub fn wanted(&self) -> (bool, bool) {
        match self.phase {
            Phase::Answering { flushed: false } => (false, true),
            Phase::Answering { flushed: true } => (true, false),
            _ => (true, self.wants_write()),
        }
    }
}
