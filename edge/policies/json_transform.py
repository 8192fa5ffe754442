"""`json_transform`: remove, rename and add fields of JSON bodies — the request's on its way upstream (POLICY
phase), the response's on its way back (the engine's response hook, `response`).

Fields are dotted paths into objects (`user.name`: key `name` of the object at key `user`; a key with a dot in
it cannot be addressed; arrays are not entered). Edits apply in this order (as Kong's request-transformer):
`remove`, then `rename` (the value moves; nothing happens when the source is absent; a missing parent of the
target is created), then `add` (set: created or replaced, with missing parent objects created). An edit whose
path crosses a value that is not an object changes nothing.

Only bodies declared `application/json` or `*+json` (RFC 6839 §3.1) and not content-coded are touched; others
pass unchanged (`*.request_skipped` / `*.response_skipped`). Bounded by `max_bytes`:
- request: a larger body is refused 413 (size.too_large) — the route promised the upstream a transformed body;
  a body that is declared JSON but does not parse is refused 400 (json_transform.request_invalid_json).
- response: only when response edits are configured is the response buffered, up to `max_bytes`; a larger one is
  relayed unchanged as it streams (json_transform.response_too_large), as is one that does not parse.
A changed body is re-serialised (compact), its Content-Length recomputed; a changed response loses its ETag
and digests (RFC 9110 §8.8.3: a validator must change with the representation). In shadow mode the edits are
computed and recorded, the body is sent as it was.

Recorded: every verdict in `gatewatch_policy_verdicts_total` and the span's policy summary (the response side
as a second entry of the same policy); an applied edit, an oversize or unparsable response also as a
`gatewatch.decision.policy` record with the changes and the sizes before and after.

Primitives: `Edits` (compiled, `apply(doc) -> changes`), `JsonTransformPolicy`, `response(...)` (the engine's
hook), `transform_document(ctx, doc, now_ns)` (an aggregate route's composed response).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from gatewatch.edge.policies.base import PolicyRequest, PolicyVerdict, allow, deny
from gatewatch.edge.policies.bodies import replay
from gatewatch.edge.policies.schema import read_whole_body
from gatewatch.telemetry.context import DecisionRecord
from gatewatch.telemetry.names import Attr, DecisionKind, Outcome, Verdict
from gatewatch.telemetry.names import PolicyReason as R

RESPONSE = "json_transform:response"  # PolicyRequest.state key: the policies with response edits, in order
TYPE = "json_transform"
ALLOW = Verdict.ALLOW.value
# Validators and digests of the representation: wrong once the body changed (RFC 9110 §8.8.3; RFC 9530).
STALE_HEADERS = frozenset({"etag", "content-md5", "digest", "content-digest", "repr-digest"})
NO_BODY_STATUS = frozenset({204, 304})


def is_json(content_type: str | None) -> bool:
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))


class Edits:
    """One direction's edits, compiled: paths split once."""

    __slots__ = ("add", "remove", "rename")

    def __init__(self, cfg):
        self.remove = tuple(tuple(p.split(".")) for p in cfg.remove)
        self.rename = tuple((tuple(a.split(".")), tuple(b.split("."))) for a, b in cfg.rename.items())
        self.add = tuple((tuple(p.split(".")), v) for p, v in cfg.add.items())

    def apply(self, doc: Any) -> list[str]:
        """Edit `doc` in place; the changes made, as "remove:a.b", "rename:a>b", "add:c"."""
        changes: list[str] = []
        if not isinstance(doc, dict):
            return changes
        for path in self.remove:
            if _pop(doc, path) is not _ABSENT:
                changes.append("remove:" + ".".join(path))
        for src, dst in self.rename:
            value = _pop(doc, src)
            if value is not _ABSENT and _set(doc, dst, value):
                changes.append(f"rename:{'.'.join(src)}>{'.'.join(dst)}")
        for path, value in self.add:
            if _set(doc, path, _fresh(value)):
                changes.append("add:" + ".".join(path))
        return changes


_ABSENT = object()


