"""The compiled hot path's guard and visibility (DESIGN §3, docs/compiled.md, gatewatch/build_mode.py).

- a hot module's mode follows what is on disk: compiled file + matching source hash → compiled; an edited .py →
  stale (the .py runs); GATEWATCH_PURE_PYTHON → forced (the .py runs); no compiled file → pure;
- the guard really loads the .py beside a compiled file it must not use (a fake compiled file here: importing it
  would fail, so a guard that let it through fails the test);
- this install runs what `state()` says, and pure mode is one environment variable away;
- a build without a working C compiler still installs, pure, and says why.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gatewatch import build_mode
from gatewatch.build_mode import COMPILED, FORCED, PURE, STALE, BuildState, decide, source_hash

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def fake_package(tmp_path: Path, name: str = "gwfake") -> Path:
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "hot.py").write_text("WHERE = 'source'\n")
    (pkg / f"hot{SUFFIX}").write_bytes(b"not an ELF file: loading this must never be tried")
    return pkg


def test_the_mode_follows_the_files_and_the_manifest(tmp_path):
    pkg = fake_package(tmp_path)
    source = pkg / "hot.py"
    manifest = {"modules": {"gwfake.hot": source_hash(source)}}
    assert decide(source, manifest, "gwfake.hot", forced=False) == COMPILED
    assert decide(source, manifest, "gwfake.hot", forced=True) == FORCED
    assert decide(source, {"modules": {}}, "gwfake.hot", forced=False) == STALE  # a compiled file of another build
    source.write_text("WHERE = 'edited'\n")
    assert decide(source, manifest, "gwfake.hot", forced=False) == STALE
    (pkg / f"hot{SUFFIX}").unlink()
    assert decide(source, manifest, "gwfake.hot", forced=False) == PURE


@pytest.mark.parametrize("forced,edited", [(True, False), (False, True)])
def test_the_guard_loads_the_py_beside_a_compiled_file_it_must_not_use(tmp_path, monkeypatch, capsys, forced,
                                                                        edited):
    pkg = fake_package(tmp_path)
    manifest = {"modules": {"gwfake.hot": source_hash(pkg / "hot.py")}}
    if edited:
        (pkg / "hot.py").write_text("WHERE = 'edited source'\n")
    monkeypatch.setattr(build_mode, "HOT_MODULES", {"gwfake.hot": "gwfake/hot.py"})
    monkeypatch.syspath_prepend(str(tmp_path))
    guard = build_mode._Guard(manifest, forced)
    monkeypatch.setattr(sys, "meta_path", [guard, *sys.meta_path])
    try:
        import gwfake.hot as hot
        assert hot.__file__ == str(pkg / "hot.py")
        assert hot.WHERE == ("edited source" if edited else "source")
        assert guard.seen == {"gwfake.hot": STALE if edited else FORCED}
        if edited:  # never silently: one line says which module and what to do
            assert "gwfake.hot: the compiled module is older than" in capsys.readouterr().err
    finally:
        for name in ("gwfake.hot", "gwfake"):
            sys.modules.pop(name, None)


def test_without_the_guard_the_fake_compiled_file_would_be_loaded(tmp_path, monkeypatch):
    """The control for the test above: the import system prefers the compiled file."""
    fake_package(tmp_path, "gwfake2")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ImportError):
            import gwfake2.hot  # noqa: F401
    finally:
        for name in ("gwfake2.hot", "gwfake2"):
            sys.modules.pop(name, None)


def test_describe_names_what_runs():
    names = list(build_mode.HOT_MODULES)
    assert BuildState({n: COMPILED for n in names}, "Cython 3.3.1").describe() == \
        f"compiled (Cython 3.3.1, {len(names)} modules)"
    stale = BuildState({**{n: COMPILED for n in names}, names[0]: STALE}, "Cython 3.3.1")
    assert not stale.compiled and names[0] in stale.describe() and "pip install -e ." in stale.describe()
    assert BuildState({n: PURE for n in names}, build_note="no working C compiler").describe() == \
        "pure Python (no working C compiler)"


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env}, cwd=ROOT)


PROBE = ("import json, gatewatch.proxy.engine as e, gatewatch.build_mode as b; "
         "print(json.dumps({'file': e.__file__, **b.state().as_dict(modules=True)}))")


def test_this_install_runs_what_state_says():
    out = run_python(PROBE, GATEWATCH_PURE_PYTHON="")
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    engine_compiled = not seen["file"].endswith(".py")
    assert engine_compiled == (seen["modules"]["gatewatch.proxy.engine"] == COMPILED), seen
    if os.environ.get("GATEWATCH_EXPECT_COMPILED") == "1":  # set by scripts/test.sh once the build compiled
        assert seen["compiled"] and seen["stale"] == [], seen


def test_pure_mode_is_one_environment_variable_away():
    out = run_python(PROBE, GATEWATCH_PURE_PYTHON="1")
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["file"].endswith("engine.py") and not seen["compiled"]
    assert set(seen["modules"].values()) <= {FORCED, PURE}, seen
    version = subprocess.run([sys.executable, "-m", "gatewatch", "--version"], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "GATEWATCH_PURE_PYTHON": "1"})
    assert version.stdout.splitlines()[1] == "hot path: pure Python (GATEWATCH_PURE_PYTHON=1)", version.stdout


def test_a_build_without_a_working_compiler_installs_pure_and_says_why(tmp_path):
    """setup.py's build_ext on a copy of the tree with CC=false: no module compiles, the build still succeeds,
    one line says why, the manifest records it, and no compiled file is left behind to run."""
    tree = tmp_path / "tree"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode()
    for name in filter(None, files.split("\0")):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    if (ROOT / "build" / "cython").is_dir():  # Cython's translations of this tree (same mtimes): not redone
        shutil.copytree(ROOT / "build" / "cython", tree / "build" / "cython")
    env = {**os.environ, "CC": "false", "LDSHARED": "false", "GATEWATCH_PURE_PYTHON": ""}
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree, capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    said = [line for line in out.stderr.splitlines() if line.startswith("gatewatch: ")]
    assert len(said) == 1 and "installed in pure Python: the C build failed" in said[0], out.stderr[-2000:]
    manifest = json.loads((tree / "gatewatch" / "_compiled.json").read_text())
    assert manifest["modules"] == {} and "C build failed" in manifest["note"]
    assert not list(tree.rglob(f"*{SUFFIX}"))


def test_async_generators_are_found_with_their_qualified_names():
    source = ("async def gen():\n    yield 1\n"
              "async def coro():\n    return 1\n"
              "class A:\n"
              "    async def body(self):\n        yield b''\n"
              "    async def nested(self):\n"
              "        async def inner():\n            yield 2\n"
              "        return inner\n")
    assert build_mode.async_generators(source) == ["gen", "A.body", "A.nested.<locals>.inner"]


def test_an_unstarted_compiled_async_generator_is_dropped_without_a_warning():
    """Cython's async generators warn "coroutine ... was never awaited" when dropped before their first step,
    CPython's do not: a request body nobody read must not print a RuntimeWarning in either build."""
    code = ("import gc, gatewatch.proxy.context as c\n"
            "g = c.ClientBody(None, 1.0).__aiter__()\n"
            "del g\n"
            "gc.collect()\n"
            "print('done')\n")
    for pure in ("", "1"):
        out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "GATEWATCH_PURE_PYTHON": pure}, cwd=ROOT)
        assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr
        assert "never awaited" not in out.stderr, (pure, out.stderr)
