"""The typed config of an aggregate route: several upstream calls in parallel, one composed JSON response.

A route has either `upstream` (proxy) or `aggregate` (this). Primitives:
- `AggregateCallConfig`: one call — `name`, `upstream` (a pool or an `edge.upstreams` entry), `path` (a template
  whose `{param}`s are the route's path parameters), `method`, `query` passthrough, `timeout_s` (the whole
  call: connect, response head and body), `max_body_bytes`, `required`.
- `AggregateConfig`: the calls, how they are composed (`merge` | `template`) and what a failed call does
  (`on_error`: `fail` | `omit`; a `required` call's failure always fails the response).
- `references(template)`: every reference a template makes, checked at load; `parse_reference(text)`.
- Composition, pure: `merge(bodies)` (deep merge in order), `render(template, value_of)`, `dig(value, path)`.

Template references (docs/traffic.md, "Aggregation"): a string leaf that is exactly `${calls.NAME.body}`,
`${calls.NAME.body.a.b}` or `${calls.NAME.status}`, or an object that is exactly `{"$ref": "NAME"}` /
`{"$ref": "NAME.a.b"}` (the body, or a dotted path into it), is replaced by that JSON value; anything else is
copied as written. Nothing is evaluated.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Literal, NamedTuple

from pydantic import Field, field_validator, model_validator

from gatewatch.schema import HTTP_TOKEN, NAME_PATTERN, Strict

PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# RFC 3986 §3.3 pchar plus '/' in the path and §3.4 (plus '/' '?') in the query; braces for the placeholders
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%/{}]*")
_QUERY_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%/?{}]*")
_STRING_REF = re.compile(r"\$\{calls\.([A-Za-z0-9][A-Za-z0-9_.-]*?)\.(body|status)((?:\.[^.{}]+)*)\}")
MAX_TEMPLATE_DEPTH = 16


class Reference(NamedTuple):
    call: str
    part: str  # "body" | "status"
    path: tuple[str, ...]  # into the body: object keys, or array indexes (digits)


def parse_reference(text: str) -> Reference | None:
    """A `${calls.NAME.body[.path]}` / `${calls.NAME.status}` string leaf, or None for a literal string."""
    if not (text.startswith("${") and text.endswith("}")):
        return None
    m = _STRING_REF.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a reference: expected ${{calls.NAME.body}}, ${{calls.NAME.body.a.b}} "
                         "or ${calls.NAME.status}")
    path = tuple(m.group(3)[1:].split(".")) if m.group(3) else ()
    if m.group(2) == "status" and path:
        raise ValueError(f"{text!r}: a status has no path")
    return Reference(m.group(1), m.group(2), path)


def ref_object(node: dict) -> Reference | None:
    """`{"$ref": "NAME.a.b"}` (exactly one key) as a body reference; None for any other object."""
    if len(node) != 1 or "$ref" not in node:
        return None
    value = node["$ref"]
    if not isinstance(value, str) or not value or value.startswith(".") or ".." in value or value.endswith("."):
        raise ValueError(f"$ref {value!r}: expected a call name, optionally followed by a dotted path")
    name, *path = value.split(".")
    return Reference(name, "body", tuple(path))


def references(node: Any, where: str = "template", depth: int = 0) -> list[tuple[str, Reference]]:
    """(location, reference) for every reference in a template; raises ValueError naming the location of a
    malformed one."""
    if depth > MAX_TEMPLATE_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_TEMPLATE_DEPTH} levels")
    try:
        if isinstance(node, str):
            ref = parse_reference(node)
            return [(where, ref)] if ref else []
        if isinstance(node, dict):
            ref = ref_object(node)
            if ref is not None:
                return [(where, ref)]
            return [r for k, v in node.items() for r in references(v, f"{where}.{k}", depth + 1)]
        if isinstance(node, list):
            return [r for i, v in enumerate(node) for r in references(v, f"{where}[{i}]", depth + 1)]
    except ValueError as err:
        if str(err).startswith(where):
            raise
        raise ValueError(f"{where}: {err}") from None
    return []


def merge(bodies: list[Any]) -> dict:
    """Deep merge of JSON objects in order: objects merge key by key, anything else is replaced by the later."""
    out: dict = {}
    for body in bodies:
        _merge_into(out, body)
    return out


def _merge_into(into: dict, new: dict) -> None:
    for k, v in new.items():
        old = into.get(k)
        if isinstance(old, dict) and isinstance(v, dict):
            _merge_into(old, v)
        else:
            into[k] = _copy(v) if isinstance(v, dict) else v


def _copy(d: dict) -> dict:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in d.items()}


def dig(value: Any, path: tuple[str, ...]) -> Any:
    """The value at a dotted path: object keys, array indexes (digits); None where it is absent."""
    for key in path:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    return value


def render(template: Any, value_of: Callable[[Reference], Any]) -> Any:
    """The template with each reference replaced by `value_of(reference)`; everything else copied as written."""
    if isinstance(template, str):
        ref = parse_reference(template)
        return template if ref is None else value_of(ref)
    if isinstance(template, dict):
        ref = ref_object(template)
        return {k: render(v, value_of) for k, v in template.items()} if ref is None else value_of(ref)
    if isinstance(template, list):
        return [render(v, value_of) for v in template]
    return template


class AggregateCallConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)  # a metric label, the `_partial` key, the CLIENT span's call
    upstream: str = Field(min_length=1)  # a pool, or an entry of edge.upstreams
    path: str  # "/users/{id}" or "/orders?user={id}": {param} is the route's path parameter of that name
    method: str = "GET"
    query: Literal["none", "pass"] = "none"  # pass: the client's query string is appended to the call's
    timeout_s: float = Field(default=5.0, gt=0, le=300)  # the whole call: connect, response head and body
    max_body_bytes: int = Field(default=1 << 20, ge=1, le=64 << 20)  # a larger answer fails the call (too_large)
    required: bool = False  # its failure fails the whole response even with on_error: omit

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if not HTTP_TOKEN.fullmatch(v) or v != v.upper() or v in ("CONNECT", "HEAD", "TRACE"):
            raise ValueError(f"{v!r}: expected an upper-case method with a response body (GET, POST, ...)")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        path, _, query = v.partition("?")
        if not path.startswith("/") or "#" in v:
            raise ValueError(f"{v!r}: must start with '/' and have no fragment")
        if not _PATH_CHARS.fullmatch(path) or not _QUERY_CHARS.fullmatch(query):
            raise ValueError(f"{v!r}: has a character a request target cannot carry (RFC 3986 §3.3, §3.4)")
        if PARAM.sub("", v).count("{") or PARAM.sub("", v).count("}"):
            raise ValueError(f"{v!r}: a brace must be part of a whole '{{name}}' placeholder")
        return v

    @property
    def params(self) -> set[str]:
        return set(PARAM.findall(self.path))


class AggregateConfig(Strict):
    """Calls made in parallel for each request; their JSON bodies composed into one response (200)."""

    calls: tuple[AggregateCallConfig, ...] = Field(min_length=1, max_length=16)
    compose: Literal["merge", "template"] = "merge"  # merge: deep-merge the bodies (objects) in declared order
    template: dict | None = None  # compose: template — the response object, with references to the calls
    on_error: Literal["fail", "omit"] = "fail"  # a failed call: 502/504 for the request, or left out and listed
    partial_header: str = Field(default="x-gatewatch-partial", pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

    @model_validator(mode="after")
    def _check(self) -> AggregateConfig:
        names = [c.name for c in self.calls]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"calls: duplicate call name(s) {', '.join(dup)}")
        if self.compose == "template":
            if self.template is None:
                raise ValueError("template: required with compose: template")
            try:
                json.dumps(self.template, allow_nan=False)
            except (TypeError, ValueError):
                raise ValueError("template: not JSON (a YAML date or timestamp? quote it)") from None
            if ref_object(self.template) is not None:  # the response is an object (`_partial` goes in it)
                raise ValueError("template: the root must be an object, not a reference (wrap it: "
                                 "{\"user\": {\"$ref\": \"user\"}})")
            for where, ref in references(self.template):
                if ref.call not in names:
                    raise ValueError(f"{where}: unknown call {ref.call!r} (calls: {', '.join(names)})")
        elif self.template is not None:
            raise ValueError("template: only with compose: template")
        return self
