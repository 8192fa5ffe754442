"""What compiling the hot path buys: Cython (pure-Python mode, the project's own build) and mypyc, each against
pure Python, side by side in the same run (DESIGN §3 allows either; issue 14 asks which, measured).

    python bench/compile_probe.py [--compiler cython mypyc] [--rounds 3] [--requests 20000] [--rebuild]
                                  [--instructions] [--keep]

The hot modules are `gatewatch/build_mode.py` HOT_MODULES. `bench/engine_micro.py` (the engine on the in-memory
I/O pair, telemetry off) runs alternately on the pure side and the compiled one; the probe prints CPU µs per
request (median of the rounds' medians) and compiled ÷ pure, and the mode each side really ran in
(`build_mode.state()`, which the probe checks: a side that did not run as named is reported as such, not measured).

- **pure**: this tree with GATEWATCH_PURE_PYTHON=1 (the tree itself is compiled in place by `pip install -e .`,
  so only the variable makes it pure).
- **cython**: the project's real build (setup.py: Cython, its directives). By default this tree as installed,
  when every hot module of it is compiled and current; otherwise (or with `--rebuild`) a copy of the tree (tracked
  and untracked files, not ignored ones) built with `python setup.py build_ext --inplace` (minutes on 2 cores).
- **mypyc**: a copy of the tree where mypyc compiles the hot modules that type-check clean and live under
  `gatewatch/` (mypy cannot see the `edge/` → `gatewatch.edge` mapping of pyproject.toml); the others are listed as
  skipped with their reason. The probe writes the copy's build manifest for what mypyc compiled (the runtime's
  stale-module guard loads a compiled module only when the manifest vouches for its source).

`--instructions` also counts instructions per request with valgrind (deterministic, unlike CPU time on a shared
VM). The end-to-end figures come from `bench/run.py` (its gatewatch-* and gatewatch-pure-* rows). Needs a C
compiler and Python headers; installs nothing (Cython and mypy must be in the environment).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODE = runpy.run_path(str(ROOT / "gatewatch" / "build_mode.py"))  # standard library only, like setup.py reads it
HOT_MODULES: dict[str, str] = MODE["HOT_MODULES"]  # module name -> path from the repository root
PURE_ENV: str = MODE["PURE_ENV"]

STATE = ("import json, gatewatch.build_mode as b; s = b.state()\n"
         "print(json.dumps({**s.as_dict(), 'modules': dict(s.modules)}))")


def env_for(pure: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != PURE_ENV}
    if pure:
        env[PURE_ENV] = "1"
    return env


def state(tree: Path, pure: bool = False) -> dict:
    """build_mode.state() as a process started in `tree` sees it (the tree first on sys.path)."""
    out = subprocess.run([sys.executable, "-c", STATE], cwd=tree, capture_output=True, text=True, env=env_for(pure),
                         check=False)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"compiled": None, "mode": f"unknown: {out.stderr.strip()[-300:]}", "modules": {}}


def copy_tree(dest: Path) -> None:
    """The working tree's files as git sees them (tracked, and untracked but not ignored: no build outputs)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def build_cython(tree: Path) -> dict:
    """The project's own build (setup.py) in place in `tree`."""
    out = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, capture_output=True,
                         text=True, env=env_for(False), check=False)
    if out.returncode != 0:
        sys.exit(f"cython build (setup.py) failed:\n{out.stderr[-3000:]}")
    return {"compiled": list(HOT_MODULES.values()), "skipped": {}}


def build_mypyc(tree: Path) -> dict:
    ok, skipped = [], {}
    for m in HOT_MODULES.values():
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
    write_manifest(tree, ok, "mypyc")
    return {"compiled": ok, "skipped": skipped}


def write_manifest(tree: Path, compiled: list[str], built_with: str) -> None:
    """The manifest setup.py would write, for the modules `compiled` (paths): without it the runtime's guard
    treats their compiled files as unknown and runs the .py."""
    by_path = {p: n for n, p in HOT_MODULES.items()}
    modules = {by_path[p]: MODE["source_hash"](tree / p) for p in compiled}
    (tree / "gatewatch" / MODE["MANIFEST"]).write_text(json.dumps(
        {"modules": modules, "built_with": built_with if modules else "", "note": "bench/compile_probe.py"},
        indent=1, sort_keys=True) + "\n")


class RunFailed(Exception):
    """The compiled side does not run (what a compiler changed in behaviour is a finding too)."""


