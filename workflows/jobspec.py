"""Job specs: every option of ``patchhash index``, ``query``, ``evaluate`` or ``bench`` in a YAML file.

A job spec is a YAML mapping whose keys are the command's option names, with dashes or
underscores (``shard-size`` or ``shard_size``), plus an optional ``command:`` naming the
command it is for (a spec for ``query`` given to ``index`` is then refused). Examples are in
``workflows/jobs/``.

Values are checked here, before anything runs: an unknown key, a wrong type or a value out of
range is a :class:`~storage.ConfigError` naming the file, the key and the fix. Lists
(``k: [1, 10, 100]``, ``modes: [seed, default]``) and a ``storage_options`` mapping are
accepted where the command line takes a comma-separated list or JSON.

Paths
    A relative path in a job file (``corpus``, ``index``, ``queries``, ``out``, ``tls_ca``...)
    is relative to the folder of the job file, not to the working directory, so a job runs the
    same from cron as from a shell. URLs (``s3://...``) and absolute paths are used as they are;
    ``model`` keeps built-in model names (``fashion-mnist``) as they are.

Precedence
    An option given on the command line wins, then its environment variable
    (``PATCHHASH_SCHEDULER``, ``PATCHHASH_WORKERS``, ``PATCHHASH_THREADS_PER_WORKER``,
    ``PATCHHASH_MEMORY_LIMIT``, ``PATCHHASH_TLS_CA``/``_CERT``/``_KEY``,
    ``PATCHHASH_WAIT_FOR_LOCK``), then the job spec, then the option's default.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from storage import ConfigError, url_to_fs
from storage.fs import resolve_url

__all__ = ["Field", "JobSpec", "COMMANDS", "load_job_spec", "parse_job_spec"]

log = logging.getLogger(__name__)

_KINDS = ("int", "float", "bool", "str", "path", "model", "choice", "ints", "names", "mapping", "size")


@dataclass(frozen=True)
class Field:
    """The type and range of one job-spec key.

    ``kind``: ``int``, ``float``, ``bool``, ``str``, ``path`` (resolved against the job file's
    folder), ``model`` (a path or a built-in name), ``choice`` (one of ``choices``), ``ints`` /
    ``names`` (a list or a comma-separated string), ``mapping`` (``storage_options``) or
    ``size`` (a memory size: ``4GB``, ``auto`` or a number of bytes). ``minimum`` /
    ``maximum`` bound numbers (``open_minimum`` excludes the minimum itself).
    """

    kind: str
    minimum: float | None = None
    maximum: float | None = None
    open_minimum: bool = False
    choices: tuple[str, ...] = ()
    example: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown field kind {self.kind!r}")


def _n(minimum: float | None = None, maximum: float | None = None, kind: str = "int", example: str = "", **kw) -> Field:
    return Field(kind, minimum, maximum, example=example, **kw)


_CLUSTER = {
    "scheduler": Field("str", example="tcp://scheduler:8786"),
    "workers": _n(1, example="4"),
    "threads_per_worker": _n(1, example="1"),
    "memory_limit": Field("size", example="4GB"),
    "tls_ca": Field("path", example="certs/ca.pem"),
    "tls_cert": Field("path", example="certs/client.pem"),
    "tls_key": Field("path", example="certs/client.key"),
}
_COMMON = {"storage_options": Field("mapping", example="{anon: true}"), "verbose": Field("bool", example="true")}
_TUNING = {
    "shortlist": _n(1, example="400"),
    "max_bucket_fraction": _n(0, 1, "float", open_minimum=True, example="0.1"),
    "max_bucket": _n(1, example="300"),
    "vote_budget": _n(0, example="100000"),
}
_MODES = ("default", "seed")

COMMANDS: Mapping[str, Mapping[str, Field]] = MappingProxyType({
    "index": MappingProxyType({
        "corpus": Field("path", example="images/"),
        "index": Field("path", example="s3://bucket/index"),
        "model": Field("model", example="fashion-mnist"),
        "shard_size": _n(1, 10_000_000, example="10000"),
        "partitions": _n(1, example="8"),
        "strict": Field("bool", example="false"),
        "append_only": Field("bool", example="false"),
        "max_delete_fraction": _n(0, 1, "float", example="0.2"),
        "compact": Field("bool", example="true"),
        "gc": Field("bool", example="true"),
        "keep_versions": _n(1, example="7"),
        "min_age": Field("str", example="24h"),
        "wait_for_lock": _n(0, None, "float", example="600"),
        **_CLUSTER, **_COMMON,
    }),
    "query": MappingProxyType({
        "index": Field("path", example="s3://bucket/index"),
        "queries": Field("path", example="queries.npy"),
        "out": Field("path", example="results.parquet"),
        "k": _n(1, example="10"),
        "threshold": _n(0, example="3"),
        "mode": Field("choice", choices=_MODES, example="default"),
        **_TUNING,
        "shift_radius": _n(0, None, "float", example="0"),
        "shift_step": _n(0, 1, "float", open_minimum=True, example="1"),
        "format": Field("choice", choices=("parquet", "csv", "jsonl", "dataset"), example="parquet"),
        "report": Field("path", example="report.html"),
        "report_limit": _n(0, example="50"),
        "block_size": _n(1, example="1000"),
        "strict": Field("bool", example="false"),
        **_CLUSTER, **_COMMON,
    }),
    "evaluate": MappingProxyType({
        "index": Field("path", example="s3://bucket/index"),
        "queries": Field("path", example="queries.npy"),
        "labels": Field("path", example="labels.npy"),
        "query_labels": Field("path", example="query-labels.npy"),
        "k": Field("ints", 1, example="[1, 10, 100]"),
        "modes": Field("names", choices=_MODES, example="[seed, default]"),
        "baselines": Field("names", example="[pixel-knn, lsh-64]"),
        "thresholds": Field("ints", 0, example="[1, 3, 5]"),
        **_TUNING,
        "limit": _n(1, example="1000"),
        "out": Field("path", example="evaluation.json"),
        "plot": Field("path", example="evaluation.png"),
        **_CLUSTER, **_COMMON,
    }),
    "bench": MappingProxyType({
        "index": Field("path", example="s3://bucket/index"),
        "queries": Field("path", example="queries.npy"),
        "modes": Field("names", choices=_MODES, example="[default, seed]"),
        "repeats": _n(1, example="3"),
        "limit": _n(1, example="1000"),
        "block_size": _n(1, example="1000"),
        "out": Field("path", example="bench.json"),
        **_CLUSTER, **_COMMON,
    }),
})


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec: ``values`` maps the command's parameter names to values in the
    form its command-line options take (lists comma-joined, ``storage_options`` as JSON)."""

    source: str
    command: str
    values: Mapping[str, Any]


