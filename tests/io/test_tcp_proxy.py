"""L4 TCP pass-through (`mode: tcp` listeners, gatewatch.io.tcp_proxy) with raw asyncio TCP servers on loopback
and a real runtime: balancing, connect failures against an instance, resets both ways, half-close,
backpressure, PROXY protocol v1/v2 as a backend parses it, idle timeout, connection limit, drain, spans and
decision logs in a real OTLP receiver, and the config errors."""

from __future__ import annotations

import asyncio
import json
import ipaddress
import socket
import struct

import pytest

from gatewatch.app.runtime import Runtime
from gatewatch.config import ConfigError, parse_config
from gatewatch.io.proxy_protocol import header as proxy_header
from tests.support.net import closed_port
from tests.support.otlp import OtlpReceiver
from tests.support.runtime import running

V2_SIGNATURE = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])


class Backend(asyncio.Protocol):
    """A raw TCP test server. `mode`: echo | upon_eof (sends back the byte count after the client's FIN, then
    closes) | reset (echoes the first chunk, then resets) | flood (sends without end, ignoring input)."""

    def __init__(self, server: Server):
        self.server, self.transport, self.paused = server, None, False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.accepted += 1
        self.server.protocols.append(self)
        if self.server.mode == "flood":
            asyncio.get_running_loop().call_soon(self.pump)

    def pump(self) -> None:
        chunk = b"x" * 65536
        while not self.paused and not self.transport.is_closing():
            self.transport.write(chunk)

    def pause_writing(self) -> None:
        self.paused = True
        self.server.flood_paused.set()

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def data_received(self, data: bytes) -> None:
        self.server.received += data
        mode = self.server.mode
        if mode == "echo":
            self.transport.write(data)
        elif mode == "reset":
            self.transport.write(data)
            self.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                              struct.pack("ii", 1, 0))
            asyncio.get_running_loop().call_later(0.05, self.transport.abort)  # after the echo left

    def eof_received(self):
        self.server.eof.set()
        if self.server.mode == "upon_eof":
            self.transport.write(b"got %d" % len(self.server.received))
            self.transport.close()
            return True
        return None

    def connection_lost(self, exc) -> None:
        self.server.lost.set()


class Server:
    def __init__(self, mode: str = "echo"):
        self.mode, self.accepted, self.received = mode, 0, b""
        self.protocols: list[Backend] = []
        self.eof, self.lost, self.flood_paused = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self.port = 0
        self._srv = None

    async def __aenter__(self) -> Server:
        self._srv = await asyncio.get_running_loop().create_server(lambda: Backend(self), "127.0.0.1", 0)
        self.port = self._srv.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._srv.close()
        for p in self.protocols:
            p.transport.abort()


def config(ports: list[int], tmp_path, pool_extra: dict | None = None, exporter: str = "thread", **listener) -> dict:
    return {
        "admin": {"address": "127.0.0.1:0"},
        "telemetry": {"local_dir": str(tmp_path / "telemetry"), "exporter": exporter},
        "balancer": {
            "listeners": [{"name": "db", "address": "127.0.0.1:0", "mode": "tcp", "pool": "p", **listener}],
            "pools": [{"name": "p", "instances": [{"id": f"i{n}", "host": "127.0.0.1", "port": port}
                                                  for n, port in enumerate(ports)], **(pool_extra or {})}],
        },
    }


def sample(rt: Runtime, name: str, **labels) -> float:
    for family in rt.metrics.collect_all():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name} {labels}")


async def settled(rt: Runtime) -> None:
    """Until every proxied connection has finished (its record and metrics are written then)."""
    while rt.listeners[0].connections:
        await asyncio.sleep(0.01)


async def echo_once(rt: Runtime, data: bytes = b"ping") -> bytes:
    reader, writer = await asyncio.open_connection(*rt.listeners[0].bound)
    writer.write(data)
    got = await reader.readexactly(len(data))
    writer.close()
    await writer.wait_closed()
    return got


