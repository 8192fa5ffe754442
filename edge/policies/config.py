"""Typed config of route policies: one model per policy type, chosen by `type` (a discriminated union).

Every policy has `name` (unique within its route; it becomes a metric label and the decision's rule) and
`shadow` (record would-be denials as `shadow_deny` and let the request through). `PolicyConfig` is the union
that `RouteConfig.policies` holds.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal, Union

from pydantic import Field, SecretStr, field_serializer, field_validator, model_validator

from gatewatch.schema import NAME_PATTERN, Strict


JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                  "ES256", "ES384", "EdDSA")


def _cidrs(v: tuple[str, ...]) -> tuple[str, ...]:
    for cidr in v:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"{cidr!r} is not an IP address or CIDR") from None
    return v


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
        return _cidrs(v)


class JwtKeyConfig(Strict):
    """One verification key. Exactly one of `secret`, `secret_file` (HMAC) or `public_key`, `public_key_file`
    (PEM: RSA, EC or Ed25519). A key belongs to one algorithm family: an HMAC secret never verifies an RS/ES
    token and a public key never verifies an HS token (no algorithm confusion)."""

    kid: str | None = None
    algorithms: tuple[str, ...] = ()  # narrow the key to these algorithms (default: all of its family)
    secret: SecretStr | None = None  # redacted wherever the config is shown (admin /config)
    secret_file: str | None = None
    public_key: str | None = None
    public_key_file: str | None = None

    @model_validator(mode="after")
    def _one_source(self):
        given = [f for f in ("secret", "secret_file", "public_key", "public_key_file") if getattr(self, f)]
        if len(given) != 1:
            raise ValueError("set exactly one of secret, secret_file, public_key, public_key_file")
        bad = [a for a in self.algorithms if a not in JWT_ALGORITHMS]
        if bad:
            raise ValueError(f"unsupported algorithm(s) {bad}; supported: {', '.join(JWT_ALGORITHMS)}")
        from gatewatch.edge.policies.jwks import static_keys

        try:
            static_keys((self,))  # load it now: a missing file or a bad PEM is a config error, not a 500
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"cannot load key: {e}") from None
        return self


class JwksConfig(Strict):
    url: str = Field(pattern=r"^https?://")
    refresh_s: float = Field(default=300.0, gt=0, le=86400)  # keys older than this are refetched (lazily)
    min_refresh_interval_s: float = Field(default=10.0, ge=0, le=3600)  # throttle for unknown-kid refreshes
    timeout_s: float = Field(default=2.0, gt=0, le=30)
    max_stale_s: float = Field(default=86400.0, gt=0)  # stale-if-error: keep serving cached keys this long


class JwtPolicyConfig(PolicyBase):
    """Verify a JWT (signature, `exp`, `nbf`, `iss`, `aud`, required claims and scopes); forward identity."""

    type: Literal["jwt"]
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    keys: tuple[JwtKeyConfig, ...] = ()
    jwks: JwksConfig | None = None
    issuer: str | tuple[str, ...]
    audience: str | tuple[str, ...]
    leeway_s: float = Field(default=30.0, ge=0, le=300)
    require_nbf: bool = False
    required_claims: dict[str, str | tuple[str, ...]] = {}  # claim → required value (or any of these)
    required_scopes: tuple[str, ...] = ()  # all must appear in `scope` (space-separated) or `scp`
    header: str = "Authorization"  # "Bearer <token>"
    cookie: str | None = None  # also look here when the header is absent
    query: str | None = None  # ... and here (discouraged: tokens end up in logs)
    max_token_bytes: int = Field(default=8192, ge=256, le=65536)
    consumer_claim: str | None = "sub"  # becomes the request's consumer (rate limits, span)
    plan_claim: str | None = None
    forward_claims: dict[str, str] = {}  # upstream header → claim; client-sent copies are always removed

    @model_validator(mode="after")
    def _keys(self):
        bad = [a for a in self.algorithms if a not in JWT_ALGORITHMS]
        if bad:
            raise ValueError(f"unsupported algorithm(s) {bad}; supported: {', '.join(JWT_ALGORITHMS)}")
        if not self.keys and self.jwks is None:
            raise ValueError("set keys, jwks, or both")
        return self


class ApiKeyEntry(Strict):
    consumer: str = Field(pattern=NAME_PATTERN)
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")  # `gatewatch apikey hash` produces it
    plan: str | None = None


class ApiKeyPolicyConfig(PolicyBase):
    """Authenticate by API key (header, or a query parameter); keys are stored as SHA-256 hashes."""

    type: Literal["api_key"]
    header: str | None = "X-API-Key"
    query: str | None = None
    keys: tuple[ApiKeyEntry, ...] = Field(min_length=1)
    consumer_header: str | None = "X-Consumer"  # set upstream; a client-sent copy is always removed
    forward_key: bool = False  # the key itself is removed from what the upstream receives unless true

    @model_validator(mode="after")
    def _source(self):
        if not self.header and not self.query:
            raise ValueError("set header, query, or both")
        return self


class RedisStoreConfig(Strict):
    url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^rediss?://")
    timeout_s: float = Field(default=0.1, gt=0, le=5)  # connect and command timeout (each)
    on_error: Literal["open", "closed"] = "open"  # store unreachable: let requests through, or refuse them
    retry_after_s: float = Field(default=1.0, ge=0, le=60)  # after a failure, skip the store this long
    key_prefix: str = "gatewatch:rl"

    @field_serializer("url")
    def _redact(self, v: str) -> str:  # never show a password (admin /config)
        scheme, sep, rest = v.partition("://")
        userinfo, at, host = rest.rpartition("@")
        return f"{scheme}{sep}<redacted>@{host}" if at else v


class RateLimitPlan(Strict):
    limit: int = Field(ge=1)
    window_s: float = Field(gt=0, le=31 * 86400)


class RateLimitPolicyConfig(PolicyBase):
    """`limit` requests per `window_s`, per key (token bucket: a burst of `limit`, refilled evenly; sliding
    window: at most `limit` in any window). `plans` override the limit for consumers on that plan (quotas)."""

    type: Literal["rate_limit"]
    algorithm: Literal["token_bucket", "sliding_window"] = "token_bucket"
    limit: int = Field(ge=1)
    window_s: float = Field(gt=0, le=31 * 86400)
    key: Literal["consumer", "client_address", "route", "header"] = "client_address"
    header: str | None = None  # with key: header
    trusted_proxies: tuple[str, ...] = ()  # with key: client_address (see ip_access)
    plans: dict[str, RateLimitPlan] = {}
    store: Literal["local", "redis"] = "local"
    redis: RedisStoreConfig | None = None
    max_keys: int = Field(default=100_000, ge=1)  # local store: least recently used keys are forgotten

    @model_validator(mode="after")
    def _consistent(self):
        if self.key == "header" and not self.header:
            raise ValueError("key: header needs `header`")
        if self.store == "redis" and self.redis is None:
            raise ValueError("store: redis needs a `redis` section")
        _cidrs(self.trusted_proxies)
        return self


class CorsPolicyConfig(PolicyBase):
    """CORS: preflights are answered by the gateway; requests from other origins are refused."""

    type: Literal["cors"]
    allow_origins: tuple[str, ...] = Field(min_length=1)  # exact origins, or "*"
    allow_methods: tuple[str, ...] = ("GET", "HEAD", "POST")
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age_s: int = Field(default=600, ge=0, le=86400)

    @model_validator(mode="after")
    def _wildcard(self):
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("allow_credentials cannot be combined with origin '*'")
        return self


class SizeLimitPolicyConfig(PolicyBase):
    """Refuse request bodies larger than `max_bytes` (declared Content-Length, or counted while streaming)."""

    type: Literal["size_limit"]
    max_bytes: int = Field(ge=0)
    # A body without Content-Length is read ahead up to this many bytes so the answer can still be a 413;
    # beyond it the body streams and an oversize upload is cut off (connection closed).
    lookahead_bytes: int = Field(default=1 << 20, ge=0, le=64 << 20)
    idle_s: float = Field(default=30.0, gt=0)  # a body stalled this long during the read-ahead: 408


class HeadersPolicyConfig(PolicyBase):
    """Edit request headers on the way upstream (`set`, `remove`, `rename`), add response headers and remove the
    upstream's (`response_remove`: names, or prefixes ending in `*`, e.g. `Server`, `X-Internal-*`)."""

    type: Literal["headers"]
    set: dict[str, str] = {}
    remove: tuple[str, ...] = ()
    rename: dict[str, str] = {}  # old name → new name (the client's value moves)
    response_add: dict[str, str] = {}
    response_remove: tuple[str, ...] = ()

    @field_validator("response_remove")
    @classmethod
    def _names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if not re.fullmatch(r"[!#$%&'+.^_`|~0-9A-Za-z-]+\*?", name):  # RFC 9110 §5.1 token, optional '*'
                raise ValueError(f"{name!r} is not a header name (or a prefix ending in '*')")
        return v