def _parent(doc: dict, path: tuple[str, ...], create: bool) -> dict | None:
    node = doc
    for key in path[:-1]:
        child = node.get(key, _ABSENT)
        if child is _ABSENT and create:
            child = node[key] = {}
        if not isinstance(child, dict):
            return None
        node = child
    return node


def _pop(doc: dict, path: tuple[str, ...]) -> Any:
    parent = _parent(doc, path, False)
    return _ABSENT if parent is None else parent.pop(path[-1], _ABSENT)


def _set(doc: dict, path: tuple[str, ...], value: Any) -> bool:
    parent = _parent(doc, path, True)
    if parent is None:
        return False
    parent[path[-1]] = value
    return True


def _fresh(value: Any) -> Any:
    """A copy of a configured value (the config is shared by every request; a document is edited in place)."""
    return json.loads(json.dumps(value)) if isinstance(value, (dict, list)) else value


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


class JsonTransformPolicy:
    type = TYPE

    def __init__(self, cfg):
        self.name, self.shadow, self.cfg = cfg.name, cfg.shadow, cfg
        self.request = Edits(cfg.request) if cfg.request is not None else None
        self.response = Edits(cfg.response) if cfg.response is not None else None
        self.max = cfg.max_bytes

    def _skipped(self, why: str) -> PolicyVerdict:
        return allow(self, R.JSON_REQUEST_SKIPPED.value, **{Attr.TRANSFORM_SKIPPED: why})

    async def evaluate(self, req: PolicyRequest) -> PolicyVerdict:
        if self.response is not None:  # the engine's response hook applies them, in policy order
            req.state[RESPONSE] = req.state.get(RESPONSE, ()) + (self,)
        if self.request is None:
            return self._skipped("no_changes")
        head = req.head
        if req.body is None:
            return self._skipped("no_body")
        if not is_json(head.header("content-type")):
            return self._skipped("not_json")
        if (head.header("content-encoding") or "identity").strip().lower() != "identity":
            return self._skipped("encoded")
        chunks = await read_whole_body(self, req, self.max, self.cfg.idle_s)
        if not isinstance(chunks, list):
            return chunks
        total = sum(map(len, chunks))
        try:
            doc = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError):
            return deny(self, R.JSON_REQUEST_INVALID.value, 400, Outcome.INVALID_BODY,
                        "the request body is declared JSON but does not parse")
        changes = self.request.apply(doc)
        if not changes:
            return self._skipped("no_match")
        body = dumps(doc)
        if not self.shadow:
            req.body = replay([body])
            req.upstream_set.append(("Content-Length", str(len(body))))
        return allow(self, R.JSON_REQUEST_APPLIED.value, **{
            Attr.POLICY_TYPE: TYPE, Attr.TRANSFORM_DIRECTION: "request", Attr.TRANSFORM_CHANGES: tuple(changes),
            Attr.TRANSFORM_BYTES_BEFORE: total, Attr.TRANSFORM_BYTES_AFTER: len(body),
            Attr.POLICY_SHADOW: self.shadow or None})


# --- the response side: the engine's hook ---

class Transformed:
    """The upstream's response with its body replaced (whole) or re-assembled (`prefix` read, then the rest)."""

    def __init__(self, original, whole: bytes | None, prefix: list[bytes] = (), rest: AsyncIterator[bytes] | None = None):
        self._original, self._prefix, self._rest = original, prefix, rest
        self.status, self.reason, self.headers = original.status, original.reason, original.headers
        self.peer_address, self.peer_port = original.peer_address, original.peer_port
        self.whole = whole

    async def body(self) -> AsyncIterator[bytes]:
        if self.whole is not None:
            yield self.whole
            return
        for chunk in self._prefix:
            yield chunk
        if self._rest is not None:
            async for chunk in self._rest:
                yield chunk

    def close(self) -> None:
        self._original.close()


