"""Instances from DNS: address records (A, AAAA, or both) of a name with a configured port, or SRV records.

SRV (RFC 2782): each record names a target host, a port, a priority (lower is tried first) and a weight (a
relative share within its priority). A target of "." means the service is decidedly not available there (RFC 2782,
"Target") and is skipped. Targets are resolved to addresses (the response's additional section first, RFC 2782
"suggests" servers include them; otherwise A and AAAA queries), one instance per address. SRV priorities map
onto the pool's priority levels by rank (the lowest value is level 0, the next level 1, ... capped at 7), so
failover between SRV priorities is the pool's priority failover; SRV weights become instance weights (0, which
RFC 2782 reserves for "very small chance", becomes 1; above 10000 is capped).

Refresh: when the answer's TTL runs out (the smallest TTL of the records used, CNAMEs included), clamped to
[`min_refresh_s`, `max_refresh_s`]; after a failure, `min_refresh_s`. Resolution is dnspython's asyncio
resolver: it never blocks the event loop, and no cache (the TTL schedule is the cache).
"""

from __future__ import annotations

import asyncio
import logging

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from gatewatch.balancer.config import DnsDiscoveryConfig, InstanceConfig, nameserver_address
from gatewatch.balancer.discovery import Failed, Found, Publish
from gatewatch.telemetry.names import DiscoveryResult, DiscoverySource

log = logging.getLogger("gatewatch.discovery")
MAX_WEIGHT = 10_000
MAX_PRIORITY = 7


class DnsFailure(Exception):
    def __init__(self, result: DiscoveryResult, detail: str):
        super().__init__(detail)
        self.result = result
        self.detail = detail


