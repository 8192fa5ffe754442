"""The soak's load generator: fixed concurrency, paced, raw HTTP/1.1 over asyncio, one line per request.

    python -m faults.client --spec SPEC.json --out REQUESTS.tsv

SPEC: {"host", "port", "concurrency", "rate" (requests/s over all connections; 0 = as fast as they go),
"max_per_conn" (requests per connection before it asks `Connection: close` and opens a new one, so the kernel
spreads connections over both workers again after one was restarted), "timeout_s" (the client's own cap: a
request without a complete answer by then is recorded as `client_timeout`; it is far above any route's
timeouts), "routes": [{"route", "path", "weight", "variants": [{"name", "weight", "headers": {...}}]}]}.

Each of the `concurrency` tasks owns one connection at a time and sends one GET after another, waiting for a
pacing slot (slots are `1/rate` apart and never caught up after a stall, so a stall does not become a burst).
Every request becomes one tab-separated line: monotonic start time (CLOCK_MONOTONIC, shared with the soak), route,
variant, status (0 = no answer), latency in seconds (request written → response complete), error kind (below, or
`-`), whether the connection had served a request before (1/0), the `X-Soak-Gen` echoed by the backend, and
`X-Backend` (the instance that answered), and flags (`-` for none): `s` when the connection was found closed by the server
while idle and replaced by a new one before this request (as any pooling client does; the request is then sent
on the new connection), `r` when the answer carried `RateLimit` headers (a 429 without them is the rate limiter's
"store unavailable" refusal, one with them a real "over the limit").

Error kinds, the first that applies: `connect_refused`, `connect_timeout`, `connect_error`;
`closed_before_response` (the connection ended before a single byte of the answer: EOF or reset),
`truncated` (part of an answer, then EOF/reset, or a body shorter than its framing), `bad_response` (not HTTP/1.x),
`client_timeout`. A request that met `closed_before_response` on a reused connection is retried once, on a new
connection (RFC 9112 §9.3.1 lets a client retry an idempotent request it got no answer to when the server closed
a keep-alive connection under it; HTTP clients do), and its line gets flag `k` (plus `x` when that close was a
TCP reset, i.e. the gateway closed the connection with the request unread in its buffer) and the retry's
outcome. Latency then covers both tries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import time
from pathlib import Path

READ = 65536


class Pacer:
    def __init__(self, rate: float):
        self.gap = 1.0 / rate if rate > 0 else 0.0
        self.last = 0.0

    async def slot(self) -> None:
        if not self.gap:
            return
        now = time.monotonic()
        at = max(now, self.last + self.gap)
        self.last = at
        if at > now:
            await asyncio.sleep(at - now)


class Answer(Exception):
    def __init__(self, kind: str, reset: bool = False):
        self.kind = kind
        self.reset = reset


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    """Status and headers of one response, its body read and dropped. Raises Answer(kind) on failure."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        raise Answer("truncated" if e.partial else "closed_before_response") from None
    except asyncio.LimitOverrunError:
        raise Answer("bad_response") from None
    except (ConnectionResetError, BrokenPipeError):
        raise Answer("closed_before_response", reset=True) from None
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise Answer("bad_response")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    try:
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        elif b"content-length" in headers:
            await reader.readexactly(int(headers[b"content-length"]))
        else:
            await reader.read()  # delimited by the end of the connection
            headers[b"connection"] = b"close"
    except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError, ValueError):
        raise Answer("truncated") from None
    return int(parts[1]), headers


