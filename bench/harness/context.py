"""`Context`: what every part of one benchmark run shares — the parsed options, the tool paths, the temp dir for
configs and logs, the CPU layout (the proxy's CPU and the load CPU), the open-files limit, the run's TLS
certificate (when a TLS case runs), the compiled floor proxy (when its case runs), the OTLP sink's endpoint, the findings (`notes`) and
the numbering of process names. It also builds the `taskset` prefix and the environment of Python children.
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path
from typing import TYPE_CHECKING

from .common import child_env

if TYPE_CHECKING:
    from .compiled import FloorBuild
    from .tls import TlsFiles


class Context:
    def __init__(self, args: argparse.Namespace, tools: dict[str, str], workdir: Path, cpus: list[int]):
        self.args = args
        self.tools = tools
        self.workdir = workdir
        self.cpus = cpus
        self.pinned = len(cpus) >= 2
        self.proxy_cpu = cpus[0] if self.pinned else None
        self.load_cpu = cpus[1] if self.pinned else None
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.tls: TlsFiles | None = None  # set by Bench.run when a TLS case is selected
        self.floor_compiled: FloorBuild | None = None  # set by Bench.run when python-floor-compiled is selected
        self.otlp_endpoint: str | None = None  # the OTLP sink's http endpoint, once it runs
        self.notes: list[str] = []
        self.seq = 0

    def taskset(self, cpu: int | None) -> list[str]:
        return [self.tools["taskset"], "-c", str(cpu)] if cpu is not None else []

    def every_cpu(self) -> list[str]:
        """Free to run anywhere (the harness itself is pinned to the load CPU, and children inherit that)."""
        return [self.tools["taskset"], "-c", ",".join(map(str, self.cpus))] if len(self.cpus) > 1 else []

    def child_env(self, pure: bool = False) -> dict[str, str]:
        return child_env(pure=pure)

    def next_name(self, base: str) -> str:
        self.seq += 1
        return f"{self.seq:03d}-{base}"
