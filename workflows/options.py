"""Options of the commands, each declared once.

An option's declaration is an :class:`Option`: its default, help, value type, range or
choices, environment variable and the example a job-spec error shows. A job's options are
fields of its frozen settings dataclass (``IndexSettings``, ``QuerySettings``,
``ClusterSettings``...), declared with :func:`option`, which keeps the :class:`Option` in the
field's metadata; the field gives it its name and Python type. From that one declaration come

* the command line's typer options (:func:`workflows.cli.options`),
* the keys of a ``--config`` job spec (:data:`workflows.jobspec.COMMANDS`), and
* the settings' plain range and choice checks (:func:`check_options`, which each
  ``__post_init__`` calls; the checks that are not plain stay in ``__post_init__``).

For example, ``QuerySettings`` declares ::

    k: int = option(10, "Hits per query.", minimum=1, maximum=MAX_K, example="10")

which makes ``patchhash query --k`` (help "Hits per query.", default 10), the job-spec key
``k`` (``key 'k' must be >= 1 and <= 10000, e.g. `k: 10`; got 0``) and the check
``--k must be between 1 and 10000, got 0``.

Options that are no job's settings (``--index``, ``--out``, ``--config``...) are
:class:`Option` s too, declared in ``workflows/cli.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, replace
from typing import Any

from storage import ConfigError

__all__ = ["TYPES", "Option", "option", "same_option", "options_of", "check_options"]

TYPES = ("int", "float", "bool", "str", "path", "model", "choice", "ints", "names", "mapping", "size")
"""Value types of options, as a job spec checks them: ``path`` is resolved against the job
file's folder, ``model`` is a path or a built-in model name, ``choice`` one of ``choices``,
``ints`` / ``names`` a list (a comma-separated string on the command line), ``mapping`` a
mapping (JSON on the command line), ``size`` a memory size (``4GB``, ``auto``, bytes)."""


@dataclass(frozen=True)
class Option:
    """The declaration of one option.

    ``type`` is one of :data:`TYPES`; left empty, it comes from the settings field's Python
    type (or from ``default``). ``name`` (the parameter, the job-spec key, ``--name`` on the
    command line) defaults to the field's name or the keyword that names the option;
    ``field`` is the settings field it sets. ``minimum`` / ``maximum`` bound numbers
    (``open_minimum`` excludes the minimum itself); ``note`` follows the bound in a range
    error. ``check=False`` leaves the check of the value to the settings' ``__post_init__``
    (the bounds still hold for job specs). ``required`` options have no default: they come
    from the command line or a job spec. ``job_spec=False`` keeps an option out of job specs.
    """

    default: Any
    help: str
    type: str = ""
    name: str = ""
    field: str = ""
    flags: tuple[str, ...] = ()
    envvar: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    open_minimum: bool = False
    note: str = ""
    choices: tuple[str, ...] = ()
    example: str = ""
    required: bool = False
    check: bool = True
    show_default: bool = True
    job_spec: bool = True

    def __post_init__(self) -> None:
        if self.type and self.type not in TYPES:
            raise ValueError(f"unknown option type {self.type!r}")

    @property
    def flag(self) -> str:
        """The command line's name of the option, e.g. ``--shard-size``."""
        return "--" + self.name.replace("_", "-")

    def named(self, name: str) -> Option:
        """This option as the one called ``name`` (unless it names itself), its type resolved."""
        name = self.name or name
        if self.type:
            value_type = self.type
        elif isinstance(self.default, (bool, int, float, str)):
            value_type = type(self.default).__name__
        else:
            raise ValueError(f"option {name!r}: give its type (its default {self.default!r} does not tell)")
        return replace(self, name=name, field=self.field or name, type=value_type)


def option(default: Any, help: str, **declaration) -> Any:
    """A settings dataclass field that is an option: ``default``, ``help`` and the rest of
    its :class:`Option` (``minimum=1``, ``example="10"``...)."""
    return dataclasses.field(default=default, metadata={"option": Option(default, help, **declaration)})


def same_option(cls: type, field: str, **changes) -> Any:
    """A field declared as ``cls``'s ``field`` (default, help, range...; ``changes`` replaced),
    for settings that pass the value on to ``cls``."""
    original = next(f for f in dataclasses.fields(cls) if f.name == field)
    return dataclasses.field(default=original.default, metadata={"option": replace(original.metadata["option"], **changes)})


@functools.cache
def _declared(cls: type) -> tuple[Option, ...]:
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        declared = f.metadata.get("option")
        if declared is not None:
            found.append(replace(declared, field=f.name, type=declared.type or _type_of(hints[f.name], declared)).named(f.name))
    return tuple(found)


def _type_of(hint: Any, declared: Option) -> str:
    """The option type of a field's Python type: ``int | None`` is ``int``, ``tuple[int, ...]`` ``ints``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is tuple:
        return "ints" if typing.get_args(hint)[0] is int else "names"
    if hint is str:
        return "choice" if declared.choices else "str"
    return {bool: "bool", int: "int", float: "float"}[hint]


def options_of(cls: type, *fields: str) -> tuple[Option, ...]:
    """The options a settings dataclass declares, in field order (only ``fields``, if given)."""
    declared = _declared(cls)
    unknown = set(fields) - {o.field for o in declared}
    if unknown:
        raise ValueError(f"{cls.__name__} declares no option {', '.join(sorted(unknown))}")
    return tuple(o for o in declared if not fields or o.field in fields)


def check_options(settings: Any) -> None:
    """Raise :class:`~storage.ConfigError` for the first option of ``settings`` out of its
    declared range or choices (None passes: it means the default). A list's items must each
    be in range."""
    for opt in options_of(type(settings)):
        value = getattr(settings, opt.field)
        if not opt.check or value is None:
            continue
        if opt.type == "choice" and value not in opt.choices:
            raise ConfigError(f"{opt.flag} must be one of {', '.join(opt.choices)}, got {value!r}")
        if opt.minimum is None and opt.maximum is None:
            continue
        items = value if isinstance(value, tuple) else (value,)
        if not all(_in_range(opt, v) for v in items):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"{opt.flag} must be {_range(opt)}{opt.note}, got {shown}")


def _in_range(opt: Option, value: float) -> bool:
    # written so that NaN is out of every range
    low, high = opt.minimum, opt.maximum
    above = low is None or (value > low if opt.open_minimum else value >= low)
    return above and (high is None or value <= high)


def _range(opt: Option) -> str:
    low, high = opt.minimum, opt.maximum
    if low is not None and high is not None:
        return f"in ({low}, {high}]" if opt.open_minimum else f"between {low} and {high}"
    if low is not None:
        return f"{'>' if opt.open_minimum else '>='} {low}"
    return f"<= {high}"
