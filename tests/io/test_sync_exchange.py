"""The synchronous exchange (`Engine.handle_now` + `RawForwarder.send_now`) on real sockets: a bodiless request on
a warm client connection, sent on a warm pooled upstream connection, with every way the upstream can fail it
before, during and after its head. Each test first warms the pool with one request (which takes the task path:
no idle connection yet), so the request under test takes the synchronous one; `sync_sends` proves it did."""

from __future__ import annotations

import asyncio

import pytest

from gatewatch.app import runtime
from gatewatch.io import fast_forwarder
from tests.io.test_dataplane_adversarial import (
    Upstream,
    cfg,
    client,
    endpoint_pools,
    eventually,
    gateway,
    ok,
    open_upstream_connections,
    read_all,
    read_request,
    read_response,
    server_outcomes,
)
from tests.support.runtime import in_process_config

GET = b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.fixture
def sync_sends(monkeypatch):
    """How many requests went out through `send_now` (a list, so the count is read after the fact)."""
    sent: list[int] = []

    class Counting(fast_forwarder.RawForwarder):  # (compiled, RawForwarder is an extension type: not patchable)
        def send_now(self, *args):
            taken = super().send_now(*args)
            if taken:
                sent.append(1)
            return taken

    listener_type, _ = runtime.DATA_PLANES["fast"]
    monkeypatch.setitem(runtime.DATA_PLANES, "fast", (listener_type, Counting))
    return sent


def scripted(*answers):
    """An upstream connection that answers its n-th request with `answers[n]`: bytes, or a coroutine function
    given (reader, writer) that does something worse. Past the script, `ok()`."""

    async def handler(reader, writer, up: Upstream):
        n = 0
        while True:
            try:
                up.requests.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                return
            answer = answers[n] if n < len(answers) else ok()
            n += 1
            if callable(answer):
                if await answer(reader, writer) is False:
                    return
            else:
                writer.write(answer)
                await writer.drain()

    return handler


async def warm(reader, writer) -> None:
    writer.write(GET)
    assert (await read_response(reader)).body == b"ok"


async def test_warm_exchange_takes_the_synchronous_path(tmp_path, sync_sends):
    async with Upstream(scripted()) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            await warm(reader, writer)
            for _ in range(20):
                writer.write(GET)
                resp = await read_response(reader)
                assert (resp.status, resp.body) == (200, b"ok") and resp.header("x-request-id")
        assert len(sync_sends) == 20 and up.connections == 1
        assert server_outcomes(rt) == {("proxied", "200"): 21}


