"""Render the Kubernetes manifests the way a user would, into plain objects the tests check.

- kustomize: `kubectl kustomize` (or a standalone `kustomize build`) on deploy/kubernetes. Under CI a missing
  binary fails the test; elsewhere it skips.
- Helm: the chart rendered by Helm's own Go engine (helm-python-sdk binds the Helm v4 SDK; no helm binary).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE_DIR = REPO / "deploy" / "kubernetes"
CHART_DIR = REPO / "deploy" / "helm" / "gatewatch"
K8S_VERSION = "1.33.0"  # the Kubernetes version whose JSON schemas every object is checked against


def kustomize(path: Path = KUSTOMIZE_DIR) -> list[dict]:
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(path)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(path)]
    else:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl (with its built-in kustomize) or kustomize is required under CI")
        pytest.skip("neither kubectl nor kustomize is installed")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def helm(values: dict | None = None, release: str = "gw", namespace: str = "prod") -> list[dict]:
    """Every object of the chart rendered with `values` (merged over values.yaml, as `helm template -f`)."""
    import helm_python

    with helm_python.Chart.load(str(CHART_DIR)) as chart:
        files = chart.render(values or {}, name=release, namespace=namespace)
    docs: list[dict] = []
    for name, text in sorted(files.items()):
        if name.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def helm_lint() -> dict:
    import helm_python

    return helm_python.lint(str(CHART_DIR))