async def test_round_robin_spreads_connections(tmp_path):
    async with Server() as a, Server() as b, Server() as c:
        async with running(config([a.port, b.port, c.port], tmp_path)) as rt:
            for n in range(6):
                assert await echo_once(rt, b"hello %d" % n) == b"hello %d" % n
            await settled(rt)
            assert [a.accepted, b.accepted, c.accepted] == [2, 2, 2]
            for i in ("i0", "i1", "i2"):
                assert sample(rt, "gatewatch_tcp_connections_total", gatewatch_instance=i,
                              gatewatch_outcome="proxied") == 2
                assert sample(rt, "gatewatch_tcp_active_connections", gatewatch_instance=i) == 0
                assert sample(rt, "gatewatch_tcp_received_bytes_total", gatewatch_instance=i) == 14
                assert sample(rt, "gatewatch_tcp_connect_duration_seconds_count", gatewatch_instance=i,
                              result="ok") == 2
            assert sample(rt, "gatewatch_decisions_total", decision="pick", result="picked",
                          reason="pick.round_robin") == 6
            assert all(n == 0 for n in rt.pools["p"].in_flight.values())


async def test_dead_instance_is_skipped_and_counted_against_it(tmp_path):
    dead = closed_port()
    async with Server() as live:
        cfg = config([dead, live.port], tmp_path,
                     {"outlier_detection": {"consecutive_gateway_errors": 2, "max_ejection_percent": 50}})
        async with running(cfg) as rt:
            for _ in range(4):  # round robin starts each connection on the next instance: i0 is tried twice
                assert await echo_once(rt) == b"ping"
            await settled(rt)
            assert live.accepted == 4
            assert sample(rt, "gatewatch_tcp_connect_duration_seconds_count", gatewatch_instance="i0",
                          result="connect_refused") == 2
            assert sample(rt, "gatewatch_tcp_connections_total", gatewatch_instance="i1",
                          gatewatch_outcome="proxied") == 4
            assert rt.pools["p"].states()["i0"] == "ejected"  # two consecutive connect failures
            assert sample(rt, "gatewatch_ejections_total", gatewatch_instance="i0",
                          reason="outlier.consecutive_gateway_errors") == 1
            assert sample(rt, "gatewatch_failovers_total", reason="failover.retry_other_instance") == 2


async def test_every_instance_down_resets_the_client(tmp_path):
    async with running(config([closed_port()], tmp_path, connect_attempts=2)) as rt:
        reader, writer = await asyncio.open_connection(*rt.listeners[0].bound)
        with pytest.raises(ConnectionResetError):
            await reader.read(10)  # a reset, not a clean close that would pass for an empty stream
        writer.close()
        await settled(rt)
        assert sample(rt, "gatewatch_tcp_connections_total", gatewatch_instance="i0",
                      gatewatch_outcome="upstream_connect_error") == 1
        assert sample(rt, "gatewatch_tcp_connect_duration_seconds_count", gatewatch_instance="i0",
                      result="connect_refused") == 2


async def test_backend_reset_mid_stream_reaches_the_client_as_a_reset(tmp_path):
    async with Server("reset") as s, running(config([s.port], tmp_path)) as rt:
        reader, writer = await asyncio.open_connection(*rt.listeners[0].bound)
        writer.write(b"abc")
        assert await reader.readexactly(3) == b"abc"
        with pytest.raises(ConnectionResetError):
            await reader.read(10)
        writer.close()
        await settled(rt)
        assert sample(rt, "gatewatch_tcp_connections_total", gatewatch_instance="i0",
                      gatewatch_outcome="upstream_error") == 1


async def test_client_reset_resets_the_backend(tmp_path):
    async with Server() as s:
        async with running(config([s.port], tmp_path)) as rt:
            reader, writer = await asyncio.open_connection(*rt.listeners[0].bound)
            writer.write(b"abc")
            assert await reader.readexactly(3) == b"abc"
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            await s.lost.wait()
            assert not s.eof.is_set()  # the backend saw a reset, not a FIN
            await settled(rt)
            assert sample(rt, "gatewatch_tcp_connections_total", gatewatch_instance="i0",
                          gatewatch_outcome="client_abort") == 1


async def test_half_close_keeps_the_other_direction_open(tmp_path):
    async with Server("upon_eof") as s:
        async with running(config([s.port], tmp_path)) as rt:
            reader, writer = await asyncio.open_connection(*rt.listeners[0].bound)
            writer.write(b"x" * 100_000)
            writer.write_eof()  # RFC 9293 §3.6: our direction is closed, the backend's is not
            assert await reader.read() == b"got 100000"  # everything, then EOF
            writer.close()
            await settled(rt)
            assert sample(rt, "gatewatch_tcp_connections_total", gatewatch_instance="i0",
                          gatewatch_outcome="proxied") == 1


