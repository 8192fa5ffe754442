"""Which hot modules run compiled, and the guard that keeps a stale compiled module from running (DESIGN §3).

The per-request modules listed in `HOT_MODULES` may be compiled by the project's own build (`setup.py`, Cython
in pure-Python mode: the same typed `.py` files, no `.pyx`). The build writes `MANIFEST` beside this file: for
every module it compiled, the SHA-256 of the source it compiled. At the first import of `gatewatch`, `install()`
puts a finder in front of the import system that loads a hot module from its `.py` instead of its compiled file
when

- `GATEWATCH_PURE_PYTHON` is set (to anything but "" or "0"): pure mode, forced; or
- the `.py` no longer matches the hash the module was compiled from (an edited file takes effect, and the
  compiled module it replaces is reported `stale`, never used silently); or
- the compiled file is unknown to the manifest (left over from another build); or
- a module it `cimport`s from (its `.pxd` declares their classes as extension types) runs its `.py`: a compiled
  module checks at import that the types it was compiled against are the compiled ones, so modules joined by
  `cimport` run compiled together or not at all (`linked`).

A module's hash covers its `.pxd` too (the declarations its compiled form was built with).

`state()` says what runs: the ready log line, `gatewatch --version` and `gatewatch_build_info{compiled}` show it.
This module imports only the standard library: `setup.py` reads `HOT_MODULES` from it before anything is built.
See docs/compiled.md.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# module name -> source path relative to the repository root (pyproject.toml maps edge/ → gatewatch.edge, …).
# The files a live request spends its time in (cProfile share of a wrk run; bench/compile_probe.py).
HOT_MODULES: dict[str, str] = {
    "gatewatch.proxy.engine": "gatewatch/proxy/engine.py",
    "gatewatch.proxy.headers": "gatewatch/proxy/headers.py",
    "gatewatch.proxy.recording": "gatewatch/proxy/recording.py",
    "gatewatch.proxy.context": "gatewatch/proxy/context.py",
    "gatewatch.proxy.plan": "gatewatch/proxy/plan.py",
    "gatewatch.proxy.request_keys": "gatewatch/proxy/request_keys.py",
    "gatewatch.proxy.answers": "gatewatch/proxy/answers.py",
    "gatewatch.io.fast_forwarder": "gatewatch/io/fast_forwarder.py",
    "gatewatch.io.fast_listener": "gatewatch/io/fast_listener.py",
    "gatewatch.io.http1": "gatewatch/io/http1.py",
    "gatewatch.io.simple_head": "gatewatch/io/simple_head.py",
    "gatewatch.io.interfaces": "gatewatch/io/interfaces.py",
    "gatewatch.telemetry.recorder": "telemetry/recorder.py",
    "gatewatch.telemetry.context": "telemetry/context.py",
    "gatewatch.telemetry.fastmetrics": "telemetry/fastmetrics.py",
    "gatewatch.telemetry.wire": "telemetry/wire.py",
    # the exporter process's own hot path: every sampled request's spans and decision logs (issue 14: its CPU
    # shares the load core on a 2-core machine)
    "gatewatch.telemetry.convert": "telemetry/convert.py",
    "gatewatch.telemetry.otlp_encode": "telemetry/otlp_encode.py",
    "gatewatch.balancer.context": "balancer/context.py",
    "gatewatch.balancer.algorithms": "balancer/algorithms.py",
    "gatewatch.balancer.pool": "balancer/pool.py",
    "gatewatch.balancer.retry": "balancer/retry.py",
    "gatewatch.balancer.health": "balancer/health.py",
    "gatewatch.edge.routing": "edge/routing.py",
    "gatewatch.edge.paths": "edge/paths.py",
}

MANIFEST = "_compiled.json"  # written by setup.py next to this file; absent in a pure install
PURE_ENV = "GATEWATCH_PURE_PYTHON"

COMPILED = "compiled"  # the compiled module runs
PURE = "pure"  # no compiled module was built for it
FORCED = "forced"  # GATEWATCH_PURE_PYTHON: the .py runs although a compiled module is there
STALE = "stale"  # the .py changed since it was compiled (or the manifest does not know the compiled file)
LINKED = "linked"  # compiled and current, but a module it cimports from runs its .py: its .py runs too

_CIMPORT = re.compile(r"^\s*from\s+([\w.]+)\s+cimport\b|^\s*cimport\s+([\w.]+)", re.M)


def pure_forced(environ=os.environ) -> bool:
    return environ.get(PURE_ENV, "") not in ("", "0")


def source_hash(path: Path) -> str:
    """SHA-256 of a hot module's `.py`, and of the `.pxd` beside it when there is one."""
    digest = hashlib.sha256(path.read_bytes())
    declarations = path.with_suffix(".pxd")
    if declarations.is_file():
        digest.update(b"\0pxd\0" + declarations.read_bytes())
    return digest.hexdigest()


