"""`simple_head` against llhttp, the parser of record: whatever the simple parsers accept, llhttp (httptools, as
the listener and forwarder drive it) must accept too and turn into the same message. Checked on hand-written heads
(the ordinary ones must be taken, the tricky ones left to llhttp) and on a seeded mutation fuzz of both."""

from __future__ import annotations

import collections
import random
import re

import httptools
import pytest

from gatewatch.io import simple_head
from gatewatch.io.http1 import serialize_head
from gatewatch.io.simple_head import simple_request, simple_response
from gatewatch.proxy.headers import downstream_response_headers

LIMITS = dict(max_header_bytes=8192, max_headers=100, max_target=8192)


class _Collect:
    def __init__(self):
        self.url = b""
        self.status = b""
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.complete = 0
        self.headers_done = False

    def on_url(self, url):
        self.url += url

    def on_status(self, status):
        self.status += status

    def on_header(self, name, value):
        if not self.headers_done:
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self):  # read here, as the listener and forwarder do: llhttp resets them after
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()
        self.upgrade = self.parser.should_upgrade()

    def on_body(self, body):
        self.body += body

    def on_message_complete(self):
        self.complete += 1


def _fed(parser_type, data: bytes):
    """(parser, what its callbacks collected) once `data` is fed, or (the exception llhttp raised, None)."""
    c = _Collect()
    p = c.parser = parser_type(c)
    try:
        p.feed_data(data)
    except httptools.HttpParserError as err:
        return err, None
    return p, c


def llhttp_request(data: bytes):
    """What the listener's llhttp path makes of `data`, or the exception llhttp raised."""
    p, c = _fed(httptools.HttpRequestParser, data)
    if c is None:
        return p
    return dict(method=p.get_method().decode("ascii"), target=c.url.decode("latin-1"), version=p.get_http_version(),
                headers=c.headers, keep_alive=c.keep_alive, upgrade=c.upgrade, body=c.body,
                complete=c.complete)


def llhttp_response(data: bytes):
    """What the forwarder's llhttp path makes of `data`, or the exception llhttp raised."""
    p, c = _fed(httptools.HttpResponseParser, data)
    if c is None:
        return p
    return dict(status=p.get_status_code(), reason=c.status.decode("latin-1"), headers=c.headers,
                keep_alive=c.keep_alive, body=c.body, complete=c.complete)


def agree_request(data: bytes) -> bool:
    """True if the simple parser took `data` (then llhttp must have made the same of it), False if it left it."""
    simple = simple_request(data, **LIMITS)
    if simple is None:
        return False
    method, target, headers, index = simple
    ref = llhttp_request(data)
    assert not isinstance(ref, Exception), (data, ref)
    assert ref == dict(method=method, target=target, version="1.1", headers=headers, keep_alive=True, upgrade=False,
                       body=b"", complete=1), data
    expected_index: dict[str, str] = {}
    for k, v in headers:
        expected_index.setdefault(k.lower(), v)
    assert index == expected_index
    assert sum(1 for k, _ in headers if k.lower() == "host") == 1
    assert not {k.lower() for k, _ in headers} & {"content-length", "transfer-encoding", "expect", "upgrade"}
    return True


RELAYED = collections.Counter()  # how many taken responses came with a relayed head block, and how many without


def agree_response(data: bytes) -> bool:
    """True if the simple parser took `data` (then llhttp must have made the same of it, and its relayed head
    block must be what the serializing relay writes), False if it left it."""
    simple = simple_response(data, 64 * 1024)
    if simple is None:
        return False
    status, reason, headers, body, block, dated = simple
    ref = llhttp_response(data)
    assert not isinstance(ref, Exception), (data, ref)
    assert ref == dict(status=status, reason=reason, headers=headers, keep_alive=True, body=body, complete=1), data
    # The block: exactly the serializing relay's lines before its Via, whenever every line of the head is written
    # `name ": " value` (then it is cut from them) and there is no Via (ours merges into it); None otherwise.
    lines = data[data.index(b"\r\n") + 2:len(data) - len(body) - 2]
    canonical = lines == "".join(f"{k}: {v}\r\n" for k, v in headers).encode("ascii")
    relayed, _ = downstream_response_headers(tuple(headers), "1.1")
    assert relayed[-1][0] == "Via"
    if canonical and not any(k.lower() == "via" for k, _ in headers):
        assert block == serialize_head(b"", relayed[:-1], [])[:-2], data
        assert dated == any(k.lower() == "date" for k, _ in headers)
        RELAYED["block"] += 1
    else:
        assert block is None, data
        RELAYED["none"] += 1
    return True


