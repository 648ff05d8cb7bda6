"""numba's on-disk kernel cache follows imports (pipeline/jit.py): an edit to a module whose
jitted function or constant a cached kernel uses recompiles the kernel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.jit import kernel_dependencies

ROOT = Path(__file__).resolve().parent.parent
JIT = ROOT / "pipeline" / "jit.py"
KERNEL_FILES = sorted(path for folder in ("pipeline", "benchmarks") for path in (ROOT / folder).glob("*.py")
                      if "cache=True" in path.read_text())


def _probe(tmp_path: Path, step: int, offset: int) -> None:
    """A module whose kernel calls a jitted function and reads a constant of another module."""
    package = tmp_path / "pipeline"
    (package / "probe_callee.py").write_text(textwrap.dedent(f"""\
        from numba import njit

        from .jit import ctpop  # noqa: F401 - installs the cache that follows imports

        OFFSET = {offset}


        @njit(cache=True)
        def step(x):
            return x + {step}
        """))
    (package / "probe_caller.py").write_text(textwrap.dedent("""\
        from numba import njit

        from .probe_callee import OFFSET, step


        @njit(cache=True)
        def twice(x):
            return step(step(x)) + OFFSET
        """))


def _run_probe(tmp_path: Path) -> tuple[int, int]:
    """``twice(0)`` in a fresh process, and whether it came from the cache."""
    script = ("import pipeline\nfrom pipeline.probe_caller import twice\nvalue = twice(0)\n"
              "print(pipeline.__file__, value, sum(twice.stats.cache_hits.values()))\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    env.pop("NUMBA_CACHE_LOCATOR_CLASSES", None)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    where, value, hits = done.stdout.split()
    assert Path(where).is_relative_to(tmp_path), "the probe runs the copy of pipeline"
    return int(value), int(hits)


def test_an_edit_to_an_imported_module_recompiles_the_cached_kernel(tmp_path):
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "models"))
    _probe(tmp_path, step=1, offset=100)
    assert _run_probe(tmp_path) == (102, 0)  # compiled
    assert _run_probe(tmp_path) == (102, 1)  # loaded from the cache
    _probe(tmp_path, step=2, offset=300)  # same sizes, maybe the same mtime: only the contents differ
    assert _run_probe(tmp_path) == (304, 0), "numba's cache kept the kernel compiled with the old callee"
    assert _run_probe(tmp_path) == (304, 1)


@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_kernel_modules_that_import_pipeline_modules_load_the_cache_that_follows_them(path):
    """Else the stamp of their kernels' cache would depend on which module a process imported
    first: correct, but recompiled whenever two processes disagree."""
    dependencies = kernel_dependencies(path)
    assert not dependencies or JIT in dependencies, [p.name for p in dependencies]


def test_kernel_dependencies_follow_imports_transitively():
    assert kernel_dependencies(ROOT / "pipeline" / "hamming.py") == (JIT,)
    seed = {p.name for p in kernel_dependencies(ROOT / "pipeline" / "seed.py")}
    assert {"hamming.py", "jit.py", "mih.py", "topk.py"} <= seed and "seed.py" not in seed
    assert {"hamming.py", "jit.py"} <= {p.name for p in kernel_dependencies(ROOT / "benchmarks" / "bench_kernel.py")}
    assert kernel_dependencies(ROOT / "pipeline" / "topk.py") == (), "its BucketMap import is for type checking only"
    assert kernel_dependencies(ROOT / "pipeline" / "buckets.py") == ()
