"""The HAProxy PROXY protocol header a TCP pass-through listener sends to an instance before the client's bytes
(https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt), so that the instance learns the client's address.

Primitives: `header(version, client, local) -> bytes` with `client`/`local` the (address, port) of the client
and of the listener socket it connected to (the spec's source and destination).
- v1 (§2.1): one text line, `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`, at most 107 bytes;
  `PROXY UNKNOWN\\r\\n` when the two ends are not both IPv4 or both IPv6.
- v2 (§2.2): the 12-byte signature, version 2 + command PROXY (0x21), the family and transport (0x11 TCP over
  IPv4, 0x21 TCP over IPv6), the address block's length (network order: 12 for IPv4, 36 for IPv6), then source
  address, destination address, source port, destination port. When the families differ: command LOCAL (0x20)
  with family UNSPEC and no address block, which the receiver must accept and use the real connection's
  addresses for (§2.2, "the receiver must accept this connection as valid and must use the real connection
  endpoints").
"""

from __future__ import annotations

import ipaddress
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # §2.2: \x0D \x0A \x0D \x0A \x00 \x0D \x0A \x51 \x55 \x49 \x54 \x0A
V2_PROXY, V2_LOCAL = 0x21, 0x20  # version 2 (high nibble) | command PROXY (1) or LOCAL (0)
V2_TCP4, V2_TCP6, V2_UNSPEC = 0x11, 0x21, 0x00  # address family (high nibble) | transport STREAM (1)
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a scoped IPv6 address (fe80::1%eth0) loses its zone
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket's IPv4 client (::ffff:192.0.2.1) is an IPv4 client
    return ip


def header(version: str, client: tuple[str, int], local: tuple[str, int]) -> bytes:
    """The header for `version` ("v1" or "v2") of a connection from `client` to `local`."""
    src, dst = _ip(client[0]), _ip(local[0])
    same = src is not None and dst is not None and src.version == dst.version
    if version == "v1":
        if not same:
            return V1_UNKNOWN
        family = "TCP4" if src.version == 4 else "TCP6"
        # §2.1: addresses in their usual text form (IPv6 compressed), ports in decimal, single spaces, CRLF
        return f"PROXY {family} {src} {dst} {client[1]} {local[1]}\r\n".encode("ascii")
    if version != "v2":
        raise ValueError(f"unknown PROXY protocol version {version!r}")
    if not same:
        return V2_SIGNATURE + struct.pack("!BBH", V2_LOCAL, V2_UNSPEC, 0)
    block = src.packed + dst.packed + struct.pack("!HH", client[1], local[1])
    return V2_SIGNATURE + struct.pack("!BBH", V2_PROXY, V2_TCP4 if src.version == 4 else V2_TCP6, len(block)) + block
