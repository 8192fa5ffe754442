"""The admin listener (aiohttp.web, loopback by default, separate from traffic).

GET /healthz   liveness: the process runs.
GET /readyz    readiness: every listener is bound and serving (503 while starting or draining).
GET /metrics   Prometheus text; OpenMetrics with exemplars when the client asks (Accept: application/openmetrics-text).
GET /config    the effective configuration as JSON (OTLP headers redacted); its version and load time in the
               X-Gatewatch-Config-Version and X-Gatewatch-Config-Loaded-At headers.
GET /config/version  {"version", "loaded_at", "path"}: which configuration this process runs.
GET /upstreams pools (per instance: state, priority, in-flight, slow start, ejections) and remote upstreams.
POST /upstreams/{pool}/instances/{instance}/drain    stop sending new requests to it (in-flight ones finish).
POST /upstreams/{pool}/instances/{instance}/undrain  take it back.
POST /reload   re-read the config file (like SIGHUP): 200 {"reloaded": true}, or 409 with the problems.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gatewatch.app.runtime import Runtime


def build_admin_app(rt: "Runtime") -> web.Application:
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready = rt.ready and not rt.draining
        return web.json_response({"ready": ready, "draining": rt.draining, "listeners": rt.bound_listeners()},
                                 status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        rt.refresh_gauges()
        body, ctype = rt.metrics.exposition(request.headers.get("Accept"))
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = ctype
        return resp

    async def config(_: web.Request) -> web.Response:
        data = rt.config.model_dump(mode="json")
        otlp = data.get("telemetry", {}).get("otlp", {})
        if otlp.get("headers"):
            otlp["headers"] = {k: "<redacted>" for k in otlp["headers"]}
        return web.Response(text=json.dumps(data, indent=2), content_type="application/json",
                            headers={"X-Gatewatch-Config-Version": rt.config_version,
                                     "X-Gatewatch-Config-Loaded-At": rt.config_loaded_at_text})

    async def config_version(_: web.Request) -> web.Response:
        return web.json_response({"version": rt.config_version, "loaded_at": rt.config_loaded_at_text,
                                  "path": rt.config_path})

    async def upstreams(_: web.Request) -> web.Response:
        return web.json_response(rt.upstream_state())

    async def drain(request: web.Request) -> web.Response:
        pool, instance = request.match_info["pool"], request.match_info["instance"]
        on = request.match_info["action"] == "drain"
        if not rt.balancer or not rt.balancer.drain(pool, instance, on):
            return web.json_response({"error": f"no instance {instance!r} in pool {pool!r}"}, status=404)
        return web.json_response({"pool": pool, "instance": instance, "draining": on})

    async def reload(_: web.Request) -> web.Response:
        ok, problems = await rt.reload()
        return web.json_response({"reloaded": ok, "problems": problems}, status=200 if ok else 409)

    app.router.add_post("/upstreams/{pool}/instances/{instance}/{action:drain|undrain}", drain)
    app.router.add_post("/reload", reload)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/config", config)
    app.router.add_get("/config/version", config_version)
    app.router.add_get("/upstreams", upstreams)
    return app
