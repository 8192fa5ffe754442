"""Keys and token builders for JWT tests (generated once per test session)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

HMAC_SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"
ISS, AUD = "https://idp.example", "gatewatch-api"


@functools.cache
def keys():
    return {"r1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "e1": ec.generate_private_key(ec.SECP256R1()),
            "d1": ed25519.Ed25519PrivateKey.generate()}


def public_pem(kid: str) -> str:
    return keys()[kid].public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def claims(**over):
    now = int(time.time())
    c = {"iss": ISS, "aud": AUD, "sub": "alice", "exp": now + 300, "iat": now, "scope": "read write"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def token(alg="RS256", kid="r1", headers=None, **claim_over) -> str:
    key = HMAC_SECRET if alg.startswith("HS") else keys()[kid]
    return jwt.encode(claims(**claim_over), key, algorithm=alg, headers={"kid": kid, **(headers or {})})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict, payload: dict, secret: bytes | None = None, signature: bytes = b"") -> str:
    """A token built by hand (what an attacker would send): HS256-signed with `secret`, or a fixed signature."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if secret is not None:
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def jwk(kid: str) -> dict:
    pub = keys()[kid].public_key()
    if kid == "r1":
        d = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(pub))
    elif kid == "e1":
        d = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(pub))
    else:
        d = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(pub))
    d["kid"] = kid
    return d
