"""Exception hierarchy shared by every patchhash package.

Each error subclasses a builtin as well as :class:`PatchhashError`, so callers can catch
either ``patchhash`` errors as a family or the builtin they already expect
(``FileNotFoundError``, ``ValueError`` ...). Messages name the file or row at fault and
say how to fix it.
"""

from __future__ import annotations

__all__ = [
    "PatchhashError",
    "CorpusError",
    "ImageReadError",
    "IndexNotFoundError",
    "IndexFormatError",
    "ModelError",
    "ModelMismatchError",
    "ConfigError",
    "StorageUnavailableError",
    "MassDeletionError",
    "WorkerMismatchError",
    "ClusterUnavailableError",
    "MissingExtraError",
]


class PatchhashError(Exception):
    """Base class of every error raised on purpose by patchhash."""


class CorpusError(PatchhashError, ValueError):
    """A corpus or query URL cannot be read as a whole (unknown format, bad header...)."""


class ImageReadError(PatchhashError, ValueError):
    """One image of a corpus cannot be read or converted."""


class IndexNotFoundError(PatchhashError, FileNotFoundError):
    """The URL does not hold a committed patchhash index."""


class IndexFormatError(PatchhashError, ValueError):
    """An index exists but is of an unknown format version or is inconsistent."""


class ModelError(PatchhashError, ValueError):
    """A model directory is missing, incomplete, tampered with or unsafe to load."""


class ModelMismatchError(ModelError):
    """An index was built with another model than the one given."""


class ConfigError(PatchhashError, ValueError):
    """An option or configuration value is out of range."""


class StorageUnavailableError(PatchhashError, OSError):
    """Storage kept failing after every retry (see :mod:`storage.retry`)."""


class MassDeletionError(PatchhashError, RuntimeError):
    """A sync would remove more of a source's images than allowed (a short listing?)."""


class WorkerMismatchError(ConfigError):
    """A Dask worker cannot run this job's tasks: it cannot import patchhash, runs another
    version of it, or reads another model than the client (:mod:`workflows.preflight`)."""


class ClusterUnavailableError(PatchhashError, RuntimeError):
    """No Dask worker was connected for ``--no-workers-timeout`` seconds: none ever joined, or
    all of them left (:mod:`workflows.watchdog`)."""


class MissingExtraError(PatchhashError, ImportError):
    """A URL's protocol needs a package that is not installed (e.g. ``s3://``: the ``s3`` extra)."""
