"""Typed config of route policies: one model per policy type, chosen by `type` (a discriminated union).

Every policy has `name` (unique within its route; it becomes a metric label and the decision's rule) and
`shadow` (record would-be denials as `shadow_deny` and let the request through). `PolicyConfig` is the union
that `RouteConfig.policies` holds.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from balancer.config import NAME_PATTERN, Strict


class PolicyBase(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    shadow: bool = False  # evaluate and record, never block


class IpAccessPolicyConfig(PolicyBase):
    """Allow or deny by client address (CIDRs). With `allow` set, anything not in it is denied; `deny` wins
    over `allow`. The address is the TCP peer unless the listener trusts X-Forwarded-For (`trusted_proxies`)."""

    type: Literal["ip_access"]
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    # Peers whose X-Forwarded-For is believed: the client is the right-most address not in this list.
    trusted_proxies: tuple[str, ...] = ()

    @field_validator("allow", "deny", "trusted_proxies")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP address or CIDR") from None
        return v


PolicyConfig = Annotated[Union[IpAccessPolicyConfig], Field(discriminator="type")]
