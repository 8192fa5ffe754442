"""Build a running Gatewatch process from a validated config, and stop it cleanly.

`Runtime(config)` wires everything explicitly (no import-time state): metrics registry, telemetry pipeline,
forwarder, one engine per layer with its snapshot, listeners, admin. `await rt.start()` binds (`BindError`, one
line naming the listener, its role and the address, when one cannot); `await rt.stop()` drains: readiness goes
503, listeners stop accepting, in-flight requests finish (bounded), telemetry flushes (bounded).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import gc
import json
import logging
import os
import socket
import ssl
import time
from datetime import datetime, timezone
from pathlib import Path

from aiohttp import web

from gatewatch import __version__, build_mode
from gatewatch.app.admin import build_admin_app
from gatewatch.app.series import init_series
from gatewatch.balancer.config import UpstreamTLSConfig
from gatewatch.balancer.retry import RetryBudgets
from gatewatch.balancer.runtime import BalancerRuntime
from gatewatch.config import ConfigError, GatewatchConfig, config_version, load_config, parse_address
from gatewatch.edge.policies.build import PolicyResources
from gatewatch.io.aiohttp_forwarder import AiohttpForwarder
from gatewatch.io.aiohttp_listener import AiohttpListener
from gatewatch.io.fast_forwarder import RawForwarder
from gatewatch.io.fast_listener import RawListener
from gatewatch.io.interfaces import Forwarder, Listener
from gatewatch.io.tcp_proxy import TcpListener
from gatewatch.io.h2_listener import H2Settings
from gatewatch.telemetry.names import H2Event, H2Reason
from gatewatch.io.tls import ALPN, ALPN_HTTP1, MIN_VERSIONS, ServerTLS, UpstreamTLS, client_context
from gatewatch.proxy import snapshot
from gatewatch.proxy.engine import Engine
from gatewatch.proxy.tcp import TcpSessions
from gatewatch.telemetry.config import resolve
from gatewatch.telemetry.metrics import Metrics
from gatewatch.telemetry.context import new_event_id
from gatewatch.telemetry.names import (Attr, DrainClose, DrainStep, Event, Label, Layer,
                                       TlsHandshakeFailure)
from gatewatch.telemetry.recorder import Telemetry

log = logging.getLogger("gatewatch")
RELOAD_HISTORY = 20  # reloads remembered for the admin
# The cyclic collector's thresholds once serving (CPython's default is 700, 10, 10). A request allocates and frees
# a few dozen container objects, nearly all freed by reference counting, yet at 700 the young generation was
# collected every ~40 requests with a pool of 1,000 instances (every ~570 with 3): ~4 % of the CPU, and full
# collections of 5-10 ms each. At 20,000 it is about one collection a second under load (bench/README.md, "The
# cyclic collector"); the young generation then holds at most ~20,000 objects (a few MB) in between.
GC_THRESHOLDS = (20_000, 20, 100)
# The I/O ends per `data_plane` (both pairs implement gatewatch.io.interfaces).
DATA_PLANES: dict[str, tuple[type, type]] = {"fast": (RawListener, RawForwarder),
                                             "aiohttp": (AiohttpListener, AiohttpForwarder)}


def default_service_name(cfg: GatewatchConfig) -> str:
    if cfg.edge and cfg.balancer and cfg.balancer.listeners:
        return "gatewatch"
    return "gatewatch-edge" if cfg.edge else "gatewatch-balancer"


class Runtime:
    def __init__(self, config: GatewatchConfig, env: dict[str, str] | None = None, worker: int | None = None,
                 ports: dict[str, int] | None = None, config_path: str | None = None):
        """`worker`: this process's index when `workers > 1` (listeners then share their ports with
        SO_REUSEPORT; `ports` gives the ports the supervisor chose for listeners configured with port 0)."""
        self.config_path = config_path  # re-read by reload()
        self._reload_lock = asyncio.Lock()
        # The last reloads (admin GET /config/version and the admin page): when, result, version from -> to, problems.
        self.reload_history: collections.deque[dict] = collections.deque(maxlen=RELOAD_HISTORY)
        self.worker = worker
        self.build = build_mode.state()  # the hot modules are imported by now: what runs, compiled or not
        self.metrics = Metrics(__version__, self.build.compiled)
        self._set_config(config)
        self.resolved = resolve(config.telemetry, default_service_name(config), env)
        if worker is not None:
            self.resolved.resource_attributes["gatewatch.worker"] = str(worker)
        for w in self.resolved.warnings:
            log.warning("telemetry: %s", w)
        # Workers write their own JSON-lines files: several processes appending to (and rotating) one file
        # would interleave or lose lines.
        stem = self.resolved.service_name + (f"-w{worker}" if worker is not None else "")
        self.telemetry = Telemetry(self.resolved, self.metrics, __version__, stem, config.telemetry.exporter)
        self._tls_built: dict[UpstreamTLSConfig, UpstreamTLS] = {}  # one context per distinct `tls` setting
        self.tls = self._upstream_tls(config)
        self.balancer = BalancerRuntime(config.balancer.pools, self.telemetry, self.metrics,
                                        tls=self._health_tls) if config.balancer else None
        self.pools = self.balancer.pools if self.balancer else {}
        listener_type, forwarder_type = DATA_PLANES[config.data_plane]
        self.forwarder: Forwarder = forwarder_type(_limits(config))
        self.forwarder.set_tls(self.tls)
        _h2_pools(self.forwarder, config)
        self.listeners: list[Listener] = []
        self.engines: dict[Layer, Engine] = {}
        self.policy_resources = PolicyResources(self.metrics, self.telemetry)
        self.budgets = RetryBudgets()  # live across reloads, like the pools
        self._listener_names: list[str] = []  # parallel to `listeners`: how a bind error names each one
        for layer, section in ((Layer.EDGE, config.edge), (Layer.BALANCER, config.balancer)):
            if section is None or not section.listeners:
                continue
            engine = Engine(self._snapshot(layer, config), self.forwarder, self.telemetry)
            self.engines[layer] = engine
            engine.websockets.pools = lambda name: self.pools.get(name)  # the running pools, after reloads too
            for i, lst in enumerate(section.listeners):
                self._listener_names.append(f"{layer.value}.listeners[{i}] {lst.name!r} (traffic)")
                host, port = parse_address(lst.address)
                port = (ports or {}).get(lst.name, port)
                if lst.mode == "tcp":  # L4 pass-through to a pool of this process (gatewatch.io.tcp_proxy)
                    sessions = TcpSessions(lst.name, lst, lambda: self.pools, self.telemetry, self.config_version)
                    self.listeners.append(TcpListener(lst.name, host, port, lst, sessions,
                                                      reuse_port=worker is not None or lst.reuse_port))
                    continue
                self.listeners.append(listener_type(lst.name, host, port, "https" if lst.tls else "http",
                                                    engine.handle, engine.reject, lst.max_header_size,
                                                    reuse_port=worker is not None or lst.reuse_port,
                                                    handle_now=engine.handle_now,
                                                    tls=self._server_tls(lst, config.data_plane),
                                                    on_tls=self._tls_observed))
                _http2(self.listeners[-1], lst, self._h2_observed)
        self._expiry_series: set[tuple[str, str, str]] = set()
        self._served_certificates()
        init_series(self.metrics, config)
        self._admin_runner: web.AppRunner | None = None
        self.admin_bound: tuple[str, int] | None = None
        self.ready = False
        self.draining = False  # /readyz answers 503 from the first step of stop()
        self.accepting = True  # the listeners' sockets are open (/readyz lists them); False once a drain closed them
        self.hurry = asyncio.Event()  # set by a second SIGTERM/SIGINT: skip what is left of the readiness delay
        self._drain_series()

    def _snapshot(self, layer: Layer, config: GatewatchConfig) -> snapshot.Snapshot:
        return snapshot.build(layer, config, self.pools, self.budgets, self.policy_resources, self.config_version)

    def _set_config(self, config: GatewatchConfig) -> None:
        """The running config, its version (on every SERVER span and decision log from now on) and load time."""
        self.config = config
        self.config_version = config_version(config)
        self.config_loaded_at = time.time()
        self.metrics.config_info.info({Label.VERSION: self.config_version})
        self.metrics.config_loaded.set(self.config_loaded_at)

    @property
    def config_loaded_at_text(self) -> str:
        return datetime.fromtimestamp(self.config_loaded_at, timezone.utc).isoformat(timespec="seconds")

    async def reload(self) -> tuple[bool, list[str]]:
        """Re-read the config file and swap each layer's snapshot whole (routes, policies, pools, URL
        upstreams, listener trace/forwarding settings). Requests already running finish on the snapshot they
        started with. A file with errors, or one that changes what only a restart can (listener addresses,
        admin, telemetry, data plane, workers, which layers exist), is refused and the running config stays.
        Recorded as `gatewatch_config_reloads_total{result}` and a `gatewatch.config.reload` event."""
        async with self._reload_lock:
            try:
                if not self.config_path:
                    raise ConfigError("(reload)", ["(file): this process was not started from a config file"])
                cfg = load_config(self.config_path)
                problems = restart_only_changes(self.config, cfg)
            except ConfigError as err:
                cfg, problems = None, err.problems
            if problems:
                self._reloaded("error", problems)
                return False, problems
            try:
                self.tls = self._upstream_tls(cfg)
                # Certificates are read again whatever the config says: a reload is how rotated files are
                # taken up. New connections get them; open ones keep the session they have.
                served = {lst.name: self._server_tls(lst, cfg.data_plane) for sec in (cfg.edge, cfg.balancer) if sec
                          for lst in sec.listeners}
            except (OSError, ssl.SSLError, ValueError) as err:  # a file changed between validation and now
                self._reloaded("error", [f"tls: {err}"])
                return False, [f"tls: {err}"]
            configured = {lst.name: lst for sec in (cfg.edge, cfg.balancer) if sec for lst in sec.listeners}
            for lst in self.listeners:
                if lst.name in served:
                    lst.tls = served[lst.name]
                if lst.name in configured:  # new connections get the new HTTP/2 limits (and ALPN, above)
                    _http2(lst, configured[lst.name], self._h2_observed)
            self._served_certificates()
            pools = await self.balancer.reconcile(cfg.balancer.pools) if self.balancer else {}
            self.pools = pools
            self.forwarder.set_limits(_limits(cfg))
            self.forwarder.set_tls(self.tls)
            _h2_pools(self.forwarder, cfg)
            previous = self.config_version
            self._set_config(cfg)
            for layer, engine in self.engines.items():
                engine.snapshot = self._snapshot(layer, cfg)
            tcp = {lst.name: lst for lst in (cfg.balancer.listeners if cfg.balancer else ()) if lst.mode == "tcp"}
            for lst in self.listeners:  # new TCP connections take the new timeouts, limits and PROXY setting
                if isinstance(lst, TcpListener) and lst.name in tcp:
                    lst.configure(tcp[lst.name], TcpSessions(lst.name, tcp[lst.name], lambda: self.pools,
                                                             self.telemetry, self.config_version))
            init_series(self.metrics, cfg)
            self._reloaded("ok", [], previous)
            return True, []

    def _reloaded(self, result: str, problems: list[str], previous: str | None = None) -> None:
        """One `gatewatch.config.reload` event: what was loaded (its version and when), from which version."""
        self.metrics.config_reloads.labels(result).inc()
        version = self.config_version
        self.reload_history.append({"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "result": result,
                                    "from": previous or version, "to": version, "problems": list(problems)})
        change = f" ({previous} -> {version})" if previous is not None else f" (still {version})"
        body = f"config reload from {self.config_path}: {result}{change}" + (
            f": {'; '.join(problems)}" if problems else "")
        (log.info if result == "ok" else log.error)("%s", body)
        self.telemetry.event(Event.CONFIG_RELOAD, body, {
            Attr.DECISION_RESULT: result, Attr.CONFIG_PATH: self.config_path or "", Attr.CONFIG_PROBLEMS: problems,
            Attr.CONFIG_VERSION: version, Attr.CONFIG_PREVIOUS_VERSION: previous or version,
            Attr.CONFIG_LOADED_AT: self.config_loaded_at_text,
            Attr.EVENT_ID: new_event_id()}, severity="INFO" if result == "ok" else "WARN")

    def bound_listeners(self) -> dict[str, str]:
        """The listeners accepting connections, name -> address (none once a drain has closed them)."""
        if not self.accepting:
            return {}
        return {lst.name: f"{lst.bound[0]}:{lst.bound[1]}" for lst in self.listeners if lst.bound}

    def refresh_gauges(self) -> None:
        if self.balancer:
            self.balancer.refresh_gauges()

    def upstream_state(self) -> dict:
        return {
            "pools": self.balancer.state() if self.balancer else {},
            "remotes": {u.name: {"url": u.url} for u in (self.config.edge.upstreams if self.config.edge else ())},
        }

    async def start(self) -> None:
        await self.telemetry.start()
        await self.policy_resources.start()
        if self.balancer:
            await self.balancer.start()
        host, port = parse_address(self.config.admin.address)
        if port and self.worker:
            port += self.worker  # one admin listener per worker: 9901, 9902, ...
        self._admin_runner = web.AppRunner(build_admin_app(self), handle_signals=False, access_log=None)
        await self._admin_runner.setup()
        # Shared with the replacement during a rolling restart (a worker's, supervisor.py; or a second process on
        # listeners with reuse_port): until the old process exits, either one answers on it.
        shared = self.worker is not None or any(lst.reuse_port for sec in (self.config.edge, self.config.balancer)
                                                if sec for lst in sec.listeners)
        site = web.TCPSite(self._admin_runner, host, port, reuse_address=True, reuse_port=True if shared else None)
        try:
            await site.start()
        except OSError as err:
            raise BindError("admin listener", host, port, err) from err
        self.admin_bound = tuple(site._server.sockets[0].getsockname()[:2])  # noqa: SLF001
        for lst, name in zip(self.listeners, self._listener_names):
            try:
                await lst.start()
            except OSError as err:
                raise BindError(name, lst.host, lst.port, err) from err
        self.refresh_gauges()
        self.ready = True

    def describe(self) -> dict:
        return {"pid": os.getpid(), "worker": self.worker, "service_name": self.resolved.service_name,
                "config_version": self.config_version,
                "admin": f"{self.admin_bound[0]}:{self.admin_bound[1]}" if self.admin_bound else None,
                "listeners": self.bound_listeners(), "telemetry": self.telemetry.destination,
                "build": self.build.as_dict(),
                "gc": {"thresholds": list(gc.get_threshold()), "frozen_objects": gc.get_freeze_count()}}

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain, then stop (config `drain`, docs/operations.md "Rolling restarts"). Each step is logged, counted
        in `gatewatch_drain_steps_total{step}` and recorded as a `gatewatch.drain` event:
        1. `started`: /readyz answers 503 at once; traffic is still served, as usual, for
           `drain.readiness_delay_s` (so a load balancer or kubelet takes this process out of rotation first);
        2. `stopped_accepting`: every listener closes its listening socket (another process bound to the port
           with SO_REUSEPORT now gets all new connections); from now on responses say `Connection: close` and
           idle keep-alive connections are closed after `drain.idle_close_s`;
        3. `drained` (every connection ended) or `grace_expired` (what was left after `grace_s` was cut).
        Then pools, forwarder, admin and telemetry stop (telemetry flushes, bounded). `grace_s` overrides
        `drain.grace_s`."""
        drain = self.config.drain
        grace_s = drain.grace_s if grace_s is None else grace_s
        self.draining = True
        delay = drain.readiness_delay_s if self.ready else 0.0
        self._drain_step(DrainStep.STARTED, self._open_connections(),
                         f"readiness fails from now on (/readyz 503); serving for {delay:g} s more")
        if delay:
            try:
                await asyncio.wait_for(self.hurry.wait(), delay)
            except TimeoutError:
                pass
        tasks = [asyncio.ensure_future(lst.stop(grace_s, idle_close_s=drain.idle_close_s)) for lst in self.listeners]
        await asyncio.sleep(0)  # each listener closes its socket before its first await
        self.accepting = False
        self._drain_step(DrainStep.STOPPED_ACCEPTING, self._open_connections(),
                         f"listeners closed; connections in flight get up to {grace_s:g} s")
        cut = 0
        for lst, result in zip(self.listeners, await asyncio.gather(*tasks, return_exceptions=True)):
            if isinstance(result, BaseException):  # one stuck listener must not keep the others from stopping
                log.warning("listener %s did not stop cleanly", lst.name, exc_info=result)
                continue
            for reason, n in (result or {}).items():
                self.metrics.drain_connections_closed.labels(lst.name, reason).inc(n)
            cut += (result or {}).get(DrainClose.DEADLINE.value, 0)
        if cut:
            self._drain_step(DrainStep.GRACE_EXPIRED, cut, f"{cut} connection(s) still busy after {grace_s:g} s cut")
        else:
            self._drain_step(DrainStep.DRAINED, 0, "every client connection ended")
        if self.balancer:
            await self.balancer.stop()
        for engine in self.engines.values():  # shadow requests still running (request mirroring) end here
            await engine.mirrors.close()
            await engine.caches.close()  # response caches' shared (Redis) tiers: background writes, subscriptions
        await self.forwarder.close()
        await self.policy_resources.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        await self.telemetry.stop(3.0)


    def _open_connections(self) -> int:
        return sum(len(getattr(lst, "connections", ())) for lst in self.listeners)

    def _drain_step(self, step: DrainStep, connections: int, what: str) -> None:
        if not self.ready:  # a start that failed (a bind error, said once): nothing was served, nothing to drain
            return
        self.metrics.drain_steps.labels(step.value).inc()
        body = f"drain: {step.value}: {what} ({connections} client connection(s) open)"
        (log.warning if step is DrainStep.GRACE_EXPIRED else log.info)("%s", body)
        self.telemetry.event(Event.DRAIN, body, {Attr.DRAIN_STEP: step.value, Attr.DRAIN_CONNECTIONS: connections,
                                                 Attr.EVENT_ID: new_event_id()},
                             severity="WARN" if step is DrainStep.GRACE_EXPIRED else "INFO")

    def _drain_series(self) -> None:
        """The drain counters at 0, so that a dashboard sees them before the first SIGTERM."""
        for step in DrainStep:
            self.metrics.drain_steps.labels(step.value)
        for lst in self.listeners:
            for reason in DrainClose:
                self.metrics.drain_connections_closed.labels(lst.name, reason.value)
            if getattr(lst, "http2", None) is not None:  # the HTTP/2 resets and GOAWAYs at 0 (issue 17)
                for event, reason in H2_SERIES:
                    self.metrics.h2_events.labels(lst.name, event.value, reason.value)

    def _upstream_tls(self, config: GatewatchConfig) -> dict[str, UpstreamTLS]:
        """TLS settings per pool and URL upstream that has `tls`. An unchanged setting keeps its context (and so
        its pooled connections) across a reload; the files were loaded once already when the config was
        validated, so a failure here is a file changed since then, reported as a reload error by the caller."""
        out: dict[str, UpstreamTLS] = {}
        built: dict[tuple[UpstreamTLSConfig, str], UpstreamTLS] = {}
        sources = [(p.name, p.tls, p.protocol) for p in (config.balancer.pools if config.balancer else ())]
        sources += [(u.name, u.tls, u.protocol) for u in (config.edge.upstreams if config.edge else ())]
        for name, tls, protocol in sources:
            if tls is None:
                continue
            key = (tls, protocol)  # an h2 pool's context offers ALPN h2 only (RFC 9113 §3.2)
            ready = built.get(key) or self._tls_built.get(key)
            if ready is None:
                ctx = client_context(tls.ca_file, tls.verify, tls.client_cert, tls.client_key, tls.min_version)
                if protocol == "h2":
                    ctx.set_alpn_protocols(["h2"])
                ready = UpstreamTLS(ctx, tls.server_name)
            out[name] = built[key] = ready
        self._tls_built = built  # only once every setting loaded: a failed reload keeps the running ones
        return out

    @staticmethod
    def _server_tls(lst, data_plane: str = "fast") -> ServerTLS | None:
        t = lst.tls
        if t is None:
            return None
        # h2 by ALPN only where the listener serves it (the fast data plane; not switched off in config)
        alpn = ALPN if lst.http2.enabled and data_plane == "fast" else ALPN_HTTP1
        return ServerTLS([(c.cert_file, c.key_file) for c in t.certificates], t.min_version, t.client_auth,
                         t.client_ca_file, t.handshake_timeout_s, t.client_cert_header, alpn)

    def _h2_observed(self, listener: str, event: str, reason: str) -> None:
        """An HTTP/2 connection event (h2_listener): connections and streams opened, resets and GOAWAYs by reason."""
        self.metrics.h2_events.labels(listener, event, reason).inc()

    def _tls_observed(self, listener: str, version: str | None, failure: TlsHandshakeFailure | None) -> None:
        """A listener's handshake ended: counted by protocol version, or by why it failed."""
        if failure is None:
            self.metrics.tls_handshakes.labels(listener, version or "").inc()
        else:
            self.metrics.tls_handshake_failures.labels(listener, failure.value).inc()

    def _served_certificates(self) -> None:
        """`gatewatch_tls_certificate_expiry_timestamp_seconds` for what the listeners serve now, and the
        handshake failure reasons at 0. A certificate no longer served loses its series (it must not alert)."""
        now: set[tuple[str, str, str]] = set()
        for lst in self.listeners:
            if lst.tls is None:
                continue
            for reason in TlsHandshakeFailure:
                self.metrics.tls_handshake_failures.labels(lst.name, reason.value)
            for version in MIN_VERSIONS:
                self.metrics.tls_handshakes.labels(lst.name, version)
            for cert in lst.tls.certificates:
                key = (lst.name, cert.label, cert.serial)
                self.metrics.tls_cert_expiry.labels(*key).set(cert.not_after)
                now.add(key)
        for gone in self._expiry_series - now:
            self.metrics.tls_cert_expiry.remove(*gone)
        self._expiry_series = now

    def _health_tls(self, pool: str) -> tuple | None:
        tls = self.tls.get(pool)
        return (tls.context, tls.server_name) if tls else None


