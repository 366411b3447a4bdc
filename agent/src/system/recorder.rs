//! A [`System`] that does nothing to the machine and records what it was
//! asked, for tests (the agent's tests run on the host, as root).

use super::System;
use crate::error::OpError;
use crate::lock;
use fcm_proto::Identity;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// One thing a [`Recorder`] was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    SetClock(i64, u32),
    Reseed(Vec<u8>),
    Sync,
    Freeze,
    Thaw,
    Shutdown,
    SetIdentity(Identity),
}

/// Records calls; freezes like a kernel would answer (EBUSY when frozen,
/// EINVAL to thaw what is not), or refuses freezing as a file system
/// without it does (EOPNOTSUPP) when told to.
#[derive(Debug, Default)]
pub struct Recorder {
    calls: Mutex<Vec<Call>>,
    frozen: AtomicBool,
    /// Freezing fails with EOPNOTSUPP.
    pub no_freeze: AtomicBool,
}

impl Recorder {
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    fn record(&self, call: Call) {
        lock(&self.calls).push(call);
    }
}

impl System for Recorder {
    fn set_clock(&self, unix_secs: i64, nanos: u32) -> io::Result<(i64, u32)> {
        self.record(Call::SetClock(unix_secs, nanos));
        Ok((unix_secs, nanos))
    }

    fn reseed(&self, entropy: &[u8]) -> io::Result<()> {
        self.record(Call::Reseed(entropy.to_vec()));
        Ok(())
    }

    fn sync(&self) {
        self.record(Call::Sync);
    }

    fn freeze(&self) -> io::Result<()> {
        self.record(Call::Freeze);
        if self.no_freeze.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        if self.frozen.swap(true, Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        Ok(())
    }

    fn thaw(&self) -> io::Result<()> {
        self.record(Call::Thaw);
        if !self.frozen.swap(false, Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }

    fn shutdown(&self) -> io::Result<()> {
        self.record(Call::Shutdown);
        Ok(())
    }

    fn set_identity(&self, identity: &Identity) -> Result<(), OpError> {
        self.record(Call::SetIdentity(identity.clone()));
        Ok(())
    }

    fn uptime_ms(&self) -> u64 {
        super::linux::boot_ms()
    }
}