def micro(tree: Path, requests: int, pure: bool = False) -> float:
    out = subprocess.run([sys.executable, str(tree / "bench" / "engine_micro.py"), "--requests", str(requests)],
                         cwd=tree, capture_output=True, text=True, env=env_for(pure),
                         check=False)
    if out.returncode != 0:
        raise RunFailed(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
    return float(re.search(r": ([\d.]+) µs", out.stdout).group(1))


def instructions(tree: Path, pure: bool = False) -> float | None:
    """Instructions per request: the difference between 3000 and 1000 requests, over 2000 (start-up cancels)."""
    if shutil.which("valgrind") is None:
        return None
    counts = []
    for n in (1000, 3000):
        code = (f"import asyncio, sys; sys.path.insert(0, {str(tree)!r}); sys.argv = ['x'];"
                f"import runpy; m = runpy.run_path({str(tree / 'bench' / 'engine_micro.py')!r});"
                f"asyncio.run(m['run']({n}, 'off'))")
        out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c",
                              code], cwd=tree, capture_output=True, text=True, env=env_for(pure),
                         check=False)
        found = re.search(r"Collected : (\d+)", out.stderr)
        if not found:
            return None
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / 2000


def compiled_side(compiler: str, tmp: Path, rebuild: bool) -> tuple[Path, dict]:
    """The tree to run compiled, and what was compiled in it."""
    if compiler == "cython" and not rebuild and state(ROOT).get("compiled"):
        print("probe: cython: this tree as installed (pip install -e . ran setup.py; every hot module current)",
              file=sys.stderr)
        return ROOT, {"compiled": list(HOT_MODULES.values()), "skipped": {}}
    tree = tmp / compiler
    tree.mkdir()
    copy_tree(tree)
    print(f"probe: building the {compiler} copy in {tree}", file=sys.stderr)
    return tree, (build_cython if compiler == "cython" else build_mypyc)(tree)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compiler", nargs="+", choices=["cython", "mypyc"], default=["cython", "mypyc"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--rebuild", action="store_true",
                    help="cython: build a copy with setup.py even when this tree's install is compiled and current")
    ap.add_argument("--instructions", action="store_true", help="also count instructions with valgrind")
    ap.add_argument("--keep", action="store_true", help="keep the compiled copies (their paths are printed)")
    args = ap.parse_args()
    pure_state = state(ROOT, pure=True)
    if pure_state.get("compiled") is not False or not str(pure_state.get("mode", "")).startswith("pure"):
        sys.exit(f"probe: {PURE_ENV}=1 does not make this tree pure: {pure_state.get('mode')}")
    results: dict = {"pure": {"mode": pure_state["mode"]}}
    with tempfile.TemporaryDirectory(prefix="gatewatch-compile-probe-") as tmp:
        for compiler in args.compiler:
            tree, built = compiled_side(compiler, Path(tmp), args.rebuild)
            ran = state(tree)
            running = sorted(p for n, p in HOT_MODULES.items() if ran.get("modules", {}).get(n) == "compiled")
            if sorted(built["compiled"]) != running:
                results[compiler] = {"error": f"the compiled side runs {ran.get('mode')!r}, not the "
                                              f"{len(built['compiled'])} modules built", "skipped": built["skipped"]}
                print(f"probe: {compiler}: {results[compiler]['error']}", file=sys.stderr)
                continue
            pure, compiled = [], []
            try:
                for _ in range(args.rounds):  # alternate, so drift on a shared machine hits both alike
                    pure.append(micro(ROOT, args.requests, pure=True))
                    compiled.append(micro(tree, args.requests))
            except RunFailed as err:
                results[compiler] = {"modules_compiled": built["compiled"], "skipped": built["skipped"],
                                     "runs": False, "error": str(err)}
                print(f"probe: {compiler}: the compiled side does not run: {err}", file=sys.stderr)
                continue
            row = {"mode": ran.get("mode"), "modules_compiled": len(built["compiled"]), "skipped": built["skipped"],
                   "pure_us": statistics.median(pure), "compiled_us": statistics.median(compiled)}
            row["compiled_vs_pure_cpu"] = round(row["compiled_us"] / row["pure_us"], 3)
            if args.instructions:
                ip, ic = instructions(ROOT, pure=True), instructions(tree)
                if ip and ic:
                    row.update(pure_instructions=round(ip), compiled_instructions=round(ic),
                               compiled_vs_pure_instructions=round(ic / ip, 3))
            results[compiler] = row
            print(f"probe: {compiler}: {len(built['compiled'])} modules compiled ({ran.get('mode')}), engine CPU per "
                  f"request {row['pure_us']:.1f} µs pure → {row['compiled_us']:.1f} µs compiled "
                  f"(× {row['compiled_vs_pure_cpu']})"
                  + (f", instructions × {row['compiled_vs_pure_instructions']}" if "pure_instructions" in row
                     else ""), file=sys.stderr)
            if args.keep and tree != ROOT:
                kept = Path(tempfile.mkdtemp(prefix=f"gatewatch-{compiler}-"))
                shutil.copytree(tree, kept, dirs_exist_ok=True)
                print(f"probe: kept {kept}", file=sys.stderr)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
