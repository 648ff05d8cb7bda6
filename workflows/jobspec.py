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
from workflows.cli import JOB_SPECS
from workflows.options import Option

__all__ = ["JobSpec", "COMMANDS", "load_job_spec", "parse_job_spec"]

log = logging.getLogger(__name__)

COMMANDS: Mapping[str, Mapping[str, Option]] = MappingProxyType(JOB_SPECS)
"""The keys of each command's job spec: the options of ``patchhash <command>`` but ``--config``,
from their one declaration (:mod:`workflows.options`; ``type``, range, choices and ``example``
are what :func:`parse_job_spec` checks and shows)."""


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


def _check(field: Option, value: Any, key: str, source: str, base_dir: str) -> Any:
    """``value`` converted to the command line's form, or a ConfigError naming file, key and fix."""
    def fail(expected: str) -> ConfigError:
        fix = f", e.g. `{key}: {field.example}`" if field.example else ""
        return ConfigError(f"{source}: key {key!r} must be {expected}{fix}; got {value!r}")

    value_type = field.type
    if value_type == "bool":
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if value_type in ("int", "float"):
        ok = isinstance(value, int) if value_type == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise fail("an integer" if value_type == "int" else "a number")
        _check_range(field, value, fail)
        return value if value_type == "int" else float(value)
    if value_type in ("ints", "names"):
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise fail("a list or a comma-separated string")
        if value_type == "ints":
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
    if value_type == "mapping":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise fail("a mapping (or a JSON object string)") from None
        if not isinstance(value, dict):
            raise fail("a mapping")
        return json.dumps(value)
    if value_type == "size":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise fail("a memory size such as 4GB, auto, or a number of bytes")
        return str(value)
    if not isinstance(value, str) or not value:
        raise fail("a non-empty string")
    if value_type == "choice" and value not in field.choices:
        raise fail(f"one of {', '.join(field.choices)}")
    if value_type == "path" or (value_type == "model" and not _builtin_model(value)):
        return _resolve(value, base_dir)
    return value


def _check_range(field: Option, value: float, fail) -> None:
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
