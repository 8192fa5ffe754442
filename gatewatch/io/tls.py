"""Client-side TLS to upstreams: the context a pool or URL upstream connects with, and what a failed handshake
is called.

- `UpstreamTLS(context, server_name)`: what the forwarders and the health checker are given per pool or upstream
  name. `server_name` is sent as SNI and is the name the certificate must carry; None: the host connected to.
- `client_context(...)`: verification on unless asked otherwise (then no name check either), the system's CAs or
  `ca_file`'s, TLS 1.2 at least (RFC 9325 §3.1.1: no TLS 1.0/1.1), a client certificate for mTLS when given.
- `failure_of(err)` → (`TlsFailure`, message): from the OpenSSL verify code of a certificate failure (RFC 5280
  path validation; RFC 6125 names) or the alert the peer sent, never "connection refused".
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from gatewatch.telemetry.names import TlsFailure

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
