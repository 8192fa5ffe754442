"""The telemetry of a fixed set of requests, compared with a committed golden file.

One gateway with its in-process balancer serves a fixed sequence of requests that touches every phase: routes
and no route, policies that allow, deny and rate-limit, retries and failovers onto another instance, outlier
ejections, session affinity, consistent hashing, priority failover, a URL upstream, a streamed response, a
request body refused mid-stream, a request the listener cannot parse, inbound trace contexts. Spans and decision
logs go through the real exporter process to an OTLP receiver that decodes the protobuf; `/metrics` is read at
the end. Everything that differs between two runs (ids, timestamps, durations, ports, histogram buckets) is
normalised away, and what is left must equal `fixed_telemetry.json` exactly.

A change that must not alter telemetry (a refactoring, a faster path) proves it here. A change that alters it
on purpose regenerates the file and shows the difference in its diff:

    GATEWATCH_UPDATE_GOLDEN=1 python -m pytest tests/integration/test_telemetry_fixed.py
"""

from __future__ import annotations

import asyncio
import difflib
import json
import os
import re
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support.net import closed_port, raw_request
from tests.support.runtime import running

GOLDEN = Path(__file__).with_name("fixed_telemetry.json")
UA = "gatewatch-fixed-telemetry/1"
API_KEY = "fixed-key-1"
API_KEY_HASH = "sha256:" + __import__("hashlib").sha256(API_KEY.encode()).hexdigest()
# Values that differ from run to run by nature; dropped wherever they appear.
VOLATILE_ATTRS = {"gatewatch.request_id", "client.port", "service.instance.id", "process.pid",
                  "gatewatch.ejection.trace_ids"}
HEX_ID = re.compile(r"\b[0-9a-f]{32}\b|\b[0-9a-f]{16}\b")
VOLATILE_FAMILIES = ("gatewatch_telemetry_", "process_", "python_", "gatewatch_config_last_reload")
TIMED = ("gatewatch.timing.", "gatewatch.policy.durations_s", "gatewatch.ratelimit.store_rtt_s")
SECONDS = "<seconds>"
VERSION_LABEL = re.compile(r'version="[0-9a-f]{12}"')
# gatewatch_build_info: the same telemetry in a compiled and a pure build, on any Python
BUILD_LABELS = re.compile(r'(compiled|python)="[^"]*"')


class Backend:
    """A real aiohttp server on port 0: JSON naming itself, a streamed body on /stream, or a fixed status."""

    def __init__(self, name: str, status: int = 200):
        self.name, self.status = name, status

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.path.endswith("/stream"):
            resp = web.StreamResponse(status=200)
            resp.content_type = "text/plain"
            await resp.prepare(request)
            for i in range(3):
                await resp.write(b"chunk %d\n" % i)
                await asyncio.sleep(0.01)
            await resp.write_eof()
            return resp
        return web.json_response({"instance": self.name}, status=self.status)

    async def __aenter__(self):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


def _config(tmp_path, ok1: int, ok2: int, bad: int, dead: int) -> dict:
    def inst(name, port, **extra):
        return {"id": name, "host": "127.0.0.1", "port": port, **extra}

    timeouts = {"connect_s": 0.5, "response_s": 2, "idle_s": 2}
    one = {"attempts": 1}

    def route(name, path, upstream, **extra):
        return {"name": name, "match": {"path": path}, "upstream": upstream, "timeouts": timeouts,
                "retries": one, **extra}

    return {
        "admin": {"address": "127.0.0.1:0"},
        "telemetry": {"service_name": "fixed", "local_dir": str(tmp_path / "telemetry"), "export_interval_s": 0.1},
        "edge": {
            "listeners": [{"name": "public", "address": "127.0.0.1:0", "incoming_trace_context": "continue"}],
            "upstreams": [{"name": "direct", "url": f"http://127.0.0.1:{ok1}"}],
            "routes": [
                route("orders", {"template": "/api/orders/{id}"}, "main", match={
                    "path": {"template": "/api/orders/{id}"}, "methods": ["GET"]}),
                route("api", {"prefix": "/api"}, "main"),
                route("flaky", {"exact": "/flaky"}, "flaky",
                      retries={"attempts": 3, "retry_on": ["status", "connect_failure"], "statuses": [503],
                               "backoff_base_s": 0}),
                route("dead", {"prefix": "/dead"}, "deadpool", retries={"attempts": 2, "backoff_base_s": 0}),
                route("secure", {"prefix": "/secure"}, "main", policies=[
                    {"name": "key", "type": "api_key", "keys": [{"consumer": "team-a", "hash": API_KEY_HASH}]},
                    {"name": "quota", "type": "rate_limit", "limit": 2, "window_s": 3600, "key": "consumer"}]),
                route("sticky", {"prefix": "/sticky"}, "sticky"),
                route("hashed", {"prefix": "/hashed"}, "hashed"),
                route("prio", {"prefix": "/prio"}, "prio"),
                route("direct", {"prefix": "/direct"}, "direct"),
                route("upload", {"exact": "/upload"}, "main", policies=[
                    {"name": "small", "type": "size_limit", "max_bytes": 64}]),
            ]},
        "balancer": {"pools": [
            {"name": "main", "instances": [inst("ok1", ok1), inst("ok2", ok2)]},
            {"name": "flaky", "instances": [inst("bad", bad), inst("ok1", ok1)],
             "outlier_detection": {"consecutive_5xx": 2, "consecutive_gateway_errors": None,
                                   "base_ejection_s": 30}},
            {"name": "deadpool", "instances": [inst("dead", dead), inst("ok2", ok2)],
             "outlier_detection": {"consecutive_gateway_errors": 2, "base_ejection_s": 30}},
            {"name": "sticky", "instances": [inst("ok1", ok1), inst("ok2", ok2)], "affinity": {}},
            {"name": "hashed", "algorithm": "ring_hash", "hash_key": {"source": "header", "name": "x-user"},
             "instances": [inst("ok1", ok1), inst("ok2", ok2)]},
            {"name": "prio", "instances": [inst("ok1", ok1, draining=True), inst("ok2", ok2, priority=1)]},
        ]},
    }


