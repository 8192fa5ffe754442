"""The admin listener (aiohttp.web, loopback by default, separate from traffic). docs/admin.md

GET /healthz   liveness: the process runs. Always open (no token), like /readyz.
GET /readyz    readiness: every listener is bound and serving (503 while starting or draining).
GET /metrics   Prometheus text; OpenMetrics with exemplars when the client asks (Accept: application/openmetrics-text).
GET /config    the effective configuration as JSON, secrets redacted (gatewatch.app.redact); its version and load
               time in the X-Gatewatch-Config-Version and X-Gatewatch-Config-Loaded-At headers.
GET /config/version  {"version", "loaded_at", "path", "reloads"}: which configuration this process runs, and the
               last reloads (newest first: at, result, from, to, problems).
GET /status    what the admin page shows in its header: the above, the process, and what needs the token.
GET /routes    per layer, each route: match, upstream, policies (name, type, shadow), timeouts, retries, rewrite.
GET /upstreams pools (per instance: state, priority, weight, in-flight, slow start, ejections, ejected_until,
               draining) and remote upstreams.
GET /events    the recent non-allow request decisions and state-change events (telemetry.journal), newest
               first; `?after=SEQ` returns only newer ones. Each links its trace when admin.trace_url_template
               is set.
GET /          the live admin page (gatewatch/app/admin_page: static HTML, CSS and JS polling the above).
POST /upstreams/{pool}/instances/{instance}/drain    stop sending new requests to it (in-flight ones finish).
POST /upstreams/{pool}/instances/{instance}/undrain  take it back.
POST /reload   re-read the config file (like SIGHUP): 200 {"reloaded": true}, or 409 with the problems.
With admin.token_file / token_env, every POST needs `Authorization: Bearer <token>` (and every GET but the probes
with admin.protect_reads): gatewatch.app.admin_auth.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from gatewatch.app.admin_auth import AdminAuth
from gatewatch.app.redact import redacted_config

if TYPE_CHECKING:
    from gatewatch.app.runtime import Runtime

PAGE_DIR = Path(__file__).with_name("admin_page")
PAGE_FILES = {"/": ("index.html", "text/html"), "/admin.js": ("admin.js", "text/javascript"),
              "/admin.css": ("admin.css", "text/css"), "/favicon.svg": ("favicon.svg", "image/svg+xml")}
# The page loads only its own script and style, and talks only to this listener (no inline script or style).
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
API_CSP = "default-src 'none'; frame-ancestors 'none'"


def build_admin_app(rt: Runtime) -> web.Application:
    auth = AdminAuth(rt.config.admin, rt.metrics.registry)
    redacted: dict[str, dict] = {}  # config version → redacted dump (a reload makes a new version)

    def current() -> dict:
        if rt.config_version not in redacted:
            redacted.clear()
            redacted[rt.config_version] = redacted_config(rt.config)
        return redacted[rt.config_version]

    def secured(resp: web.StreamResponse) -> web.StreamResponse:
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers.setdefault("Content-Security-Policy", API_CSP)
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @web.middleware
    async def guard(request: web.Request, handler) -> web.StreamResponse:
        refused = auth.refuse(request)
        if refused is not None:  # (not `or`: a response is a MutableMapping, falsy while it holds no user data)
            return secured(refused)
        try:
            return secured(await handler(request))
        except web.HTTPException as err:  # 404, 405: the same headers
            secured(err)
            raise

    app = web.Application(middlewares=[guard])

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
        return web.Response(text=json.dumps(current(), indent=2), content_type="application/json",
                            headers={"X-Gatewatch-Config-Version": rt.config_version,
                                     "X-Gatewatch-Config-Loaded-At": rt.config_loaded_at_text})

    def version() -> dict:
        return {"version": rt.config_version, "loaded_at": rt.config_loaded_at_text, "path": rt.config_path,
                "reloads": list(reversed(rt.reload_history))}

    async def config_version(_: web.Request) -> web.Response:
        return web.json_response(version())

    async def status(_: web.Request) -> web.Response:
        return web.json_response({
            **version(), "process": rt.describe(), "ready": rt.ready and not rt.draining,
            "build": rt.build.as_dict(modules=True),
            "auth": {"token_set": auth.token_set, "writes": auth.token_set,
                     "reads": auth.token_set and rt.config.admin.protect_reads},
            "trace_links": rt.config.admin.trace_url_template is not None})

    async def routes(_: web.Request) -> web.Response:
        data = current()
        return web.json_response({layer: [_route(r) for r in (data.get(layer) or {}).get("routes", [])]
                                  for layer in ("edge", "balancer") if data.get(layer)})

    async def upstreams(_: web.Request) -> web.Response:
        return web.json_response(_upstreams(rt))

    async def events(request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "0"))
        except ValueError:
            return web.json_response({"error": "after: expected an integer (a seq from an earlier answer)"},
                                     status=400)
        journal = rt.telemetry.journal
        return web.json_response({"size": journal.size, "total": journal.total,
                                  "entries": journal.entries(rt.config.admin.trace_url_template, after)})

    async def drain(request: web.Request) -> web.Response:
        pool, instance = request.match_info["pool"], request.match_info["instance"]
        on = request.match_info["action"] == "drain"
        if not rt.balancer or not rt.balancer.drain(pool, instance, on):
            return web.json_response({"error": f"no instance {instance!r} in pool {pool!r}"}, status=404)
        return web.json_response({"pool": pool, "instance": instance, "draining": on})

    async def reload(_: web.Request) -> web.Response:
        ok, problems = await rt.reload()
        return web.json_response({"reloaded": ok, "problems": problems, "version": rt.config_version},
                                 status=200 if ok else 409)

    async def page(request: web.Request) -> web.Response:
        name, ctype = PAGE_FILES[request.path]
        return web.Response(body=(PAGE_DIR / name).read_bytes(), content_type=ctype, charset="utf-8",
                            headers={"Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY",
                                     "Referrer-Policy": "no-referrer"})

    app.router.add_post("/upstreams/{pool}/instances/{instance}/{action:drain|undrain}", drain)
    app.router.add_post("/reload", reload)
    for path in PAGE_FILES:
        app.router.add_get(path, page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/config", config)
    app.router.add_get("/config/version", config_version)
    app.router.add_get("/status", status)
    app.router.add_get("/routes", routes)
    app.router.add_get("/upstreams", upstreams)
    app.router.add_get("/events", events)
    return app


def _route(r: dict) -> dict:
    """A route as the page lists it (from the redacted config): where it goes, and its policies by type/name."""
    out = {k: r.get(k) for k in ("name", "match", "upstream", "upstreams", "mirror", "timeouts", "retries",
                                 "rewrite")}
    out["policies"] = [{"name": p["name"], "type": p["type"], "shadow": p.get("shadow", False)}
                       for p in r.get("policies") or ()]
    return out


def _upstreams(rt: Runtime) -> dict:
    """`Runtime.upstream_state()` plus what the page shows per instance: draining, and until when (wall clock,
    RFC 3339) an ejected instance stays out."""
    state = rt.upstream_state()
    pools = rt.balancer.pools if rt.balancer else {}
    now_wall = time.time()
    for name, pool_state in state.get("pools", {}).items():
        pool = pools.get(name)
        if pool is None:
            continue
        now = pool.clock()
        for inst in pool_state.get("instances", []):
            live = pool.instances.get(inst["id"])
            if live is None:
                continue
            inst["draining"] = live.draining
            until = live.outlier.ejected_until if live.outlier else 0.0
            inst["ejected_until"] = (datetime.fromtimestamp(now_wall + until - now, UTC)
                                     .isoformat(timespec="seconds") if until > now else None)
    state["process"] = {"pid": os.getpid(), "worker": rt.worker}
    return state
