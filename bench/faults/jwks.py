"""The JWKS endpoint of the soak's `jwt` route, and the key its tokens are signed with.

    python -m faults.jwks --port P --jwks-file FILE     # serves FILE at GET /jwks.json

`make_key(workdir)` (in the soak) creates an RSA key, writes the public half as a JWKS document (kid `soak-1`)
and returns a function that signs RS256 tokens with the private half. The server is a plain aiohttp app that logs
one line per fetch; the soak hangs it with SIGSTOP (connections are accepted by the kernel, nothing is answered)
and resumes it with SIGCONT.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

KID = "soak-1"
ISSUER = "https://login.soak.test/"
AUDIENCE = "soak-api"


def make_key(workdir: Path) -> tuple[Path, Callable[[str], str]]:
    """Write `jwks.json` into workdir; return its path and `sign(subject) -> token` (valid for 12 hours)."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": KID, "alg": "RS256", "use": "sig"})
    path = workdir / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))

    def sign(subject: str) -> str:
        now = int(time.time())
        return jwt.encode({"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 12 * 3600},
                          key, algorithm="RS256", headers={"kid": KID})

    return path, sign


def main() -> None:
    from aiohttp import web

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--jwks-file", required=True)
    a = ap.parse_args()
    body = Path(a.jwks_file).read_bytes()
    fetches = 0

    async def jwks(_: web.Request) -> web.Response:
        nonlocal fetches
        fetches += 1
        print(f"jwks: fetch {fetches} at {time.monotonic():.3f}", flush=True)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    web.run_app(app, host="127.0.0.1", port=a.port, access_log=None, print=lambda *_: None,
                reuse_address=True)


if __name__ == "__main__":
    main()
