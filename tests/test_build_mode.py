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
from gatewatch.build_mode import COMPILED, FORCED, LINKED, PURE, STALE, BuildState, decide, source_hash

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def fake_package(tmp_path: Path, name: str = "gwfake", modules: tuple[str, ...] = ("hot",)) -> Path:
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for module in modules:
        (pkg / f"{module}.py").write_text("WHERE = 'source'\n")
        (pkg / f"{module}{SUFFIX}").write_bytes(b"not an ELF file: loading this must never be tried")
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


def test_a_declarations_file_is_part_of_the_source_it_was_compiled_from(tmp_path):
    pkg = fake_package(tmp_path)
    source = pkg / "hot.py"
    manifest = {"modules": {"gwfake.hot": source_hash(source)}}
    (pkg / "hot.pxd").write_text("cdef class Head:\n    cdef public object method\n")
    assert decide(source, manifest, "gwfake.hot", forced=False) == STALE
    manifest["modules"]["gwfake.hot"] = source_hash(source)
    assert decide(source, manifest, "gwfake.hot", forced=False) == COMPILED


def test_cimports_are_followed_through_the_declarations(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.pxd").write_text("from pkg.b cimport B\nfrom pkg.other cimport O  # not a hot module\n")
    (pkg / "b.pxd").write_text("# declarations\ncimport pkg.c\n")
    (pkg / "c.pxd").write_text("cdef class C:\n    cdef public object x\n")
    sources = {f"pkg.{leaf}": pkg / f"{leaf}.py" for leaf in "abcd"}  # d has no .pxd
    assert build_mode.cimports(sources) == {"pkg.a": ["pkg.b", "pkg.c"], "pkg.b": ["pkg.c"]}


def test_a_module_linked_by_cimport_to_one_that_runs_its_py_runs_its_py_too(tmp_path, monkeypatch):
    """A compiled module checks at import that the extension types it cimports are the compiled ones: with the
    module that defines them edited (its .py runs), the compiled user would fail to import. The guard runs the
    user's .py too, and says why (`linked`)."""
    pkg = fake_package(tmp_path, "gwlinked", ("user", "types"))
    manifest = {"modules": {f"gwlinked.{m}": source_hash(pkg / f"{m}.py") for m in ("user", "types")},
                "cimports": {"gwlinked.user": ["gwlinked.types"]}}
    monkeypatch.setattr(build_mode, "HOT_MODULES", {"gwlinked.user": "gwlinked/user.py",
                                                    "gwlinked.types": "gwlinked/types.py"})
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        current = build_mode._Guard(manifest, False)
        assert current.mode("gwlinked.user", pkg / "user.py") == COMPILED  # both current: both compiled
        (pkg / "types.py").write_text("WHERE = 'edited source'\n")
        guard = build_mode._Guard(manifest, False)
        monkeypatch.setattr(sys, "meta_path", [guard, *sys.meta_path])
        import gwlinked.user as user
        assert user.__file__ == str(pkg / "user.py")
        assert guard.seen["gwlinked.user"] == LINKED
        import gwlinked.types as types
        assert types.WHERE == "edited source" and guard.seen["gwlinked.types"] == STALE
        said = BuildState(dict(guard.seen)).describe()
        assert "stale compiled modules not used" in said and "nor those linked to them: gwlinked.user" in said
    finally:
        for name in ("gwlinked.user", "gwlinked.types", "gwlinked"):
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


def declared_fields(pxd: Path) -> dict[str, set[str]]:
    """class name -> the fields its `cdef class` block in a .pxd declares."""
    fields: dict[str, set[str]] = {}
    current = None
    for line in pxd.read_text().splitlines():
        line = line.partition("#")[0].rstrip()  # a declaration may end with a comment
        if line.startswith("cdef class "):
            current = line[len("cdef class "):].rstrip(":").strip()
            fields[current] = set()
        elif current and line.strip().startswith(("cdef public ", "cdef readonly ")):
            names = line.strip().split(None, 3)[3]  # cdef public|readonly TYPE names
            fields[current] |= {name.strip() for name in names.split(",")}
    return fields


DECLARING = sorted(name for name, path in build_mode.HOT_MODULES.items()
                   if (ROOT / path).with_suffix(".pxd").is_file() and declared_fields((ROOT / path).with_suffix(".pxd")))


@pytest.mark.parametrize("module", DECLARING)
def test_each_declared_class_declares_exactly_the_fields_of_its_py(module):
    """A compiled extension type has only the fields its .pxd declares: a field added to the .py class alone
    works in pure Python and raises AttributeError compiled. Checked from the .py, whichever build runs."""
    import dataclasses
    import importlib

    loaded = importlib.import_module(module)
    declared = declared_fields((ROOT / build_mode.HOT_MODULES[module]).with_suffix(".pxd"))
    for name, fields in declared.items():
        cls = getattr(loaded, name)
        if dataclasses.is_dataclass(cls):
            own = {f.name for f in dataclasses.fields(cls)}
        else:
            own = {slot for klass in cls.__mro__ for slot in getattr(klass, "__slots__", ())}
            if not own:  # compiled: an extension type keeps the `__slots__` tuple of its source as a class attribute
                own = set(cls.__dict__.get("__slots__", ()))
        assert own == fields, (name, "only in .py:", sorted(own - fields), "only in .pxd:", sorted(fields - own))


def test_the_hot_modules_run_without_cython_installed():
    """Cython is only a build requirement: a pure install without it imports the hot modules with
    `gatewatch.cython_shim` standing in for `import cython`, and their declared classes are slotted."""
    code = ("import sys\n"
            "class NoCython:\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.partition('.')[0] in ('cython', 'Cython'):\n"
            "            raise ImportError('no Cython on this machine')\n"
            "sys.meta_path.insert(0, NoCython())\n"
            "import gatewatch.proxy.engine as engine, gatewatch.io.fast_listener, gatewatch.io.fast_forwarder\n"
            "from gatewatch.telemetry.context import RequestRecord\n"
            "print(engine.cython.__name__, engine.cython.compiled, '__dict__' in dir(RequestRecord),\n"
            "      'Cython' in sys.modules)\n")
    out = run_python(code, GATEWATCH_PURE_PYTHON="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["gatewatch.cython_shim", "False", "False", "False"], out.stdout


def test_slotted_keeps_what_the_dataclass_declared():
    import dataclasses

    from gatewatch.cython_shim import slotted

    @dataclasses.dataclass(eq=False)
    class Declared:
        a: int
        items: list = dataclasses.field(default_factory=list)
        hidden: str = dataclasses.field(default="x", repr=False)

    Slotted = slotted(Declared)
    one, two = Slotted(1), Slotted(1)
    assert Slotted.__slots__ == ("a", "items", "hidden") and not hasattr(one, "__dict__")
    assert one.items == [] and one.items is not two.items  # each its own list, as declared
    assert repr(one) == "test_slotted_keeps_what_the_dataclass_declared.<locals>.Declared(a=1, items=[])"
    assert one != two and one == one  # eq=False: identity
    with pytest.raises(AttributeError):
        one.misspelt = 1
