"""A tiny HTTP/1.1 backend for the soak: one instance per process, answers `200 ok` to everything.

    python -m faults.backend --port P --id b0

Raw asyncio protocol (no framework: on a 2-core machine every CPU cycle the backends spend is taken from the
gateway and the load generator). Keep-alive, no request bodies expected (the soak sends GETs only; a body is read
by its Content-Length and ignored). Each answer carries `X-Backend: <id>` and echoes `X-Soak-Gen` (set by the
gateway's `headers` policy from the config generation), so the client can see which config served it.
`GET /healthz` answers the same way (the active health checks). SIGTERM/SIGINT stop it; the soak also SIGKILLs it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal


class Backend(asyncio.Protocol):
    def __init__(self, ident: bytes):
        self.ident = ident
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self.transport.close()
                return
            head, rest = self.buf[:end], self.buf[end + 4:]
            gen = b"-"
            close = False
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"x-soak-gen":
                    gen = value.strip()
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
                elif name == b"content-length":
                    length = int(value.strip() or 0)
            if len(rest) < length:
                return
            self.buf = rest[length:]
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nX-Backend: "
                                 + self.ident + b"\r\nX-Soak-Gen: " + gen + b"\r\n"
                                 + (b"Connection: close\r\n" if close else b"") + b"\r\nok")
            if close:
                self.transport.close()
                return


async def main(port: int, ident: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(lambda: Backend(ident.encode()), "127.0.0.1", port, reuse_address=True,
                                      backlog=1024)
    print(f"backend {ident} listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--id", required=True)
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.run(main(a.port, a.id))
    except ImportError:
        asyncio.run(main(a.port, a.id))
