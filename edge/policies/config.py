"""Typed config of route policies: one model per policy type, chosen by `type` (a discriminated union).

Every policy has `name` (unique within its route; it becomes a metric label and the decision's rule) and
`shadow` (record would-be denials as `shadow_deny` and let the request through). `PolicyConfig` is the union
that `RouteConfig.policies` holds.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, SecretStr, ValidationInfo, field_serializer, field_validator, model_validator

from gatewatch.balancer.config import UpstreamTLSConfig
from gatewatch.schema import NAME_PATTERN, Strict, url_without_userinfo


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
    """Where a jwt policy's key set comes from and how it is kept fresh. Without `url`, the key set is the one
    the issuer's OpenID Connect discovery document names (`jwks_uri`)."""

    url: str | None = Field(default=None, pattern=r"^https?://")
    refresh_s: float = Field(default=300.0, gt=0, le=86400)  # keys (and discovery) older than this are refetched
    min_refresh_interval_s: float = Field(default=10.0, ge=0, le=3600)  # throttle for unknown-kid refreshes
    timeout_s: float = Field(default=2.0, gt=0, le=30)
    max_stale_s: float = Field(default=86400.0, gt=0)  # stale-if-error: keep serving cached keys this long
    retry_after_s: float = Field(default=1.0, gt=0, le=3600)  # first wait after a failed fetch, doubling ...
    retry_max_s: float = Field(default=300.0, gt=0, le=86400)  # ... up to this (jittered: half to full)

    @field_validator("retry_max_s")
    @classmethod
    def _backoff(cls, v: float, info: ValidationInfo) -> float:
        return _at_least(v, info, "retry_after_s")


def _at_least(v: float, info: ValidationInfo, other: str) -> float:
    if other in info.data and v < info.data[other]:
        raise ValueError(f"must be at least {other} ({info.data[other]})")
    return v


def _scope_tokens(v: tuple[str, ...]) -> tuple[str, ...]:
    for scope in v:
        if not _SCOPE_TOKEN.fullmatch(scope):  # RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
            raise ValueError(f"{scope!r} is not a scope token (RFC 6749 §3.3: no spaces, quotes or backslashes)")
    return v


_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")


class BearerTokenConfig(PolicyBase):
    """What `jwt` and `introspection` share: where the bearer token is read, the scopes and claims it must carry
    (checked by one function, `claims.shortfall`), and the identity it gives the request."""

    required_claims: dict[str, str | tuple[str, ...]] = {}  # claim → required value (or any of these)
    required_scopes: tuple[str, ...] = ()  # all must appear in `scope` (space-separated) or `scp`
    header: str = "Authorization"  # "Bearer <token>"
    cookie: str | None = None  # also look here when the header is absent
    query: str | None = None  # ... and here (discouraged: tokens end up in logs)
    max_token_bytes: int = Field(default=8192, ge=256, le=65536)
    consumer_claim: str | None = "sub"  # becomes the request's consumer (rate limits, span)
    plan_claim: str | None = None
    forward_claims: dict[str, str] = {}  # upstream header → claim; client-sent copies are always removed

    @field_validator("required_scopes")
    @classmethod
    def _scopes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _scope_tokens(v)


def _tls_for(v, urls: list[str]):
    """`tls` configures what the policy fetches over https; on anything else it would be ignored."""
    if v is not None and not any(u.startswith("https://") for u in urls):
        raise ValueError("applies to https:// endpoints only, and this policy fetches none")
    return v


