"""Client-side TLS to upstreams: the context a pool or URL upstream connects with, and what a failed handshake
is called.

- `UpstreamTLS(context, server_name)`: what the forwarders and the health checker are given per pool or upstream
  name. `server_name` is sent as SNI and is the name the certificate must carry; None: the host connected to.
- `client_context(...)`: verification on unless asked otherwise (then no name check either), the system's CAs or
  `ca_file`'s, TLS 1.2 at least (RFC 9325 §3.1.1: no TLS 1.0/1.1), a client certificate for mTLS when given.
- `failure_of(err)` → (`TlsFailure`, message): from the OpenSSL verify code of a certificate failure (RFC 5280
  path validation; RFC 6125 names) or the alert the peer sent, never "connection refused".

Server side, a listener terminating TLS:
- `ServerTLS(...)`: one context per certificate, chosen by the SNI the client sends (exact name, then a
  one-label wildcard, RFC 6125 §6.4.3), the first certificate for any other name or none; the listener's client
  certificate policy (`client_auth` none | optional | required, against `client_ca_file`). Built again on every
  reload, so rotated files are picked up by new connections while open ones go on.
- `ServerTLS.describe(ssl_object)` → `ClientTLS`: what one connection negotiated, and the client certificate's
  identity (subject, SANs, SHA-256) when it was verified.
- `server_failure_of(err)` → `TlsHandshakeFailure`: why a client's handshake failed.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from typing import NamedTuple

from cryptography import x509
from cryptography.x509.oid import NameOID

from gatewatch.telemetry.names import TlsFailure, TlsHandshakeFailure

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# OpenSSL X509_V_ERR_* codes (include/openssl/x509_vfy.h) → why verification failed.
_VERIFY_CODES = {
    2: TlsFailure.UNKNOWN_CA,  # unable to get issuer certificate
    9: TlsFailure.NOT_YET_VALID,
    10: TlsFailure.EXPIRED,
    18: TlsFailure.UNKNOWN_CA,  # self-signed certificate
    19: TlsFailure.UNKNOWN_CA,  # self-signed certificate in chain
    20: TlsFailure.UNKNOWN_CA,  # unable to get local issuer certificate
    21: TlsFailure.UNKNOWN_CA,  # unable to verify the first certificate
    62: TlsFailure.NAME_MISMATCH,  # hostname mismatch
    64: TlsFailure.NAME_MISMATCH,  # IP address mismatch
}


@dataclass(frozen=True)
class UpstreamTLS:
    context: ssl.SSLContext
    server_name: str | None = None


def client_context(ca_file: str | None = None, verify: bool = True, client_cert: str | None = None,
                   client_key: str | None = None, min_version: str = "1.2") -> ssl.SSLContext:
    """Raises OSError or ssl.SSLError if a file cannot be read or the key does not match the certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = MIN_VERSIONS[min_version]
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if client_cert is not None:
        ctx.load_cert_chain(client_cert, client_key)
    ctx.set_alpn_protocols(["http/1.1"])  # what both forwarders speak upstream
    return ctx


def failure_of(err: ssl.SSLError) -> tuple[TlsFailure, str]:
    """Why a handshake failed, and a message naming it for the 502 body and the logs."""
    if isinstance(err, ssl.SSLCertVerificationError):
        kind = _VERIFY_CODES.get(err.verify_code, TlsFailure.HANDSHAKE_FAILED)
        return kind, f"the upstream's certificate failed verification: {err.verify_message} ({kind.value})"
    reason = (err.reason or "").upper()
    if "CERTIFICATE_REQUIRED" in reason or "BAD_CERTIFICATE" in reason or "UNKNOWN_CA" in reason \
            or "CERTIFICATE_UNKNOWN" in reason:
        kind = TlsFailure.CLIENT_CERT_REJECTED
    elif "PROTOCOL_VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason or "NO_PROTOCOLS_AVAILABLE" in reason:
        kind = TlsFailure.PROTOCOL_VERSION
    elif "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason or "PACKET_LENGTH_TOO_LONG" in reason:
        kind = TlsFailure.NOT_TLS
    else:
        kind = TlsFailure.HANDSHAKE_FAILED
    return kind, f"TLS handshake with the upstream failed: {err.reason or err} ({kind.value})"


# --- server side: a listener terminating TLS ---

# TLS 1.2 suites: ECDHE key exchange with an AEAD cipher only (RFC 9325 §4.2; Mozilla's "intermediate" profile).
# TLS 1.3 suites are OpenSSL's defaults, all AEAD (RFC 8446 §9.1).
SERVER_CIPHERS_TLS12 = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"))
ALPN = ("h2", "http/1.1")  # what the listeners speak (RFC 7301), h2 preferred (RFC 9113 §3.2)
ALPN_HTTP1 = ("http/1.1",)  # a listener with `http2.enabled: false`