class DnsSource:
    kind = DiscoverySource.DNS

    def __init__(self, cfg: DnsDiscoveryConfig):
        self.cfg = cfg
        self.resolver: dns.asyncresolver.Resolver | None = None
        self.what = f"dns {cfg.record} {cfg.name}"

    def _resolver(self) -> dns.asyncresolver.Resolver:
        if self.resolver is None:
            cfg = self.cfg
            if cfg.nameservers:
                r = dns.asyncresolver.Resolver(configure=False)
                r.nameservers = [dns.nameserver.Do53Nameserver(*nameserver_address(ns)) for ns in cfg.nameservers]
            else:
                r = dns.asyncresolver.Resolver()  # /etc/resolv.conf; raises when there is none
            r.cache = None
            r.timeout = cfg.timeout_s  # per nameserver try ...
            r.lifetime = cfg.timeout_s  # ... and the whole resolution
            self.resolver = r
        return self.resolver

    async def run(self, publish: Publish) -> None:
        cfg = self.cfg
        while True:
            try:
                instances, ttl = await self.resolve()
                publish(Found(instances, f"{self.what} ttl {ttl}"))
                delay = refresh_delay(ttl, cfg)
            except DnsFailure as f:
                publish(Failed(f.result, f"{self.what}: {f.detail}"))
                delay = cfg.min_refresh_s
            await asyncio.sleep(delay)

    async def resolve(self) -> tuple[tuple[InstanceConfig, ...], int]:
        """The instances and the TTL of the answer. Raises DnsFailure."""
        cfg = self.cfg
        if cfg.record == "SRV":
            return await self._srv()
        types = ("A", "AAAA") if cfg.record == "A+AAAA" else (cfg.record,)
        found = await asyncio.gather(*(self._query(cfg.name, t) for t in types), return_exceptions=True)
        addresses, ttl, failures = [], None, []
        for answer in found:
            if isinstance(answer, DnsFailure):
                failures.append(answer)
            elif isinstance(answer, BaseException):
                raise answer
            elif answer[0]:
                addresses += answer[0]
                ttl = answer[1] if ttl is None else min(ttl, answer[1])
        if not addresses:
            # Any failure beyond "no such record" wins: it says more (an empty A+AAAA answer is just empty).
            raise next((f for f in failures if f.result is not DiscoveryResult.EMPTY), None) or failures[0]
        return tuple(InstanceConfig(host=a, port=cfg.port, weight=cfg.weight) for a in sorted(set(addresses))), ttl

    async def _query(self, name: str, rdtype: str) -> tuple[list[str], int]:
        """(addresses or SRV rdata, TTL); an empty list for NODATA. Raises DnsFailure."""
        try:
            answer = await self._resolver().resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise DnsFailure(DiscoveryResult.NXDOMAIN, f"{name} does not exist (NXDOMAIN)") from None
        except dns.exception.Timeout:
            raise DnsFailure(DiscoveryResult.TIMEOUT, f"no answer within {self.cfg.timeout_s:g}s") from None
        except dns.resolver.NoNameservers as err:
            raise DnsFailure(DiscoveryResult.SERVFAIL, _servfail(err)) from None
        except dns.resolver.NoResolverConfiguration:
            raise DnsFailure(DiscoveryResult.ERROR, "no nameservers (no /etc/resolv.conf; set 'nameservers')") \
                from None
        except dns.exception.DNSException as err:
            raise DnsFailure(DiscoveryResult.ERROR, f"{type(err).__name__}: {err}") from None
        if answer.rrset is None:
            raise DnsFailure(DiscoveryResult.EMPTY, f"{name} has no {rdtype} records")
        ttl = answer.chaining_result.minimum_ttl
        if rdtype == "SRV":
            return [(r, answer.response) for r in answer.rrset], ttl
        return [r.address for r in answer.rrset], ttl

    async def _srv(self) -> tuple[tuple[InstanceConfig, ...], int]:
        records, ttl = await self._query(self.cfg.name, "SRV")
        # "." : decidedly not available there (RFC 2782); port 0 cannot be connected to
        records = [(r, resp) for r, resp in records if r.target != dns.name.root and r.port]
        if not records:
            raise DnsFailure(DiscoveryResult.EMPTY, "no usable SRV records (every target is '.')")
        glue = _glue(records[0][1])
        targets = sorted({r.target for r, _ in records} - set(glue))
        lookups = await asyncio.gather(*(self._addresses(t) for t in targets))
        for target, (addrs, t_ttl) in zip(targets, lookups):
            if addrs:
                glue[target] = (addrs, t_ttl)
        ranks = {p: min(i, MAX_PRIORITY) for i, p in enumerate(sorted({r.priority for r, _ in records}))}
        out: dict[str, InstanceConfig] = {}
        for r, _ in sorted(records, key=lambda x: (x[0].priority, str(x[0].target), x[0].port)):
            addrs, t_ttl = glue.get(r.target, ((), None))
            if t_ttl is not None:
                ttl = min(ttl, t_ttl)
            for a in sorted(set(addrs)):
                inst = InstanceConfig(host=a, port=r.port, weight=max(1, min(r.weight, MAX_WEIGHT)),
                                      priority=ranks[r.priority])
                out.setdefault(inst.instance_id, inst)
        if not out:
            raise DnsFailure(DiscoveryResult.EMPTY, "no SRV target has an address")
        return tuple(out.values()), ttl

    async def _addresses(self, target: dns.name.Name) -> tuple[list[str], int | None]:
        """A and AAAA of an SRV target; a target that does not resolve is left out (logged), not fatal."""
        name = target.to_text()
        found = await asyncio.gather(self._query(name, "A"), self._query(name, "AAAA"), return_exceptions=True)
        addrs, ttl = [], None
        for f in found:
            if isinstance(f, DnsFailure):
                continue
            if isinstance(f, BaseException):
                raise f
            addrs += f[0]
            ttl = f[1] if ttl is None else min(ttl, f[1])
        if not addrs:
            log.warning("%s: SRV target %s has no address; left out", self.what, name)
        return addrs, ttl


def refresh_delay(ttl: int, cfg: DnsDiscoveryConfig) -> float:
    """When to resolve again: when the answer expires (its TTL), within [min_refresh_s, max_refresh_s]."""
    return min(max(float(ttl), cfg.min_refresh_s), cfg.max_refresh_s)


def _glue(response: dns.message.Message) -> dict:
    """Addresses the SRV response's additional section carries (RFC 2782: servers should add them)."""
    out: dict = {}
    for rrset in response.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            addrs, ttl = out.get(rrset.name, ([], rrset.ttl))
            out[rrset.name] = (addrs + [r.address for r in rrset], min(ttl, rrset.ttl))
    return out


def _servfail(err: dns.resolver.NoNameservers) -> str:
    errors = err.kwargs.get("errors") or []
    said = sorted({str(e[3]) if len(e) > 3 and e[3] is not None else "no answer" for e in errors})
    return f"every nameserver failed ({'; '.join(said)[:200]})" if said else "every nameserver failed (SERVFAIL)"
