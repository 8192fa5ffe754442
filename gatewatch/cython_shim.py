"""What the hot modules use of Cython's pure-Python mode, for a pure install without Cython (docs/compiled.md),
and `slotted`, which gives their declared dataclasses slots when they run as Python.

A hot module declares typed locals with `@cython.locals(ctx=RequestContext)`. Compiled, Cython reads them; run as
Python with Cython installed, Cython's own `cython` module makes them no-ops. Without Cython (it is only a build
requirement), the modules import this instead:

    try:
        import cython
    except ImportError:
        from gatewatch import cython_shim as cython
"""

from __future__ import annotations

import dataclasses

compiled = False
# C types a typed local may name (`@cython.locals(n=cython.Py_ssize_t)`); as Python, the types they hold
Py_ssize_t = int
bint = bool
double = float
int = int  # noqa: A001 - C int
uchar = int
uint = int
ulonglong = int
p_const_uchar = bytes  # a pointer into a bytes object's buffer, compiled; the bytes object itself, as Python
p_char = bytes  # a C char array, compiled (only in code that runs compiled: `if cython.compiled:`)


def cfunc(fn):
    """A C function when compiled (callable from its module only); a plain function as Python."""
    return fn


def returns(_type):
    """A C function's return type for the compiler; nothing at run time."""
    return lambda fn: fn


def locals(**types):  # noqa: A001 - the name Cython gives it
    """Typed locals for the compiler; nothing at run time."""
    return lambda fn: fn


def slotted(cls: type) -> type:
    """A `.pxd`-declared dataclass, rebuilt with `__slots__`, for when its module runs as Python. Cython refuses
    `slots=True` on a class it compiles to an extension type, so the source says `@dataclass` and the module ends
    with `if not cython.compiled: X = slotted(X)` (a branch Cython drops). Slots keep the pure build as fast as it
    was, and its fields as fixed as the compiled type's: a misspelt attribute fails in both builds."""
    params = cls.__dataclass_params__  # the same init/repr/eq/... as the class was declared with
    for f in dataclasses.fields(cls):  # each field as declared (a default_factory left no class attribute)
        setattr(cls, f.name, f)
    return dataclasses.dataclass(cls, init=params.init, repr=params.repr, eq=params.eq, order=params.order,
                                 unsafe_hash=params.unsafe_hash, frozen=params.frozen, slots=True)