class BindError(Exception):
    """A listener could not bind its address, said in one line that names it and its role:
    `edge.listeners[0] 'public' (traffic) cannot bind 0.0.0.0:80: permission denied (...)`."""

    def __init__(self, listener: str, host: str, port: int, err: OSError):
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if isinstance(err, socket.gaierror):
            why = f"cannot resolve {host!r} ({err.strerror or err})"
        else:
            why = (os.strerror(err.errno) if err.errno else str(err)).lower()
            if err.errno != errno.EACCES or 0 < port < 1024:
                why += _BIND_HINTS.get(err.errno, "").format(port=port)
        super().__init__(f"{listener} cannot bind {where}: {why}")


_BIND_HINTS = {
    errno.EADDRINUSE: " (another process listens there: ss -ltnp 'sport = :{port}')",
    errno.EACCES: " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: " (not an address of this host)",
}


def _limits(config: GatewatchConfig) -> dict[str, tuple[int, float]]:
    limits = {p.name: (p.max_connections_per_instance, p.keepalive_idle_s)
              for p in (config.balancer.pools if config.balancer else ())}
    upstreams = config.edge.upstreams if config.edge else ()
    limits.update({u.name: (u.max_connections, u.keepalive_idle_s) for u in upstreams})
    return limits


def restart_only_changes(old: GatewatchConfig, new: GatewatchConfig) -> list[str]:
    """What a reload cannot apply (bound sockets, the telemetry pipeline, processes), as `field: why` lines."""
    problems = []
    for key in ("admin", "telemetry", "data_plane", "workers"):
        if getattr(old, key) != getattr(new, key):
            problems.append(f"{key}: changed; this takes a restart")
    for name in ("edge", "balancer"):
        a, b = getattr(old, name), getattr(new, name)
        if (a is None) != (b is None) or (a and bool(a.listeners) != bool(b.listeners)):
            problems.append(f"{name}: added or removed (or its listeners); this takes a restart")
            continue
        if a is None:
            continue
        bound = lambda sec: [(lst.name, lst.address, lst.max_header_size, lst.tls is None, lst.mode)  # noqa: E731
                             for lst in sec.listeners]
        if bound(a) != bound(b):
            problems.append(f"{name}.listeners: names, addresses, max_header_size or whether TLS is on changed;"
                            " this takes a restart")
        else:
            problems += [f"{name}.listeners[{i}].reuse_port: changed; this takes a restart"
                         for i, (x, y) in enumerate(zip(a.listeners, b.listeners)) if x.reuse_port != y.reuse_port]
    return problems


