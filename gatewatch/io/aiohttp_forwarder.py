"""The upstream I/O end on aiohttp's client: send one request to one instance, stream the answer back.

One `ClientSession` per pool (or remote upstream), keep-alive pooling, no redirects, no decompression, no
cookie jar, no auto-added headers, and the request target sent byte for byte (`yarl.URL(..., encoded=True)`).
aiohttp's silent re-send of idempotent requests on a stale pooled connection is disabled: a retry Gatewatch
cannot see would be a retry no trace shows (retries are the balancer's, visible and recorded).

Every aiohttp/OS error is mapped to one `ErrorType`; nothing else leaves this module. `https` upstreams use
their pool or upstream's `tls` settings (`set_tls`); a failed handshake is `upstream_tls_error`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from typing import AsyncIterator

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gatewatch.io.interfaces import Headers, UpstreamFailure, UpstreamRequest, connect_failure
from gatewatch.io.tls import UpstreamTLS, failure_of
from gatewatch.telemetry.names import ErrorType

SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
READ_CHUNK = 64 * 1024


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def wire_value(value: str) -> str:
    """A header value (its bytes as latin-1, as the listeners decode them) that aiohttp's writer, which encodes
    UTF-8, puts on the wire unchanged: obs-text (RFC 9110 §5.5) is forwarded as opaque bytes when those bytes are
    UTF-8. Other obs-text bytes cannot be written by aiohttp (the fast data plane forwards any)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def map_error(err: BaseException, before_response: bool) -> UpstreamFailure:
    tls_error = _tls_error(err)
    if tls_error is not None:
        kind, message = failure_of(tls_error)
        return UpstreamFailure(ErrorType.UPSTREAM_TLS_ERROR, message, tls_failure=kind.value)
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return UpstreamFailure(ErrorType.CONNECT_TIMEOUT, str(err))
    if isinstance(err, aiohttp.SocketTimeoutError):
        kind = ErrorType.RESPONSE_TIMEOUT if before_response else ErrorType.READ_TIMEOUT
        return UpstreamFailure(kind, str(err), before_response=before_response)
    if isinstance(err, aiohttp.ClientConnectorDNSError):  # the name did not resolve: not "refused"
        return UpstreamFailure(ErrorType.DNS_ERROR, str(err))
    if isinstance(err, aiohttp.ClientConnectorError):
        return connect_failure(err.os_error) if isinstance(err.os_error, OSError) else UpstreamFailure(
            ErrorType.CONNECT_REFUSED, str(err))
    if isinstance(err, aiohttp.ClientResponseError):  # bad status line, bad headers
        return UpstreamFailure(ErrorType.PROTOCOL_ERROR, str(err), before_response=before_response)
    if isinstance(err, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                        aiohttp.ClientConnectionError, ConnectionError)):
        return UpstreamFailure(ErrorType.UPSTREAM_RESET, str(err) or type(err).__name__,
                               before_response=before_response)
    if isinstance(err, asyncio.TimeoutError):
        kind = ErrorType.RESPONSE_TIMEOUT if before_response else ErrorType.READ_TIMEOUT
        return UpstreamFailure(kind, "timed out", before_response=before_response)
    return UpstreamFailure(ErrorType.PROTOCOL_ERROR, f"{type(err).__name__}: {err}", before_response=before_response)


def _tls_error(err: BaseException) -> ssl.SSLError | None:
    """The handshake failure inside an aiohttp connect error, if that is what it was."""
    if isinstance(err, aiohttp.ClientConnectorCertificateError):
        return err.certificate_error if isinstance(err.certificate_error, ssl.SSLError) else ssl.SSLError(
            str(err.certificate_error))
    if isinstance(err, aiohttp.ClientSSLError):  # ClientConnectorSSLError and its kin
        cause = getattr(err, "os_error", None)
        return cause if isinstance(cause, ssl.SSLError) else ssl.SSLError(str(err))
    if isinstance(err, aiohttp.ClientOSError) and isinstance(err.__cause__, ssl.SSLError):
        return err.__cause__  # a TLS 1.3 alert read after the handshake (a refused client certificate)
    return None


def _peer(resp: aiohttp.ClientResponse, request: UpstreamRequest) -> tuple[str, int] | None:
    """The address actually connected to. A small body may already be read and its connection released by
    the time `request()` returns, so fall back to the protocol's transport, then to an IP-literal host."""
    conn = resp.connection
    transport = conn.transport if conn is not None else getattr(getattr(resp, "_protocol", None), "transport", None)
    peername = transport.get_extra_info("peername") if transport is not None else None
    if peername:
        return peername[0], peername[1]
    try:
        ipaddress.ip_address(request.host)
    except ValueError:
        return None
    return request.host, request.port


