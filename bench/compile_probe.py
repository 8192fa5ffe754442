"""What compiling the hot path as it is written today buys: Cython (pure-Python mode) and mypyc, measured on
copies of this tree against the tree itself, side by side in the same run (DESIGN §3 allows either; issue 14
asks which, measured).

    python bench/compile_probe.py [--compiler cython mypyc] [--rounds 3] [--requests 20000] [--instructions]

For each compiler: the tracked files are copied to a temporary directory, the hot modules (`HOT_MODULES`, the
files a live request spends its time in, by the cProfile share of a wrk run) are compiled in place there, and
`bench/engine_micro.py` (the engine on the in-memory I/O pair, telemetry off) runs
alternately on the pure tree and the compiled copy. Prints CPU µs per request (median of the rounds' medians)
and compiled ÷ pure. `--instructions` also counts instructions per request with valgrind (deterministic, unlike
CPU time on a shared VM). The end-to-end figure comes from `bench/run.py` run from the compiled copy.

- Cython compiles every hot module, with `annotation_typing` off: this code's annotations are Python types,
  and with it on Cython turns `str`/`int`/`list` annotations into exact-type checks that reject subclasses.
- mypyc compiles only modules that type-check clean and live under `gatewatch/` (mypy cannot see the
  `edge/` → `gatewatch.edge` mapping of pyproject.toml); the others are listed as skipped with their error count.
Needs a C compiler and Python headers; installs nothing (Cython and mypy must be in the environment).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOT_MODULES = [
    "gatewatch/proxy/engine.py", "gatewatch/proxy/headers.py", "gatewatch/proxy/recording.py",
    "gatewatch/proxy/context.py", "gatewatch/proxy/request_keys.py", "gatewatch/proxy/answers.py",
    "gatewatch/io/fast_forwarder.py", "gatewatch/io/fast_listener.py", "gatewatch/io/http1.py",
    "gatewatch/io/interfaces.py", "telemetry/recorder.py", "telemetry/context.py", "telemetry/fastmetrics.py",
    "balancer/context.py", "balancer/algorithms.py", "balancer/pool.py", "balancer/retry.py", "balancer/health.py",
    "edge/routing.py", "edge/paths.py",
]
MAPPED = {"edge": "gatewatch.edge", "balancer": "gatewatch.balancer", "telemetry": "gatewatch.telemetry"}

CYTHON_SETUP = """
import sys
from setuptools import Extension, setup
from Cython.Build import cythonize
mods = sys.argv[1:]
sys.argv[1:] = ["build_ext", "--inplace", "-j", "2"]
exts = [Extension(name, [path]) for name, path in (m.split("=") for m in mods)]
setup(name="probe", ext_modules=cythonize(exts, build_dir="build/cython", nthreads=2, quiet=True,
      compiler_directives={"language_level": 3, "annotation_typing": False}))