class JwtPolicyConfig(BearerTokenConfig):
    """Verify a JWT (signature, `exp`, `nbf`, `iss`, `aud`, required claims and scopes); forward identity.

    Keys: `keys` (in config), `jwks.url` (a key set), or OpenID Connect discovery of `issuer` — used when
    `jwks` has no `url`, or when neither `keys` nor `jwks` is set."""

    type: Literal["jwt"]
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    keys: tuple[JwtKeyConfig, ...] = ()
    jwks: JwksConfig | None = None
    issuer: str | tuple[str, ...]
    audience: str | tuple[str, ...]
    leeway_s: float = Field(default=30.0, ge=0, le=300)
    require_nbf: bool = False
    tls: UpstreamTLSConfig | None = None  # for the discovery and JWKS fetches: a private CA, SNI, mTLS

    @property
    def discovers(self) -> bool:
        return (self.jwks is None and not self.keys) or (self.jwks is not None and self.jwks.url is None)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v, info: ValidationInfo):
        d = info.data
        if "keys" not in d or "jwks" not in d:
            return v  # reported on their own
        if (d["jwks"] is None and not d["keys"]) or (d["jwks"] is not None and d["jwks"].url is None):
            if not isinstance(v, str):
                raise ValueError("OIDC discovery (no keys, no jwks.url) needs exactly one issuer")
            if not _ISSUER.fullmatch(v):  # OpenID Connect Core §2: scheme, host, port, path; no query, fragment
                raise ValueError("an OIDC issuer is an http(s) URL without query or fragment (OpenID Connect "
                                 "Core 1.0 §2), e.g. https://login.example.com/realms/acme")
        return v

    @field_validator("tls")
    @classmethod
    def _tls(cls, v, info: ValidationInfo):
        d = info.data
        jwks = d.get("jwks")
        urls = [jwks.url] if jwks is not None and jwks.url else []
        if ((jwks is None and not d.get("keys")) or (jwks is not None and jwks.url is None)) \
                and isinstance(d.get("issuer"), str):
            urls.append(d["issuer"])
        return _tls_for(v, urls)

    @model_validator(mode="after")
    def _keys(self):
        bad = [a for a in self.algorithms if a not in JWT_ALGORITHMS]
        if bad:
            raise ValueError(f"unsupported algorithm(s) {bad}; supported: {', '.join(JWT_ALGORITHMS)}")
        return self


_ISSUER = re.compile(r"https?://[^/?#\s]+(/[^?#\s]*)?")


class IntrospectionCacheConfig(Strict):
    max_entries: int = Field(default=10_000, ge=0, le=1_000_000)  # least recently used answers go; 0: no cache
    max_ttl_s: float = Field(default=60.0, ge=0, le=86400)  # an active answer is reused this long, never past `exp`
    negative_ttl_s: float = Field(default=5.0, ge=0, le=3600)  # an inactive answer is reused this long


class IntrospectionPolicyConfig(BearerTokenConfig):
    """Opaque bearer tokens, judged by the authorization server's introspection endpoint (RFC 7662): active →
    the required scopes and claims are checked and the identity forwarded; inactive → 401. Answers are cached
    (bounded). An endpoint that is down, slow or answers garbage → `fail_mode`."""

    type: Literal["introspection"]
    endpoint: str = Field(pattern=r"^https?://[^\s]+$")
    client_id: str = Field(min_length=1, max_length=256)  # client_secret_basic (RFC 6749 §2.3.1)
    client_secret: SecretStr | None = None  # redacted wherever the config is shown (admin /config)
    client_secret_file: str | None = Field(default=None, validate_default=True)
    token_type_hint: str | None = "access_token"  # RFC 7662 §2.1; null: not sent
    timeout_s: float = Field(default=1.0, gt=0, le=30)  # the whole call: connect, TLS, answer
    fail_mode: Literal["closed", "open"] = "closed"  # endpoint unavailable: refuse (503), or let through
    retry_after_s: float = Field(default=1.0, gt=0, le=600)  # after a failure, answer by fail_mode this long ...
    retry_max_s: float = Field(default=30.0, gt=0, le=3600)  # ... doubling per failure up to this (jittered)
    cache: IntrospectionCacheConfig = Field(default_factory=IntrospectionCacheConfig)
    tls: UpstreamTLSConfig | None = None  # for the endpoint: a private CA, SNI, mTLS

    @field_validator("client_secret_file")
    @classmethod
    def _one_secret(cls, v, info: ValidationInfo):
        if "client_secret" not in info.data:
            return v
        if (info.data["client_secret"] is None) == (v is None):
            raise ValueError("set exactly one of client_secret, client_secret_file")
        if v is not None:
            try:
                if not Path(v).read_text().strip():
                    raise ValueError(f"{v!r} is empty")
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"cannot read {v!r}: {e}") from None
        return v

    @field_validator("retry_max_s")
    @classmethod
    def _backoff(cls, v: float, info: ValidationInfo) -> float:
        return _at_least(v, info, "retry_after_s")

    @field_validator("tls")
    @classmethod
    def _tls(cls, v, info: ValidationInfo):
        return _tls_for(v, [info.data["endpoint"]] if "endpoint" in info.data else ["https://"])

    def secret(self) -> str:
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        return Path(self.client_secret_file).read_text().strip()


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