async def test_client_that_never_reads_bounds_gatewatch_buffer(tmp_path):
    async with Server("flood") as s:
        async with running(config([s.port], tmp_path)) as rt:
            reader, writer = await asyncio.open_connection(*rt.listeners[0].bound)
            writer.transport.pause_reading()  # never read: the kernel buffers fill, then Gatewatch's would
            conn = None
            while conn is None or conn.upstream is None or conn.upstream.is_reading() or not s.flood_paused.is_set():
                await asyncio.sleep(0.01)
                conn = next(iter(rt.listeners[0].connections), None)
            # Gatewatch stopped reading from the backend, which is blocked in turn; what it holds for the client
            # is bounded by the transport's high-water mark plus one read, however much the backend has to send.
            high = conn.client.get_write_buffer_limits()[1]
            assert conn.client.get_write_buffer_size() <= high + 256 * 1024
            sent_so_far = conn.sent
            writer.transport.resume_reading()
            await reader.readexactly(sent_so_far + 1_000_000)  # the relay resumes when the client reads
            writer.close()


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_proxy_protocol_header_parsed_by_backend(tmp_path, version):
    async with Server() as s:
        async with running(config([s.port], tmp_path, proxy_protocol=version)) as rt:
            listen = rt.listeners[0].bound
            reader, writer = await asyncio.open_connection(*listen)
            client = writer.get_extra_info("sockname")
            writer.write(b"data")
            while not s.received.endswith(b"data"):
                await asyncio.sleep(0.01)
            got = s.received
            writer.close()
    if version == "v1":
        line, rest = got.split(b"\r\n", 1)
        assert line.split(b" ") == [b"PROXY", b"TCP4", client[0].encode(), listen[0].encode(),
                                    str(client[1]).encode(), str(listen[1]).encode()]
    else:
        assert got[:12] == V2_SIGNATURE
        ver_cmd, fam, length = struct.unpack("!BBH", got[12:16])
        assert (ver_cmd, fam, length) == (0x21, 0x11, 12)  # v2 PROXY, TCP over IPv4, 4+4+2+2 bytes
        src, dst, sport, dport = struct.unpack("!4s4sHH", got[16:28])
        assert (str(ipaddress.IPv4Address(src)), sport) == tuple(client)
        assert (str(ipaddress.IPv4Address(dst)), dport) == tuple(listen)
        rest = got[28:]
    assert rest == b"data"


def test_proxy_protocol_headers_ipv6_and_mixed():
    v6 = proxy_header("v2", ("2001:db8::1", 40000), ("2001:db8::2", 443))
    assert v6[12:16] == bytes([0x21, 0x21, 0, 36])
    assert v6[16:32] == ipaddress.IPv6Address("2001:db8::1").packed and v6[-4:] == struct.pack("!HH", 40000, 443)
    assert proxy_header("v1", ("2001:db8::1", 40000), ("2001:db8::2", 443)) == \
        b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 443\r\n"
    assert proxy_header("v1", ("::ffff:192.0.2.1", 5), ("192.0.2.2", 6)) == b"PROXY TCP4 192.0.2.1 192.0.2.2 5 6\r\n"
    assert proxy_header("v1", ("192.0.2.1", 5), ("2001:db8::2", 6)) == b"PROXY UNKNOWN\r\n"
    assert proxy_header("v2", ("192.0.2.1", 5), ("2001:db8::2", 6)) == V2_SIGNATURE + bytes([0x20, 0x00, 0, 0])


async def test_idle_timeout_closes_both_sides(tmp_path):
    async with Server() as s:
        async with running(config([s.port], tmp_path, idle_timeout_s=0.2)) as rt:
            reader, writer = await asyncio.open_connection(*rt.listeners[0].bound)
            writer.write(b"a")
            assert await reader.readexactly(1) == b"a"
            assert await reader.read(10) == b""  # closed by Gatewatch once idle
            await s.eof.wait()
            writer.close()
            await settled(rt)
            assert sample(rt, "gatewatch_tcp_connections_total", gatewatch_instance="i0",
                          gatewatch_outcome="idle_timeout") == 1


