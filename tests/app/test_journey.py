"""`gatewatch journey` over the telemetry real tiers wrote, run as users run it (`python -m gatewatch journey`).

Once per module: an edge runtime and a balancer runtime (in-process, real sockets, telemetry as JSON lines from
export threads) in front of a real aiohttp backend that continues the trace (the demo backend, writing its own
JSON lines); the pool's first instance is a closed port, so the first request has two attempts (connect refused,
retry, failover) and ejects it; a second request arrives while it is ejected; a third is denied by a policy on a
listener that links, rather than continues, the client's trace context. The runtimes are stopped (files flushed)
before anything is read.

Then the command reads those files (`--dir`), and Tempo/Loki stand-ins on loopback that answer the real API
shapes filled from the same files (`--tempo`, `--loki`): the same text must come out. Error cases: Tempo 404 /
500 / garbage, a Loki that never answers, an unknown trace id, malformed trace ids.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import json
import os
import re
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Self

import pytest
from aiohttp import ClientSession, web
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from gatewatch.demo.backend import build_app
from gatewatch.telemetry.export import JsonLinesExporter
from gatewatch.telemetry.names import Attr
from tests.support.net import closed_port
from tests.support.runtime import running

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
REPO = Path(__file__).resolve().parents[2]


# --- the tiers, once -----------------------------------------------------------------------------------------


class _SpanFile:
    """The backend's SDK spans into a JSON-lines file, like `gatewatch backend` without an OTLP endpoint."""

    def __init__(self, path: Path):
        self._inner = JsonLinesExporter(path)

    def export(self, spans):
        self._inner.export(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self):
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def balancer_cfg(telemetry: dict, live_port: int) -> dict:
    return {"admin": {"address": "127.0.0.1:0"}, "telemetry": telemetry,
            "balancer": {
                "listeners": [{"name": "internal", "address": "127.0.0.1:0", "trust_forwarded_headers": True}],
                "routes": [{"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "shop",
                            "retries": {"attempts": 2, "retry_on": ["connect_failure"]}}],
                "pools": [{"name": "shop", "algorithm": "round_robin",  # round robin starts at the first: dead
                           "outlier_detection": {"consecutive_gateway_errors": 1, "base_ejection_s": 60,
                                                 "max_ejection_percent": 50},
                           "instances": [{"id": "dead", "host": "127.0.0.1", "port": closed_port()},
                                         {"id": "live", "host": "127.0.0.1", "port": live_port}]}]}}


def edge_cfg(telemetry: dict, balancer_url: str) -> dict:
    return {"admin": {"address": "127.0.0.1:0"}, "telemetry": telemetry,
            "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0", "incoming_trace_context": "continue"},
                                   {"name": "untrusted", "address": "127.0.0.1:0", "incoming_trace_context": "link"}],
                     "routes": [{"name": "orders", "match": {"path": {"template": "/api/orders/{id}"}},
                                 "upstream": "shop",
                                 "policies": [{"name": "body", "type": "size_limit", "max_bytes": 4096}]},
                                {"name": "admin", "match": {"path": {"prefix": "/admin"}}, "upstream": "shop",
                                 "policies": [{"name": "office", "type": "ip_access", "deny": ["127.0.0.0/8"]}]}],
                     "upstreams": [{"name": "shop", "url": balancer_url}]}}