"""


def module_name(path: str) -> str:
    top, rest = path.split("/", 1)
    return (MAPPED.get(top, top) + "." + rest[:-3].replace("/", ".")).replace("gatewatch.gatewatch.", "gatewatch.")


def copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def build_cython(tree: Path) -> dict:
    (tree / "probe_setup.py").write_text(CYTHON_SETUP)
    args = [f"{module_name(m)}={m}" for m in HOT_MODULES]
    out = subprocess.run([sys.executable, "probe_setup.py", *args], cwd=tree, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"cython build failed:\n{out.stderr[-3000:]}")
    return {"compiled": HOT_MODULES, "skipped": {}}


def build_mypyc(tree: Path) -> dict:
    ok, skipped = [], {}
    for m in HOT_MODULES:
        if not m.startswith("gatewatch/"):
            skipped[m] = "outside gatewatch/ (package-dir mapping)"
            continue
        check = subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports", "--follow-imports=silent",
                                m], cwd=tree, capture_output=True, text=True)
        if check.returncode == 0:
            ok.append(m)
        else:
            found = re.search(r"Found (\d+) error", check.stdout)
            skipped[m] = f"{found.group(1) if found else '?'} type errors"
    while ok:  # a module mypyc cannot compile (e.g. an async generator) is dropped with its reason, then again
        out = subprocess.run([sys.executable, "-m", "mypyc", "--ignore-missing-imports", "--follow-imports=silent",
                              *ok], cwd=tree, capture_output=True, text=True)
        if out.returncode == 0:
            break
        failing = {m: line.split(": error: ", 1)[1] for line in out.stdout.splitlines() if ": error: " in line
                   for m in ok if line.startswith(m + ":")}
        if not failing:
            sys.exit(f"mypyc build failed:\n{out.stdout[-3000:]}{out.stderr[-2000:]}")
        for m, why in failing.items():
            skipped[m] = f"mypyc: {why}"
            ok.remove(m)
    return {"compiled": ok, "skipped": skipped}


class RunFailed(Exception):
    """The compiled copy does not run (what a compiler changed in behaviour is a finding too)."""


def micro(tree: Path, requests: int) -> float:
    out = subprocess.run([sys.executable, str(tree / "bench" / "engine_micro.py"), "--requests", str(requests)],
                         cwd=tree, capture_output=True, text=True)
    if out.returncode != 0:
        raise RunFailed(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
    return float(re.search(r": ([\d.]+) µs", out.stdout).group(1))


def instructions(tree: Path) -> float | None:
    """Instructions per request: the difference between 3000 and 1000 requests, over 2000 (start-up cancels)."""
    if shutil.which("valgrind") is None:
        return None
    counts = []
    for n in (1000, 3000):
        code = (f"import asyncio, sys; sys.path.insert(0, {str(tree)!r}); sys.argv = ['x'];"
                f"import runpy; m = runpy.run_path({str(tree / 'bench' / 'engine_micro.py')!r});"
                f"asyncio.run(m['run']({n}, 'off'))")
        out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c",
                              code], cwd=tree, capture_output=True, text=True)
        found = re.search(r"Collected : (\d+)", out.stderr)
        if not found:
            return None
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / 2000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compiler", nargs="+", choices=["cython", "mypyc"], default=["cython", "mypyc"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--instructions", action="store_true", help="also count instructions with valgrind")
    ap.add_argument("--keep", action="store_true", help="keep the compiled copies (their paths are printed)")
    args = ap.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="gatewatch-compile-probe-") as tmp:
        for compiler in args.compiler:
            tree = Path(tmp) / compiler
            tree.mkdir()
            copy_tree(tree)
            print(f"probe: building {compiler} copy in {tree}", file=sys.stderr)
            built = (build_cython if compiler == "cython" else build_mypyc)(tree)
            pure, compiled = [], []
            try:
                for _ in range(args.rounds):  # alternate, so drift on a shared machine hits both alike
                    pure.append(micro(ROOT, args.requests))
                    compiled.append(micro(tree, args.requests))
            except RunFailed as err:
                results[compiler] = {"modules_compiled": built["compiled"], "skipped": built["skipped"],
                                     "runs": False, "error": str(err)}
                print(f"probe: {compiler}: the compiled copy does not run: {err}", file=sys.stderr)
                continue
            row = {"modules_compiled": len(built["compiled"]), "skipped": built["skipped"],
                   "pure_us": statistics.median(pure), "compiled_us": statistics.median(compiled)}
            row["compiled_vs_pure_cpu"] = round(row["compiled_us"] / row["pure_us"], 3)
            if args.instructions:
                ip, ic = instructions(ROOT), instructions(tree)
                if ip and ic:
                    row.update(pure_instructions=round(ip), compiled_instructions=round(ic),
                               compiled_vs_pure_instructions=round(ic / ip, 3))
            results[compiler] = row
            print(f"probe: {compiler}: {len(built['compiled'])} modules compiled, engine CPU per request "
                  f"{row['pure_us']:.1f} µs pure → {row['compiled_us']:.1f} µs compiled "
                  f"(× {row['compiled_vs_pure_cpu']})"
                  + (f", instructions × {row['compiled_vs_pure_instructions']}" if "pure_instructions" in row
                     else ""), file=sys.stderr)
            if args.keep:
                kept = Path(tempfile.mkdtemp(prefix=f"gatewatch-{compiler}-"))
                shutil.copytree(tree, kept, dirs_exist_ok=True)
                print(f"probe: kept {kept}", file=sys.stderr)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