async def serve(config: GatewatchConfig, ready_file: str | None = None, stop: asyncio.Event | None = None,
                worker: int | None = None, ports: dict[str, int] | None = None, config_path: str | None = None) -> None:
    rt = Runtime(config, worker=worker, ports=ports, config_path=config_path)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    reloads: set[asyncio.Task] = set()

    def on_hup() -> None:
        task = loop.create_task(rt.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        # SIGUSR2 would end the process without a drain: a rolling restart is the supervisor's (workers > 1).
        loop.add_signal_handler(signal.SIGUSR2, lambda: log.warning(
            "SIGUSR2 ignored: a rolling restart is SIGUSR2 to the supervisor of `workers` > 1, or a second process "
            "on listeners with reuse_port (docs/operations.md)"))
    except (NotImplementedError, RuntimeError, AttributeError):
        pass
    try:
        await rt.start()
        # Everything built so far (modules, config, compiled routes, pools, SDK objects) lives as long as the
        # process: move it out of the cyclic collector's reach, so full collections stay short (they showed up
        # as tens of milliseconds of p99 with large pools).
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        info = rt.describe()
        log.info("gatewatch ready: %s", json.dumps(info))
        if ready_file:
            tmp = Path(ready_file + ".tmp")
            tmp.write_text(json.dumps(info))
            os.replace(tmp, ready_file)
        await stop.wait()
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second one skips what is left of the readiness delay
            try:
                loop.add_signal_handler(sig, rt.hurry.set)
            except (NotImplementedError, RuntimeError):
                pass
    finally:
        await rt.stop()


H2_SERIES = ((H2Event.CONNECTION, H2Reason.OPENED), (H2Event.STREAM, H2Reason.OPENED),
             (H2Event.STREAM, H2Reason.REFUSED), (H2Event.RESET, H2Reason.CLIENT_RESET),
             (H2Event.RESET, H2Reason.REFUSED_STREAM), (H2Event.RESET, H2Reason.PROTOCOL_ERROR),
             (H2Event.GOAWAY, H2Reason.RAPID_RESET), (H2Event.GOAWAY, H2Reason.HEADER_LIST_TOO_LARGE),
             (H2Event.GOAWAY, H2Reason.DRAIN))


def _http2(listener, cfg, observe) -> None:
    """A listener's HTTP/2 settings from its config (listeners without HTTP/2 support ignore them)."""
    if not hasattr(listener, "http2"):
        return
    h = cfg.http2
    listener.http2 = H2Settings(True, h.max_concurrent_streams, h.max_header_list_size, h.initial_window_size,
                                h.connection_window_size, h.max_frame_size, h.max_resets, h.reset_window_s,
                                h.max_streams_per_s) if h.enabled else None
    listener.on_h2 = observe


def _h2_pools(forwarder, cfg) -> None:
    """The pools and URL upstreams that speak HTTP/2 (`protocol: h2`), for a forwarder that can (the fast one)."""
    if hasattr(forwarder, "h2_pools"):
        forwarder.h2_pools = frozenset(p.name for p in (*(cfg.balancer.pools if cfg.balancer else ()),
                                                        *(cfg.edge.upstreams if cfg.edge else ()))
                                       if p.protocol == "h2")
