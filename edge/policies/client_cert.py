"""`client_cert`: authorise by the client certificate a TLS listener verified (mTLS at the edge).

The listener did the cryptography: with `client_auth: optional | required` a certificate that reaches a request
has been verified against the listener's `client_ca_file` (a failing one ends the handshake). This policy decides
who among the verified may pass, and names the consumer:

- `allow`: entries matched against the certificate, any one admits; empty: any verified certificate. An entry
  gives one of `subject` (the RFC 4514 DN, exactly), `san` (an entry of the subjectAltName as `DNS:name`,
  `URI:spiffe://…`, `email:…` or `IP:…`; `*` matches within one label or path segment: `DNS:*.partners.example`,
  `URI:spiffe://prod/ns/*/sa/billing`) or `fingerprint` (SHA-256 of the DER certificate, hex, any case, colons
  allowed).
- `consumer`: what becomes the request's consumer (rate limits per consumer, metrics, spans): `cn` (the
  subject's common name, else the first SAN), `subject`, `san` (the first SAN) or `fingerprint`.

Reasons: client_cert.valid, client_cert.missing (no verified certificate on this request: a plaintext listener,
or `client_auth: optional` and none sent; 401), client_cert.not_allowed (verified, but no `allow` entry matches;
403). The consumer goes upstream in `consumer_header` when set (a client-sent copy is always removed first).
"""

from __future__ import annotations

import re
from fnmatch import translate

from gatewatch.edge.policies.base import PolicyRequest, PolicyVerdict, allow, deny
from gatewatch.telemetry.names import Attr, Outcome, PolicyReason as R

VALID, MISSING, NOT_ALLOWED = (R.CLIENT_CERT_VALID.value, R.CLIENT_CERT_MISSING.value,
                               R.CLIENT_CERT_NOT_ALLOWED.value)


def san_pattern(text: str) -> re.Pattern[str]:
    """A SAN entry with `*` wildcards, each matching within one DNS label or URI path segment."""
    return re.compile(translate(text).replace(".*", "[^./]*"), re.IGNORECASE if text.startswith("DNS:") else 0)


def normalise_fingerprint(text: str) -> str:
    return text.replace(":", "").upper()


def common_name(subject: str) -> str | None:
    """The CN of an RFC 4514 string (the most specific one: RFC 4514 lists the RDNs most specific first)."""
    for rdn in _split(subject):
        key, _, value = rdn.partition("=")
        if key.strip().upper() == "CN":
            return value.replace("\\", "")
    return None


def _split(subject: str) -> list[str]:
    """RDNs of an RFC 4514 string: split on the commas that are not escaped (§2.4)."""
    out, cur, escaped = [], [], False
    for ch in subject:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            cur.append(ch)
            escaped = True
        elif ch == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


class ClientCertPolicy:
    type = "client_cert"

    def __init__(self, cfg):
        self.name, self.shadow, self.cfg = cfg.name, cfg.shadow, cfg
        self.subjects = {e.subject for e in cfg.allow if e.subject is not None}
        self.sans = [san_pattern(e.san) for e in cfg.allow if e.san is not None]
        self.fingerprints = {normalise_fingerprint(e.fingerprint) for e in cfg.allow if e.fingerprint is not None}
        self.anyone = not cfg.allow
        self.strip = {cfg.consumer_header.lower()} if cfg.consumer_header else set()

    def _allowed(self, subject: str, sans: tuple[str, ...], fingerprint: str) -> bool:
        return (self.anyone or subject in self.subjects or fingerprint in self.fingerprints
                or any(p.fullmatch(s) for p in self.sans for s in sans))

    def _consumer(self, subject: str, sans: tuple[str, ...], fingerprint: str) -> str:
        how = self.cfg.consumer
        if how == "subject":
            return subject
        if how == "fingerprint":
            return fingerprint
        first_san = sans[0].partition(":")[2] if sans else None
        if how == "san":
            return first_san or subject
        return common_name(subject) or first_san or subject

    async def evaluate(self, req: PolicyRequest) -> PolicyVerdict:
        req.upstream_remove |= self.strip
        tls = req.head.tls
        if tls is None or tls.fingerprint is None:
            return deny(self, MISSING, 401, Outcome.DENIED_AUTH, "a verified client certificate is required")
        subject, sans, fingerprint = tls.subject or "", tls.sans, tls.fingerprint
        if not self._allowed(subject, sans, fingerprint):
            return deny(self, NOT_ALLOWED, 403, Outcome.DENIED_POLICY,
                        "this client certificate is not allowed on this route",
                        **{Attr.TLS_CLIENT_SUBJECT: subject})
        consumer = self._consumer(subject, sans, fingerprint)
        req.consumer = consumer
        if self.cfg.consumer_header:
            req.upstream_set.append((self.cfg.consumer_header, consumer))
        return allow(self, VALID, **{Attr.CONSUMER: consumer})