def cimports(sources: dict[str, Path]) -> dict[str, list[str]]:
    """For each module (name -> its .py), the hot modules it cimports from through its `.pxd`, directly or not."""
    direct: dict[str, set[str]] = {}
    for name, source in sources.items():
        declarations = source.with_suffix(".pxd")
        text = declarations.read_text() if declarations.is_file() else ""
        direct[name] = {a or b for a, b in _CIMPORT.findall(text)} & sources.keys()
    closure: dict[str, list[str]] = {}
    for name in sources:
        seen: set[str] = set()
        stack = list(direct[name])
        while stack:
            dep = stack.pop()
            if dep not in seen and dep != name:
                seen.add(dep)
                stack.extend(direct[dep])
        if seen:
            closure[name] = sorted(seen)
    return closure


def async_generators(source: str) -> list[str]:
    """Qualified names of the async generator functions in a module's source (`async def` with a `yield` of its
    own). Cython's compiled async generators, unlike CPython's, warn "coroutine '<qualname>' was never awaited"
    when one is created and dropped before its first step (a request body nobody read); `install()` silences
    exactly those names, and nothing else."""
    found: list[str] = []

    def own_yield(fn: ast.AsyncFunctionDef) -> bool:
        stack = list(fn.body)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.Yield, ast.YieldFrom)):
                return True
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                stack.extend(ast.iter_child_nodes(node))
        return False

    def walk(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                walk(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if isinstance(node, ast.AsyncFunctionDef) and own_yield(node):
                    found.append(prefix + node.name)
                walk(node.body, f"{prefix}{node.name}.<locals>.")

    walk(ast.parse(source).body, "")
    return found


def compiled_file(directory: Path, leaf: str) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = directory / (leaf + suffix)
        if candidate.is_file():
            return candidate
    return None


def decide(source: Path, manifest: dict, name: str, forced: bool) -> str:
    """One hot module's mode from what is on disk: its .py, a compiled file beside it, the build's manifest."""
    if compiled_file(source.parent, source.stem) is None:
        return PURE
    if forced:
        return FORCED
    built = manifest.get("modules", {}).get(name)
    if built is None or not source.is_file() or built != source_hash(source):
        return STALE
    return COMPILED


@dataclass
class BuildState:
    """What the build produced and what this process runs. `modules`: name -> COMPILED | PURE | FORCED | STALE |
    LINKED."""

    modules: dict[str, str] = field(default_factory=dict)
    built_with: str = ""  # e.g. "Cython 3.3.1", from the manifest; "" when nothing was compiled
    build_note: str = ""  # why the build compiled nothing (no compiler, ...), from the manifest

    @property
    def compiled(self) -> bool:
        """Every hot module runs compiled (a partial mix says false: the figures of the compiled build do not
        apply)."""
        return bool(self.modules) and all(m == COMPILED for m in self.modules.values())

    def of(self, mode: str) -> list[str]:
        return sorted(name for name, m in self.modules.items() if m == mode)

    def describe(self) -> str:
        """One line: `compiled (Cython 3.3.1, 20 modules)`, `pure Python (GATEWATCH_PURE_PYTHON=1)`, ..."""
        if self.compiled:
            return f"compiled ({self.built_with}, {len(self.modules)} modules)"
        stale, forced = self.of(STALE), self.of(FORCED)
        if forced:
            return f"pure Python ({PURE_ENV}={os.environ.get(PURE_ENV)})"
        if stale:
            running, linked = len(self.of(COMPILED)), self.of(LINKED)
            return (f"partly compiled: {running} of {len(self.modules)} modules; stale compiled modules not used "
                    f"(rebuild: pip install -e .): {', '.join(stale)}"
                    + (f"; nor those linked to them: {', '.join(linked)}" if linked else ""))
        if self.of(COMPILED):
            return f"partly compiled: {len(self.of(COMPILED))} of {len(self.modules)} modules ({self.built_with})"
        return "pure Python" + (f" ({self.build_note})" if self.build_note else " (not compiled at install)")

    def as_dict(self, modules: bool = False) -> dict:
        """For the ready log / ready file (short) and the admin status (`modules=True`: every module's mode)."""
        out = {"compiled": self.compiled, "mode": self.describe(), "built_with": self.built_with,
               "stale": self.of(STALE), "linked": self.of(LINKED)}
        if modules:
            out["modules"] = dict(sorted(self.modules.items()))
        return out


class _Guard:
    """A meta path finder for the hot modules only: returns a spec for the `.py` when the compiled file must not
    run (forced pure, stale, linked to a module that runs its .py, unknown), and otherwise lets the import system
    take the compiled file as usual."""

    def __init__(self, manifest: dict, forced: bool):
        self.manifest = manifest
        self.forced = forced
        self.seen: dict[str, str] = {}

    def find_spec(self, fullname, path, target=None):
        if fullname not in HOT_MODULES or not path:
            return None
        leaf = fullname.rpartition(".")[2]
        for directory in map(Path, path):
            source = directory / (leaf + ".py")
            if not source.is_file():
                continue
            mode = self.seen[fullname] = self.mode(fullname, source)
            if mode in (FORCED, STALE, LINKED):
                if mode == STALE:
                    print(f"gatewatch: {fullname}: the compiled module is older than {source} (or unknown to the "
                          f"build); running the .py. Rebuild with `pip install -e .` (docs/compiled.md).",
                          file=sys.stderr)
                return importlib.util.spec_from_file_location(fullname, source)
            return None
        return None

    def mode(self, name: str, source: Path) -> str:
        """`decide`, then LINKED when a module this one cimports from, directly or not (the manifest lists them
        all), would not run compiled on its own files."""
        mode = decide(source, self.manifest, name, self.forced)
        deps = self.manifest.get("cimports", {}).get(name, [])
        if mode == COMPILED and any(self._decided(dep) != COMPILED for dep in deps):
            return LINKED
        return mode

    def _mode_of(self, name: str) -> str:
        """The mode of a hot module not imported yet (its package is imported to find its file)."""
        found = _source_of(name)
        return self.mode(name, found) if found is not None else PURE

    def _decided(self, name: str) -> str:
        found = _source_of(name)
        return decide(found, self.manifest, name, self.forced) if found is not None else PURE


def _source_of(name: str) -> Path | None:
    package, _, leaf = name.rpartition(".")
    spec_path = getattr(importlib.import_module(package), "__path__", [])
    return next((Path(d) / (leaf + ".py") for d in spec_path if (Path(d) / (leaf + ".py")).is_file()), None)


_guard: _Guard | None = None


def _manifest() -> dict:
    try:
        return json.loads((Path(__file__).with_name(MANIFEST)).read_text())
    except (OSError, ValueError):
        return {}


def _current() -> _Guard:
    """The installed guard (`gatewatch/__init__.py` installs it), or one read from disk when there is none."""
    return _guard if _guard is not None else _Guard(_manifest(), pure_forced())


def install() -> None:
    """Put the guard first on sys.meta_path (once). Called by `gatewatch/__init__.py`."""
    global _guard
    if _guard is None:
        _guard = _Guard(_manifest(), pure_forced())
        sys.meta_path.insert(0, _guard)
        for message in silenced_warnings():
            warnings.filterwarnings("ignore", message=message, category=RuntimeWarning)


def silenced_warnings() -> list[str]:
    """The RuntimeWarning messages (regular expressions) `install()` silences: Cython's "never awaited" of each
    compiled async generator (see async_generators()); none in pure mode. tests/conftest.py applies them to
    pytest's per-test warning filters too, which replace the process's own while a test runs."""
    guard = _current()
    if guard.forced:
        return []
    return [f"coroutine '{re.escape(qualname)}' was never awaited$"
            for names in guard.manifest.get("async_generators", {}).values() for qualname in names]


def state() -> BuildState:
    """The mode of every hot module: as the guard decided when it was imported, or, for one not imported yet,
    decided the same way from its files (its package is imported to find them)."""
    guard = _current()
    modules = {name: guard.seen.get(name) or guard._mode_of(name) for name in HOT_MODULES}
    return BuildState(modules, guard.manifest.get("built_with", ""), guard.manifest.get("note", ""))
