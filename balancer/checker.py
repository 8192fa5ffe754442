"""Active health checks (control plane, aiohttp): one task per pool probes each instance every `interval_s`
± `jitter_s`, HTTP (method, path, Host, expected statuses, timeout) or TCP connect. Probes are not request
traces: they carry no trace context and make no spans; they are counted in `gatewatch_health_probes_total`
and only verdict flips become events (`Pool.probe` applies the rise/fall thresholds). `sync()` follows the
pool's membership (service discovery): a new instance is probed at once, a removed one's probing stops.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
import ssl

import aiohttp

from gatewatch.balancer.config import HealthCheckConfig, status_set
from gatewatch.balancer.pool import Pool
from gatewatch.telemetry.names import ProbeResult

log = logging.getLogger("gatewatch.health")


# (SSLContext, server name or None for the host) of a pool whose instances speak TLS; the app builds it from the
# pool's `tls` (gatewatch.io.tls), so probes verify exactly what requests verify.
TLSSettings = tuple[ssl.SSLContext, "str | None"]


async def probe_http(session: aiohttp.ClientSession, cfg: HealthCheckConfig, host: str, port: int,
                     statuses: frozenset[int], tls: TLSSettings | None = None) -> tuple[bool, str]:
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    scheme = "https" if tls else "http"
    try:
        async with session.request(cfg.method, f"{scheme}://{hostport}{cfg.path}",
                                   headers={"Host": cfg.host or hostport, "User-Agent": "gatewatch-health-check"},
                                   timeout=aiohttp.ClientTimeout(total=cfg.timeout_s), allow_redirects=False,
                                   ssl=tls[0] if tls else True, server_hostname=tls[1] if tls else None) as r:
            await r.read()
            return r.status in statuses, f"status {r.status}"
    except asyncio.TimeoutError:
        return False, "timeout"
    except aiohttp.ClientSSLError as err:  # connected, but the handshake failed: not "refused"
        return False, f"tls_error ({getattr(err, 'certificate_error', None) or err})"
    except aiohttp.ClientConnectorDNSError as err:
        return False, f"dns_error ({err.os_error.strerror or err.os_error})"
    except aiohttp.ClientConnectorError as err:
        return False, _connect_failed(err.os_error)
    except aiohttp.ClientError as err:
        return False, f"error {type(err).__name__}"


async def probe_tcp(cfg: HealthCheckConfig, host: str, port: int,
                    tls: TLSSettings | None = None) -> tuple[bool, str]:
    """A connect, and with `tls` a completed, verified handshake."""
    try:
        async with asyncio.timeout(cfg.timeout_s):
            _, writer = await asyncio.open_connection(host, port, ssl=tls[0] if tls else None,
                                                      server_hostname=(tls[1] or host) if tls else None)
        writer.close()
        return True, "handshake" if tls else "connected"
    except TimeoutError:
        return False, "timeout"
    except ssl.SSLError as err:
        return False, f"tls_error ({err})"
    except socket.gaierror as err:
        return False, f"dns_error ({err.strerror or err})"
    except OSError as err:
        return False, _connect_failed(err)


def _connect_failed(err: OSError) -> str:
    """A probe's connect failure, by step as the data path's `error.type` says it (refused, or the OS's reason)."""
    if isinstance(err, ConnectionRefusedError) or err.errno == errno.ECONNREFUSED:
        return "connect_refused"
    return f"connect_error ({err.strerror or err})"


class HealthChecker:
    def __init__(self, pool: Pool, metrics, rng: random.Random | None = None, tls: TLSSettings | None = None):
        self.pool = pool
        self.tls = tls
        self.cfg = pool.config.health_check
        self.metrics = metrics
        self.rng = rng or random.Random()
        self._statuses = status_set(self.cfg.expected_statuses)
        self._tasks: dict[tuple[str, str, int], asyncio.Task] = {}  # (id, host, port) → its probe loop
        self._session: aiohttp.ClientSession | None = None
        self._started = False

    async def start(self) -> None:
        if self.cfg.type == "http":
            # No connection reuse: a probe must see a fresh connect, like a new request would.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                                  auto_decompress=False, trust_env=False)
        self._started = True
        self.sync(spread=True)

    def sync(self, spread: bool = False) -> None:
        """Probe loops for the pool's current instances: new ones start (at once unless `spread`), removed ones
        stop."""
        if not self._started:
            return
        loop = asyncio.get_running_loop()
        now = {(e.id, e.host, e.port) for e in self.pool.endpoints}
        for key in [k for k in self._tasks if k not in now]:
            self._tasks.pop(key).cancel()
        for key in sorted(now - self._tasks.keys()):
            self._tasks[key] = loop.create_task(self._loop(*key, spread=spread))

    async def _loop(self, endpoint_id: str, host: str, port: int, spread: bool = True) -> None:
        cfg = self.cfg
        counter = self.metrics.health_probes
        # Spread the first probes over one interval so a big pool does not probe everything at once; an
        # instance discovery added is probed at once (it waits for that probe to take traffic).
        if spread:
            await asyncio.sleep(self.rng.uniform(0, min(cfg.interval_s, 1.0)))
        while True:
            try:
                if cfg.type == "http":
                    ok, detail = await probe_http(self._session, cfg, host, port, self._statuses, self.tls)
                else:
                    ok, detail = await probe_tcp(cfg, host, port, self.tls)
            except Exception:  # a probe bug must not stop checking this instance
                log.exception("health probe of %s/%s failed unexpectedly", self.pool.name, endpoint_id)
                ok, detail = False, "internal_error"
            counter.labels(self.pool.name, endpoint_id, (ProbeResult.PASS if ok else ProbeResult.FAIL).value).inc()
            self.pool.probe(endpoint_id, ok, detail)
            await asyncio.sleep(max(0.05, cfg.interval_s + self.rng.uniform(-cfg.jitter_s, cfg.jitter_s)))

    async def stop(self) -> None:
        self._started = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