class AiohttpResponse:
    def __init__(self, resp: aiohttp.ClientResponse, peer: tuple[str, int] | None):
        self._resp = resp
        self.status = resp.status
        self.reason = resp.reason or ""
        self.headers: Headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers)
        self.peer_address = peer[0] if peer else None
        self.peer_port = peer[1] if peer else None
        self.whole = None  # aiohttp streams every body; only the raw data plane hands small ones over whole
        self._complete = False

    async def body(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                yield chunk
        except Exception as err:  # noqa: BLE001 - every failure becomes an ErrorType
            raise map_error(err, before_response=False) from None
        self._complete = True

    def close(self) -> None:
        if self._complete:
            self._resp.release()  # framing was complete: the connection may be reused
        else:
            self._resp.close()  # never reuse a connection whose exchange did not end cleanly


class AiohttpForwarder:
    def __init__(self, limits: dict[str, tuple[int, float]]):
        """`limits`: pool or upstream name → (max connections, keep-alive idle seconds)."""
        self._limits = limits
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._tls: dict[str, UpstreamTLS] = {}
        self._closing: set[asyncio.Task] = set()  # sessions of replaced TLS settings, closing

    def _session(self, pool: str) -> aiohttp.ClientSession:
        session = self._sessions.get(pool)
        if session is None or session.closed:
            limit, idle = self._limits.get(pool, (256, 15.0))
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=limit, keepalive_timeout=idle,
                                             enable_cleanup_closed=False, ttl_dns_cache=10)
            session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=SKIP_AUTO_HEADERS, timeout=aiohttp.ClientTimeout(total=None),
                requote_redirect_url=False)
            # Disable aiohttp's invisible re-send on a stale keep-alive connection (see module docstring).
            session._retry_connection = False  # noqa: SLF001
            self._sessions[pool] = session
        return session

    async def send(self, pool: str, request: UpstreamRequest, body: AsyncIterator[bytes] | None,
                   connect_s: float, response_s: float, idle_s: float, timing=None) -> AiohttpResponse:
        """`timing` is left empty: aiohttp does not say how its time split between pool, connect and wait."""
        session = self._session(pool)
        url = URL(f"{request.scheme}://{_hostport(request.host, request.port)}{request.target}", encoded=True)
        headers = CIMultiDict((k, v if v.isascii() else wire_value(v)) for k, v in request.headers)
        timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=connect_s, sock_read=idle_s)
        tls = self._tls.get(pool) if request.scheme == "https" else None
        try:
            async with asyncio.timeout(response_s):
                resp = await session.request(
                    request.method, url, headers=headers, data=body if request.has_body else None,
                    allow_redirects=False, timeout=timeout, compress=None, auto_decompress=False,
                    ssl=tls.context if tls else True, server_hostname=tls.server_name if tls else None)
        except asyncio.CancelledError:
            raise
        except TimeoutError as err:
            if isinstance(err, aiohttp.ServerTimeoutError):
                raise map_error(err, before_response=True) from None
            raise UpstreamFailure(ErrorType.RESPONSE_TIMEOUT, f"no response head within {response_s}s") from None
        except Exception as err:  # noqa: BLE001 - every failure becomes an ErrorType
            raise map_error(err, before_response=True) from None
        return AiohttpResponse(resp, _peer(resp, request))

    def set_limits(self, limits: dict[str, tuple[int, float]]) -> None:
        """After a config reload: limits for pools and upstreams connected from now on (connection pools that
        already exist keep theirs until the process restarts)."""
        self._limits = limits

    def set_tls(self, tls: dict[str, UpstreamTLS]) -> None:
        """TLS settings per pool or upstream name; a changed one gets a new session (new connections)."""
        for name in [n for n in self._sessions if self._tls.get(n) is not tls.get(n)]:
            closing = asyncio.get_running_loop().create_task(self._sessions.pop(name).close())
            self._closing.add(closing)  # held until done: a task nobody references may be collected mid-way
            closing.add_done_callback(self._closing.discard)
        self._tls = dict(tls)

    async def close(self) -> None:
        for s in self._sessions.values():
            await s.close()
        self._sessions.clear()
