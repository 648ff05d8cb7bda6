"""numba plumbing shared by the kernel modules: LLVM intrinsics (population count, prefetch),
growing an array inside a kernel, and an on-disk kernel cache that notices edits to the
modules a kernel's module imports.

numba's cache (``cache=True``) keys a kernel's compiled code by its own source file only. But
a kernel that calls a jitted function or an intrinsic of another module has that function's
code compiled into it, and it reads the globals it uses, other modules' constants included,
as compile-time constants. Edit ``hamming.py`` and numba would go on loading the old
``scan_within`` compiled into the cached kernels of ``seed.py``, ``rerank.py`` and
``baselines.py``. Importing this module therefore makes the cache of every kernel whose
module imports ``pipeline`` modules depend on the source of those modules too, followed
transitively through their own imports of ``pipeline`` modules: an edit to any of them
recompiles the kernel on its next use. A kernel whose module imports no ``pipeline`` module
keeps numba's own cache stamp. A module whose kernels use another ``pipeline`` module must
import this one, directly or through its imports, before its first kernel, or its kernels'
stamp would depend on what a process imported first (``tests/test_jit.py`` checks it):
``hamming.py`` imports :func:`ctpop` from here, so every module that imports it does.

The hook is a numba cache locator placed first in numba's list of locators; it defers to the
locator numba would have chosen for everything but the source stamp. It does nothing where
``NUMBA_CACHE_LOCATOR_CLASSES`` replaces numba's list.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import caching, cgutils
from numba.extending import intrinsic

__all__ = ["ctpop", "prefetch", "PREFETCH_AHEAD", "grow", "kernel_dependencies"]

PREFETCH_AHEAD = 8
"""Buckets of most matching keys are small and scattered: the hit loops of both search modes
prefetch the bucket of the match this many matches ahead (-30% time on the Fashion-MNIST light
codes)."""


@intrinsic
def ctpop(typingctx, x):
    """``llvm.ctpop`` on an integer of any width; the result has the argument's type."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return x(x), codegen


@intrinsic
def prefetch(typingctx, arr, index):
    """Hint the CPU to load ``arr[index]`` into cache (``llvm.prefetch``; no bounds check,
    no effect on results). For kernels whose next memory reads are known but random."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1
            and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        element = builder.gep(array.data, [args[1]])
        address = builder.bitcast(element, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32]),
            "llvm.prefetch.p0i8")
        # read, highest temporal locality, data cache
        builder.call(fn, [address, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, index), codegen


@njit(nogil=True, cache=True)
def grow(arr, n, capacity):
    """A new array of ``capacity`` entries of ``arr``'s dtype that starts with ``arr[:n]``."""
    out = np.empty(capacity, arr.dtype)
    out[:n] = arr[:n]
    return out


# --- the kernel cache ------------------------------------------------------------------------

_PACKAGE = __name__.rpartition(".")[0]
_PACKAGE_DIR = Path(__file__).resolve().parent


def kernel_dependencies(path: str | os.PathLike) -> tuple[Path, ...]:
    """Source files of the ``pipeline`` modules that the module at ``path`` imports, directly
    or through the imports of those modules (not ``path`` itself), sorted.

    Imports are read from the source (anywhere in it, functions included, but not under ``if
    TYPE_CHECKING:``): ``import pipeline.x``, ``from pipeline.x import ...``, ``from pipeline
    import x`` and, in modules of the package, their relative forms.
    """
    start = Path(path).resolve()
    seen = {start}
    todo = [start]
    while todo:
        for found in _imported_sources(todo.pop()):
            if found not in seen:
                seen.add(found)
                todo.append(found)
    return tuple(sorted(seen - {start}))


def _imported_sources(path: Path) -> frozenset[Path]:
    stat = path.stat()
    return _parse_imports(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=None)
def _parse_imports(path: Path, mtime_ns: int, size: int) -> frozenset[Path]:
    """The package's source files named by the imports of ``path`` (memoised per file version)."""
    tree = ast.parse(path.read_bytes(), str(path))
    # the package of a module inside ours, for relative imports: ("pipeline", ...)
    package = (_PACKAGE, *path.parent.relative_to(_PACKAGE_DIR).parts) \
        if path.is_relative_to(_PACKAGE_DIR) else None
    found = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(_source_of(alias.name.split(".")) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if package is None or node.level > len(package):
                    continue
                base = [*package[:len(package) - node.level + 1], *(node.module or "").split(".")]
                base = [part for part in base if part]
            else:
                base = node.module.split(".")
            for alias in node.names:
                # `from pipeline import hamming` names a module; `from .hamming import f`, a name in one
                found.add(_source_of([*base, alias.name]) or _source_of(base))
    return frozenset(found - {None})


def _runtime_nodes(tree: ast.AST):
    """The nodes of ``tree`` but those under ``if TYPE_CHECKING:`` (never run, so nothing a
    kernel can use)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def _source_of(parts: list[str]) -> Path | None:
    """The source file of module ``".".join(parts)`` if it is one of this package, else ``None``."""
    if not parts or parts[0] != _PACKAGE:
        return None
    module = _PACKAGE_DIR.joinpath(*parts[1:])
    candidates = [module.parent / f"{module.name}.py"] if len(parts) > 1 else []
    return next((path for path in (*candidates, module / "__init__.py") if path.is_file()), None)


@functools.lru_cache(maxsize=None)
def _digest(path: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _ImportFollowingLocator(caching._CacheLocator):
    """numba's own locator for a kernel, with a source stamp that covers the ``pipeline``
    modules its module imports (:func:`kernel_dependencies`)."""

    def __init__(self, inner, dependencies: tuple[Path, ...]):
        self._inner = inner
        self._dependencies = dependencies

    def ensure_cache_path(self):
        self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    def get_source_stamp(self):
        stamps = []
        for path in self._dependencies:
            stat = path.stat()
            stamps.append((path.name, _digest(path, stat.st_mtime_ns, stat.st_size)))
        return self._inner.get_source_stamp(), tuple(stamps)

    @classmethod
    def from_function(cls, py_func, py_file):
        try:
            dependencies = kernel_dependencies(py_file)
        except Exception:  # no file ("<string>"), not Python source: numba's own locators decide
            return None
        if not dependencies:
            return None
        for other in _LOCATORS:
            if other is not cls:
                inner = other.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner, dependencies)
        return None


_LOCATORS = (getattr(caching, "CacheImpl", None) or caching._CacheImpl)._locator_classes  # _CacheImpl: older numba
if _ImportFollowingLocator not in _LOCATORS:
    _LOCATORS.insert(0, _ImportFollowingLocator)
