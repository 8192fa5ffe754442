"""`api_key`: authenticate by a key from a header (or a query parameter), stored in config only as a hash.

API keys are long random secrets, so an unsalted SHA-256 is the right storage (as for GitHub tokens): it cannot
be reversed or brute-forced, and it costs microseconds per request where a password KDF would cost
milliseconds. Lookup is a dict access on the digest, so timing reveals nothing about stored keys.

Reasons: apikey.valid, apikey.missing, apikey.invalid. The matching entry's consumer and plan become the
request's; the consumer goes upstream in `consumer_header` (a client-sent copy is always removed first), and
the key itself is removed from what the upstream receives unless `forward_key` is set.

`main(argv)` is the CLI helper behind `gatewatch apikey hash` / `gatewatch apikey generate`.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
from urllib.parse import parse_qsl

from gatewatch.edge.policies.base import PolicyRequest, PolicyVerdict, allow, deny
from gatewatch.telemetry.names import Attr, Outcome, PolicyReason as R

CHALLENGE = (("WWW-Authenticate", 'ApiKey realm="gatewatch"'),)
MAX_KEY_CHARS = 512
VALID, MISSING, INVALID = R.APIKEY_VALID.value, R.APIKEY_MISSING.value, R.APIKEY_INVALID.value  # plain str
CONSUMER = Attr.CONSUMER


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class ApiKeyPolicy:
    type = "api_key"

    def __init__(self, cfg):
        self.name, self.shadow, self.cfg = cfg.name, cfg.shadow, cfg
        self.entries = {e.hash: e for e in cfg.keys}
        self.strip = {cfg.consumer_header.lower()} if cfg.consumer_header else set()
        self.header = cfg.header.lower() if cfg.header else None
        if self.header and not cfg.forward_key:
            self.strip.add(self.header)

    def _key(self, req: PolicyRequest) -> str | None:
        if self.header:
            v = req.head.header(self.header)
            if v and v.strip():
                return v.strip()
        if self.cfg.query:
            for k, v in parse_qsl(req.query):
                if k == self.cfg.query and v:
                    return v
        return None

    async def evaluate(self, req: PolicyRequest) -> PolicyVerdict:
        req.upstream_remove |= self.strip
        key = self._key(req)
        if key is None:
            return deny(self, MISSING, 401, Outcome.DENIED_AUTH, None, CHALLENGE)
        entry = self.entries.get(hash_key(key)) if len(key) <= MAX_KEY_CHARS else None
        if entry is None:
            return deny(self, INVALID, 401, Outcome.DENIED_AUTH, None, CHALLENGE)
        req.consumer, req.plan = entry.consumer, entry.plan
        if self.cfg.consumer_header:
            req.upstream_set.append((self.cfg.consumer_header, entry.consumer))
        return allow(self, VALID, **{CONSUMER: entry.consumer})


def main(argv: list[str] | None = None) -> int:
    """`apikey hash [KEY]` prints the config hash of KEY (read from stdin when omitted, so it stays out of the
    shell history); `apikey generate` prints a new random key and its hash."""
    parser = argparse.ArgumentParser(prog="gatewatch apikey", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("hash", help="print the sha256 hash to put in an api_key policy's `keys[].hash`")
    h.add_argument("key", nargs="?", help="the API key (default: read one line from stdin)")
    sub.add_parser("generate", help="print a new random API key and its hash")
    args = parser.parse_args(argv)
    if args.command == "generate":
        key = secrets.token_urlsafe(32)
        print(f"key:  {key}\nhash: {hash_key(key)}")
        return 0
    key = args.key if args.key is not None else sys.stdin.readline().rstrip("\r\n")
    if not key:
        print("gatewatch apikey hash: empty key", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
