"""A real (tiny) authoritative DNS server on loopback UDP for tests, built on dnspython's message API.

`DnsServer()`; `await start()` → port (127.0.0.1); `set(name, type, records, ttl)` serves records you control
and can change between queries (`records` in zone-file rdata text: "10.0.0.1", "0 5 8080 a.svc.test.");
`glue(name, ...)` adds A/AAAA records to the additional section of SRV answers for that target;
`fail(name, rcode)` answers with that RCODE (e.g. SERVFAIL); `silence(name)` never answers (a timeout);
`remove(name)` makes it NXDOMAIN. `queries` lists (name, type) of every query received.
"""

from __future__ import annotations

import asyncio

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DnsServer(asyncio.DatagramProtocol):
    def __init__(self):
        self.records: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self.glues: dict[str, list[tuple[str, int, list[str]]]] = {}
        self.failing: dict[str, int] = {}
        self.silent: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.port = self.transport.get_extra_info("sockname")[1]
        return self.port

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @staticmethod
    def _key(name: str) -> str:
        return name.lower().rstrip(".") + "."

    def set(self, name: str, rdtype: str, records: list[str], ttl: int = 30) -> None:
        self.failing.pop(self._key(name), None)
        self.silent.discard(self._key(name))
        self.records[(self._key(name), rdtype)] = (ttl, list(records))

    def glue(self, target: str, rdtype: str, records: list[str], ttl: int = 30) -> None:
        self.glues.setdefault(self._key(target), []).append((rdtype, ttl, list(records)))

    def remove(self, name: str) -> None:
        for key in [k for k in self.records if k[0] == self._key(name)]:
            del self.records[key]

    def fail(self, name: str, rcode: int = dns.rcode.SERVFAIL) -> None:
        self.failing[self._key(name)] = rcode

    def silence(self, name: str) -> None:
        self.silent.add(self._key(name))

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:  # not DNS: a real server drops it too
            return
        q = query.question[0]
        name, rdtype = q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype)
        self.queries.append((name, rdtype))
        if name in self.silent:
            return
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self.failing:
            response.set_rcode(self.failing[name])
        elif not any(k[0] == name for k in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif (name, rdtype) in self.records:  # else NODATA: NOERROR with an empty answer
            ttl, records = self.records[(name, rdtype)]
            if records:
                response.answer.append(dns.rrset.from_text_list(q.name, ttl, dns.rdataclass.IN, q.rdtype, records))
            if rdtype == "SRV":
                for rec in records:
                    target = rec.split()[-1].lower()
                    for g_type, g_ttl, g_records in self.glues.get(target, []):
                        response.additional.append(dns.rrset.from_text_list(
                            dns.name.from_text(target), g_ttl, dns.rdataclass.IN, g_type, g_records))
        self.transport.sendto(response.to_wire(), addr)