class ServedCertificate(NamedTuple):
    """A certificate a listener serves, as the expiry gauge labels it."""

    label: str  # the subject's CN, else the first DNS name, else the file name
    serial: str  # hex
    not_after: float  # Unix time
    names: tuple[str, ...]  # the DNS names it is chosen for by SNI (lower-case; "*.example.com" for a wildcard)


class ClientTLS(NamedTuple):
    """What one client connection negotiated with a listener (OTel semconv tls.* values), and the client
    certificate's identity when one was presented and verified against the listener's `client_ca_file`."""

    version: str | None  # "1.2" | "1.3"
    cipher: str | None
    server_name: str | None  # the SNI the client sent
    alpn: str | None
    subject: str | None = None  # RFC 4514
    sans: tuple[str, ...] = ()  # "DNS:name", "URI:...", "email:..." , "IP:..."
    fingerprint: str | None = None  # SHA-256 of the DER certificate, upper-case hex
    forwarded: str | None = None  # the identity header's value (Envoy's X-Forwarded-Client-Cert format)

    @property
    def span(self) -> tuple:
        """The SERVER span's tls.* values, as `RequestRecord.tls` carries them (a plain tuple: marshal)."""
        return (self.version, self.cipher, self.server_name, self.alpn, self.subject, self.fingerprint)