class Conn:
    """One connection slot of the client: the connection (if any) and how many requests it has served."""

    def __init__(self, index: int):
        self.index = index
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.served = 0

    def drop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Client:
    def __init__(self, spec: dict, out):
        self.spec = spec
        self.out = out
        self.pacer = Pacer(spec.get("rate", 0))
        self.stop = asyncio.Event()
        self.rng = random.Random(1)
        self.routes = spec["routes"]
        self.route_weights = [r["weight"] for r in self.routes]
        self.lines: list[str] = []

    def choose(self, conn: int) -> tuple[dict, dict]:
        route = self.rng.choices(self.routes, self.route_weights)[0]
        variants = route.get("variants") or [{"name": "-", "weight": 1, "headers": {}}]
        variant = self.rng.choices(variants, [v["weight"] for v in variants])[0]
        return route, variant

    def request(self, route: dict, variant: dict, conn: int, n: int, close: bool) -> bytes:
        path = route["path"].format(n=n)
        headers = {"Host": "soak.test", "User-Agent": "gatewatch-soak"}
        for k, v in variant.get("headers", {}).items():
            headers[k] = v.format(conn=conn)
        if close:
            headers["Connection"] = "close"
        return (f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                + "\r\n").encode()

    async def exchange(self, cn: Conn, route: dict, variant: dict, n: int) -> tuple[int, dict, str, bool]:
        """One request on `cn` (connecting first if it has no connection): (status, headers, error kind, reset)."""
        spec = self.spec
        try:
            async with asyncio.timeout(spec["timeout_s"]):
                if cn.writer is None:
                    try:
                        async with asyncio.timeout(spec.get("connect_timeout_s", 3.0)):
                            cn.reader, cn.writer = await asyncio.open_connection(spec["host"], spec["port"])
                    except TimeoutError:
                        raise Answer("connect_timeout") from None
                    except ConnectionRefusedError:
                        raise Answer("connect_refused") from None
                    except OSError:
                        raise Answer("connect_error") from None
                    cn.served = 0
                close = cn.served + 1 >= spec["max_per_conn"]
                try:
                    cn.writer.write(self.request(route, variant, cn.index, n, close))
                    await cn.writer.drain()
                except (ConnectionResetError, BrokenPipeError):
                    raise Answer("closed_before_response", reset=True) from None
                status, headers = await read_response(cn.reader)
                cn.served += 1
                if close or headers.get(b"connection", b"").lower() == b"close":
                    cn.drop()
                return status, headers, "-", False
        except Answer as a:
            cn.drop()
            return 0, {}, a.kind, a.reset
        except TimeoutError:
            cn.drop()
            return 0, {}, "client_timeout", False

    async def run_conn(self, index: int) -> None:
        cn = Conn(index)
        n = 0
        while not self.stop.is_set():
            await self.pacer.slot()
            if self.stop.is_set():
                break
            route, variant = self.choose(index)
            n += 1
            flags = ""
            if cn.writer is not None and cn.reader.at_eof():
                cn.drop()  # the server closed it while idle: like any pooling client, do not send on it
                flags += "s"
            reused = cn.writer is not None
            t0 = time.monotonic()
            status, headers, kind, reset = await self.exchange(cn, route, variant, n)
            if kind == "closed_before_response" and reused:
                # The keep-alive race (RFC 9112 §9.3.1): the server closed a connection we had just sent on and
                # not one byte of an answer came back. A GET may be retried, once, on a new connection, as HTTP
                # clients do; the line records the retry's outcome, with flag `k` (`x`: the close was a reset).
                flags += "k" + ("x" if reset else "")
                status, headers, kind, reset = await self.exchange(cn, route, variant, n)
            latency = time.monotonic() - t0
            if b"ratelimit" in headers:
                flags += "r"
            gen = headers.get(b"x-soak-gen", b"-").decode(errors="replace")
            backend = headers.get(b"x-backend", b"-").decode(errors="replace")
            self.lines.append(f"{t0:.6f}\t{route['route']}\t{variant['name']}\t{status}\t{latency:.6f}\t{kind}\t"
                              f"{int(reused)}\t{gen}\t{backend}\t{flags or '-'}\n")
            if kind.startswith("connect"):
                await asyncio.sleep(0.05)  # nothing listens: do not spin
        cn.drop()

    async def flusher(self) -> None:
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), 0.5)
            except TimeoutError:
                pass
            self.flush()

    def flush(self) -> None:
        lines, self.lines = self.lines, []
        if lines:
            self.out.write("".join(lines))
            self.out.flush()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        tasks = [loop.create_task(self.run_conn(i)) for i in range(self.spec["concurrency"])]
        flusher = loop.create_task(self.flusher())
        await self.stop.wait()
        # Requests in flight finish (each is capped by timeout_s) so that none is cut by the client itself.
        await asyncio.wait(tasks, timeout=self.spec["timeout_s"] + 1)
        for t in tasks:
            t.cancel()
        await flusher
        self.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    spec = json.loads(Path(a.spec).read_text())
    with open(a.out, "w") as out:
        client = Client(spec, out)
        try:
            import uvloop

            uvloop.run(client.run())
        except ImportError:
            asyncio.run(client.run())


if __name__ == "__main__":
    main()