REQUESTS_TAKEN = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /api/x?q=1&r=%20ok HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nhost: a\r\nConnection: keep-alive\r\n\r\n",
    b"DELETE /d HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Tab:\tv\t\r\nX-Trail: v  \r\n\r\n",
    b"OPTIONS /o HTTP/1.1\r\nHost: a\r\nAccept: a\r\nACCEPT: b\r\nX-Weird-Token!#$%&'*+.^_`|~: 1\r\n\r\n",
    b"GET /p HTTP/1.1\r\nHost: a\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
]

REQUESTS_LEFT = {
    "HTTP/1.0": b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    "no Host": b"GET / HTTP/1.1\r\nX: a\r\n\r\n",
    "two Hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "a body": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
    "Content-Length: 0": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    "chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "Expect": b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    "Upgrade": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "Connection: close": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "pipelined": b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "partial": b"GET / HTTP/1.1\r\nHost: a\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    "bare CR": b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n",
    "obs-text": b"GET / HTTP/1.1\r\nHost: a\r\nX: \xe9\r\n\r\n",
    "CONNECT": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    "absolute form": b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    "asterisk": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "extension method": b"PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n",
    "lower-case method": b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    "double space": b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    "quote in target": b'GET /"x" HTTP/1.1\r\nHost: a\r\n\r\n',
    "fragment": b"GET /#f HTTP/1.1\r\nHost: a\r\n\r\n",
    "leading CRLF": b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "too many headers": b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 100 + b"\r\n",
    "too large": b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 8192 + b"\r\n\r\n",
    "target too long": b"GET /" + b"a" * 8192 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
}

RESPONSES_TAKEN = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\nContent-Type: text/plain\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 503 \r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-T: v \t\r\n\r\nno",
    b"HTTP/1.1 200 OK\r\nContent-Length: 007\r\n\r\nabcdefg",
    # nginx's order: the dropped lines last
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 04 Dec 2026 22:00:00 GMT\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
    # dropped lines between kept ones, and an inner tier's ids
    b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\nA: 1\r\nX-Request-Id: inner\r\nKeep-Alive: timeout=5\r\nB: 2\r\n"
    b"traceresponse: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nC: \r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nVia: 1.1 inner\r\nContent-Length: 0\r\n\r\n",  # Via: serialized, ours merged
    b"HTTP/1.1 200 OK\r\nX:v\r\nContent-Length: 0\r\n\r\n",  # no space after the colon: serialized
    b"HTTP/1.1 200 OK\r\nX:  v\r\nContent-Length: 0\r\n\r\n",  # two
    b"HTTP/1.1 200 OK\r\nX:\tv\r\nContent-Length: 0\r\n\r\n",  # a tab
    b"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n",  # an empty value, no space
]

