"""Bodies stream through both tiers with flat memory, and an upstream that dies mid-body is an abort, not a
short body that looks complete."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading

import psutil
import pytest
import aiohttp

from tests.integration.test_two_tier import balancer_cfg, edge_cfg

BODY_MIB = 1024  # the figure: 1 GiB each way


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / (1 << 20)


def peak_sampler(pids: list[int]):
    peaks = {pid: rss_mib(pid) for pid in pids}
    stop = threading.Event()

    def run():
        while not stop.is_set():
            for pid in pids:
                peaks[pid] = max(peaks[pid], rss_mib(pid))
            stop.wait(0.05)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return peaks, stop, t


def two_tier(cluster):
    b = cluster.backend("big")
    bal = cluster.gatewatch("balancer", balancer_cfg([b]))
    edge = cluster.gatewatch("edge", {**edge_cfg(f"http://{bal.listener('internal')}"), "edge": {
        "listeners": [{"name": "public", "address": "127.0.0.1:0"}],
        "routes": [{"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "shop",
                    "timeouts": {"connect_s": 2, "response_s": 30, "idle_s": 30}}],
        "upstreams": [{"name": "shop", "url": f"http://{bal.listener('internal')}"}]}})
    return b, bal, edge


def test_large_download_and_upload_stream_with_flat_memory(cluster):
    b, bal, edge = two_tier(cluster)
    size = BODY_MIB << 20
    base = f"http://{edge.listener('public')}"

    async def run():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
            async with s.get(f"{base}/warmup") as r:  # let every process reach its steady-state footprint
                await r.read()
            before = {p.pid: rss_mib(p.pid) for p in (edge, bal)}
            peaks, stop, t = peak_sampler([edge.pid, bal.pid])
            got = 0
            async with s.get(f"{base}/bytes/{size}") as r:
                assert r.status == 200
                assert int(r.headers["Content-Length"]) == size
                async for chunk in r.content.iter_chunked(1 << 20):
                    got += len(chunk)
            assert got == size

            digest = hashlib.sha256()

            async def upload():
                block = b"u" * (1 << 20)
                for _ in range(BODY_MIB):
                    digest.update(block)
                    yield block

            async with s.post(f"{base}/upload", data=upload()) as r:  # chunked: no Content-Length
                answer = await r.json()
            stop.set()
            t.join()
            assert answer["received_bytes"] == size
            assert answer["sha256"] == digest.hexdigest()
            return before, peaks

    before, peaks = asyncio.run(run())
    print({pid: f"{before[pid]:.1f} -> peak {peaks[pid]:.1f} MiB" for pid in before})
    for pid, start in before.items():
        growth = peaks[pid] - start
        # 1 GiB went through each process twice; a buffering proxy would grow by that much.
        assert growth < 48, f"pid {pid}: RSS grew {growth:.1f} MiB while streaming {BODY_MIB} MiB each way"


def test_upstream_death_mid_body_reaches_client_as_abort_through_both_tiers(cluster):
    # A raw backend that promises 10 MB and dies after 1 MB.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            data = b""
            while b"\r\n\r\n" not in data:
                part = conn.recv(65536)
                if not part:
                    break
                data += part
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"d" * 1_000_000)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()

    class FakeProc:
        name = "backend-dying"
        info = {"address": f"127.0.0.1:{port}"}

    bal = cluster.gatewatch("balancer", balancer_cfg([FakeProc]))
    edge = cluster.gatewatch("edge", edge_cfg(f"http://{bal.listener('internal')}"))

    async def run():
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ClientPayloadError):
                async with s.get(f"http://{edge.listener('public')}/api/orders/1") as r:
                    assert r.status == 200
                    await r.read()

    try:
        asyncio.run(run())
    finally:
        srv.close()