async def _requests(port: int) -> list[int]:
    """The fixed sequence, one keep-alive connection, in order. Returns the statuses seen."""
    base = f"http://127.0.0.1:{port}"
    statuses = []
    tp_sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    tp_unsampled = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-00"
    plan = [
        ("GET", "/api/orders/42", {}, None),
        ("GET", "/api/orders/43?token=secret&x=1", {}, None),
        ("GET", "/api/things", {}, None),
        ("HEAD", "/api/things", {}, None),
        ("POST", "/api/orders/44", {}, b"{}"),  # the template route is GET only: falls to "api"
        ("GET", "/nothing/here", {}, None),
        *[("GET", "/flaky", {}, None)] * 4,
        *[("GET", "/dead/x", {}, None)] * 4,
        ("GET", "/secure/a", {}, None),
        ("GET", "/secure/a", {"X-API-Key": "wrong"}, None),
        *[("GET", "/secure/a", {"X-API-Key": API_KEY}, None)] * 3,
        ("GET", "/hashed/a", {"x-user": "alice"}, None),
        ("GET", "/hashed/a", {"x-user": "bob"}, None),
        ("GET", "/prio/a", {}, None),
        ("GET", "/direct/a", {}, None),
        ("POST", "/upload", {}, b"x" * 10),
        ("GET", "/api/stream", {}, None),
        ("GET", "/api/traced", {"traceparent": tp_sampled, "tracestate": "k=v"}, None),
        ("GET", "/api/untraced", {"traceparent": tp_unsampled}, None),
        ("GET", "/api/%2e%2e/x", {}, None),
    ]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), skip_auto_headers=["User-Agent"],
                                     cookie_jar=aiohttp.DummyCookieJar()) as s:
        cookie = None
        for method, path, headers, body in plan:
            async with s.request(method, base + path, headers={"User-Agent": UA, **headers}, data=body) as r:
                await r.read()
                statuses.append(r.status)
        for _ in range(2):  # affinity: pinned by the first answer's cookie
            headers = {"User-Agent": UA, **({"Cookie": cookie} if cookie else {})}
            async with s.get(base + "/sticky/a", headers=headers) as r:
                await r.read()
                statuses.append(r.status)
                cookie = cookie or r.headers["Set-Cookie"].split(";")[0]
    # A body over the size limit, streamed (chunked) so the refusal comes mid-upload; its own connection.
    async with aiohttp.ClientSession(skip_auto_headers=["User-Agent"]) as s:
        async def chunks():
            for _ in range(4):
                yield b"y" * 40
        async with s.post(base + "/upload", data=chunks(), headers={"User-Agent": UA}) as r:
            await r.read()
            statuses.append(r.status)
    # Framing the listener refuses (Content-Length and Transfer-Encoding together).
    answer = await raw_request(port, b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    statuses.append(int(answer.split(b" ", 2)[1]))
    return statuses


def _scrub(value, ports: dict[str, str]):
    if isinstance(value, str):
        for port, name in ports.items():
            value = value.replace(f":{port}", f":<{name}>").replace(f'="{port}"', f'="<{name}>"')
        return HEX_ID.sub("<id>", value)
    if isinstance(value, list):
        return [_scrub(v, ports) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and str(value) in ports:
        return f"<{ports[str(value)]}>"
    return value


def _attrs(attrs: dict, ports: dict[str, str], kind: str = "") -> dict:
    drop = VOLATILE_ATTRS | ({"network.peer.port"} if kind == "SERVER" else set())  # the client's port
    return {k: _value(k, v, ports) for k, v in sorted(attrs.items()) if k not in drop}


def _value(key: str, value, ports: dict[str, str]):
    """Durations are measured, so only their presence (and count) is compared; the config version hashes the
    config, which holds this run's ports and directory."""
    if key.startswith(TIMED):
        return [SECONDS] * len(value) if isinstance(value, list) else SECONDS
    if key in ("gatewatch.config.version", "gatewatch.config.previous_version"):
        return "<version>"
    return _scrub(value, ports)


def normalise(spans: list[dict], logs: list[dict], metrics_text: str, ports: dict[str, str]) -> dict:
    by_trace: dict[str, list[dict]] = {}
    for s in spans:
        by_trace.setdefault(s["trace_id"], []).append(s)
    logs_by_trace: dict[str, list[dict]] = {}
    events = []
    for r in sorted(logs, key=lambda r: r["time"]):
        (logs_by_trace.setdefault(r["trace_id"], []) if r["trace_id"] and r["event_name"].startswith(
            "gatewatch.decision.") and r["trace_id"] in by_trace or r["trace_id"] in logs_by_trace
         else events).append(r)
    traces = []
    for trace_id, members in sorted(by_trace.items(), key=lambda kv: min(s["start"] for s in kv[1])):
        members.sort(key=lambda s: (s["start"], s["kind"] != "SERVER"))
        names = {s["span_id"]: f'{s["kind"]} {s["name"]}' for s in members}
        traces.append({
            "spans": [{
                "name": s["name"], "kind": s["kind"], "status": s["status"], "scope": s["scope"],
                "parent": names.get(s["parent_span_id"], "remote" if s["parent_span_id"] else None),
                "links": len(s["links"]), "attributes": _attrs(s["attributes"], ports, s["kind"]),
            } for s in members],
            "logs": [_log(r, names, ports) for r in logs_by_trace.pop(trace_id, [])],
        })
    # Decision logs of requests without spans (unsampled): kept in request order.
    for trace_id, rs in sorted(logs_by_trace.items(), key=lambda kv: kv[1][0]["time"]):
        traces.append({"spans": [], "logs": [_log(r, {}, ports) for r in rs]})
    resource = _attrs(spans[0]["resource"], ports) if spans else {}
    return {"resource": resource, "traces": traces,
            "events": [_log(r, {}, ports) for r in events], "metrics": _metrics(metrics_text, ports)}


def _log(r: dict, span_names: dict, ports: dict[str, str]) -> dict:
    return {"event_name": r["event_name"], "severity": r["severity"], "body": _scrub(r["body"], ports),
            "span": span_names.get(r["span_id"], "<other>" if r["span_id"] else None),
            "attributes": _attrs(r["attributes"], ports)}


def _metrics(text: str, ports: dict[str, str]) -> list[str]:
    keep = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        sample = line.split(" # ")[0]  # no exemplar
        name = sample.split("{")[0].split(" ")[0]
        if name.startswith(VOLATILE_FAMILIES) or name.endswith(("_bucket", "_sum", "_created")):
            continue
        sample = BUILD_LABELS.sub(lambda m: f'{m.group(1)}="<{m.group(1)}>"', _scrub(sample, ports))
        keep.append(VERSION_LABEL.sub('version="<version>"', sample))
    return sorted(keep)


async def test_fixed_requests_produce_the_golden_telemetry(tmp_path, otlp):
    dead = closed_port()
    async with Backend("ok1") as ok1, Backend("ok2") as ok2, Backend("bad", status=503) as bad:
        ports = {str(ok1.port): "ok1", str(ok2.port): "ok2", str(bad.port): "bad", str(dead): "dead"}
        async with running(_config(tmp_path, ok1.port, ok2.port, bad.port, dead), env=otlp.env("http/protobuf")) as rt:
            listener = rt.listeners[0].bound[1]
            ports[str(listener)] = "listener"
            statuses = await _requests(listener)
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://{rt.admin_bound[0]}:{rt.admin_bound[1]}/metrics") as r:
                    metrics_text = await r.text()
    # Stopping the runtime flushed the exporter: everything it will ever send has been sent.
    assert otlp.data.wait_for(lambda spans, logs: len(spans) > 0 and len(logs) > 0)
    spans, logs = otlp.data.snapshot()
    got = {"statuses": statuses, **normalise(spans, logs, metrics_text, ports)}
    if os.environ.get("GATEWATCH_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert got["statuses"] == want["statuses"]
    for key in ("resource", "events", "metrics"):
        assert got[key] == want[key], _diff(got[key], want[key])
    assert len(got["traces"]) == len(want["traces"])
    for i, (g, w) in enumerate(zip(got["traces"], want["traces"])):
        assert g == w, f"trace {i} (the {i + 1}th request with spans or logs):\n" + _diff(g, w)


def _diff(got, want) -> str:
    dump = lambda v: json.dumps(v, indent=1, sort_keys=True).splitlines()  # noqa: E731
    return "\n".join(difflib.unified_diff(dump(want), dump(got), "golden", "this run", lineterm="", n=2))
