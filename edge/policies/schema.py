"""`json_schema`: buffer the request body (at most `max_bytes`) and validate it against a JSON Schema.

The schema is checked when the config loads (an invalid schema is a config error). Per request: a body over
`max_bytes` is refused with 413 (size.too_large) as soon as the excess arrives; a body that is not JSON
(or not declared as JSON) gets 400 (schema.not_json); one that fails the schema gets 400 (schema.invalid) with
the JSON path of the first failing element in the message — never the offending value. A valid body goes
upstream unchanged (same bytes, same length). Methods not listed pass unchecked (schema.skipped). A body that
stalls longer than `idle_s` is answered 408 client_timeout (body.stalled).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from jsonschema import validators
from referencing import Registry

from gatewatch.edge.policies.base import PolicyRequest, PolicyVerdict, allow, deny, error
from gatewatch.edge.policies.bodies import ENDED, OVER, STALLED, read_ahead, replay, stalled
from gatewatch.telemetry.names import Outcome, PolicyReason as R

log = logging.getLogger("gatewatch.policies.schema")


def load_schema(cfg) -> dict:
    schema = cfg.schema_ if cfg.schema_ is not None else json.loads(Path(cfg.schema_file).read_text())
    cls = validators.validator_for(schema)
    cls.check_schema(schema)  # raises SchemaError naming the problem
    remote = sorted(_refs(schema) - {r for r in _refs(schema) if r.startswith("#")})
    if remote:  # jsonschema would fetch them with blocking I/O, from wherever the schema points
        raise ValueError(f"only local $ref ('#/...') are supported, not {', '.join(remote)}")
    return schema


def _refs(node) -> set[str]:
    if isinstance(node, dict):
        out = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for v in node.values():
            out |= _refs(v)
        return out
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()


async def read_whole_body(policy, req: PolicyRequest, limit: int, idle_s: float) -> list[bytes] | PolicyVerdict:
    """A request body read whole so that a policy can parse it (json_schema, json_transform): its chunks, with
    `req.body` replaying them; or the verdict when it cannot be had: 413 size.too_large for a declared
    Content-Length over `limit` (nothing read) or once more than `limit` bytes arrived, 408 body.stalled when it
    stalled longer than `idle_s`. After a refusal `req.body` replays what was read, then the rest (shadow mode:
    the whole body still goes upstream)."""
    declared = req.head.header("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        return too_large(policy, limit)
    chunks, _, state = await read_ahead(req.body, limit, idle_s)
    req.body = replay(chunks, None if state == ENDED else req.body)
    if state == STALLED:
        return stalled(policy, idle_s)
    if state == OVER:
        return too_large(policy, limit)
    return chunks


def too_large(policy, limit: int) -> PolicyVerdict:
    return deny(policy, R.SIZE_TOO_LARGE.value, 413, Outcome.PAYLOAD_TOO_LARGE,
                f"the request body exceeds {limit} bytes")


class JsonSchemaPolicy:
    type = "json_schema"

    def __init__(self, cfg):
        self.name, self.shadow, self.cfg = cfg.name, cfg.shadow, cfg
        schema = load_schema(cfg)
        # An empty registry: nothing is ever retrieved while validating (remote refs were refused at load).
        self.validator = validators.validator_for(schema)(schema, registry=Registry())
        self.methods = frozenset(m.upper() for m in cfg.methods)

    def _invalid(self, reason: R, message: str) -> PolicyVerdict:
        return deny(self, reason.value, 400, Outcome.INVALID_BODY, message)

    async def evaluate(self, req: PolicyRequest) -> PolicyVerdict:
        if req.head.method not in self.methods:
            return allow(self, R.SCHEMA_SKIPPED.value)
        ctype = (req.head.header("content-type") or "").split(";", 1)[0].strip().lower()
        if not (ctype == "application/json" or ctype.endswith("+json")):
            return self._invalid(R.SCHEMA_NOT_JSON, "the request body must be application/json")
        if req.body is None:
            return self._invalid(R.SCHEMA_NOT_JSON, "a JSON request body is required")
        chunks = await read_whole_body(self, req, self.cfg.max_bytes, self.cfg.idle_s)
        if not isinstance(chunks, list):
            return chunks
        try:
            doc = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError):
            return self._invalid(R.SCHEMA_NOT_JSON, "the request body is not valid JSON")
        try:
            err = next(iter(self.validator.iter_errors(doc)), None)
        except Exception:  # e.g. a local $ref that points nowhere: the schema is broken, not the request
            log.exception("json_schema policy %s: the schema cannot be evaluated", self.name)
            return error(self, R.SCHEMA_INVALID.value, True, 500, Outcome.INTERNAL_ERROR,
                         "the route's schema cannot be evaluated")
        if err is not None:
            where = err.json_path if hasattr(err, "json_path") else "$"
            return self._invalid(R.SCHEMA_INVALID, f"the request body does not match the schema at {where} "
                                                   f"({err.validator} constraint)")
        return allow(self, R.SCHEMA_VALID.value)