RESPONSES_LEFT = {
    "HTTP/1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "no length": b"HTTP/1.1 200 OK\r\n\r\nuntil close",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    "length with a sign": b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx",
    "body still arriving": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    "more than the body": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n",
    "100 Continue": b"HTTP/1.1 100 Continue\r\n\r\n",
    "204": b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    "304": b"HTTP/1.1 304 Not Modified\r\n\r\n",
    "Connection: close": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    "no reason, no space": b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    "two-digit status": b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: a\r\n b\r\n\r\n",
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
    "name with a space": b"HTTP/1.1 200 OK\r\nContent Length: 0\r\n\r\n",
    "too large": b"HTTP/1.1 200 OK\r\nX: " + b"v" * (64 * 1024) + b"\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("data", REQUESTS_TAKEN)
def test_ordinary_requests_are_taken_and_match_llhttp(data):
    assert agree_request(data)


@pytest.mark.parametrize("data", REQUESTS_LEFT.values(), ids=REQUESTS_LEFT.keys())
def test_other_requests_are_left_to_llhttp(data):
    assert simple_request(data, **LIMITS) is None


@pytest.mark.parametrize("data", RESPONSES_TAKEN)
def test_ordinary_responses_are_taken_and_match_llhttp(data):
    assert agree_response(data)


@pytest.mark.parametrize("data", RESPONSES_LEFT.values(), ids=RESPONSES_LEFT.keys())
def test_other_responses_are_left_to_llhttp(data):
    assert simple_response(data, 64 * 1024) is None


def test_the_lower_case_name_is_one_shared_object_and_the_cache_is_bounded(monkeypatch):
    a = simple_request(b"GET / HTTP/1.1\r\nHost: a\r\nX-Id: 1\r\n\r\n", **LIMITS)
    b = simple_request(b"GET / HTTP/1.1\r\nHost: b\r\nX-Id: 2\r\n\r\n", **LIMITS)
    assert [k for k in a[3] if k == "x-id"][0] is [k for k in b[3] if k == "x-id"][0]
    monkeypatch.setattr(simple_head, "_NAMES", {})
    monkeypatch.setattr(simple_head, "_NAMES_MAX", 3)
    for i in range(10):
        assert simple_request(b"GET / HTTP/1.1\r\nHost: a\r\nX-%d: v\r\n\r\n" % i, **LIMITS) is not None
    assert len(simple_head._NAMES) == 3  # later names are checked each time, not kept
    assert simple_request(b"GET / HTTP/1.1\r\nHost: a\r\nX-9\x01: v\r\n\r\n", **LIMITS) is None


# The mutation fuzz: single-byte replacements, insertions and deletions of ordinary messages, with bytes drawn
# mostly from those that matter to HTTP framing. Every mutant either goes to llhttp or is what llhttp makes of it.
_INTERESTING = b" \t\r\n:/?#%@\x00\x01\x7f\x80\xff-_.~!\"'(),;=<>[]{}\\|^`HTTP/1.01234567890aZ"


def _mutants(seeds: list[bytes], n: int, seed: int):
    rng = random.Random(seed)
    for _ in range(n):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(data) + 1)
            op = rng.random()
            byte = rng.choice(_INTERESTING) if rng.random() < 0.8 else rng.randrange(256)
            if op < 0.4 and i < len(data):
                data[i] = byte
            elif op < 0.7:
                data.insert(i, byte)
            elif i < len(data):
                del data[i]
        yield bytes(data)


def test_mutated_requests_are_left_to_llhttp_or_agree_with_it():
    seeds = REQUESTS_TAKEN + [v for v in REQUESTS_LEFT.values() if len(v) < 300]
    taken = sum(agree_request(d) for d in _mutants(seeds, 50000, seed=14))
    assert taken > 1000  # the fuzz reaches the accepting path, not only the refusals


def test_mutated_responses_are_left_to_llhttp_or_agree_with_it():
    seeds = RESPONSES_TAKEN + [v for v in RESPONSES_LEFT.values() if len(v) < 300]
    RELAYED.clear()
    taken = sum(agree_response(d) for d in _mutants(seeds, 50000, seed=14))
    assert taken > 1000
    assert RELAYED["block"] > 500 and RELAYED["none"] > 100  # both ways of relaying a head are reached


# --- on real sockets: the simple path and llhttp's give the upstream and the client the same bytes ----------------

REQUEST = (b"GET /api/x?q=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: t/1\r\nAccept: */*\r\nX-Tab:\tv \r\n"
           b"Connection: keep-alive\r\n\r\n")
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up:  u \r\nServer: t\r\n\r\nhello"
VARYING = {"x-request-id", "traceparent", "date", "forwarded", "x-forwarded-for"}


@pytest.fixture
def simple_taken(monkeypatch):
    """How many requests and responses took the simple path (counted around the functions both protocols call)."""
    from gatewatch.io import fast_forwarder, fast_listener

    taken = {"request": 0, "response": 0}

    def counting(kind, fn):
        def wrapped(*args):
            result = fn(*args)
            taken[kind] += result is not None
            return result
        return wrapped

    monkeypatch.setattr(fast_listener, "simple_request", counting("request", simple_request))
    monkeypatch.setattr(fast_forwarder, "simple_response", counting("response", simple_response))
    return taken


def _stable(headers) -> list:
    return [(k, v) for k, v in headers if k.lower() not in VARYING]


def _answering(response: bytes, split: bool):
    """An upstream connection handler that answers every request with `response`; `split`: its first 20 bytes in
    a read of their own."""
    import asyncio

    from tests.io.test_dataplane_adversarial import read_request

    async def answer(reader, writer, up):
        while True:
            try:
                up.requests.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                return
            if split:
                writer.write(response[:20])
                await writer.drain()
                await asyncio.sleep(0.05)
            writer.write(response[20:] if split else response)
            await writer.drain()

    return answer


