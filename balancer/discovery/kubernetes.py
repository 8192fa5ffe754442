"""Instances from the EndpointSlices (discovery.k8s.io/v1) of a Kubernetes Service, watched.

The API's list-and-watch protocol (Kubernetes API concepts, "Efficient detection of changes"):
1. LIST `/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector=kubernetes.io/service-name={svc}`
   (paged with `limit`/`continue`): every slice, and the list's `metadata.resourceVersion`.
2. WATCH the same with `watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=N`: a chunked stream
   of JSON lines `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`. Each event's object carries
   the new resourceVersion; a BOOKMARK carries only that (no change to apply). When the server ends the stream
   (timeoutSeconds), the watch resumes from the last resourceVersion seen — no relist.
3. `410 Gone` (the HTTP status, or an ERROR event whose Status has code 410: the resourceVersion is older than the
   server keeps): relist from scratch. Any other failure (connect, 5xx, 401/403, a broken stream): retry after a
   doubling, jittered backoff (`backoff_base_s` → `backoff_max_s`), resuming the watch when there is a
   resourceVersion to resume from.

Endpoints (EndpointSlice v1 `conditions`, KEP-1672): `ready` (unset means true) and not `terminating`: an
instance. `terminating` (whatever `serving` says): a draining instance — no new requests, in-flight ones finish.
Not ready and not terminating (starting, or failing its readiness probe): left out. An endpoint's first address
is used (the API says all of them are fungible); its id is the pod's name (`targetRef`), its zone the
endpoint's `zone`. The port is the slices' port named (or numbered) `port`, or their only port.

Credentials: `api_server` (+ `token_file`, `ca_file`), else in-cluster: https://$KUBERNETES_SERVICE_HOST:
$KUBERNETES_SERVICE_PORT, the service account's token and CA (re-read on each connect: projected tokens rotate).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import ssl

import aiohttp

from gatewatch.balancer.config import InstanceConfig, KubernetesDiscoveryConfig
from gatewatch.balancer.discovery import Failed, Found, Publish
from gatewatch.schema import NAME_PATTERN
from gatewatch.telemetry.names import DiscoveryResult, DiscoverySource

log = logging.getLogger("gatewatch.discovery")
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
PAGE = 500
_NAME = re.compile(NAME_PATTERN)


class Gone(Exception):
    """410: the resourceVersion is too old; relist."""


class ApiError(Exception):
    def __init__(self, result: DiscoveryResult, detail: str):
        super().__init__(detail)
        self.result = result


def slice_instances(slices: dict[str, dict], port: str | int | None) -> tuple[tuple[InstanceConfig, ...], str | None]:
    """The instances of a Service's slices (sorted by slice name; duplicates across slices once), and a problem
    with the port choice if there is one."""
    out: dict[str, InstanceConfig] = {}
    problem = None
    for name in sorted(slices):
        sl = slices[name]
        ports = [p for p in (sl.get("ports") or []) if isinstance(p, dict) and p.get("port")]
        if port is None:
            if len(ports) > 1:
                problem = f"EndpointSlice {name} has {len(ports)} ports: set 'port' (a name or number)"
                continue
            chosen = ports[0]["port"] if ports else None
        else:
            chosen = next((p["port"] for p in ports if p.get("name") == port or p.get("port") == port), None)
        if chosen is None:
            continue
        for ep in sl.get("endpoints") or []:
            inst = _instance(ep, chosen)
            if inst is not None:
                out.setdefault(inst.instance_id, inst)
    return tuple(out.values()), problem


def _instance(ep: dict, port: int) -> InstanceConfig | None:
    addresses = ep.get("addresses") or []
    cond = ep.get("conditions") or {}
    terminating = cond.get("terminating") is True
    ready = cond.get("ready") is not False  # unset: ready (the API's documented meaning)
    if not addresses or not (ready or terminating):
        return None
    ref = (ep.get("targetRef") or {}).get("name")
    zone = ep.get("zone")
    try:
        return InstanceConfig(host=addresses[0], port=port,
                              id=ref if isinstance(ref, str) and _NAME.match(ref) else None,
                              zone=zone if isinstance(zone, str) and _NAME.match(zone) else None,
                              draining=terminating)
    except ValueError:  # e.g. an address that is not a host: skip it, not the whole slice
        log.warning("EndpointSlice endpoint %r skipped (not a usable address)", addresses[0])
        return None


class EndpointSliceSource:
    kind = DiscoverySource.K8S

    def __init__(self, cfg: KubernetesDiscoveryConfig, env: dict[str, str] | None = None,
                 rng: random.Random | None = None, sa_dir: str = SA_DIR, page_size: int = PAGE):
        """`env`, `sa_dir`: where in-cluster settings are read (the process's environment, the standard
        service-account directory); `page_size`: LIST `limit`."""
        self.cfg = cfg
        self.env = os.environ if env is None else env
        self.rng = rng or random.Random()
        self.sa_dir = sa_dir
        self.page_size = page_size
        self.what = f"k8s {cfg.namespace}/{cfg.service}"
        self.slices: dict[str, dict] = {}
        self.rv: str | None = None

    # --- where and how to connect --------------------------------------------------------------------------

    def _server(self) -> tuple[str, str | None, str | None]:
        """(base URL, token file, CA file)."""
        cfg = self.cfg
        if cfg.api_server:
            return cfg.api_server.rstrip("/"), cfg.token_file, cfg.ca_file
        host, port = self.env.get("KUBERNETES_SERVICE_HOST"), self.env.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise ApiError(DiscoveryResult.ERROR, "not in a cluster (KUBERNETES_SERVICE_HOST/PORT unset) and no "
                                                  "'api_server' configured")
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{port}", f"{self.sa_dir}/token", f"{self.sa_dir}/ca.crt"

    def _session(self) -> tuple[aiohttp.ClientSession, str]:
        base, token_file, ca_file = self._server()
        headers = {"Accept": "application/json", "User-Agent": "gatewatch-discovery"}
        if token_file:
            try:
                with open(token_file, encoding="utf-8") as f:
                    headers["Authorization"] = f"Bearer {f.read().strip()}"
            except OSError as err:
                raise ApiError(DiscoveryResult.ERROR, f"token {token_file}: {err.strerror or err}") from None
        ctx = None
        if base.startswith("https:"):
            try:
                ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
            except (OSError, ssl.SSLError) as err:
                raise ApiError(DiscoveryResult.ERROR, f"CA {ca_file}: {err}") from None
        session = aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(ssl=ctx) if ctx else None,
                                        trust_env=False)
        return session, f"{base}/apis/discovery.k8s.io/v1/namespaces/{self.cfg.namespace}/endpointslices"

    # --- the loop ------------------------------------------------------------------------------------------

    async def run(self, publish: Publish) -> None:
        failures = 0
        while True:
            try:
                session, url = self._session()
                async with session:
                    if self.rv is None:
                        await self._list(session, url, publish)
                    failures = 0
                    events = await self._watch(session, url, publish)  # returns when the server ends the stream
                if not events:  # a server ending empty watches at once must not make this a busy loop
                    await asyncio.sleep(self.cfg.backoff_base_s * self.rng.uniform(0.5, 1.0))
                continue
            except Gone as g:
                publish(Failed(DiscoveryResult.EXPIRED, f"{self.what}: {g}; relisting"))
                self.rv = None
                continue
            except ApiError as err:
                publish(Failed(err.result, f"{self.what}: {err}"))
            except asyncio.TimeoutError:
                publish(Failed(DiscoveryResult.TIMEOUT, f"{self.what}: no answer within {self.cfg.timeout_s:g}s"))
            except (aiohttp.ClientError, OSError) as err:
                publish(Failed(DiscoveryResult.ERROR, f"{self.what}: {type(err).__name__}: {err}"[:300]))
            failures += 1
            cfg = self.cfg
            delay = min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** min(failures - 1, 20))
            await asyncio.sleep(delay * self.rng.uniform(0.5, 1.0))

    async def _list(self, session: aiohttp.ClientSession, url: str, publish: Publish) -> None:
        slices: dict[str, dict] = {}
        cont = None
        while True:
            params = {"labelSelector": f"kubernetes.io/service-name={self.cfg.service}", "limit": str(self.page_size)}
            if cont:
                params["continue"] = cont
            async with session.get(url, params=params,
                                   timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s)) as r:
                body = await _json_or_status(r, "list")
            if body.get("kind") != "EndpointSliceList" or not isinstance(body.get("items"), list):
                raise ApiError(DiscoveryResult.INVALID, "list: not an EndpointSliceList")
            for sl in body["items"]:
                name = _name(sl)
                if name:
                    slices[name] = sl
            meta = body.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                self.rv = meta.get("resourceVersion")
                break
        self.slices = slices
        self._publish(publish, f"EndpointSlice list rv {self.rv} ({len(slices)} slices)")

    async def _watch(self, session: aiohttp.ClientSession, url: str, publish: Publish) -> int:
        """Follow the watch until the server ends it; the number of events it carried."""
        cfg = self.cfg
        params = {"labelSelector": f"kubernetes.io/service-name={cfg.service}", "watch": "1",
                  "resourceVersion": self.rv or "", "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(cfg.watch_timeout_s)}
        # A watch stays open; a silent dead connection is caught by the read timeout (bookmarks arrive about
        # once a minute on a real API server, and the server ends the watch after timeoutSeconds).
        timeout = aiohttp.ClientTimeout(total=None, connect=cfg.timeout_s, sock_read=cfg.watch_timeout_s + 30)
        async with session.get(url, params=params, timeout=timeout) as r:
            if r.status != 200:
                await _json_or_status(r, "watch")
            buf = b""
            events = 0
            async for chunk in r.content.iter_any():
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        events += 1
                        self._event(line, publish)
        return events

    def _event(self, line: bytes, publish: Publish) -> None:
        try:
            ev = json.loads(line)
            kind, obj = ev["type"], ev["object"]
        except (ValueError, KeyError, TypeError):
            raise ApiError(DiscoveryResult.INVALID, f"watch: not a watch event: {line[:100]!r}") from None
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            if code == 410:
                raise Gone(f"watch: resourceVersion {self.rv} expired ({obj.get('message', '410 Gone')})")
            raise ApiError(DiscoveryResult.ERROR, f"watch: ERROR event {code}: {str(obj.get('message'))[:200]}")
        rv = (obj.get("metadata") or {}).get("resourceVersion") if isinstance(obj, dict) else None
        if rv:
            self.rv = rv
        if kind == "BOOKMARK":
            return  # progress only: where to resume from
        name = _name(obj)
        if kind in ("ADDED", "MODIFIED") and name:
            self.slices[name] = obj
        elif kind == "DELETED" and name:
            self.slices.pop(name, None)
        else:
            raise ApiError(DiscoveryResult.INVALID, f"watch: unexpected event {kind!r}")
        self._publish(publish, f"EndpointSlice {self.cfg.namespace}/{name} {kind.lower()} rv {self.rv}")

    def _publish(self, publish: Publish, what: str) -> None:
        instances, problem = slice_instances(self.slices, self.cfg.port)
        if problem and not instances:
            publish(Failed(DiscoveryResult.INVALID, f"{self.what}: {problem}"))
            return
        publish(Found(instances, f"k8s {what}"))


def _name(obj) -> str | None:
    name = (obj.get("metadata") or {}).get("name") if isinstance(obj, dict) else None
    return name if isinstance(name, str) else None


async def _json_or_status(r: aiohttp.ClientResponse, what: str) -> dict:
    """The JSON body of a 200; 410 raises Gone; any other status an ApiError with the Status message."""
    raw = await r.read()
    if r.status == 410:
        raise Gone(f"{what}: 410 Gone")
    if r.status != 200:
        text = raw[:4096].decode("utf-8", "replace")
        try:
            msg = json.loads(text).get("message", text)
        except (ValueError, AttributeError):
            msg = text
        raise ApiError(DiscoveryResult.ERROR, f"{what}: HTTP {r.status}: {str(msg)[:200]}")
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(DiscoveryResult.INVALID, f"{what}: not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(DiscoveryResult.INVALID, f"{what}: not a JSON object")
    return body