async def produce(out: Path) -> dict[str, str]:
    """Run the tiers, send the three requests, stop everything; the traceresponse of each request."""
    provider = TracerProvider(resource=Resource({"service.name": "demo-backend", "service.instance.id": "live"}))
    provider.add_span_processor(SimpleSpanProcessor(_SpanFile(out / "demo-backend-live.traces.jsonl")))
    backend = web.AppRunner(build_app("live", None, 0, 0, provider), access_log=None)
    await backend.setup()
    site = web.TCPSite(backend, "127.0.0.1", 0)
    await site.start()
    telemetry = {"local_dir": str(out), "exporter": "thread", "export_interval_s": 0.1}
    got = {}
    try:
        async with running(balancer_cfg(telemetry, site._server.sockets[0].getsockname()[1])) as bal:
            async with running(edge_cfg(telemetry, f"http://127.0.0.1:{bal.listeners[0].bound[1]}")) as edge:
                public, untrusted = (f"http://127.0.0.1:{lst.bound[1]}" for lst in edge.listeners)
                async with ClientSession() as http:
                    for name, url in (("retried", public + "/api/orders/1"), ("after", public + "/api/orders/2"),
                                      ("denied", untrusted + "/admin/x")):
                        headers = {} if name == "after" else {"traceparent": CLIENT_PARENT}
                        async with http.get(url, headers=headers) as r:
                            assert r.status == (403 if name == "denied" else 200), await r.text()
                            got[name] = r.headers["traceresponse"]
    finally:
        await backend.cleanup()
        provider.shutdown()
    return got


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("telemetry")
    responses = asyncio.run(produce(out))
    return {"dir": out, "responses": responses,
            "trace": {k: v.split("-")[1] for k, v in responses.items()}}