def load_job_spec(url: str, command: str, storage_options: dict | None = None) -> JobSpec:
    """Read and validate the job spec at ``url`` (a local path or any fsspec URL) for ``command``."""
    try:
        fs, path = url_to_fs(url, storage_options)
        text = fs.cat_file(path).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config {url}: no such job spec file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {url}: not a UTF-8 text (YAML) file") from None
    if "://" in url:
        base = url.rstrip("/").rsplit("/", 1)[0]
    else:
        base = os.path.dirname(os.path.abspath(url))
    return parse_job_spec(text, command, source=url, base_dir=base)


def parse_job_spec(text: str, command: str, source: str = "<job spec>", base_dir: str = ".") -> JobSpec:
    """Validate the YAML ``text`` of a job spec for ``command``; relative paths join ``base_dir``."""
    import yaml

    if command not in COMMANDS:
        raise ValueError(f"job specs exist for {', '.join(COMMANDS)}, not {command!r}")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: a job spec is a YAML mapping of option: value lines, got a {type(doc).__name__}")
    fields = COMMANDS[command]
    values: dict[str, Any] = {}
    for raw_key, raw in doc.items():
        key = str(raw_key).replace("-", "_")
        if key == "command":
            if raw != command:
                raise ConfigError(f"{source}: this job spec is for `patchhash {raw}`, not `patchhash {command}`; "
                                  f"pass it to `patchhash {raw} --config` or change its `command:` key")
            continue
        if key in values:
            raise ConfigError(f"{source}: key {raw_key!r} is given twice (dash and underscore spellings are the same key)")
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {raw_key!r} for `patchhash {command}`; "
                              f"valid keys: command, {', '.join(sorted(fields))}")
        if raw is None:
            continue  # `key:` with no value: the option's default
        values[key] = _check(fields[key], raw, key, source, base_dir)
    return JobSpec(source, command, MappingProxyType(values))


def _check(field: Field, value: Any, key: str, source: str, base_dir: str) -> Any:
    """``value`` converted to the command line's form, or a ConfigError naming file, key and fix."""
    def fail(expected: str) -> ConfigError:
        fix = f", e.g. `{key}: {field.example}`" if field.example else ""
        return ConfigError(f"{source}: key {key!r} must be {expected}{fix}; got {value!r}")

    kind = field.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if kind in ("int", "float"):
        ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise fail("an integer" if kind == "int" else "a number")
        _check_range(field, value, fail)
        return value if kind == "int" else float(value)
    if kind in ("ints", "names"):
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise fail("a list or a comma-separated string")
        if kind == "ints":
            if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
                items = [_int_or_none(v) for v in items]
                if None in items:
                    raise fail("a list of integers")
            for v in items:
                _check_range(field, v, fail)
        else:
            if not all(isinstance(v, str) and v for v in items):
                raise fail("a list of names")
            if field.choices and any(v not in field.choices and v != "none" for v in items):
                raise fail(f"a list of {', '.join(field.choices)}")
        return ",".join(str(v) for v in items) if items else "none"
    if kind == "mapping":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise fail("a mapping (or a JSON object string)") from None
        if not isinstance(value, dict):
            raise fail("a mapping")
        return json.dumps(value)
    if kind == "size":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise fail("a memory size such as 4GB, auto, or a number of bytes")
        return str(value)
    if not isinstance(value, str) or not value:
        raise fail("a non-empty string")
    if kind == "choice" and value not in field.choices:
        raise fail(f"one of {', '.join(field.choices)}")
    if kind == "path" or (kind == "model" and not _builtin_model(value)):
        return _resolve(value, base_dir)
    return value


def _check_range(field: Field, value: float, fail) -> None:
    low, high = field.minimum, field.maximum
    if low is not None and (value <= low if field.open_minimum else value < low):
        raise fail(f"{'>' if field.open_minimum else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else ""))
    if high is not None and value > high:
        raise fail(f"<= {high:g}" + (f" and {'>' if field.open_minimum else '>='} {low:g}" if low is not None else ""))


def _int_or_none(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _builtin_model(name: str) -> bool:
    from pipeline.modelcard import BUILTIN_MODELS

    return name in BUILTIN_MODELS


def _resolve(value: str, base_dir: str) -> str:
    """A job file's relative path, taken from the job file's folder; URLs and absolute paths unchanged."""
    if "://" in value or value.startswith("/") or value.startswith("~"):
        return value
    return resolve_url(value, base_dir)
