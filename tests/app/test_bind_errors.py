"""A listener that cannot bind is named, with its role and address, in one line; the process exits 1 without a
traceback (issue 18, category 6). The ports are really occupied: a socket of this test listens on them."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gatewatch.app.runtime import BindError, Runtime
from gatewatch.config import parse_config
from tests.support.runtime import in_process_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def occupied():
    """A port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def run(tmp_path, config: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "gatewatch.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "gatewatch", "run", "-c", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def config(tmp_path, plane: str = "fast") -> dict:
    c = in_process_config([9], tmp_path, data_plane=plane)
    c["telemetry"]["exporter"] = "thread"
    return c


@pytest.mark.parametrize("plane", ["fast", "aiohttp"])
def test_a_traffic_listener_on_a_taken_port_is_named_in_one_line(tmp_path, occupied, plane):
    c = config(tmp_path, plane)
    c["edge"]["listeners"][0]["address"] = f"127.0.0.1:{occupied}"
    out = run(tmp_path, c)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"gatewatch: edge.listeners[0] 'public' (traffic) cannot bind 127.0.0.1:{occupied}: address already in use "
        f"(another process listens there: ss -ltnp 'sport = :{occupied}')"]


def test_the_admin_listener_on_a_taken_port_is_named_in_one_line(tmp_path, occupied):
    c = config(tmp_path)
    c["admin"]["address"] = f"127.0.0.1:{occupied}"
    out = run(tmp_path, c)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"gatewatch: admin listener cannot bind 127.0.0.1:{occupied}: address already in use "
        f"(another process listens there: ss -ltnp 'sport = :{occupied}')"]


async def test_a_balancer_listener_is_named_by_its_section(tmp_path, occupied):
    c = config(tmp_path)
    c["balancer"]["listeners"] = [{"name": "lb", "address": "127.0.0.1:0"},
                                  {"name": "lb2", "address": f"127.0.0.1:{occupied}"}]
    c["balancer"]["routes"] = [{"name": "all", "upstream": "pool"}]
    rt = Runtime(parse_config(c), env={"OTEL_SDK_DISABLED": "true"})
    try:
        with pytest.raises(BindError) as err:
            await rt.start()
    finally:
        await rt.stop(grace_s=0.1)
    assert str(err.value).startswith(f"balancer.listeners[1] 'lb2' (traffic) cannot bind 127.0.0.1:{occupied}: "
                                     "address already in use")


@pytest.mark.parametrize(("host", "port", "err", "expected"), [
    pytest.param("0.0.0.0", 80, OSError(errno.EACCES, "Permission denied"),
                 "x cannot bind 0.0.0.0:80: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
                 id="privileged-port"),
    pytest.param("0.0.0.0", 8080, OSError(errno.EACCES, "Permission denied"),
                 "x cannot bind 0.0.0.0:8080: permission denied", id="denied-otherwise"),
    pytest.param("192.0.2.1", 8080, OSError(errno.EADDRNOTAVAIL, "x"),
                 "x cannot bind 192.0.2.1:8080: cannot assign requested address (not an address of this host)",
                 id="not-ours"),
    pytest.param("::1", 8080, OSError(errno.EADDRINUSE, "x"),
                 "x cannot bind [::1]:8080: address already in use (another process listens there: "
                 "ss -ltnp 'sport = :8080')", id="ipv6"),
    pytest.param("nowhere.invalid", 8080, socket.gaierror(-2, "Name or service not known"),
                 "x cannot bind nowhere.invalid:8080: cannot resolve 'nowhere.invalid' (Name or service not known)",
                 id="unresolvable"),
])
def test_each_bind_failure_says_why(host, port, err, expected):
    assert str(BindError("x", host, port, err)) == expected
