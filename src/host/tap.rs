//! Tap devices in process: made persistent with the TUN ioctls and put on
//! the bridge with rtnetlink, instead of four `ip` processes (about 1.5 ms
//! each) on every create, start and resume. Names are `tap_<id>` and the
//! bridge's, both checked by their callers.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// `struct ifreq` as the TUN ioctls read it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    pad: [u8; 22],
}

fn ifreq(name: &str, flags: libc::c_int) -> io::Result<IfReq> {
    if name.is_empty() || name.len() > 15 || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name"),
        ));
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: flags as libc::c_short,
        pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    Ok(req)
}

/// Opens `/dev/net/tun` attached to the tap `name` (made if missing).
fn attach(name: &str, flags: libc::c_int) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = ifreq(name, flags)?;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is
    // (name, flags, padding to its 40 bytes), on a descriptor we own.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// A descriptor on the existing tap `name`, as a VMM wants it (no packet
/// information, virtio-net headers).
///
/// EBUSY (the tap is still attached) is waited out, up to [`BUSY_WAIT`]:
/// the descriptor that made the tap a moment ago on this thread may live on
/// in a child another thread of the daemon forked meanwhile, until that
/// child execs (close-on-exec) — a few milliseconds.
pub fn open(name: &str) -> io::Result<File> {
    let deadline = std::time::Instant::now() + BUSY_WAIT;
    loop {
        match attach(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) {
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// How long [`open`] waits for a tap another process still holds.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Makes the persistent tap `name` (as `ip tuntap add … mode tap [user U
/// group G]` does), owned by `owner` when given (a VMM that opens it by
/// name as that user).
pub fn create(name: &str, owner: Option<(u32, u32)>) -> io::Result<()> {
    let file = attach(name, libc::IFF_TAP | libc::IFF_NO_PI)?;
    let fd = file.as_raw_fd();
    let set = |request, value: libc::c_ulong| {
        // SAFETY: these TUN ioctls take their argument by value.
        match unsafe { libc::ioctl(fd, request, value) } {
            -1 => Err(io::Error::last_os_error()),
            _ => Ok(()),
        }
    };
    if let Some((uid, gid)) = owner {
        set(libc::TUNSETOWNER, libc::c_ulong::from(uid))?;
        set(libc::TUNSETGROUP, libc::c_ulong::from(gid))?;
    }
    set(libc::TUNSETPERSIST, 1)
}

// rtnetlink, from linux/netlink.h, linux/rtnetlink.h and linux/if_link.h.
const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_SLAVE_KIND: u16 = 4;
const IFLA_INFO_SLAVE_DATA: u16 = 5;
const IFLA_BRPORT_ISOLATED: u16 = 33;
const NLA_F_NESTED: u16 = 0x8000;

/// What one `RTM_NEWLINK` on an existing link changes.
enum Change {
    /// Enslave to the bridge with this index (`ip link set X master B`).
    Master(u32),
    /// Bridge port isolation (`ip link set dev X type bridge_slave isolated on|off`).
    Isolated(bool),
    /// Administratively up (`ip link set X up`).
    Up,
}

/// The interface index of `name` in the calling thread's network
/// namespace (`if_nametoindex`; sysfs may show another namespace's).
pub fn index(name: &str) -> io::Result<u32> {
    ifreq(name, 0)?;
    let c =
        std::ffi::CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// One `RTM_NEWLINK` request for link `index`.
fn message(index: u32, change: &Change, seq: u32) -> Vec<u8> {
    let (flags, mask) = match change {
        Change::Up => (libc::IFF_UP as u32, libc::IFF_UP as u32),
        _ => (0, 0),
    };
    let mut m = vec![0u8; 16]; // nlmsghdr, filled in below
    // ifinfomsg: family, pad, type, index, flags, change
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    m.extend_from_slice(&(index as i32).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&mask.to_ne_bytes());
    match change {
        Change::Master(bridge) => attr(&mut m, IFLA_MASTER, &bridge.to_ne_bytes()),
        Change::Isolated(on) => {
            let mut data = Vec::new();
            attr(&mut data, IFLA_BRPORT_ISOLATED, &[u8::from(*on)]);
            let mut info = Vec::new();
            attr(&mut info, IFLA_INFO_SLAVE_KIND, b"bridge\0");
            attr(&mut info, IFLA_INFO_SLAVE_DATA | NLA_F_NESTED, &data);
            attr(&mut m, IFLA_LINKINFO | NLA_F_NESTED, &info);
        }
        Change::Up => {}
    }
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// The kernel's answer to request `seq`: `Ok` for an acknowledgement,
/// the errno it reports otherwise; `None` if `reply` is about another one.
fn ack(reply: &[u8], seq: u32) -> Option<io::Result<()>> {
    let word = |at: usize| -> Option<[u8; 4]> { reply.get(at..at + 4)?.try_into().ok() };
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if u32::from_ne_bytes(word(8)?) != seq {
        return None;
    }
    if kind != NLMSG_ERROR {
        return Some(Err(io::Error::other(format!(
            "unexpected netlink message type {kind}"
        ))));
    }
    match i32::from_ne_bytes(word(16)?) {
        0 => Some(Ok(())),
        e => Some(Err(io::Error::from_raw_os_error(-e))),
    }
}

/// A route netlink socket for a few link changes, each acknowledged.
pub struct Links {
    fd: OwnedFd,
    seq: u32,
}

impl Links {
    pub fn open() -> io::Result<Self> {
        use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
        // Protocol 0 of the netlink family is NETLINK_ROUTE.
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None,
        )?;
        sockopt::set_socket_timeout(
            &fd,
            sockopt::Timeout::Recv,
            Some(std::time::Duration::from_secs(5)),
        )?;
        Ok(Self { fd, seq: 0 })
    }

    fn change(&mut self, index: u32, change: Change) -> io::Result<()> {
        self.seq += 1;
        let msg = message(index, &change, self.seq);
        rustix::net::send(self.fd.as_fd(), &msg, rustix::net::SendFlags::empty())?;
        let mut buf = [0u8; 4096];
        loop {
            let (n, _) =
                rustix::net::recv(self.fd.as_fd(), &mut buf, rustix::net::RecvFlags::empty())?;
            if let Some(result) = ack(&buf[..n], self.seq) {
                return result;
            }
        }
    }

    pub fn set_master(&mut self, index: u32, bridge: u32) -> io::Result<()> {
        self.change(index, Change::Master(bridge))
    }

    pub fn set_isolated(&mut self, index: u32, on: bool) -> io::Result<()> {
        self.change(index, Change::Isolated(on))
    }

    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        self.change(index, Change::Up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_what_ip_sends() {
        let m = message(7, &Change::Isolated(true), 3);
        assert_eq!(m.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().expect("len")) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWLINK);
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().expect("index")), 7);
        // IFLA_LINKINFO { SLAVE_KIND "bridge", SLAVE_DATA { ISOLATED 1 } }
        assert_eq!(
            u16::from_ne_bytes([m[34], m[35]]),
            IFLA_LINKINFO | NLA_F_NESTED
        );
        assert!(m.windows(7).any(|w| w == b"bridge\0"));
        assert_eq!(m[m.len() - 4], 1, "isolated flag");
        let up = message(7, &Change::Up, 4);
        assert_eq!(up.len(), 32);
        assert_eq!(u32::from_ne_bytes(up[24..28].try_into().expect("flags")), 1);
    }

    #[test]
    fn acks_carry_the_kernels_errno() {
        let mut reply = vec![0u8; 36];
        reply[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        reply[8..12].copy_from_slice(&5u32.to_ne_bytes());
        assert!(matches!(ack(&reply, 5), Some(Ok(()))));
        assert!(ack(&reply, 6).is_none());
        reply[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        let e = ack(&reply, 5).expect("ours").expect_err("an error");
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        assert!(index("bad/name").is_err());
    }
}
