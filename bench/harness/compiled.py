"""The Python floor compiled (issue 14): `build_floor` translates bench/floor_proxy.py, and bench/floor_plus.py (the
floor plus the least a gateway does per request), with Cython in pure-Python mode, with the directives of the
project's own build (setup.py `DIRECTIVES`, read from that file), and builds them as the extension modules
`floor_proxy` and `floor_plus` in the run's temp dir — once per run, reused across runs from a cache keyed by
the hash of the sources, the directives, Cython's and Python's versions. `floor_argv` is the command that runs the
compiled module (and refuses to run if Python would load the .py instead). Without Cython or a working C compiler
`build_floor` returns the reason, and the `python-floor-compiled` case is skipped with it, never a crash.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import BENCH, REPO, log

FLOOR = BENCH / "floor_proxy.py"
FLOOR_PLUS = BENCH / "floor_plus.py"  # the floor plus the least a gateway does per request; imports floor_proxy
# setup.py's DIRECTIVES when that file cannot be read (a tree without the compiled build).
FALLBACK_DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": True}

_BUILD = """
import json, sys
from setuptools import Extension, setup
from Cython.Build import cythonize
directives = json.loads(sys.argv.pop(1))
setup(name="floor-proxy-compiled", script_args=["build_ext", "--inplace", "--build-temp", "build"],
      ext_modules=cythonize([Extension(m, [m + ".py"]) for m in ("floor_proxy", "floor_plus")],
                            compiler_directives=directives,
                            build_dir="build", quiet=True))
"""

# Runs a compiled module (argv[4]: floor_proxy or floor_plus): its own `main` on uvloop, as
# `python bench/floor_proxy.py PORT UPSTREAM` does.
_RUN = ("import importlib, importlib.machinery, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "floor = importlib.import_module(sys.argv[4])\n"
        "if not isinstance(floor.__loader__, importlib.machinery.ExtensionFileLoader):\n"
        "    sys.exit(f'python-floor-compiled: {floor.__file__} is not the compiled module')\n"
        "import uvloop\n"
        "print(f'python-floor-compiled: running {floor.__file__}', flush=True)\n"
        "uvloop.run(floor.main(int(sys.argv[2]), int(sys.argv[3])))\n")


@dataclass
class FloorBuild:
    directory: Path | None = None  # holds floor_proxy<EXT_SUFFIX> and floor_plus<EXT_SUFFIX> (and no .py)
    error: str | None = None  # why there is no compiled floor
    info: dict = field(default_factory=dict)  # Cython version, directives, cached, build seconds


def setup_directives() -> dict:
    """`DIRECTIVES = {...}` of the repository's setup.py (the compiled hot path's build), without running it."""
    try:
        tree = ast.parse((REPO / "setup.py").read_text())
    except (OSError, SyntaxError):
        return dict(FALLBACK_DIRECTIVES)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DIRECTIVES" for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                break
    return dict(FALLBACK_DIRECTIVES)


def _cache_dir(key: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gatewatch-bench" / f"floor-{key}"


def build_floor(workdir: Path) -> FloorBuild:
    try:
        import Cython
    except ImportError as err:
        return FloorBuild(error=f"Cython is not installed ({err}); pip install Cython to build the compiled floor")
    directives = setup_directives()
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    sources = {"floor_proxy": FLOOR, "floor_plus": FLOOR_PLUS}
    key = hashlib.sha256(b"".join(p.read_bytes() for p in sources.values())
                         + json.dumps(directives, sort_keys=True).encode() + Cython.__version__.encode()
                         + sys.version.encode() + suffix.encode()).hexdigest()[:16]
    info = {"cython": Cython.__version__, "directives": directives, "source_sha256_16": key,
            "modules": list(sources)}
    out = workdir / "floor-compiled"
    out.mkdir(parents=True, exist_ok=True)
    cached = [_cache_dir(key) / f"{m}{suffix}" for m in sources]
    if all(c.is_file() for c in cached):
        for c in cached:
            shutil.copy2(c, out / c.name)
        log(f"bench: python-floor-compiled: cached build {cached[0].parent}")
        return FloorBuild(out, info={**info, "cached": True, "build_s": 0.0})
    for m, path in sources.items():
        shutil.copy2(path, out / f"{m}.py")
    (out / "build_floor.py").write_text(_BUILD)
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "build_floor.py", json.dumps(directives)], cwd=out, capture_output=True,
                           text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return FloorBuild(error=f"building the compiled floor failed: {err}")
    built = [out / f"{m}{suffix}" for m in sources]
    for m in sources:
        (out / f"{m}.py").unlink()  # only the extension modules are left to import
    if r.returncode != 0 or not all(b.is_file() for b in built):
        last = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
        return FloorBuild(error=f"Cython/C build of bench/floor_proxy.py and floor_plus.py failed (exit "
                                f"{r.returncode}; no working C compiler or Python headers?): {' | '.join(last)[:400]}")
    took = time.monotonic() - t0
    try:
        _cache_dir(key).mkdir(parents=True, exist_ok=True)
        for b, c in zip(built, cached):
            shutil.copy2(b, c)
    except OSError as err:  # the cache is a convenience: the build in the run's directory is what runs
        log(f"bench: could not cache the compiled floor in {cached[0].parent}: {err}")
    log(f"bench: python-floor-compiled: built with Cython {Cython.__version__} in {took:.1f} s ({out})")
    return FloorBuild(out, info={**info, "cached": False, "build_s": round(took, 1)})


def floor_argv(build: FloorBuild, port: int, upstream_port: int, module: str = "floor_proxy") -> list[str]:
    return [sys.executable, "-c", _RUN, str(build.directory), str(port), str(upstream_port), module]