class ClientCertAllowEntry(Strict):
    """One way a verified client certificate may match: exactly one of the three."""

    subject: str | None = Field(default=None, min_length=1)  # RFC 4514, exactly as tls.client.subject shows it
    san: str | None = Field(default=None, pattern=r"^(DNS|URI|email|IP):.+$")  # `*` within one label/segment
    fingerprint: str | None = Field(default=None, pattern=r"^[0-9A-Fa-f:]{64,95}$")  # SHA-256 of the DER, hex

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("subject", "san", "fingerprint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of subject, san, fingerprint (got {', '.join(given) or 'none'})")
        if self.fingerprint is not None and len(self.fingerprint.replace(":", "")) != 64:
            raise ValueError("fingerprint: a SHA-256 is 64 hex digits (colons allowed between bytes)")
        return self


class ClientCertPolicyConfig(PolicyBase):
    """Authorise by the client certificate the TLS listener verified (`client_auth: optional | required`)."""

    type: Literal["client_cert"]
    allow: tuple[ClientCertAllowEntry, ...] = ()  # empty: any verified certificate
    consumer: Literal["cn", "subject", "san", "fingerprint"] = "cn"  # what names the consumer
    consumer_header: str | None = "X-Consumer"  # set upstream; a client-sent copy is always removed


class RedisStoreConfig(Strict):
    url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^rediss?://")
    timeout_s: float = Field(default=0.1, gt=0, le=5)  # connect and command timeout (each)
    on_error: Literal["open", "closed"] = "open"  # store unreachable: let requests through, or refuse them
    retry_after_s: float = Field(default=1.0, ge=0, le=60)  # after a failure, skip the store this long
    key_prefix: str = "gatewatch:rl"

    @field_serializer("url")
    def _redact(self, v: str) -> str:  # never show a password (admin /config)
        return url_without_userinfo(v)


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


_JSON_PATH = re.compile(r"[^.\s]+(\.[^.\s]+)*")  # dotted keys: non-empty, no spaces


class JsonEditsConfig(Strict):
    """One direction's JSON edits, applied in this order: `remove`, `rename` (source → target), `add` (path →
    value, created or replaced). Paths are dotted keys into objects (`user.name`)."""

    remove: tuple[str, ...] = ()
    rename: dict[str, str] = {}
    add: dict[str, Any] = {}

    @model_validator(mode="after")
    def _paths(self):
        paths = [("remove", p) for p in self.remove] + [("rename", p) for kv in self.rename.items() for p in kv] \
            + [("add", p) for p in self.add]
        for where, p in paths:
            if not _JSON_PATH.fullmatch(p):
                raise ValueError(f"{where}: {p!r} is not a dotted path of keys (e.g. 'user.name')")
        for src, dst in self.rename.items():
            if dst == src or dst.startswith(src + "."):
                raise ValueError(f"rename: {src!r} cannot move into itself ({dst!r})")
        if not paths:
            raise ValueError("give at least one of remove, rename, add")
        if len(paths) > 256:
            raise ValueError(f"at most 256 edits, got {len(paths)}")
        for path, value in self.add.items():
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise ValueError(f"add: the value of {path!r} is not JSON (a YAML date or timestamp? quote it)") \
                    from None
        return self


class JsonTransformPolicyConfig(PolicyBase):
    """Edit JSON bodies: the request's before it goes upstream, the response's before the client gets it
    (buffered only when `response` is set). Bodies over `max_bytes`: a request is refused 413, a response is
    relayed unchanged."""

    type: Literal["json_transform"]
    request: JsonEditsConfig | None = None
    response: JsonEditsConfig | None = None
    max_bytes: int = Field(default=1 << 20, ge=1, le=64 << 20)
    idle_s: float = Field(default=10.0, gt=0)  # a request body stalled this long: 408 client_timeout

    @model_validator(mode="after")
    def _something(self):
        if self.request is None and self.response is None:
            raise ValueError("give request, response or both")
        return self


PolicyConfig = Annotated[Union[IpAccessPolicyConfig, JwtPolicyConfig, ApiKeyPolicyConfig, RateLimitPolicyConfig,
                               CorsPolicyConfig, SizeLimitPolicyConfig, HeadersPolicyConfig,
                               PathRewritePolicyConfig, JsonSchemaPolicyConfig, CircuitBreakerPolicyConfig,
                               IntrospectionPolicyConfig, ClientCertPolicyConfig, JsonTransformPolicyConfig],
                         Field(discriminator="type")]
