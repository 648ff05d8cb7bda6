"""Keras and TensorFlow, imported once for the whole package.

With oneDNN on (``pipeline/__init__.py``), TensorFlow's C++ code writes a notice ("oneDNN
custom operations are on ...") to the process's standard error when it is imported, below
Python's ``sys.stderr`` and past ``TF_CPP_MIN_LOG_LEVEL``: every worker process would print
it on the user's terminal. The first import here runs with file descriptor 2 pointed at a
temporary file; afterwards every line written there, except that notice and absl's line
about logging before its initialisation, is written back to standard error.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile

__all__ = ["keras", "tf", "convolution_kernels"]

_HIDDEN = ("oneDNN custom operations are on", "All log messages before absl::InitializeLog()")


def _import():
    # Keras imports matplotlib (0.5 s, more than a tenth of its import) for plotting utilities
    # this package never calls, and does without it where it is missing: keep it missing while
    # Keras is imported. A later `import matplotlib` (evaluate's plot) is unaffected.
    hidden = "matplotlib" not in sys.modules
    if hidden:
        sys.modules["matplotlib"] = None  # what an import of it raises ImportError for
    try:
        import keras
        import tensorflow
    finally:
        if hidden and sys.modules.get("matplotlib", 0) is None:
            del sys.modules["matplotlib"]
    return keras, tensorflow


def _import_quietly():
    if "tensorflow" in sys.modules:
        return _import()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable standard error: nothing to keep clean
        return _import()
    with tempfile.TemporaryFile() as captured:
        try:
            os.dup2(captured.fileno(), 2)
            return _import()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not any(hidden in line for hidden in _HIDDEN):
                    sys.stderr.write(line)
            sys.stderr.flush()


keras, tf = _import_quietly()
# TensorFlow and Keras leave some 270,000 objects that live as long as the process. Moved out
# of the garbage collector's generations here, they are no longer traversed by each full
# collection, nor by the collections of the interpreter's exit: 1.5 s of every process that
# imports TensorFlow (a CLI command, each worker), down to 0.2 s (docs/BENCHMARKS.md section 9).
# What else lives at this moment is frozen with them: it is never freed if it becomes garbage.
gc.freeze()


def convolution_kernels() -> str:
    """``"oneDNN"`` or ``"Eigen"``: the CPU kernels this process's TensorFlow runs convolutions
    with (``TF_ENABLE_ONEDNN_OPTS`` when TensorFlow was imported). Their float results differ by
    rounding, so a model card records which trained the model."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # TensorFlow's own test of the setting
    except ImportError:  # a TensorFlow without it: the variable is what it read
        return "oneDNN" if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1" else "Eigen"
    return "oneDNN" if _pywrap_util_port.IsMklEnabled() else "Eigen"
