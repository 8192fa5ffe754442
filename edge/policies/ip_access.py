"""`ip_access`: allow/deny lists of CIDRs against the client address (with a trusted-proxy model for
X-Forwarded-For). Verdict reasons: `ip.allowed`, `ip.denied`."""

from __future__ import annotations

import ipaddress

from gatewatch.edge.policies.base import PolicyRequest, PolicyVerdict, allow, deny
from gatewatch.edge.policies.config import IpAccessPolicyConfig
from gatewatch.telemetry.names import Outcome, PolicyReason


def _nets(cidrs):
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _in(addr, nets) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def client_ip(req: PolicyRequest, trusted) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client address: the TCP peer, or — when the peer is a trusted proxy — the right-most address of
    X-Forwarded-For that is not itself a trusted proxy (the left part is client-controlled)."""
    try:
        addr = ipaddress.ip_address(req.client_address)
    except ValueError:
        return None
    if not trusted or not _in(addr, trusted):
        return addr
    xff = [h.strip() for k, v in req.head.headers if k.lower() == "x-forwarded-for" for h in v.split(",")]
    for hop in reversed(xff):
        try:
            hop_addr = ipaddress.ip_address(hop)
        except ValueError:
            return addr  # a malformed hop: stop believing the chain, judge the proxy itself
        if not _in(hop_addr, trusted):
            return hop_addr
    return addr


class IpAccessPolicy:
    type = "ip_access"

    def __init__(self, cfg: IpAccessPolicyConfig):
        self.name = cfg.name
        self.shadow = cfg.shadow
        self._allow = _nets(cfg.allow)
        self._deny = _nets(cfg.deny)
        self._trusted = _nets(cfg.trusted_proxies)

    async def evaluate(self, req: PolicyRequest) -> PolicyVerdict:
        addr = client_ip(req, self._trusted)
        if addr is None or _in(addr, self._deny) or (self._allow and not _in(addr, self._allow)):
            return deny(self, PolicyReason.IP_DENIED.value, 403, Outcome.DENIED_POLICY,
                        "your address may not use this route")
        return allow(self, PolicyReason.IP_ALLOWED.value)