def journey(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # loopback stand-ins, no proxy
    return subprocess.run([sys.executable, "-m", "gatewatch", "journey", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**full_env, **(env or {})}, check=False)


def file_records(directory: Path, signal: str) -> list[dict]:
    out = []
    for path in sorted(directory.glob(f"*.{signal}.jsonl*")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def file_spans(directory: Path, trace_id: str) -> list[dict]:
    return [s for s in file_records(directory, "traces") if s["context"]["trace_id"] == "0x" + trace_id]


@pytest.fixture(scope="module")
def local_text(data) -> str:
    """The journey of the retried request from the files, asked for with the full traceresponse value."""
    out = journey(data["responses"]["retried"].upper(), "--dir", str(data["dir"]))
    assert out.returncode == 0, out.stderr
    return out.stdout


def line_with(text: str, *parts: str) -> int:
    """Index of the one line containing every part."""
    found = [i for i, line in enumerate(text.splitlines()) if all(p in line for p in parts)]
    assert len(found) == 1, (parts, text)
    return found[0]


def ms(text: str) -> float:
    return float(text.removesuffix(" ms"))


# --- from the JSON-lines files -------------------------------------------------------------------------------


def test_every_span_of_both_tiers_and_the_backend_is_in_the_tree(data, local_text):
    trace = data["trace"]["retried"]
    assert trace == CLIENT_TRACE  # the public listener continued the client's trace
    lines = local_text.splitlines()
    assert lines[0].startswith(f"trace {trace}  services gatewatch-edge, gatewatch-balancer, demo-backend  "
                               "duration ")
    assert "outcome proxied (HTTP 200)" in lines[0]
    spans = file_spans(data["dir"], trace)
    assert len(spans) == 6  # edge SERVER + CLIENT, balancer SERVER + 2 CLIENT, backend SERVER
    tree = local_text.split("\ntiming")[0]
    for s in spans:
        line_with(tree, f"span {s['context']['span_id'][2:]}", s["kind"].split(".")[1])
    edge = line_with(tree, "SERVER GET /api/orders/{id}  [gatewatch-edge]  +0.000 ms")
    assert f"(parent {CLIENT_SPAN} not in the data)" in lines[edge]  # the client's span was never exported
    balancer = line_with(tree, "SERVER GET", "[gatewatch-balancer]")
    backend = line_with(tree, "SERVER GET", "[demo-backend]")
    assert edge < balancer < backend
    # the tree: each tier one level deeper (3 characters of indentation per level)
    depth = [len(lines[i]) - len(lines[i].lstrip("│├└─ ")) for i in (edge, balancer, backend)]
    assert depth == [0, 6, 12]


def test_attempts_and_decisions_tell_the_retry_in_order(local_text):
    t = local_text
    failed = line_with(t, "CLIENT GET  [gatewatch-balancer]", "ERROR")
    assert "error.type=connect_refused" in t.splitlines()[failed + 1]
    assert "gatewatch.instance=dead" in t.splitlines()[failed + 1]
    second = [i for i, line in enumerate(t.splitlines()) if "CLIENT GET  [gatewatch-balancer]" in line
              and "ERROR" not in line]
    assert len(second) == 1 and "http.request.resend_count=1" in t.splitlines()[second[0] + 1]
    route_edge = line_with(t, "decision route orders: matched (route.matched)")
    route_bal = line_with(t, "decision route all: matched (route.matched)")
    pick_dead = line_with(t, "decision pick shop: picked", "gatewatch.instance=dead", "gatewatch.lb.candidates=2")
    retry = line_with(t, "decision retry all: retry (retry.connect_failure)", "gatewatch.instance=dead",
                      "gatewatch.retry.budget_remaining=")
    pick_live = line_with(t, "decision pick shop: picked", "gatewatch.instance=live", "gatewatch.lb.excluded=dead=")
    failover = line_with(t, "decision failover shop: failover (failover.retry_other_instance)",
                         "gatewatch.failover.from=dead gatewatch.failover.to=live")
    # a span's decisions and its attempts, interleaved by time: the story of the request
    assert route_edge < route_bal < pick_dead < failed < retry < pick_live < failover < second[0]


def test_timing_split_per_tier_and_per_attempt(local_text):
    timing = local_text.split("\ntiming")[1].split("\nlinked events")[0]
    split = re.compile(r"span (\w+): ([\d.]+ ms) = ([\d.]+ ms) in children \+ (-?[\d.]+ ms) own")
    tiers = {m[0]: m for m in split.findall(timing)}
    assert len(tiers) == 2, timing  # the edge and the balancer tier; the backend has no children
    for _, total, children, own in tiers.values():
        assert abs(ms(total) - ms(children) - ms(own)) <= 0.002  # arithmetic, not a timing threshold
    line_with(timing, "SERVER GET /api/orders/{id} [gatewatch-edge]", "in children", "own (before first")
    line_with(timing, "[gatewatch-balancer]", "in children", "own (before first", "between")
    line_with(timing, "SERVER GET", "[demo-backend]", "own (no CLIENT/INTERNAL children in the data)")
    first = line_with(timing, "attempt 1: CLIENT GET -> dead", "error.type=connect_refused")
    gap = line_with(timing, "gap before attempt 2:")
    second = line_with(timing, "attempt 2: CLIENT GET -> live", "next tier's SERVER")
    assert first < gap < second
    gap_line = timing.splitlines()[gap]
    assert "unexplained" in gap_line
    assert ("backoff " in gap_line) == (f"(no {Attr.TIMING_BACKOFF})" not in gap_line)


def test_the_ejection_the_failed_attempt_caused_is_a_linked_event(data, local_text):
    events = local_text.split("\nlinked events\n")[1].split("\n\nsources:")[0]
    line_with(events, "gatewatch.outlier.ejection  WARN  pool shop: dead ejected", "[gatewatch-balancer;")
    # the request served while `dead` was ejected names the ejection by its event id, when the runtime says so
    after = journey(data["trace"]["after"], "--dir", str(data["dir"]))
    assert after.returncode == 0, after.stderr
    balancer = [s for s in file_spans(data["dir"], data["trace"]["after"]) if s["kind"] == "SpanKind.SERVER"
                and s["resource"]["attributes"]["service.name"] == "gatewatch-balancer"]
    if Attr.EVENT_IDS in balancer[0]["attributes"]:
        line_with(after.stdout, "gatewatch.outlier.ejection", f"{Attr.EVENT_ID} named in a span's {Attr.EVENT_IDS}")


def test_policy_deny_and_the_untrusted_context_as_a_link(data):
    out = journey(data["trace"]["denied"], "--dir", str(data["dir"]))
    assert out.returncode == 0, out.stderr
    t = out.stdout
    assert t.splitlines()[0].startswith(f"trace {data['trace']['denied']}  services gatewatch-edge  duration ")
    assert "outcome denied_policy (HTTP 403)" in t.splitlines()[0]
    line_with(t, "gatewatch.policy.summary=office=deny:ip.denied", "gatewatch.trace_context=linked")
    line_with(t, f"link -> trace {CLIENT_TRACE} span {CLIENT_SPAN}")
    line_with(t, "decision policy office: deny (ip.denied)")
    assert "(parent" not in t  # a new root


def test_rotated_per_worker_files_and_bare_uppercase_ids(data, local_text, tmp_path):
    """The same records spread over a worker's rotated and current files, trace ids written without "0x" and
    in upper case, a line still being written and an unrelated file: the same journey."""
    for path in data["dir"].iterdir():
        stem, signal = path.name.split(".")[:2]
        lines = path.read_text().splitlines()
        if signal == "traces":
            lines = [line.replace(f'"0x{CLIENT_TRACE}"', f'"{CLIENT_TRACE.upper()}"') for line in lines]
        half = len(lines) // 2
        (tmp_path / f"{stem}-w0.{signal}.jsonl.1").write_text("".join(x + "\n" for x in lines[:half]))
        (tmp_path / f"{stem}-w0.{signal}.jsonl").write_text("".join(x + "\n" for x in lines[half:]) + '{"name": "GE')
    (tmp_path / "notes.txt").write_text(CLIENT_TRACE)
    out = journey(CLIENT_TRACE, "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert without_sources(out.stdout) == without_sources(local_text)


def test_json_is_the_same_model(data, local_text):
    out = journey(data["trace"]["retried"], "--dir", str(data["dir"]), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    ids = [s["span_id"] for s in doc["spans"]]
    assert set(ids) == {s["context"]["span_id"][2:] for s in file_spans(data["dir"], CLIENT_TRACE)}
    assert ids == re.findall(r"  span (\w{16})", local_text.split("\ntiming")[0])  # the same tree order
    assert doc["trace_id"] == CLIENT_TRACE and doc["outcome"] == "proxied"
    bal = next(s for s in doc["spans"] if s["kind"] == "SERVER" and s["service"] == "gatewatch-balancer")
    assert [d["attributes"][Attr.DECISION] for d in bal["decisions"]] == ["route", "pick", "retry", "pick",
                                                                          "failover"]
    assert [a["number"] for a in bal["timing"]["attempts"]] == [1, 2]
    assert doc["spans"][0]["parent_in_data"] is False and doc["spans"][0]["parent_span_id"] == CLIENT_SPAN
    assert "gatewatch.outlier.ejection" in [e["event_name"] for e in doc["linked_events"]]


# --- Tempo and Loki stand-ins --------------------------------------------------------------------------------


def iso_ns(text: str) -> int:
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return (calendar.timegm(dt.timetuple()) * 1_000_000 + dt.microsecond) * 1000


def any_value(v) -> dict:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}  # int64 is a string in protobuf-JSON
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, list):
        return {"arrayValue": {"values": [any_value(x) for x in v]}}
    return {"stringValue": str(v)}


def kvs(attrs: dict) -> list[dict]:
    return [{"key": k, "value": any_value(v)} for k, v in (attrs or {}).items()]


KINDS = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3}


def tempo_trace(spans: list[dict], style: str) -> dict:
    """What Tempo answers for GET /api/traces/{id}: `tempo2` as Tempo 2.x does it (protobuf-JSON: `batches`,
    base64 ids, enum names), `otlp` as the OTLP/JSON spec says (`resourceSpans`, hex ids, enum numbers)."""
    def ident(hex_id: str | None) -> str:
        if not hex_id:
            return ""
        raw = hex_id.removeprefix("0x")
        return base64.b64encode(bytes.fromhex(raw)).decode() if style == "tempo2" else raw.upper()

    def enum(kind: str, number: int, prefix: str):
        return f"{prefix}_{kind}" if style == "tempo2" else number

    groups: dict[str, tuple[dict, list]] = {}
    for s in spans:
        res = s["resource"]["attributes"]
        status = s["status"]["status_code"]
        kind = s["kind"].split(".")[1]
        groups.setdefault(json.dumps(res, sort_keys=True), (res, []))[1].append({
            "traceId": ident(s["context"]["trace_id"]), "spanId": ident(s["context"]["span_id"]),
            "parentSpanId": ident(s["parent_id"]), "name": s["name"], "kind": enum(kind, KINDS[kind], "SPAN_KIND"),
            "startTimeUnixNano": str(iso_ns(s["start_time"])), "endTimeUnixNano": str(iso_ns(s["end_time"])),
            "attributes": kvs(s["attributes"]),
            "status": {} if status == "UNSET" else {"code": enum(status, 2 if status == "ERROR" else 1, "STATUS_CODE")},
            "links": [{"traceId": ident(ln["context"]["trace_id"]), "spanId": ident(ln["context"]["span_id"]),
                       "attributes": kvs(ln["attributes"])} for ln in s["links"]]})
    batches = [{"resource": {"attributes": kvs(res)}, "scopeSpans": [{"scope": {"name": "gatewatch"}, "spans": sp}]}
               for res, sp in groups.values()]
    return {"batches": batches} if style == "tempo2" else {"resourceSpans": batches}


def go_string(v) -> str:
    """pcommon.Value.AsString, which Loki applies to every attribute it keeps."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    if isinstance(v, list):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def loki_entry(r: dict, with_event_name: bool) -> tuple[dict, int, str, dict]:
    """(stream labels, ns, line, structured metadata) as Loki's OTLP ingestion stores one log record."""
    meta = {re.sub(r"[^A-Za-z0-9_]", "_", k): go_string(v) for k, v in (r["attributes"] or {}).items()}
    meta.update({"severity_text": r["severity_text"], "severity_number": str(r["severity_number"]),
                 "scope_name": "gatewatch"})
    for key in ("trace_id", "span_id"):
        if r[key].strip("0x"):
            meta[key] = r[key][2:]
    if with_event_name:  # Loki keeps the OTLP event_name only since grafana/loki#21229
        meta["event_name"] = r["event_name"]
    labels = {"service_name": r["resource"]["attributes"]["service.name"]}
    return labels, iso_ns(r["timestamp"]), r["body"], meta


class StandIns:
    """Tempo and Loki on loopback, in a thread with its own loop (the command under test is a subprocess)."""

    def __init__(self, directory: Path, tempo_style="tempo2", loki_categorized=True, loki_event_name=True):
        self.spans = file_records(directory, "traces")
        self.logs = [loki_entry(r, loki_event_name) for r in file_records(directory, "logs")]
        self.tempo_style, self.categorized = tempo_style, loki_categorized
        self.tempo_mode = self.loki_mode = "ok"  # ok | 500 | garbage | hang
        self.queries: list[dict] = []
        self._release: asyncio.Event | None = None

    async def tempo(self, request: web.Request) -> web.StreamResponse:
        tid = request.match_info["trace_id"]
        if self.tempo_mode == "500":
            return web.Response(status=500, text="error querying ingesters")
        if self.tempo_mode == "garbage":
            return web.Response(status=200, text="<html>not a trace</html>", content_type="text/html")
        spans = [s for s in self.spans if s["context"]["trace_id"] == "0x" + tid]
        if not spans:
            return web.Response(status=404, text="trace not found")
        return web.json_response(tempo_trace(spans, self.tempo_style))

    async def loki(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        if self.loki_mode == "hang":
            await self._release.wait()
        q = request.query["query"]
        assert q.startswith('{service_name=~".+"} | '), q
        start, end = int(request.query["start"]), int(request.query["end"])
        want = set(re.findall(r'trace_id="(\w+)"', q)) | set(re.findall(r'trace_ids=~"\.\*(\w+)\.\*"', q))
        events = set(re.findall(r'gatewatch_event_id="(\w+)"', q))
        hits = [e for e in self.logs if start <= e[1] <= end and (
            e[3].get("trace_id") in want or any(t in e[3].get(k, "") for t in want for k in
                                                 ("gatewatch_event_trace_ids", "gatewatch_outlier_trace_ids"))
            or e[3].get("gatewatch_event_id") in events)]
        categorize = self.categorized and request.headers.get("X-Loki-Response-Encoding-Flags") == "categorize-labels"
        streams: dict[str, dict] = {}
        for labels, ns, line, meta in hits:
            stream = labels if categorize else {**labels, **meta}  # older Loki: metadata merged into the labels
            value = [str(ns), line, {"structuredMetadata": meta}] if categorize else [str(ns), line]
            key = json.dumps(stream, sort_keys=True)
            streams.setdefault(key, {"stream": stream, "values": []})["values"].append(value)
        data = {"resultType": "streams", "result": list(streams.values()), "stats": {}}
        if categorize:
            data["encodingFlags"] = ["categorize-labels"]
        return web.json_response({"status": "success", "data": data})

    def __enter__(self) -> Self:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def main():
            self._release = asyncio.Event()
            app = web.Application()
            app.router.add_get("/api/traces/{trace_id}", self.tempo)
            app.router.add_get("/loki/api/v1/query_range", self.loki)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
            ready.set()

        def run():
            self._loop.run_until_complete(main())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        async def stop():
            self._release.set()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def without_sources(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("sources: "))


@pytest.mark.parametrize("tempo_style, categorized, event_name", [("tempo2", True, True), ("otlp", False, False)])
def test_tempo_and_loki_give_the_same_text(data, local_text, tempo_style, categorized, event_name):
    with StandIns(data["dir"], tempo_style, categorized, event_name) as s:
        out = journey(CLIENT_TRACE, "--tempo", s.url, "--loki", s.url + "/")
    assert out.returncode == 0, out.stderr
    assert without_sources(out.stdout) == without_sources(local_text)
    assert f"tempo {s.url}/api/traces/{CLIENT_TRACE} (6 spans)" in out.stdout
    first = s.queries[0]
    assert f'trace_id="{CLIENT_TRACE}"' in first["query"] and first["direction"] == "forward"
    assert len(s.queries) in (1, 2)  # a second query only for the event ids spans name


def test_only_loki_when_tempo_dropped_the_trace(data):
    """Tail sampling may drop a trace that Loki still has the decisions of: Tempo's 404 is no failure."""
    with StandIns(data["dir"]) as s:
        s.spans = []
        out = journey(CLIENT_TRACE, "--tempo", s.url, "--loki", s.url, "--since", "1h")
    assert out.returncode == 0, out.stderr
    assert "no such trace (HTTP 404)" in out.stdout
    assert "outcome unknown (no SERVER span in the data)" in out.stdout.splitlines()[0]
    orphans = out.stdout.split("\ndecisions of spans not in the data\n")[1]
    line_with(orphans, "decision retry all: retry (retry.connect_failure)")
    line_with(orphans, "decision failover shop: failover (failover.retry_other_instance)")


@pytest.mark.parametrize("mode, message", [
    ("404", "no such trace (HTTP 404)"),
    ("500", "answered HTTP 500: error querying ingesters"),
    ("garbage", "answered HTTP 200 with a body that is not JSON"),
])
def test_tempo_failures_are_named(data, mode, message):
    with StandIns(data["dir"]) as s:
        if mode == "404":
            s.spans = []
        else:
            s.tempo_mode = mode
        out = journey(CLIENT_TRACE, "--tempo", s.url)
    assert out.returncode == 1 and out.stdout == ""
    assert message in out.stderr and f"{s.url}/api/traces/{CLIENT_TRACE}" in out.stderr
    if mode == "404":
        assert f"trace {CLIENT_TRACE} matches nothing" in out.stderr


def test_a_silent_loki_times_out(data):
    with StandIns(data["dir"]) as s:
        s.loki_mode = "hang"
        out = journey(CLIENT_TRACE, "--loki", s.url, "--timeout", "0.5")
    assert out.returncode == 1 and out.stdout == ""
    assert f"Loki at {s.url}/loki/api/v1/query_range?" in out.stderr
    assert "did not answer within 0.5 s" in out.stderr


def test_an_unknown_trace_matches_nothing(data):
    out = journey("f" * 32, "--dir", str(data["dir"]))
    assert out.returncode == 1 and out.stdout == ""
    assert f"trace {'f' * 32} matches nothing in: dir {data['dir']}" in out.stderr
    missing = journey("f" * 32, "--dir", str(data["dir"] / "nope"))
    assert missing.returncode == 1 and "no such directory" in missing.stderr


@pytest.mark.parametrize("arg", ["0af7651916cd43dd8448eb211c80319", "00-0af7651916cd43dd8448eb211c80319c",
                                 "0" * 32, "zz" * 16, f"{CLIENT_PARENT}-extra"])
def test_a_malformed_trace_id_is_a_usage_error(arg):
    out = journey(arg)
    assert out.returncode == 2 and out.stdout == ""
    assert "not a trace id" in out.stderr
