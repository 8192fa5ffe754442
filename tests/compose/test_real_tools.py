"""The same files checked by the real tools, where a machine has them (development machines and CI do not).

- `docker compose config --quiet`: Compose's own parser and interpolation (needs the compose plugin, not an
  engine).
- `otelcol-contrib validate`: the Collector loads the config with the real components (set OTELCOL_BIN, or put
  `otelcol-contrib` on PATH; use the version pinned in compose/docker-compose.yml).
These skip when the tool is absent: they are extra proof, not required binaries.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.compose.stack import COMPOSE_DIR, COMPOSE_FILE, REPO


def test_docker_compose_parses_the_file():
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` plugin on this machine")
    r = subprocess.run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"], capture_output=True,
                       text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_collector_validates_its_config():
    otelcol = os.environ.get("OTELCOL_BIN") or shutil.which("otelcol-contrib")
    if not otelcol:
        pytest.skip("no otelcol-contrib binary (set OTELCOL_BIN)")
    r = subprocess.run([otelcol, "validate", f"--config={COMPOSE_DIR / 'otel-collector' / 'config.yaml'}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "deprecated" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
