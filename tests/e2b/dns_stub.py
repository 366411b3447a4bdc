"""A tiny DNS server for tests (Python's standard library only): answers A
127.0.0.1 for DOMAIN and every name under it, no records for other types
(NOERROR), REFUSED for names outside it. Run inside the test's network
namespace on 127.0.0.1:53, with the namespace's /etc/resolv.conf naming it,
so `api.<domain>` and `49983-<sandbox>.<domain>` resolve with no internet.

Usage: dns_stub.py DOMAIN   (prints "ready" once bound; runs until killed)
"""

import socket
import struct
import sys


def qname(msg, i):
    labels = []
    while True:
        n = msg[i]
        i += 1
        if n == 0:
            return ".".join(labels).lower(), i
        if n & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(msg[i:i + n].decode("ascii", "replace"))
        i += n


def answer(msg, domain):
    ident, flags, qd = struct.unpack(">HHH", msg[:6])
    if qd != 1:
        return None
    name, end = qname(msg, 12)
    qtype, _qclass = struct.unpack(">HH", msg[end:end + 4])
    question = msg[12:end + 4]
    rd = flags & 0x0100
    if not (name == domain or name.endswith("." + domain)):
        head = struct.pack(">HHHHHH", ident, 0x8000 | rd | 0x0400 | 5, 1, 0, 0, 0)
        return head + question
    records = b""
    count = 0
    if qtype == 1:
        # A name pointer to the question (offset 12), A, IN, TTL 5, 127.0.0.1.
        records = struct.pack(">HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton("127.0.0.1")
        count = 1
    head = struct.pack(">HHHHHH", ident, 0x8000 | rd | 0x0400 | 0x0080, 1, count, 0, 0)
    return head + question + records


def main():
    domain = sys.argv[1].lower().strip(".")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 53))
    print("ready", flush=True)
    while True:
        msg, peer = s.recvfrom(512)
        try:
            reply = answer(msg, domain)
        except (ValueError, IndexError, struct.error):
            continue
        if reply:
            s.sendto(reply, peer)


if __name__ == "__main__":
    main()
