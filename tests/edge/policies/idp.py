"""An OpenID provider stand-in over HTTPS (a real aiohttp server on 127.0.0.1, port 0, with a certificate from
`tests.support.certs.Pki`): OIDC discovery, JWKS and RFC 7662 introspection, each of which the test can make
answer well, wrongly, with garbage or not at all, and whose calls it counts.

    idp = await Idp(Pki(tmp_path)).start()
    idp.issuer                       # https://127.0.0.1:PORT/realms/acme
    idp.tokens["opaque-1"] = {"active": True, "sub": "alice", "scope": "read"}
    idp.hits["introspect"]           # calls so far
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import Counter
from urllib.parse import unquote_plus

import aiohttp
import pytest
from aiohttp import web

from tests.edge.policies.jwt_keys import jwk
from tests.support.certs import Pki

CLIENT_ID, CLIENT_SECRET = "gatewatch edge", "s3cr:t/+ %&é"  # characters that client_secret_basic must encode


class Idp:
    def __init__(self, pki: Pki, realm: str = "/realms/acme"):
        self.pki = pki
        self.realm = realm
        self.kids = ["r1"]
        self.tokens: dict[str, dict] = {}  # opaque token → introspection answer (unknown: inactive)
        self.hits: Counter = Counter()
        self.issuer = ""
        self.issuer_in_document: str | None = None  # None: the real issuer
        self.jwks_uri: str | None = None  # None: this server's /keys
        # per endpoint: "ok", "hang" (never answers until stop), "garbage", "status_500", "not_bool", "html"
        self.mode = {"discovery": "ok", "jwks": "ok", "introspect": "ok"}
        self.pending = 0  # calls currently held by "hang"
        self.forms: list[dict] = []  # the introspection requests' forms
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self) -> "Idp":
        app = web.Application()
        app.router.add_get(self.realm + "/.well-known/openid-configuration", self.discovery)
        app.router.add_get(self.realm + "/keys", self.jwks)
        app.router.add_post(self.realm + "/introspect", self.introspect)
        leaf = self.pki.leaf("idp", names=["127.0.0.1", "localhost"])
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(leaf.cert, leaf.key)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
        self.issuer = f"https://127.0.0.1:{port}{self.realm}"
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def introspection_endpoint(self) -> str:
        return self.issuer + "/introspect"

    async def _misbehave(self, endpoint: str) -> web.Response | None:
        self.hits[endpoint] += 1
        mode = self.mode[endpoint]
        if mode == "hang":
            self.pending += 1
            try:
                await self._release.wait()
            finally:
                self.pending -= 1
            return web.Response(status=503)
        if mode == "garbage":
            return web.Response(body=b"\x00\xffnot json{", content_type="application/json")
        if mode == "html":
            return web.Response(text="<html>maintenance</html>", content_type="text/html")
        if mode == "status_500":
            return web.Response(status=500, text="boom")
        return None

    async def discovery(self, request: web.Request) -> web.Response:
        bad = await self._misbehave("discovery")
        if bad is not None:
            return bad
        return web.json_response({"issuer": self.issuer_in_document or self.issuer,
                                  "jwks_uri": self.jwks_uri or self.issuer + "/keys",
                                  "introspection_endpoint": self.introspection_endpoint,
                                  "response_types_supported": ["code"], "subject_types_supported": ["public"],
                                  "id_token_signing_alg_values_supported": ["RS256", "ES256"]})

    async def jwks(self, request: web.Request) -> web.Response:
        bad = await self._misbehave("jwks")
        if bad is not None:
            return bad
        return web.json_response({"keys": [jwk(k) for k in self.kids]})

    async def introspect(self, request: web.Request) -> web.Response:
        bad = await self._misbehave("introspect")
        if bad is not None:
            return bad
        if not _client_ok(request.headers.get("Authorization", "")):  # RFC 7662 §2.1: the caller authenticates
            return web.json_response({"error": "invalid_client"}, status=401,
                                     headers={"WWW-Authenticate": 'Basic realm="idp"'})
        form = dict(await request.post())
        self.forms.append(form)
        answer = self.tokens.get(form.get("token", ""), {"active": False})
        if self.mode["introspect"] == "not_bool":
            answer = {**answer, "active": "true"}
        return web.json_response(answer)


def _client_ok(header: str) -> bool:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    user, _, password = base64.b64decode(value).decode().partition(":")
    return (unquote_plus(user), unquote_plus(password)) == (CLIENT_ID, CLIENT_SECRET)  # RFC 6749 §2.3.1


# Fixtures for the modules that use the stand-in (import them by name: `from tests.edge.policies.idp import
# running_idp, client_session`); they appear to tests as `idp` and `session`.
@pytest.fixture(name="idp")
async def running_idp(tmp_path):
    server = await Idp(Pki(tmp_path / "pki")).start()
    yield server
    await server.stop()


@pytest.fixture(name="session")
async def client_session():
    async with aiohttp.ClientSession() as s:
        yield s