def served_certificate(cert_file: str) -> ServedCertificate:
    """The first certificate of a PEM chain file. Raises OSError or ValueError."""
    with open(cert_file, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    label = str(cns[0].value) if cns else (names[0] if names else cert_file.rsplit("/", 1)[-1])
    return ServedCertificate(label, format(cert.serial_number, "x"), cert.not_valid_after_utc.timestamp(), names)


class ServerTLS:
    """One listener's TLS. Raises OSError, ssl.SSLError or ValueError naming the file that does not load."""

    def __init__(self, certificates: list[tuple[str, str]], min_version: str = "1.2", client_auth: str = "none",
                 client_ca_file: str | None = None, handshake_timeout_s: float = 10.0,
                 client_cert_header: str | None = None, alpn: tuple[str, ...] = ALPN):
        self.handshake_timeout_s = handshake_timeout_s
        self.alpn = alpn
        self.client_auth = client_auth
        self.client_cert_header = client_cert_header
        self.certificates: list[ServedCertificate] = []
        self._by_name: dict[str, ssl.SSLContext] = {}
        contexts = []
        for cert_file, key_file in certificates:
            ctx = self._context(min_version, client_auth, client_ca_file, alpn)
            ctx.load_cert_chain(cert_file, key_file)
            served = served_certificate(cert_file)
            self.certificates.append(served)
            contexts.append(ctx)
            for name in served.names:
                self._by_name.setdefault(name, ctx)  # the first certificate listed for a name wins
        self.context = contexts[0]  # the default: no SNI, or a name no certificate carries
        self.context.sni_callback = self._select

    @staticmethod
    def _context(min_version: str, client_auth: str, client_ca_file: str | None,
                 alpn: tuple[str, ...] = ALPN) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = MIN_VERSIONS[min_version]  # RFC 9325 §3.1.1: TLS 1.2 at least
        ctx.set_ciphers(SERVER_CIPHERS_TLS12)
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION  # RFC 9325 §3.3, §3.5
        ctx.set_alpn_protocols(list(alpn))
        if client_auth != "none":
            ctx.load_verify_locations(cafile=client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED if client_auth == "required" else ssl.CERT_OPTIONAL
        return ctx

    def _select(self, ssl_object, server_name: str | None, _ctx) -> None:
        """SNI callback (RFC 6066 §3): switch to the certificate for the name; keep the default otherwise."""
        ssl_object.gatewatch_sni = server_name  # read back by describe(); SSLObject has no accessor for it
        if server_name:
            name = server_name.lower().rstrip(".")
            ctx = self._by_name.get(name)
            if ctx is None and "." in name:
                ctx = self._by_name.get("*." + name.split(".", 1)[1])
            if ctx is not None and ctx is not self.context:
                ssl_object.context = ctx

    def describe(self, ssl_object) -> ClientTLS:
        if ssl_object is None:
            return ClientTLS(None, None, None, None)
        cipher = ssl_object.cipher()
        base = ((ssl_object.version() or "").removeprefix("TLSv") or None, cipher[0] if cipher else None,
                getattr(ssl_object, "gatewatch_sni", None), ssl_object.selected_alpn_protocol())
        der = ssl_object.getpeercert(binary_form=True) if self.client_auth != "none" else None
        if not der:
            return ClientTLS(*base)
        # With verify_mode set, a certificate that reached here was verified: a failing one ends the handshake.
        return ClientTLS(*base, *client_identity(der))


def client_identity(der: bytes) -> tuple[str, tuple[str, ...], str, str]:
    """(subject, SANs, SHA-256 upper-case hex, X-Forwarded-Client-Cert value) of a DER certificate."""
    cert = x509.load_der_x509_certificate(der)
    subject = cert.subject.rfc4514_string()
    sans: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans += [f"DNS:{v}" for v in san.get_values_for_type(x509.DNSName)]
        sans += [f"URI:{v}" for v in san.get_values_for_type(x509.UniformResourceIdentifier)]
        sans += [f"email:{v}" for v in san.get_values_for_type(x509.RFC822Name)]
        sans += [f"IP:{v}" for v in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    digest = hashlib.sha256(der).hexdigest()
    # Envoy's x-forwarded-client-cert element: Key=Value pairs joined by ';', values with ',;=' or '"'
    # quoted with '"' (and '"' escaped).
    parts = [f"Hash={digest}", f"Subject={_xfcc_quote(subject)}"]
    parts += [f"{kind}={_xfcc_quote(value)}" for kind, _, value in (s.partition(":") for s in sans)
              if kind in ("URI", "DNS")]
    return subject, tuple(sans), digest.upper(), ";".join(parts)


def _xfcc_quote(value: str) -> str:
    if any(c in value for c in ',;="'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


# OpenSSL reason codes of a failed server-side handshake (ssl/ssl_err.c names), by what they mean.
_SERVER_REASONS = (
    (("PEER_DID_NOT_RETURN_A_CERTIFICATE",), TlsHandshakeFailure.NO_CLIENT_CERT),
    (("HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE",
      "PACKET_LENGTH_TOO_LONG", "LENGTH_TOO_SHORT"), TlsHandshakeFailure.NOT_TLS),
    (("UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE"),
     TlsHandshakeFailure.PROTOCOL_VERSION),
    (("NO_SHARED_CIPHER", "NO_SHARED_GROUPS", "NO_SUITABLE"), TlsHandshakeFailure.NO_SHARED_CIPHER),
    (("ALERT_UNKNOWN_CA", "ALERT_BAD_CERTIFICATE", "ALERT_CERTIFICATE_UNKNOWN", "ALERT_CERTIFICATE_EXPIRED",
      "ALERT_BAD_CERTIFICATE_STATUS", "ALERT_CERTIFICATE_REVOKED", "ALERT_DECRYPT_ERROR", "ALERT_ACCESS_DENIED"),
     TlsHandshakeFailure.SERVER_CERT_REJECTED),
    (("UNEXPECTED_EOF",), TlsHandshakeFailure.CLIENT_CLOSED),
)
_CLIENT_CERT_CODES = {
    2: TlsHandshakeFailure.CLIENT_CERT_UNKNOWN_CA, 18: TlsHandshakeFailure.CLIENT_CERT_UNKNOWN_CA,
    19: TlsHandshakeFailure.CLIENT_CERT_UNKNOWN_CA, 20: TlsHandshakeFailure.CLIENT_CERT_UNKNOWN_CA,
    21: TlsHandshakeFailure.CLIENT_CERT_UNKNOWN_CA, 9: TlsHandshakeFailure.CLIENT_CERT_NOT_YET_VALID,
    10: TlsHandshakeFailure.CLIENT_CERT_EXPIRED,
}


def server_failure_of(err: BaseException) -> TlsHandshakeFailure:
    """Why a client's handshake with a listener failed (the exception `loop.start_tls` raised)."""
    if isinstance(err, ssl.SSLCertVerificationError):  # the client certificate failed our verification
        return _CLIENT_CERT_CODES.get(err.verify_code, TlsHandshakeFailure.CLIENT_CERT_INVALID)
    if isinstance(err, ssl.SSLError):
        if isinstance(err, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return TlsHandshakeFailure.CLIENT_CLOSED
        reason = (err.reason or str(err)).upper()
        for markers, kind in _SERVER_REASONS:
            if any(m in reason for m in markers):
                return kind
        return TlsHandshakeFailure.HANDSHAKE_FAILED
    if isinstance(err, TimeoutError) or (isinstance(err, ConnectionAbortedError) and "longer" in str(err)):
        return TlsHandshakeFailure.TIMEOUT  # asyncio's ssl_handshake_timeout aborts with this
    if isinstance(err, (ConnectionError, EOFError)):
        return TlsHandshakeFailure.CLIENT_CLOSED
    return TlsHandshakeFailure.HANDSHAKE_FAILED
