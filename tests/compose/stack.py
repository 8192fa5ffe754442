"""Read the compose stack's files the way Docker Compose and each container would see them.

Primitives: `Stack` (the parsed compose file, with helpers that map a container path back to the repository
file mounted there), `host_ports()` (every `host:port` / URL a config text refers to) and the paths below.
No Docker engine is needed: everything here is static.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
SCHEMA_DIR = Path(__file__).resolve().parent / "compose-spec"


@dataclass(frozen=True)
class Mount:
    source: Path  # on the host (resolved against the compose file's directory)
    target: PurePosixPath  # in the container


def load_yaml(path: Path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


class Stack:
    def __init__(self, path: Path = COMPOSE_FILE):
        self.path = path
        self.doc = load_yaml(path)
        self.services: dict[str, dict] = self.doc["services"]

    def mounts(self, service: str) -> list[Mount]:
        out = []
        for v in self.services[service].get("volumes", []):
            if isinstance(v, str):
                parts = v.split(":")
                source, target = parts[0], parts[1]
            else:
                if v.get("type", "bind") != "bind":
                    continue
                source, target = v["source"], v["target"]
            if not (source.startswith(".") or source.startswith("/")):
                continue  # a named volume
            out.append(Mount((self.path.parent / source).resolve(), PurePosixPath(target)))
        return out

    def host_path(self, service: str, container_path: str) -> Path | None:
        """The repository file or directory that appears at `container_path` inside `service`, if mounted."""
        p = PurePosixPath(container_path)
        best: Mount | None = None
        for m in self.mounts(service):
            if (p == m.target or m.target in p.parents) and (best is None or len(m.target.parts) > len(best.target.parts)):
                best = m
        if best is None:
            return None
        return best.source.joinpath(*p.relative_to(best.target).parts)

    def exposed(self, service: str) -> set[int]:
        """Ports the service listens on inside the network: `expose` plus the container side of `ports`."""
        svc = self.services[service]
        ports = {int(str(p).split("/")[0]) for p in svc.get("expose", [])}
        for p in svc.get("ports", []):
            ports.add(int(str(p).rsplit(":", 1)[-1].split("/")[0]))
        return ports

    def config_file(self, service: str, container_path: str) -> Path:
        path = self.host_path(service, container_path)
        assert path is not None, f"{service}: nothing is mounted at {container_path}"
        return path


_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s\"'<>,\]]+")
_HOSTPORT = re.compile(r"(?<![\w./-])([a-z][a-z0-9-]*):(\d{2,5})\b")


def host_ports(text: str) -> set[tuple[str, int]]:
    """Every (host, port) a config text names, as a URL or a bare `host:port` (lower-case DNS names only)."""
    found: set[tuple[str, int]] = set()
    for url in _URL.findall(text):
        parts = urlsplit(url)
        if parts.hostname and parts.port:
            found.add((parts.hostname, parts.port))
        elif parts.hostname and parts.scheme in ("http", "https"):
            found.add((parts.hostname, 443 if parts.scheme == "https" else 80))
    stripped = _URL.sub(" ", text)
    for host, port in _HOSTPORT.findall(stripped):
        found.add((host, int(port)))
    return found


# Addresses that are not other services: wildcard/loopback binds inside a container.
LOCAL_HOSTS = {"localhost", "0.0.0.0", "127.0.0.1"}
