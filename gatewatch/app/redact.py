"""The effective configuration as JSON with every secret value replaced by `<redacted>` (admin `/config`).

One generic walk over the config *models* beside their JSON dump, so the rule follows the schema and a new
policy type is covered without touching this module when it types or names its secrets as the others do:
- a `SecretStr` field (JWT HMAC `secret`, introspection `client_secret`, ...);
- a string field whose name says it is a secret (`secret`, `password`, `token`, `client_secret`, `api_key`,
  `private_key`, `credentials`; `*_file` / `*_env` fields are references and stay visible);
- the fields listed in `SECRET_FIELDS` (API key hashes, OTLP exporter header values);
- in any mapping of header names (`headers`, a headers policy's `set`, ...), the value of a credential header
  (Authorization, Cookie, X-API-Key, anything naming a token, secret, key, password or session);
- a header condition (`name` + `value`) on such a header;
- any string that is a URL with credentials (`redis://:pass@host`): the userinfo goes, the rest stays.
Paths to key and certificate files are shown; the contents of those files never appear in the config.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, SecretStr

REDACTED = "<redacted>"
# (model class name, field name): secrets that neither their type nor their name gives away
SECRET_FIELDS = frozenset({
    ("ApiKeyEntry", "hash"),  # unsalted SHA-256 of a high-entropy key: not reversible, still not for display
    ("OtlpConfig", "headers"),  # exporter credentials (Authorization, api keys of a SaaS collector)
})
_SECRET_NAME = re.compile(r"(^|_)(secret|password|passwd|token|credentials?|api_key|private_key)$")
_SECRET_HEADER = re.compile(r"auth|token|secret|passw|cookie|session|api[-_]?key|credential|signature", re.IGNORECASE)
_URL_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#@\s]*)@")


def redacted_config(cfg: BaseModel) -> dict[str, Any]:
    data = cfg.model_dump(mode="json")
    _model(cfg, data)
    return data


def _model(model: BaseModel, data: dict[str, Any]) -> None:
    cls = type(model).__name__
    for name in type(model).model_fields:
        if name not in data:
            continue
        value = getattr(model, name)
        if value is None:
            continue
        if (cls, name) in SECRET_FIELDS:
            data[name] = {k: REDACTED for k in data[name]} if isinstance(data[name], dict) else REDACTED
        elif isinstance(value, SecretStr) or (isinstance(value, str) and _SECRET_NAME.search(name)):
            data[name] = REDACTED
        else:
            data[name] = _value(value, data[name])
    header = getattr(model, "name", None)
    if "value" in data and isinstance(data["value"], str) and isinstance(header, str) and _SECRET_HEADER.search(header):
        data["value"] = REDACTED  # a header (or query parameter) condition on a credential


def _value(value: Any, dumped: Any) -> Any:
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        _model(value, dumped)
        return dumped
    if isinstance(value, (list, tuple)) and isinstance(dumped, list):
        return [_value(v, d) for v, d in zip(value, dumped)]
    if isinstance(value, dict) and isinstance(dumped, dict):
        return {k: REDACTED if isinstance(d, str) and isinstance(k, str) and _SECRET_HEADER.search(k)
                else _value(value.get(k), d) for k, d in dumped.items()}
    if isinstance(dumped, str):
        return redact_url(dumped)
    return dumped


def redact_url(text: str) -> str:
    """`scheme://user:password@host/...` → `scheme://user:<redacted>@host/...`; a userinfo without `:` (a token
    as user name, `https://TOKEN@host`) is redacted whole. Anything else is returned unchanged."""
    m = _URL_USERINFO.match(text)
    if not m:
        return text
    user, colon, _ = m.group(2).partition(":")
    userinfo = f"{user}:{REDACTED}" if colon and user else REDACTED
    return f"{m.group(1)}{userinfo}@{text[m.end():]}"