def _record(rec, policy: JsonTransformPolicy, reason: R, now_ns: int, duration_s: float, log: bool,
            **attrs: Any) -> None:
    rec.policies.append((policy.name, TYPE, ALLOW, reason.value))
    if rec.policy_durations is not None:
        rec.policy_durations.append(duration_s)
    if log:
        rec.decisions.append(DecisionRecord(
            DecisionKind.POLICY, policy.name, ALLOW, reason.value, now_ns, rec.trace.span_id,
            {Attr.POLICY_TYPE: TYPE, Attr.TRANSFORM_DIRECTION: "response", **attrs}))


def _skip_all(ctx, policies, reason: R, now_ns: int, log: bool, **attrs: Any) -> None:
    for p in policies:
        _record(ctx.rec, p, reason, now_ns, 0.0, log, **attrs)


async def response(ctx, response, headers: tuple, length: int | None, now_ns) -> tuple[Any, tuple, int | None]:
    """The response hook (the engine calls it before relaying, when `RESPONSE` is in the policies' state): the
    response to relay, its headers and its length. Raises what reading the upstream body raises."""
    policies = ctx.policy.state[RESPONSE]
    index = {k.lower(): v for k, v in response.headers}
    if (ctx.head.method == "HEAD" or response.status in NO_BODY_STATUS or response.status < 200
            or not is_json(index.get("content-type"))):
        _skip_all(ctx, policies, R.JSON_RESPONSE_SKIPPED, now_ns(), False)
        return response, headers, length
    if index.get("content-encoding", "identity").strip().lower() != "identity":
        _skip_all(ctx, policies, R.JSON_RESPONSE_SKIPPED, now_ns(), False, **{Attr.TRANSFORM_SKIPPED: "encoded"})
        return response, headers, length
    limit = min(p.max for p in policies)
    if length is not None and length > limit:
        _skip_all(ctx, policies, R.JSON_RESPONSE_TOO_LARGE, now_ns(), True, **{Attr.TRANSFORM_BYTES_BEFORE: length})
        return response, headers, length
    started = time.monotonic()
    whole = response.whole if length is not None and response.whole is not None and \
        len(response.whole) == length else None
    if whole is None:
        chunks, size, it = [], 0, response.body().__aiter__()
        async for chunk in it:
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # relayed unchanged: what was read, then the rest as it comes
                _skip_all(ctx, policies, R.JSON_RESPONSE_TOO_LARGE, now_ns(), True)
                return Transformed(response, None, chunks, it), headers, length
        whole = b"".join(chunks)
    try:
        doc = json.loads(whole)
    except (ValueError, UnicodeDecodeError):
        _skip_all(ctx, policies, R.JSON_RESPONSE_INVALID, now_ns(), True)
        return Transformed(response, whole), headers, len(whole)
    changed = _transform(ctx, policies, doc, len(whole), now_ns, started)
    if not changed:
        return Transformed(response, whole), headers, len(whole)
    body = dumps(doc)
    return Transformed(response, body), tuple(h for h in headers if h[0].lower() not in STALE_HEADERS), len(body)


def _transform(ctx, policies, doc: Any, size: int, now_ns, started: float) -> bool:
    """Each policy's response edits on `doc`, recorded; whether the body is to be replaced."""
    changed = False
    for p in policies:
        changes = p.response.apply(doc) if not p.shadow else p.response.apply(json.loads(dumps(doc)))
        if changes:
            changed = changed or not p.shadow
            _record(ctx.rec, p, R.JSON_RESPONSE_APPLIED, now_ns(), time.monotonic() - started, True,
                    **{Attr.TRANSFORM_CHANGES: tuple(changes), Attr.TRANSFORM_BYTES_BEFORE: size,
                       Attr.POLICY_SHADOW: p.shadow or None})
        else:
            _record(ctx.rec, p, R.JSON_RESPONSE_SKIPPED, now_ns(), time.monotonic() - started, False)
    return changed


def transform_document(ctx, doc: Any, size: int, now_ns) -> None:
    """Response edits on an aggregate route's composed document (before it is serialised)."""
    req = ctx.policy
    if req is not None and req.state and RESPONSE in req.state:
        _transform(ctx, req.state[RESPONSE], doc, size, now_ns, time.monotonic())