async def test_upstream_hangs_up_before_the_head(tmp_path, sync_sends):
    async def hang_up(reader, writer):
        writer.transport.abort()
        return False

    async with Upstream(scripted(ok(), hang_up)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            await warm(reader, writer)
            writer.write(GET)
            resp = await read_response(reader)
            assert resp.status == 502 and resp.json()["error"]["outcome"] == "upstream_error"
            await warm(reader, writer)  # the client connection is still good; a fresh upstream one is made
        assert len(sync_sends) == 1 and up.connections == 2
        assert server_outcomes(rt) == {("proxied", "200"): 2, ("upstream_error", "502"): 1}


async def test_hang_up_before_the_head_is_retried_on_another_instance(tmp_path, sync_sends):
    async def hang_up(reader, writer):
        writer.transport.abort()
        return False

    async with Upstream(scripted(ok(), hang_up)) as bad, Upstream(scripted()) as good:
        config = in_process_config([bad.port, good.port], tmp_path, retries={"attempts": 2, "backoff_base_s": 0})
        config["balancer"]["pools"][0]["algorithm"] = "round_robin"
        async with gateway(config) as rt:
            async with client(rt) as (reader, writer):
                await warm(reader, writer)  # i0 (bad, first answer fine)
                await warm(reader, writer)  # i1
                writer.write(GET)  # i0 again, warm: hangs up, retried on i1
                resp = await read_response(reader)
                assert (resp.status, resp.body) == (200, b"ok")
            assert len(sync_sends) >= 1
            assert server_outcomes(rt) == {("proxied", "200"): 3}


async def test_no_head_within_response_timeout_is_504_and_the_connection_is_dropped(tmp_path, sync_sends):
    async def stall(reader, writer):
        await asyncio.sleep(3)

    async with Upstream(scripted(ok(), stall)) as up, gateway(cfg(tmp_path, up.port, response_s=0.3)) as rt:
        async with client(rt) as (reader, writer):
            await warm(reader, writer)
            writer.write(GET)
            resp = await read_response(reader)
            assert resp.status == 504 and resp.json()["error"]["outcome"] == "upstream_timeout"
        assert len(sync_sends) == 1
        assert await eventually(lambda: open_upstream_connections(rt) == 0)
        assert server_outcomes(rt) == {("proxied", "200"): 1, ("upstream_timeout", "504"): 1}


@pytest.mark.parametrize("raw", [b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", b"garbage\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"],
                         ids=["bad-status", "garbage", "two-lengths"])
async def test_protocol_errors_before_the_head_are_502_and_not_reused(tmp_path, sync_sends, raw):
    async with Upstream(scripted(ok(), raw)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            await warm(reader, writer)
            writer.write(GET)
            resp = await read_response(reader)
            assert resp.status == 502 and resp.json()["error"]["outcome"] == "upstream_error"
            await warm(reader, writer)
        assert len(sync_sends) == 1 and up.connections == 2


async def test_head_first_body_later_is_streamed_whole(tmp_path, sync_sends):
    async def slow_body(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"world")
        await writer.drain()

    async with Upstream(scripted(ok(), slow_body)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            await warm(reader, writer)
            writer.write(GET)
            assert (await read_response(reader)).body == b"helloworld"
            await warm(reader, writer)  # the upstream connection was clean: reused
        assert len(sync_sends) == 2 and up.connections == 1


async def test_body_cut_after_the_head_aborts_the_client(tmp_path, sync_sends):
    async def cut(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()
        return False

    async with Upstream(scripted(ok(), cut)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            await warm(reader, writer)
            writer.write(GET)
            with pytest.raises(asyncio.IncompleteReadError):
                await read_response(reader)
        assert len(sync_sends) == 1
        assert server_outcomes(rt) == {("proxied", "200"): 1, ("upstream_error", "200"): 1}


async def test_interim_responses_then_the_final_one(tmp_path, sync_sends):
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + ok(b"final")
    async with Upstream(scripted(ok(), interim)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            await warm(reader, writer)
            writer.write(GET)
            assert (await read_response(reader)).body == b"final"
            await warm(reader, writer)
        assert len(sync_sends) == 2 and up.connections == 1


async def test_retryable_status_on_the_synchronous_path_is_retried(tmp_path, sync_sends):
    retries = {"attempts": 2, "backoff_base_s": 0, "retry_on": ["status"], "statuses": [503]}
    sick = b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy"
    async with Upstream(scripted(ok(), sick)) as up:
        async with gateway(in_process_config([up.port], tmp_path, retries=retries)) as rt:
            async with client(rt) as (reader, writer):
                await warm(reader, writer)
                writer.write(GET)
                assert (await read_response(reader)).body == b"ok"
            assert len(sync_sends) == 1
            assert server_outcomes(rt) == {("proxied", "200"): 2}


async def test_client_leaving_while_the_upstream_answers_is_a_client_abort(tmp_path, sync_sends):
    async def slow(reader, writer):
        await asyncio.sleep(0.3)
        writer.write(ok())
        await writer.drain()

    async with Upstream(scripted(ok(), slow)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            await warm(reader, writer)
            writer.write(GET)
            await asyncio.sleep(0.05)
        # The client is gone; the answer arrives later, is recorded as what it was and the upstream
        # connection, clean, goes back to the pool.
        assert await eventually(lambda: server_outcomes(rt).get(("client_abort", "200"), 0) == 1)
        assert len(sync_sends) == 1
        assert await eventually(lambda: len(endpoint_pools(rt)[0].idle) == 1)


async def test_pipelined_requests_behind_a_synchronous_exchange_are_answered_in_order(tmp_path, sync_sends):
    def echo(n):
        return ok(b"r%d" % n)

    async with Upstream(scripted(ok(), *[echo(n) for n in range(1, 5)])) as up, \
            gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            await warm(reader, writer)
            writer.write(GET + GET + b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi" + GET)
            bodies = [(await read_response(reader)).body for _ in range(4)]
        assert bodies == [b"r1", b"r2", b"r3", b"r4"]
        assert [r[2] for r in up.requests[1:]] == [b"", b"", b"hi", b""]
        assert len(sync_sends) >= 1


async def test_head_request_on_the_synchronous_path(tmp_path, sync_sends):
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    async with Upstream(scripted(ok(), head_answer)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            await warm(reader, writer)
            writer.write(b"HEAD /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
            resp = await read_response(reader, method="HEAD")
            assert (resp.status, resp.header("content-length")) == (200, "5")
            await warm(reader, writer)
        assert len(sync_sends) >= 1
        assert await eventually(lambda: server_outcomes(rt) == {("proxied", "200"): 3})


async def test_local_answers_on_the_synchronous_path_keep_the_connection(tmp_path):
    async with Upstream(scripted()) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            for _ in range(3):
                writer.write(b"GET /nowhere HTTP/1.1\r\nHost: h\r\n\r\n")
                assert (await read_response(reader)).status == 404
            await warm(reader, writer)
            writer.write(b"GET /nowhere HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            assert (await read_response(reader)).status == 404
            assert await read_all(reader) == b""  # closed as asked
        assert server_outcomes(rt) == {("no_route", "404"): 4, ("proxied", "200"): 1}
