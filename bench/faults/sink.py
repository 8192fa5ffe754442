"""The soak's OTLP collector stand-in: OTLP/HTTP protobuf on a fixed port, counting per gatewatch process.

    python -m faults.sink --port P --status-file FILE

Every export is parsed with the official `opentelemetry-proto` messages (`ParseFromString`), like
bench/otlp_sink.py and the tests' receiver; unlike them it binds a given port (the soak kills it and starts it
again where gatewatch's config points) and counts per exporting process: spans by kind and log records by
`event_name`, keyed by the resource's `gatewatch.worker` and `service.instance.id` (a new id per gatewatch
process, so a restarted worker is a new key). The counts are written atomically to `--status-file` *before*
the export is answered, so a record counted here was decoded whether or not gatewatch saw the answer, and a
SIGKILL never loses a count the file does not show.

The soak hangs it with SIGSTOP (the kernel still completes TCP handshakes into the backlog and buffers what is
sent, but nothing is read or answered: a collector stuck in a pause or a deadlock), kills it with SIGKILL and
starts a new one on the same port.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import json
import os
import signal
import time
from pathlib import Path

from aiohttp import web
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _resource_key(resource) -> str:
    a = {kv.key: kv.value.string_value for kv in resource.attributes}
    return f"{a.get('gatewatch.worker', '-')}|{a.get('service.instance.id', '-')}"


class Counts:
    def __init__(self, status_file: Path):
        self.path = status_file
        self.started = time.time()
        self.by_process: dict[str, dict] = {}
        self.requests = collections.Counter()

    def _entry(self, key: str) -> dict:
        e = self.by_process.get(key)
        if e is None:
            e = self.by_process[key] = {"spans": 0, "logs": 0, "kinds": collections.Counter(),
                                        "events": collections.Counter(), "first_seen": time.time()}
        return e

    def traces(self, msg) -> None:
        for rs in msg.resource_spans:
            e = self._entry(_resource_key(rs.resource))
            for ss in rs.scope_spans:
                for s in ss.spans:
                    e["spans"] += 1
                    e["kinds"][KINDS.get(s.kind, str(s.kind))] += 1
        self.requests["traces"] += 1

    def logs(self, msg) -> None:
        for rl in msg.resource_logs:
            e = self._entry(_resource_key(rl.resource))
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    e["logs"] += 1
                    e["events"][r.event_name or "(none)"] += 1
        self.requests["logs"] += 1

    def write(self) -> None:
        doc = {"pid": os.getpid(), "started": self.started, "time": time.time(), "requests": dict(self.requests),
               "by_process": {k: {**v, "kinds": dict(v["kinds"]), "events": dict(v["events"])}
                              for k, v in self.by_process.items()}}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.path)


async def serve(port: int, counts: Counts) -> None:
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if request.match_info["signal"] == "traces":
            msg = trace_service_pb2.ExportTraceServiceRequest()
            msg.ParseFromString(body)
            counts.traces(msg)
            out = trace_service_pb2.ExportTraceServiceResponse()
        elif request.match_info["signal"] == "logs":
            msg = logs_service_pb2.ExportLogsServiceRequest()
            msg.ParseFromString(body)
            counts.logs(msg)
            out = logs_service_pb2.ExportLogsServiceResponse()
        else:
            return web.Response(status=404)
        counts.write()  # before answering: what gatewatch counts as exported is always in the file
        return web.Response(body=out.SerializeToString(), content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/{signal}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    counts.write()
    print(f"sink: listening on 127.0.0.1:{port} (pid {os.getpid()})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    counts.write()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--status-file", required=True)
    a = ap.parse_args()
    asyncio.run(serve(a.port, Counts(Path(a.status_file))))
