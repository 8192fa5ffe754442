"""An in-process Gatewatch runtime on the test's event loop, with real sockets (port 0)."""

from __future__ import annotations

import contextlib
from typing import Any

from gatewatch.config import parse_config
from gatewatch.app.runtime import Runtime


@contextlib.asynccontextmanager
async def running(config: dict[str, Any], env: dict[str, str] | None = None):
    cfg = parse_config(config)
    rt = Runtime(cfg, env=env if env is not None else {})
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop(grace_s=1.0)


def in_process_config(backend_ports: list[int], tmp_path, data_plane: str = "fast", **route_extra) -> dict[str, Any]:
    # One attempt unless a test asks for retries: most tests here pin down what a single failure maps to.
    route = {"name": "api", "match": {"path": {"prefix": "/api"}}, "upstream": "pool",
             "timeouts": {"connect_s": 1, "response_s": 2, "idle_s": 2}, "retries": {"attempts": 1}}
    route.update(route_extra)
    return {
        "data_plane": data_plane,
        "admin": {"address": "127.0.0.1:0"},
        "telemetry": {"local_dir": str(tmp_path / "telemetry")},
        "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}], "routes": [route]},
        "balancer": {"pools": [{"name": "pool", "instances": [
            {"id": f"i{n}", "host": "127.0.0.1", "port": p} for n, p in enumerate(backend_ports)]}]},
    }
