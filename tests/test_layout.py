"""The layout the rest builds on: one import name, imports that go one way, an engine whose phases stay short."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gatewatch

ROOT = Path(__file__).resolve().parents[1]
# Where each part of the package lives in the repository.
PARTS = {"edge": ROOT / "edge", "balancer": ROOT / "balancer", "telemetry": ROOT / "telemetry",
         "dashboards": ROOT / "dashboards", "proxy": ROOT / "gatewatch" / "proxy", "io": ROOT / "gatewatch" / "io",
         "app": ROOT / "gatewatch" / "app", "demo": ROOT / "gatewatch" / "demo",
         "config": ROOT / "gatewatch" / "config.py", "schema": ROOT / "gatewatch" / "schema.py"}
# Who may import whom (besides itself). Everything points down this list; nothing below imports anything above.
ALLOWED = {
    "schema": set(),
    "telemetry": {"schema"},
    "io": {"telemetry"},
    "balancer": {"schema", "telemetry"},
    "edge": {"schema", "telemetry", "balancer", "io"},
    "config": {"schema", "telemetry", "balancer", "edge", "io"},
    "proxy": {"schema", "telemetry", "balancer", "edge", "io", "config"},
    "dashboards": {"telemetry"},
    "demo": {"schema", "telemetry", "config"},
    "app": {"schema", "telemetry", "balancer", "edge", "io", "config", "proxy", "dashboards", "demo"},
}


def _modules(part: str) -> list[Path]:
    where = PARTS[part]
    return [where] if where.suffix == ".py" else sorted(where.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """The gatewatch parts a module imports, anywhere in it (lazy imports inside functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "gatewatch" and len(parts) > 1 and parts[1] in PARTS:
                out.add(parts[1])
    return out


@pytest.mark.parametrize("part", sorted(PARTS))
def test_imports_go_one_way(part):
    wrong = {str(p.relative_to(ROOT)): sorted(_imports(p) - ALLOWED[part] - {part}) for p in _modules(part)}
    assert not {p: w for p, w in wrong.items() if w}, f"{part} may import only {sorted(ALLOWED[part])}"


def test_the_allowed_imports_have_no_cycle():
    seen: dict[str, int] = {}

    def depth(part: str, path: tuple = ()) -> int:
        assert part not in path, f"cycle: {' -> '.join(path + (part,))}"
        if part not in seen:
            seen[part] = 1 + max((depth(p, path + (part,)) for p in ALLOWED[part]), default=0)
        return seen[part]

    for part in ALLOWED:
        depth(part)


def test_one_import_name_from_outside_the_checkout(tmp_path):
    """Installed (editable or not), only `gatewatch` is importable; the card's directories are its subpackages."""
    code = ("import importlib, gatewatch.edge, gatewatch.balancer, gatewatch.telemetry, gatewatch.dashboards\n"
            "for name in ('edge', 'balancer', 'telemetry', 'dashboards'):\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ModuleNotFoundError:\n"
            "        continue\n"
            "    raise SystemExit(f'{name} is importable at the top level')\n"
            "print(gatewatch.__version__)\n")
    out = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == gatewatch.__version__ != "0+unknown"


def test_version_on_the_command_line():
    out = subprocess.run([sys.executable, "-m", "gatewatch", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.splitlines()[0] == f"gatewatch {gatewatch.__version__}"
    assert out.stdout.splitlines()[1].startswith("hot path: "), out.stdout  # tests/test_build_mode.py: its content


def test_no_engine_method_over_fifty_lines():
    tree = ast.parse((ROOT / "gatewatch" / "proxy" / "engine.py").read_text(encoding="utf-8"))
    engine = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Engine")
    long = {f.name: f.end_lineno - f.lineno + 1 for f in engine.body
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.end_lineno - f.lineno + 1 > 50}
    assert not long
