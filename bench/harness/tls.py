"""TLS for the TLS cases (issue 16): `make_tls_files` writes one certificate per run that both proxies serve,
`server_env` is the OpenSSL setting the handshake cases start the proxies with, `https_opener` the client that
waits for them, `probe` what a proxy negotiates and whether it resumes a session, and `haproxy_handshakes` HAProxy's
count of TLS connections (gatewatch's is `gatewatch_tls_handshakes_total`, read by gateway.scrape).

The certificate: an ECDSA P-256 CA and a leaf for 127.0.0.1 and localhost signed by it, written once per run into
the run's temp dir. The proxies serve the leaf alone (a CA is not sent); gatewatch reads cert and key from two
files, HAProxy from one PEM holding both (`crt`).

Full handshakes: wrk keeps the session of a closed connection and offers it again on the next (TLS 1.3 PSK
resumption from the server's session ticket), so `Connection: close` alone measures resumed handshakes. In the
handshake cases both proxies therefore run with `OPENSSL_CONF` pointing at a file that sets `NumTickets = 0`
(OpenSSL's `SSL_CTX_set_num_tickets`, applied to every server context the process creates, HAProxy's and Python's
alike): no ticket is issued, so none can be offered back, and every connection is a full handshake. `probe`
checks that on every measurement.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .cases import Case
from .common import PATH

# The OpenSSL config of the handshake cases: the system's default config has no `ssl_conf` section, so this
# changes nothing else.
NO_TICKETS_CNF = """# bench: no TLS session tickets (so no resumption) for the proxies of the handshake cases
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
NumTickets = 0
"""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # the leaf certificate (PEM)
    key: Path  # its private key (PEM, PKCS#8, unencrypted)
    pem: Path  # both in one file, for HAProxy's `crt`
    ca: Path  # the CA that signed it: what the harness's own client verifies against
    no_tickets_cnf: Path  # OPENSSL_CONF of the handshake cases


def make_tls_files(d: Path) -> TlsFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d.mkdir(exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    valid = (now - dt.timedelta(hours=1), now + dt.timedelta(days=2))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatewatch bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_pem = leaf.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    files = TlsFiles(cert=d / "server.crt", key=d / "server.key", pem=d / "server.pem", ca=d / "ca.crt",
                     no_tickets_cnf=d / "openssl-no-tickets.cnf")
    files.cert.write_bytes(cert_pem)
    files.key.write_bytes(key_pem)
    files.pem.write_bytes(cert_pem + key_pem)
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.no_tickets_cnf.write_text(NO_TICKETS_CNF)
    return files


def server_env(case: Case, files: TlsFiles | None) -> dict[str, str]:
    """What to add to a proxy's environment for a case: OPENSSL_CONF without tickets in the handshake cases."""
    if case.tls == "handshakes" and files is not None:
        return {"OPENSSL_CONF": str(files.no_tickets_cnf)}
    return {}


def client_context(files: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(files.ca))  # verifies the chain and 127.0.0.1 against the SAN


def https_opener(files: TlsFiles) -> urllib.request.OpenerDirector:
    """The loopback HTTP client of common.HTTP, verifying the run's certificate."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                       urllib.request.HTTPSHandler(context=client_context(files)))


def probe(url: str, files: TlsFiles) -> dict[str, Any]:
    """Two `GET`s on two new connections, the second offering the session of the first: the version and cipher the
    proxy negotiated, whether it issued a session ticket and whether it resumed the offered session."""
    u = urlsplit(url)
    ctx = client_context(files)

    def once(session: ssl.SSLSession | None) -> ssl.SSLSocket:
        raw = socket.create_connection((u.hostname, u.port), timeout=5)
        s = ctx.wrap_socket(raw, server_hostname=u.hostname, session=session)
        s.sendall(f"GET {PATH} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n\r\n".encode())
        while s.recv(65536):  # to the close: TLS 1.3 tickets arrive after the handshake
            pass
        return s

    first = once(None)
    try:
        session = first.session
        version, cipher = first.version(), (first.cipher() or ("",))[0]
    finally:
        first.close()
    second = once(session)
    try:
        resumed = second.session_reused
    finally:
        second.close()
    return {"version": version, "cipher": cipher, "ticket_issued": bool(session and session.has_ticket),
            "resumed": bool(resumed)}


def haproxy_handshakes(sock: Path) -> float | None:
    """HAProxy's `CumSslConns` (TLS connections accepted since start) from its stats socket."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(sock))
            s.sendall(b"show info\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("CumSslConns:"):
            return float(line.split(":", 1)[1])
    return None