async def test_over_max_connections_is_reset_and_counted(tmp_path):
    async with Server() as s:
        async with running(config([s.port], tmp_path, max_connections=1)) as rt:
            r1, w1 = await asyncio.open_connection(*rt.listeners[0].bound)
            w1.write(b"a")
            assert await r1.readexactly(1) == b"a"
            r2, w2 = await asyncio.open_connection(*rt.listeners[0].bound)
            with pytest.raises(ConnectionResetError):
                await r2.read(10)
            assert sample(rt, "gatewatch_tcp_connections_total", gatewatch_instance="",
                          gatewatch_outcome="connection_limit") == 1
            assert s.accepted == 1
            w1.close()
            w2.close()


async def test_drain_gives_grace_then_half_closes_and_counts(tmp_path):
    async with Server() as s:
        rt = Runtime(parse_config(config([s.port], tmp_path)), env={})
        await rt.start()
        try:
            reader, writer = await asyncio.open_connection(*rt.listeners[0].bound)
            writer.write(b"a")
            assert await reader.readexactly(1) == b"a"
            stopping = asyncio.ensure_future(rt.stop(grace_s=0.2))
            assert await reader.read(10) == b""  # the half-close after the grace: FIN, not a reset
            await s.eof.wait()  # the backend got its FIN too
            writer.close()
            await stopping
        finally:
            if not rt.draining:
                await rt.stop(grace_s=0.1)
    assert sample(rt, "gatewatch_drain_connections_closed_total", gatewatch_listener="db", reason="deadline") == 1
    assert sample(rt, "gatewatch_tcp_connections_total", gatewatch_instance="i0", gatewatch_outcome="drain_cut") == 1


async def test_connection_span_and_pick_decision_in_otlp(tmp_path):
    with OtlpReceiver() as rx:
        async with Server() as s:
            cfg = config([s.port], tmp_path, exporter="process")
            async with running(cfg, env=rx.env("grpc")) as rt:
                reader, writer = await asyncio.open_connection(*rt.listeners[0].bound)
                client = writer.get_extra_info("sockname")
                writer.write(b"hello")
                assert await reader.readexactly(5) == b"hello"
                writer.write_eof()
                assert await reader.read() == b""
                writer.close()
                await settled(rt)
                listen = rt.listeners[0].bound
        found = await asyncio.to_thread(rx.data.wait_for, lambda spans, logs: any(
            sp["name"] == "tcp p" for sp in spans) and any(
            lg["event_name"] == "gatewatch.decision.pick" for lg in logs))
        assert found
    spans, logs = rx.data.snapshot()
    server = next(sp for sp in spans if sp["name"] == "tcp db")
    attempt = next(sp for sp in spans if sp["name"] == "tcp p")
    assert server["kind"] == "SERVER" and attempt["kind"] == "CLIENT"
    assert attempt["parent_span_id"] == server["span_id"] and attempt["trace_id"] == server["trace_id"]
    a = server["attributes"]
    assert a["network.transport"] == "tcp" and a["network.type"] == "ipv4"
    assert (a["client.address"], a["client.port"]) == tuple(client)
    assert (a["server.address"], a["server.port"]) == tuple(listen)
    assert a["gatewatch.tcp.received_bytes"] == 5 and a["gatewatch.tcp.sent_bytes"] == 5
    assert a["gatewatch.tcp.closed_by"] == "client" and a["gatewatch.outcome"] == "proxied"
    assert a["gatewatch.instance"] == "i0" and a["gatewatch.lb.algorithm"] == "round_robin"
    assert server["end"] > server["start"]
    b = attempt["attributes"]
    assert (b["server.address"], b["server.port"], b["gatewatch.instance"]) == ("127.0.0.1", s.port, "i0")
    assert b["gatewatch.lb.candidates"] == 1 and "gatewatch.timing.connect_s" in b
    pick = next(lg for lg in logs if lg["event_name"] == "gatewatch.decision.pick")
    assert pick["trace_id"] == server["trace_id"]
    assert pick["attributes"]["gatewatch.decision.result"] == "picked"
    assert pick["attributes"]["gatewatch.instance"] == "i0"


