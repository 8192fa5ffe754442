"""The Python floor compiled (issue 14): `build_floor` translates bench/floor_proxy.py with Cython in pure-Python
mode, with the directives of the project's own build (setup.py `DIRECTIVES`, read from that file), and builds it as
the extension module `floor_proxy` in the run's temp dir — once per run, reused across runs from a cache keyed by
the hash of the source, the directives, Cython's and Python's versions. `floor_argv` is the command that runs the
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
# setup.py's DIRECTIVES when that file cannot be read (a tree without the compiled build).
FALLBACK_DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": True}

_BUILD = """
import json, sys
from setuptools import Extension, setup
from Cython.Build import cythonize
directives = json.loads(sys.argv.pop(1))
setup(name="floor-proxy-compiled", script_args=["build_ext", "--inplace", "--build-temp", "build"],
      ext_modules=cythonize([Extension("floor_proxy", ["floor_proxy.py"])], compiler_directives=directives,
                            build_dir="build", quiet=True))
"""

# Runs the compiled module: the floor's own `main` on uvloop, as `python bench/floor_proxy.py PORT UPSTREAM` does.
_RUN = ("import importlib.machinery, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import floor_proxy\n"
        "if not isinstance(floor_proxy.__loader__, importlib.machinery.ExtensionFileLoader):\n"
        "    sys.exit(f'python-floor-compiled: {floor_proxy.__file__} is not the compiled module')\n"
        "import uvloop\n"
        "print(f'python-floor-compiled: running {floor_proxy.__file__}', flush=True)\n"
        "uvloop.run(floor_proxy.main(int(sys.argv[2]), int(sys.argv[3])))\n")


@dataclass
class FloorBuild:
    directory: Path | None = None  # holds floor_proxy<EXT_SUFFIX> (and no floor_proxy.py)
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
    source = FLOOR.read_bytes()
    key = hashlib.sha256(source + json.dumps(directives, sort_keys=True).encode() + Cython.__version__.encode()
                         + sys.version.encode() + suffix.encode()).hexdigest()[:16]
    info = {"cython": Cython.__version__, "directives": directives, "source_sha256_16": key, "module": "floor_proxy"}
    out = workdir / "floor-compiled"
    out.mkdir(parents=True, exist_ok=True)
    cached = _cache_dir(key) / f"floor_proxy{suffix}"
    if cached.is_file():
        shutil.copy2(cached, out / cached.name)
        log(f"bench: python-floor-compiled: cached build {cached}")
        return FloorBuild(out, info={**info, "cached": True, "build_s": 0.0})
    shutil.copy2(FLOOR, out / "floor_proxy.py")
    (out / "build_floor.py").write_text(_BUILD)
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "build_floor.py", json.dumps(directives)], cwd=out, capture_output=True,
                           text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return FloorBuild(error=f"building the compiled floor failed: {err}")
    built = out / f"floor_proxy{suffix}"
    (out / "floor_proxy.py").unlink()  # only the extension module is left to import
    if r.returncode != 0 or not built.is_file():
        last = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
        return FloorBuild(error=f"Cython/C build of bench/floor_proxy.py failed (exit {r.returncode}; no working C "
                                f"compiler or Python headers?): {' | '.join(last)[:400]}")
    took = time.monotonic() - t0
    try:
        _cache_dir(key).mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, cached)
    except OSError as err:  # the cache is a convenience: the build in the run's directory is what runs
        log(f"bench: could not cache the compiled floor in {cached.parent}: {err}")
    log(f"bench: python-floor-compiled: built with Cython {Cython.__version__} in {took:.1f} s ({built})")
    return FloorBuild(out, info={**info, "cached": False, "build_s": round(took, 1)})


def floor_argv(build: FloorBuild, port: int, upstream_port: int) -> list[str]:
    return [sys.executable, "-c", _RUN, str(build.directory), str(port), str(upstream_port)]
