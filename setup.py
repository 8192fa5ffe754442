"""The optional compiled hot path (DESIGN §3, docs/compiled.md); everything else about the build is pyproject.toml.

The hot modules (`gatewatch/build_mode.py` HOT_MODULES) are compiled with Cython in pure-Python mode from the same
`.py` files that run uncompiled. Compilation is optional: without a C compiler (or with GATEWATCH_PURE_PYTHON=1)
the install succeeds in pure Python, says so in one line, and records why in the manifest, so that
`gatewatch --version` and the ready log say it too.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
MODE = runpy.run_path(str(ROOT / "gatewatch" / "build_mode.py"))
HOT_MODULES: dict[str, str] = MODE["HOT_MODULES"]
SOURCES = {name: ROOT / path for name, path in HOT_MODULES.items()}

# Cython directives. `annotation_typing` off: the annotations here are Python types, and Cython would turn
# `str`/`int`/`list` ones into exact-type checks that reject subclasses (docs/compiled.md "Why these settings").
# `nonecheck`: a variable or field typed as one of the `.pxd` classes may hold None; reading a field through it then
# raises AttributeError, as in Python, instead of reading through a null pointer.
DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": True, "nonecheck": True}
PXD_INCLUDE = ROOT / "build" / "pxd-include"


def _declarations_tree() -> Path:
    """The hot modules' `.pxd` files laid out by module name, for `cimport` (edge/, balancer/ and telemetry/ are
    the packages gatewatch.edge, ... only once installed). A file is rewritten only when it changed, so that
    Cython's dependency check sees the right times."""
    for name, source in SOURCES.items():
        declarations = source.with_suffix(".pxd")
        if not declarations.is_file():
            continue
        parts = name.split(".")
        for depth in range(1, len(parts)):
            marker = PXD_INCLUDE.joinpath(*parts[:depth], "__init__.pxd")
            if not marker.is_file():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
        copy = PXD_INCLUDE.joinpath(*parts).with_suffix(".pxd")
        text = declarations.read_bytes()
        if not copy.is_file() or copy.read_bytes() != text:
            copy.write_bytes(text)
    return PXD_INCLUDE


def say(line: str) -> None:
    print(f"gatewatch: {line}", file=sys.stderr, flush=True)


class OptionalBuildExt(build_ext):
    """Compiles what it can; never fails the install. Writes the manifest (module -> hash of the compiled source)
    next to the `gatewatch` package it built for: the runtime uses a compiled module only while its .py matches."""

    def finalize_options(self) -> None:
        self.built: dict[str, str] = {}
        self.note = ""
        self.built_with = ""
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1
        self.distribution.ext_modules = self._translated(self.distribution.ext_modules or [])
        super().finalize_options()  # after: setuptools prepares the Extension objects it will build

    def _translated(self, extensions: list[Extension]) -> list[Extension]:
        """The hot modules translated to C by Cython, or [] (with the reason in self.note) for a pure install."""
        if MODE["pure_forced"]():
            self.note = f"{MODE['PURE_ENV']} was set at install"
            return []
        try:
            from Cython import __version__ as cython_version
            from Cython.Build import cythonize
        except ImportError as err:
            self.note = f"Cython is not available at install ({err})"
            return []
        try:
            translated = cythonize(extensions, build_dir="build/cython", quiet=True, compiler_directives=DIRECTIVES,
                                   nthreads=int(self.parallel), include_path=[str(_declarations_tree())])
        except Exception as err:  # noqa: BLE001 - a Cython failure must leave a working pure install
            self.note = f"Cython could not translate the hot modules ({type(err).__name__}: {err})"
            return []
        self.built_with = f"Cython {cython_version}"
        return translated

    def run(self) -> None:
        inplace = self.inplace  # setuptools clears it while building and restores it only when nothing raised
        if self.extensions:
            try:
                super().run()
            except Exception as err:  # noqa: BLE001 - no compiler, no headers: the pure install still works
                first = (str(err).splitlines() or [""])[0][:160]
                self.note = f"the C build failed, no working compiler? ({type(err).__name__}: {first})"
                self.built.clear()
            finally:
                self.inplace = inplace
        self._write_manifest()  # where the modules went: in place (editable), or the build directory (wheel)
        if self.built and len(self.built) == len(HOT_MODULES):
            say(f"compiled {len(self.built)} hot modules with {self.built_with}")
        else:
            say(f"installed in pure Python: {self.note or 'some hot modules did not compile'} (docs/compiled.md)")

    def build_extension(self, ext: Extension) -> None:
        super().build_extension(ext)  # raises on a compiler error: run() falls back to pure for all of them
        self.built[ext.name] = MODE["source_hash"](SOURCES[ext.name])

    def _write_manifest(self) -> None:
        if not self.built:  # nothing compiled: remove compiled leftovers of an earlier build, so none runs stale
            for name in HOT_MODULES:
                leftover = Path(self.get_ext_fullpath(name))
                if leftover.exists():
                    leftover.unlink()
        probe = Path(self.get_ext_fullpath("gatewatch._manifest_location"))
        linked = MODE["cimports"](SOURCES)  # build_mode runs a module's .py when one it cimports from runs its own
        manifest = {"modules": self.built, "built_with": self.built_with if self.built else "",
                    "note": self.note,
                    "cimports": {name: deps for name, deps in linked.items() if name in self.built},
                    "async_generators": {}}
        for name in self.built:  # build_mode.install() silences Cython's warning for exactly these
            found = MODE["async_generators"](SOURCES[name].read_text())
            if found:
                manifest["async_generators"][name] = found
        probe.parent.mkdir(parents=True, exist_ok=True)
        (probe.parent / MODE["MANIFEST"]).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


setup(
    ext_modules=[Extension(name, [path]) for name, path in HOT_MODULES.items()],
    cmdclass={"build_ext": OptionalBuildExt},
)