@pytest.mark.parametrize("listener, section, problem", [
    ({"max_header_size": 4096}, "balancer",
     "balancer.listeners[0].max_header_size: an HTTP listener setting; this listener has mode: tcp"),
    ({"pool": None}, "balancer", "balancer.listeners[0].pool: required with mode: tcp"),
    ({"pool": "nope"}, "balancer", "balancer.listeners[0].pool: unknown pool 'nope'"),
    ({}, "edge", "edge.listeners[0].mode: a tcp listener relays to a pool of this process"),
    ({"mode": "http", "proxy_protocol": "v1"}, "balancer",
     "balancer.listeners[0].proxy_protocol: a tcp listener setting; this listener has mode: http"),
])
def test_config_errors_name_the_field(listener, section, problem):
    lst = {"name": "db", "address": "127.0.0.1:0", "mode": "tcp", "pool": "p", **listener}
    lst = {k: v for k, v in lst.items() if v is not None}
    cfg = {"balancer": {"pools": [{"name": "p", "instances": [{"id": "a", "host": "127.0.0.1", "port": 1}]}]}}
    if section == "edge":
        cfg["edge"] = {"listeners": [lst], "routes": [{"name": "r", "match": {"path": {"prefix": "/"}},
                                                       "upstream": "p"}]}
    else:
        cfg["balancer"]["listeners"] = [lst]
        if lst["mode"] == "http":
            cfg["balancer"]["routes"] = [{"name": "r", "match": {"path": {"prefix": "/"}}, "upstream": "p"}]
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_tcp_listener_needs_no_routes():
    cfg = parse_config({"balancer": {
        "listeners": [{"name": "db", "address": "127.0.0.1:0", "mode": "tcp", "pool": "p", "proxy_protocol": "v2"}],
        "pools": [{"name": "p", "instances": [{"id": "a", "host": "127.0.0.1", "port": 1}]}]}})
    assert cfg.balancer.listeners[0].proxy_protocol == "v2"


async def test_consistent_hashing_keys_on_the_client_address(tmp_path):
    async with Server() as a, Server() as b, Server() as c:
        pool = {"algorithm": "ring_hash", "hash_key": {"source": "client_address"}}
        async with running(config([a.port, b.port, c.port], tmp_path, pool)) as rt:
            for _ in range(5):
                assert await echo_once(rt) == b"ping"
            await settled(rt)
            assert sorted([a.accepted, b.accepted, c.accepted]) == [0, 0, 5]  # one client address, one instance


def test_tcp_pool_hashing_on_a_header_is_refused():
    with pytest.raises(ConfigError) as err:
        parse_config({"balancer": {
            "listeners": [{"name": "db", "address": "127.0.0.1:0", "mode": "tcp", "pool": "p"}],
            "pools": [{"name": "p", "algorithm": "maglev", "hash_key": {"source": "header", "name": "x-user"},
                       "instances": [{"id": "a", "host": "127.0.0.1", "port": 1}]}]}})
    assert err.value.problems == ["balancer.listeners[0].pool: pool 'p' hashes on header:x-user, which a TCP "
                                  "connection does not have: set its hash_key.source to client_address"]


async def test_open_connection_outlives_its_instance_draining_new_ones_avoid_it(tmp_path):
    async with Server() as a, Server() as b:
        async with running(config([a.port, b.port], tmp_path)) as rt:
            reader, writer = await asyncio.open_connection(*rt.listeners[0].bound)
            writer.write(b"1")
            assert await reader.readexactly(1) == b"1"
            assert a.accepted == 1
            rt.pools["p"].set_draining("i0", True)
            writer.write(b"2")  # still relayed to i0
            assert await reader.readexactly(1) == b"2"
            for _ in range(2):  # new connections go to i1 only
                assert await echo_once(rt) == b"ping"
            assert (a.accepted, b.accepted) == (1, 2)
            writer.close()


async def test_reload_applies_new_settings_to_new_connections(tmp_path):
    async with Server() as s:
        cfg = config([s.port], tmp_path)
        path = tmp_path / "gatewatch.yaml"
        path.write_text(json.dumps(cfg))
        rt = Runtime(parse_config(cfg), env={}, config_path=str(path))
        await rt.start()
        try:
            assert await echo_once(rt, b"one") == b"one"
            cfg["balancer"]["listeners"][0]["proxy_protocol"] = "v1"
            path.write_text(json.dumps(cfg))
            assert await rt.reload() == (True, [])
            reader, writer = await asyncio.open_connection(*rt.listeners[0].bound)
            writer.write(b"two")
            assert (await reader.readuntil(b"two")).startswith(b"PROXY TCP4 ")  # the echo of what the backend got
            writer.close()
        finally:
            await rt.stop(grace_s=0.1)
        assert s.received.startswith(b"onePROXY TCP4 ")