class PathRewritePolicyConfig(PolicyBase):
    """Rewrite the upstream path with a regular expression (`re.sub`, first match; `\\1` groups). The route's
    `rewrite.strip_prefix` applies after it."""

    type: Literal["path_rewrite"]
    regex: str
    replacement: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"invalid regular expression: {e}") from None
        return v


class JsonSchemaPolicyConfig(PolicyBase):
    """Buffer the body (at most `max_bytes`) and validate it as JSON against a JSON Schema."""

    type: Literal["json_schema"]
    schema_: dict | None = Field(default=None, alias="schema")
    schema_file: str | None = None
    max_bytes: int = Field(default=1 << 20, ge=1, le=64 << 20)
    methods: tuple[str, ...] = ("POST", "PUT", "PATCH")  # other methods pass unchecked
    idle_s: float = Field(default=10.0, gt=0)  # a body stalled this long: 408 client_timeout

    @model_validator(mode="after")
    def _schema(self):
        if (self.schema_ is None) == (self.schema_file is None):
            raise ValueError("set exactly one of schema, schema_file")
        from jsonschema.exceptions import SchemaError

        from gatewatch.edge.policies.schema import load_schema

        try:
            load_schema(self)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read schema: {e}") from None
        except SchemaError as e:
            raise ValueError(f"invalid JSON Schema: {e.message}") from None
        return self


class CircuitBreakerPolicyConfig(PolicyBase):
    """Per route: after `failures` consecutive upstream failures the circuit opens for `open_s` (503 without
    contacting the upstream), then lets `half_open_probes` requests through; a success closes it."""

    type: Literal["circuit_breaker"]
    failures: int = Field(default=5, ge=1)
    open_s: float = Field(default=30.0, gt=0)
    half_open_probes: int = Field(default=1, ge=1)
    failure_statuses: tuple[int, ...] = (500, 502, 503, 504)


PolicyConfig = Annotated[Union[IpAccessPolicyConfig, JwtPolicyConfig, ApiKeyPolicyConfig, RateLimitPolicyConfig,
                               CorsPolicyConfig, SizeLimitPolicyConfig, HeadersPolicyConfig,
                               PathRewritePolicyConfig, JsonSchemaPolicyConfig, CircuitBreakerPolicyConfig],
                         Field(discriminator="type")]
