#!/usr/bin/env python3
"""L4 TCP pass-through benchmark (issue 17): gatewatch `mode: tcp` against HAProxy `mode tcp` and a direct
connection, same servers, same clients, same run.

    python bench/tcp.py [--quick] [--bytes N] [--seconds S] [--concurrency C] [--telemetry on|off] [--out F.json]

Two measurements per target (direct, haproxy, gatewatch), targets interleaved per round (1 round with --quick,
else 3; medians reported):
- throughput: one connection sends `--bytes` (1 GiB by default) in 1 MiB writes, half-closes, and waits for the
  sink's byte count (so the time covers every byte through the proxy); MiB/s.
- connection rate: `--concurrency` client loops, each: connect, send 16 bytes, read the 16-byte echo, close, for
  `--seconds`; connections per second.
The proxy under test is pinned to the first CPU, the servers, the clients and this harness to the second
(bench/run.py's split); "direct" is the clients' and servers' own ceiling on that CPU, so a proxy's figure near it
means the client bound it, not the proxy. The servers and clients are this file's `--serve`/`--client` modes
(asyncio and blocking sockets), which bounds the connection rate of every target alike. Gatewatch runs with
telemetry off by default (metrics stay on); `--telemetry on` exports its spans and decision logs to local files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

CHUNK = 1 << 20
PING = b"0123456789abcdef"


# --- the tiny servers and clients (child processes) ------------------------------------------------------------

class _Sink(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport, self.n = transport, 0

    def data_received(self, data: bytes) -> None:
        self.n += len(data)

    def eof_received(self) -> bool:
        self.transport.write(self.n.to_bytes(8, "big"))
        self.transport.close()
        return True


class _Echo(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _serve(sink_port: int, echo_port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(_Sink, "127.0.0.1", sink_port, backlog=4096)
    await loop.create_server(_Echo, "127.0.0.1", echo_port, backlog=4096)
    print("ready", flush=True)
    await asyncio.Event().wait()


def _throughput_client(port: int, total: int) -> dict:
    buf = memoryview(bytearray(CHUNK))
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        sent = 0
        while sent < total:
            n = min(CHUNK, total - sent)
            s.sendall(buf[:n])
            sent += n
        s.shutdown(socket.SHUT_WR)
        got = b""
        while len(got) < 8:
            chunk = s.recv(8 - len(got))
            if not chunk:
                break
            got += chunk
    elapsed = time.perf_counter() - started
    received = int.from_bytes(got, "big") if len(got) == 8 else -1
    return {"bytes": total, "seconds": elapsed, "mib_per_s": total / elapsed / (1 << 20), "ok": received == total}


async def _rate_client(port: int, seconds: float, concurrency: int) -> dict:
    done, errors = 0, 0
    stop = time.perf_counter() + seconds

    async def one_loop() -> None:
        nonlocal done, errors
        while time.perf_counter() < stop:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(PING)
                if await reader.readexactly(len(PING)) != PING:
                    errors += 1
                writer.close()
                done += 1
            except (OSError, asyncio.IncompleteReadError):
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(one_loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"connections": done, "errors": errors, "seconds": elapsed, "per_s": done / elapsed}


# --- the harness ---------------------------------------------------------------------------------------------

def _child(mode: list[str], cpu: int | None) -> dict:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    out = subprocess.run(pin + [sys.executable, __file__, "--client", *mode], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"client {' '.join(mode)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def _gatewatch_config(ports: dict[str, int], sink: int, echo: int, telemetry: bool, workdir: Path) -> dict:
    def listener(name: str, pool: str) -> dict:
        return {"name": name, "address": f"127.0.0.1:{ports[name]}", "mode": "tcp", "pool": pool}

    return {"admin": {"address": "127.0.0.1:0"},
            "telemetry": {"local_dir": str(workdir / "telemetry")} if telemetry else {},
            "balancer": {"listeners": [listener("tput", "sink"), listener("rate", "echo")],
                         "pools": [{"name": "sink", "instances": [{"id": "s", "host": "127.0.0.1", "port": sink}]},
                                   {"name": "echo", "instances": [{"id": "e", "host": "127.0.0.1", "port": echo}]}]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round, 256 MiB, 3 s of connections")
    ap.add_argument("--bytes", type=int, default=None, help="bytes per throughput transfer (default 1 GiB)")
    ap.add_argument("--seconds", type=float, default=None, help="connection-rate duration (default 8 s)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--telemetry", choices=("on", "off"), default="off")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--serve", nargs=2, type=int, metavar=("SINK_PORT", "ECHO_PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--client", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve(*args.serve))
        return 0
    if args.client:
        kind, port, *rest = args.client
        result = _throughput_client(int(port), int(rest[0])) if kind == "tput" else \
            asyncio.run(_rate_client(int(port), float(rest[0]), int(rest[1])))
        print(json.dumps(result))
        return 0
    return _bench(args)


def _bench(args) -> int:
    from harness.common import log, pin_harness, run_main
    from harness.host import free_port, raise_nofile
    from harness.peers import haproxy_tcp_conf
    from harness.procs import Proc, wait_port

    total = args.bytes or ((256 << 20) if args.quick else (1 << 30))
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    rounds = 1 if args.quick else 3
    cpus = pin_harness()
    proxy_cpu, load_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="gatewatch-bench-tcp-"))

    def taskset(cpu: int | None) -> list[str]:
        return ["taskset", "-c", str(cpu)] if cpu is not None else []

    def body() -> int:
        sink, echo = free_port(), free_port()
        servers = Proc("servers", taskset(load_cpu) + [sys.executable, __file__, "--serve", str(sink), str(echo)],
                       workdir)
        wait_port(sink, servers)
        wait_port(echo, servers)
        hp = {"tput": free_port(), "rate": free_port()}
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(haproxy_tcp_conf({hp["tput"]: sink, hp["rate"]: echo}))
        haproxy = Proc("haproxy", taskset(proxy_cpu) + ["haproxy", "-db", "-f", str(cfg)], workdir)
        gp = {"tput": free_port(), "rate": free_port()}
        gcfg = workdir / "gatewatch.yaml"
        gcfg.write_text(json.dumps(_gatewatch_config(gp, sink, echo, args.telemetry == "on", workdir)))
        env = {**os.environ}
        if args.telemetry == "off":
            env["OTEL_SDK_DISABLED"] = "true"
        gw = Proc("gatewatch", taskset(proxy_cpu) + [sys.executable, "-m", "gatewatch", "run", "-c", str(gcfg)],
                  workdir, env=env, cwd=workdir)
        for port in (*hp.values(), *gp.values()):
            wait_port(port, haproxy if port in hp.values() else gw)
        targets = {"direct": {"tput": sink, "rate": echo}, "haproxy": hp, "gatewatch": gp}
        results: dict[str, dict[str, list]] = {t: {"mib_per_s": [], "conn_per_s": [], "errors": []} for t in targets}
        for rnd in range(rounds):
            for name, ports in targets.items():
                _child(["tput", str(ports["tput"]), str(min(total, 64 << 20))], load_cpu)  # warm-up
                t = _child(["tput", str(ports["tput"]), str(total)], load_cpu)
                r = _child(["rate", str(ports["rate"]), str(seconds), str(args.concurrency)], load_cpu)
                if not t["ok"]:
                    raise RuntimeError(f"{name}: the sink did not count every byte: {t}")
                results[name]["mib_per_s"].append(t["mib_per_s"])
                results[name]["conn_per_s"].append(r["per_s"])
                results[name]["errors"].append(r["errors"])
                log(f"round {rnd + 1} {name}: {t['mib_per_s']:.0f} MiB/s, {r['per_s']:.0f} connections/s "
                    f"({r['errors']} errors)")
        summary = {name: {"mib_per_s": statistics.median(v["mib_per_s"]),
                          "conn_per_s": statistics.median(v["conn_per_s"]), "errors": sum(v["errors"])}
                   for name, v in results.items()}
        g, h, d = summary["gatewatch"], summary["haproxy"], summary["direct"]
        ratios = {"throughput_gatewatch_vs_haproxy": g["mib_per_s"] / h["mib_per_s"],
                  "throughput_gatewatch_vs_direct": g["mib_per_s"] / d["mib_per_s"],
                  "conn_rate_gatewatch_vs_haproxy": g["conn_per_s"] / h["conn_per_s"],
                  "conn_rate_gatewatch_vs_direct": g["conn_per_s"] / d["conn_per_s"]}
        out = {"bytes": total, "seconds": seconds, "concurrency": args.concurrency, "rounds": rounds,
               "telemetry": args.telemetry, "pinned": proxy_cpu is not None, "summary": summary, "ratios": ratios,
               "rounds_raw": results}
        print(f"{'target':<10} {'MiB/s':>10} {'conn/s':>10} {'errors':>7}")
        for name, v in summary.items():
            print(f"{name:<10} {v['mib_per_s']:>10.0f} {v['conn_per_s']:>10.0f} {v['errors']:>7}")
        for k, v in ratios.items():
            print(f"{k:<36} {v:.2f}")
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1))
        return 0

    return run_main("bench/tcp", workdir, body, keep_tmp=False)


if __name__ == "__main__":
    sys.exit(main())