async def _exchanges(tmp_path, split: bool) -> tuple[list, list]:
    """Three requests on one keep-alive connection: (what the upstream saw, what the client got). `split`: every
    head arrives in two reads on both sides, which the simple parsers never take."""
    import asyncio

    from tests.io.test_dataplane_adversarial import Upstream, cfg, client, gateway, read_response

    got = []
    async with Upstream(_answering(RESPONSE, split)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            for _ in range(3):
                if split:
                    writer.write(REQUEST[:30])
                    await writer.drain()
                    await asyncio.sleep(0.05)
                writer.write(REQUEST[30:] if split else REQUEST)
                resp = await read_response(reader)
                got.append((resp.status, _stable(resp.headers), resp.body))
    return [(line, _stable(headers), body) for line, headers, body in up.requests], got


async def test_the_simple_path_forwards_and_answers_exactly_as_llhttps(tmp_path, simple_taken):
    simple_up, simple_down = await _exchanges(tmp_path, split=False)
    taken = 3 if simple_head.ENABLED else 0  # run as Python, the protocols leave every head to llhttp
    assert simple_taken == {"request": taken, "response": taken}
    simple_taken.update(request=0, response=0)
    split_up, split_down = await _exchanges(tmp_path, split=True)
    assert simple_taken == {"request": 0, "response": 0}
    assert simple_up == split_up and simple_down == split_down
    line, headers, _ = simple_up[0]
    assert line == b"GET /api/x?q=1 HTTP/1.1" and ("X-Tab", "v") in headers  # (read_request strips the value)
    status, headers, body = simple_down[0]
    assert (status, body) == (200, b"hello") and ("X-Up", "u") in headers


# --- the relayed head block: the client gets the same bytes as when the head is serialized -------------------------

RELAYED_RESPONSES = [
    pytest.param(b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 04 Dec 2026 22:00:00 GMT\r\n"
                 b"Content-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello", id="nginx"),
    pytest.param(b"HTTP/1.1 201 Created\r\nKeep-Alive: timeout=5\r\nA: 1\r\nX-Request-Id: inner\r\nContent-Length: 5\r\n"
                 b"traceresponse: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nB: 2 \r\nC: \r\n\r\nhello",
                 id="dropped-lines-between-kept-ones"),
    pytest.param(b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nhello", id="nothing-kept"),
]


async def _raw_answers(tmp_path, response: bytes, request: bytes, split: bool) -> list[bytes]:
    """Two exchanges on one connection: the raw bytes (head and body) the client got for each. The client sends
    its own X-Request-Id (kept, so the answers do not vary); `split`: the upstream's head arrives in two reads."""
    from tests.io.test_dataplane_adversarial import Upstream, cfg, client, gateway, read_response

    got = []
    async with Upstream(_answering(response, split)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            for _ in range(2):
                writer.write(request)
                resp = await read_response(reader)
                got.append(resp.raw_head + resp.body)
    # the listener's own Date (when the upstream sent none) may tick between the two runs; the upstream's is fixed
    return [g if b"22:00:00 GMT" in g else re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\nDate: (ours)\r\n", g)
            for g in got]


@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize("response", RELAYED_RESPONSES)
async def test_a_relayed_head_block_answers_exactly_as_serializing(tmp_path, monkeypatch, response, version):
    from gatewatch.io import fast_forwarder

    blocks = []

    def noting(data, max_head):
        result = simple_response(data, max_head)
        blocks.append(result is not None and result[4] is not None)
        return result

    monkeypatch.setattr(fast_forwarder, "simple_response", noting)
    request = (f"GET /api/x HTTP/{version}\r\nHost: h\r\nX-Request-Id: client-1\r\n"
               f"{'Connection: keep-alive' + chr(13) + chr(10) if version == '1.0' else ''}\r\n").encode()
    relayed = await _raw_answers(tmp_path, response, request, split=False)
    # compiled, the whole-read answers went out as a block; as Python, every head is llhttp's
    assert blocks == ([True] * 2 if simple_head.ENABLED else [])
    blocks.clear()
    serialized = await _raw_answers(tmp_path, response, request, split=True)
    assert blocks == ([False] * 2 if simple_head.ENABLED else [])
    assert relayed == serialized
    assert relayed[0].startswith(response.split(b"\r\n", 1)[0] + b"\r\n")  # a reason split across reads, whole
    head = relayed[0].decode("latin-1").lower()
    assert "x-request-id: client-1\r\n" in head and "via: " + version + " gatewatch\r\n" in head
    assert "inner" not in head and "traceresponse" not in head and "keep-alive: " not in head
    assert head.count("date: ") == 1 and head.count("content-length: 5\r\n") == 1
