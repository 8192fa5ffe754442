"""A stand-in Kubernetes API server for EndpointSlices (discovery.k8s.io/v1), on loopback, speaking the real
list-and-watch protocol: LIST with `labelSelector` (paged by `limit`/`continue`) and the list's
`resourceVersion`; WATCH (`watch=1`) as a chunked stream of JSON lines resumed from `resourceVersion`, with
BOOKMARK events when `allowWatchBookmarks=true`, ERROR events (a `Status`), `410 Gone` for a resourceVersion older
than the server keeps (`compact()`), and streams ended after `timeoutSeconds` or on demand (`end_watches()`).

`K8sApi(token=None)`; `await start()` → base URL; `apply(slice)` (ADDED or MODIFIED), `delete(name)`;
`bookmark()`; `error(code, message)` sends an ERROR event to open watches; `compact()` forgets history (a watch
from an older resourceVersion gets 410); `requests` lists ("list" | "watch", params) of every call;
`watchers` is the number of open watch streams. `endpoint_slice(...)` builds a slice object.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

PATH = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"


def endpoint_slice(name: str, service: str, endpoints: list[dict], ports: list[dict] | None = None,
                   address_type: str = "IPv4") -> dict:
    """`endpoints`: [{"ip": ..., "pod": ..., "ready": True, "serving": True, "terminating": False, "zone": ...}]."""
    return {
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": name, "namespace": "", "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{
            "addresses": [e["ip"]],
            "conditions": {k: e[k] for k in ("ready", "serving", "terminating") if k in e},
            **({"targetRef": {"kind": "Pod", "name": e["pod"]}} if "pod" in e else {}),
            **({"zone": e["zone"]} if "zone" in e else {}),
        } for e in endpoints],
    }


class K8sApi:
    def __init__(self, namespace: str = "shop", token: str | None = None):
        self.namespace = namespace
        self.token = token
        self.rv = 100
        self.slices: dict[str, dict] = {}
        self.history: list[tuple[int, dict]] = []  # (rv, watch event)
        self.oldest = self.rv  # watches from before this resourceVersion get 410 Gone
        self.requests: list[tuple[str, dict]] = []
        self._queues: dict[asyncio.Queue, web.Request] = {}  # open watches
        self._runner: web.AppRunner | None = None
        self.fail_next: list[int] = []  # HTTP statuses for the next requests (e.g. 500, 403)

    @property
    def watchers(self) -> int:
        """Open watch streams whose client is still connected."""
        return sum(1 for r in self._queues.values() if r.transport is not None and not r.transport.is_closing())

    async def start(self, ssl_context=None) -> str:
        """The base URL (https with `ssl_context`)."""
        app = web.Application()
        app.router.add_get(PATH.format(ns=self.namespace), self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.port}"

    async def close(self) -> None:
        self.end_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- changing the cluster --------------------------------------------------------------------------------

    def _emit(self, kind: str, obj: dict) -> None:
        event = {"type": kind, "object": obj}
        if kind not in ("BOOKMARK", "ERROR"):
            self.history.append((self.rv, event))
        for q in self._queues:
            q.put_nowait(event)

    def apply(self, sl: dict) -> int:
        self.rv += 1
        obj = json.loads(json.dumps(sl))
        obj["metadata"]["namespace"] = self.namespace
        obj["metadata"]["resourceVersion"] = str(self.rv)
        kind = "MODIFIED" if obj["metadata"]["name"] in self.slices else "ADDED"
        self.slices[obj["metadata"]["name"]] = obj
        self._emit(kind, obj)
        return self.rv

    def delete(self, name: str) -> int:
        self.rv += 1
        obj = self.slices.pop(name)
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
        self._emit("DELETED", obj)
        return self.rv

    def bookmark(self) -> int:
        self.rv += 1  # a real server's bookmark carries the latest resourceVersion, with nothing else to apply
        self._emit("BOOKMARK", {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                                "metadata": {"resourceVersion": str(self.rv)}})
        return self.rv

    def error(self, code: int, message: str) -> None:
        self._emit("ERROR", {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                             "reason": "Expired" if code == 410 else "InternalError", "message": message})

    def compact(self) -> None:
        """Forget the history: a watch from an older resourceVersion gets 410 Gone (etcd compaction)."""
        self.history.clear()
        self.oldest = self.rv + 1

    def end_watches(self) -> None:
        for q in self._queues:
            q.put_nowait(None)

    # --- the API -----------------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        watch = q.get("watch") in ("1", "true")
        self.requests.append(("watch" if watch else "list", dict(q)))
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized")
        if self.fail_next:
            return _status(self.fail_next.pop(0), "injected failure")
        selector = q.get("labelSelector", "")
        service = selector.removeprefix("kubernetes.io/service-name=") if selector else None

        def selected(sl: dict) -> bool:
            return service is None or sl["metadata"]["labels"].get("kubernetes.io/service-name") == service

        if not watch:
            items = [s for _, s in sorted(self.slices.items()) if selected(s)]
            start = int(q.get("continue") or 0)
            limit = int(q.get("limit") or 0) or len(items) or 1
            page, nxt = items[start:start + limit], start + limit
            meta = {"resourceVersion": str(self.rv)}
            if nxt < len(items):
                meta["continue"] = str(nxt)
            return web.json_response({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                                      "metadata": meta, "items": page})
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        since = int(q.get("resourceVersion") or self.rv)
        bookmarks = q.get("allowWatchBookmarks") == "true"
        if since < self.oldest - 1:  # the real server answers 200 and one ERROR event with a 410 Status
            await resp.write(_line({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                "message": f"too old resource version: {since} ({self.oldest})"}}))
            return resp
        queue: asyncio.Queue = asyncio.Queue()
        for rv, event in self.history:
            if rv > since:
                queue.put_nowait(event)
        self._queues[queue] = request
        try:
            async with asyncio.timeout(float(q.get("timeoutSeconds") or 1800)):
                while True:
                    event = await queue.get()
                    if event is None:
                        break
                    if event["type"] == "BOOKMARK" and not bookmarks:
                        continue
                    if event["type"] not in ("BOOKMARK", "ERROR") and not selected(event["object"]):
                        continue
                    await resp.write(_line(event))
        except (TimeoutError, ConnectionResetError):  # timeoutSeconds, or the client went away
            pass
        finally:
            self._queues.pop(queue, None)
        return resp


def _line(event: dict) -> bytes:
    return json.dumps(event).encode() + b"\n"


def _status(code: int, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                              "message": message}, status=code)
