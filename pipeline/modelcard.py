"""Model directories: ``model.keras`` + ``card.json``, validated and hash-checked.

The card records everything a consumer needs without loading Keras (geometry, code dtype,
bit order, normalisation) and how the model was made (data, command, epochs, loss, time).
``model_sha256`` binds the card to the weights: a card that does not match its model file is
refused, and an index records it to refuse being searched or extended with another model.

Reading a model directory (:func:`read_card`) validates the card against its schema, checks
the weights' hash and inspects the archive's ``config.json`` without running Keras: a model
holding a ``Lambda`` layer or any class from outside Keras and patchhash is refused before
anything loads it (Keras then loads it in safe mode, a second line of defence).
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from pipeline.model import ModelConfig
from pipeline.normalize import Normalization
from pipeline.packing import code_dtype
from storage import ImageSpec, InputRules, ModelError, join_url, url_to_fs
from storage.layout import CARD_FILE, MODEL_FILE  # a model folder's files, the same inside an index's model/
from storage.retry import retry_call

__all__ = [
    "CARD_FORMAT",
    "CARD_VERSION",
    "MODEL_FILE",
    "CARD_FILE",
    "BUILTIN_MODELS",
    "ModelCard",
    "resolve_model_url",
    "read_card",
    "read_model_file",
    "inspect_keras_archive",
    "redact_command",
    "sha256_bytes",
]

CARD_FORMAT = "patchhash-model"
CARD_VERSION = 1
BUILTIN_MODELS = ("fashion-mnist", "fashion-mnist-unsupervised", "icons-photos")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, eq=False)
class ModelCard:
    """What ``card.json`` holds. ``training`` is free-form provenance (command, data, loss...)."""

    name: str
    config: ModelConfig
    normalization: Normalization
    model_sha256: str
    training: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    software: dict[str, str] = field(default_factory=dict)
    input_rules: InputRules = field(default_factory=InputRules)
    placements: tuple[InputRules, ...] = ()
    placement_penalty: int = 0

    @property
    def image_spec(self) -> ImageSpec:
        """What every image becomes before this model sees it: its input shape and rules, and
        the rules of its further placements."""
        return ImageSpec(*self.config.input_shape, rules=self.input_rules, placements=self.placements)

    @property
    def bits(self) -> int:
        return self.config.bits

    @property
    def grid(self) -> tuple[int, int]:
        """An image's code grid: the model's, once per placement, one below the other."""
        gh, gw = self.config.grid
        return gh * (1 + len(self.placements)), gw

    @property
    def code_dtype(self) -> np.dtype:
        return code_dtype(self.config.bits)

    @property
    def identity(self) -> dict[str, str]:
        """What an index records to recognise its model."""
        return {"name": self.name, "model_sha256": self.model_sha256}

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "format": CARD_FORMAT,
            "format_version": CARD_VERSION,
            "name": self.name,
            "bits": cfg.bits,
            "patch": cfg.patch,
            "stride": cfg.stride,
            "grid": list(self.grid),
            "input_shape": list(cfg.input_shape),
            "input": self.input_rules.to_json(),
            **({"placements": [rules.to_json() for rules in self.placements], "placement_penalty": self.placement_penalty}
               if self.placements else {}),
            "code_dtype": self.code_dtype.name,
            "bit_order": "little: bottleneck unit j is bit j (code = sum(bit_j << j))",
            "architecture": cfg.to_dict(),
            "normalization": self.normalization.to_json(),
            "model_file": MODEL_FILE,
            "model_sha256": self.model_sha256,
            "training": _redact_training(self.training),
            "created": self.created,
            "software": self.software,
        }

    def summary(self) -> dict[str, Any]:
        """The card without the bulky normalisation mean (for ``info`` and manifests)."""
        d = self.to_json()
        d["normalization"] = {"mean": f"<{len(self.normalization.mean.ravel())} per-pixel values>", "std": self.normalization.std}
        return d

    @classmethod
    def from_json(cls, d: Any, source: str = CARD_FILE) -> "ModelCard":
        try:
            if not isinstance(d, dict) or d.get("format") != CARD_FORMAT:
                raise ValueError(f"not a patchhash model card (format should be {CARD_FORMAT!r})")
            if d.get("format_version") != CARD_VERSION:
                raise ValueError(
                    f"card format_version {d.get('format_version')!r} is not supported (this patchhash reads {CARD_VERSION}); upgrade patchhash"
                )
            _check_card_schema(d)
            config = ModelConfig.from_dict(d["architecture"])
            if [config.bits, config.patch, config.stride, list(config.input_shape)] != [
                d["bits"], d["patch"], d["stride"], list(d["input_shape"])
            ]:
                raise ValueError("bits/patch/stride/input_shape disagree with the architecture section")
            sha = d["model_sha256"]
            if not (isinstance(sha, str) and len(sha) == 64 and all(ch in "0123456789abcdef" for ch in sha)):
                raise ValueError("model_sha256 must be a 64-character hex digest")
            return cls(
                name=str(d["name"]),
                config=config,
                normalization=Normalization.from_json(d["normalization"], config.input_shape),
                model_sha256=sha,
                training=dict(d.get("training") or {}),
                created=str(d.get("created", "")),
                software=dict(d.get("software") or {}),
                input_rules=InputRules.from_json(d.get("input")),
                **_placements(d, config),
            )
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ModelError(f"{source}: invalid model card: {detail}. Re-create the model with `patchhash train`.") from None


def _placements(d: dict, config: ModelConfig) -> dict[str, Any]:
    """A card's further placements (``"placements"``: a list of ``"input"`` objects) and the bits
    each counts less (``"placement_penalty"``); none in a card without them."""
    listed = d.get("placements", [])
    if not isinstance(listed, list) or not all(isinstance(rules, dict) for rules in listed):
        raise ValueError(f"placements must be a list of input rule objects, got {listed!r}")
    penalty = d.get("placement_penalty", 0)
    gh, gw = config.grid
    if not _is_int(penalty) or not 0 <= penalty < gh * gw * config.bits:
        raise ValueError(f"placement_penalty must be an integer from 0 to a placement's {gh * gw * config.bits} bits, got {penalty!r}")
    return {"placements": tuple(InputRules.from_json(rules) for rules in listed), "placement_penalty": penalty}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_list(value: Any, length: int | None = None) -> bool:
    return isinstance(value, list) and (length is None or len(value) == length) and all(_is_int(v) for v in value)


def _check_card_schema(d: dict) -> None:
    """Types of the card's fields (``ModelConfig`` then checks their ranges); ValueError names the field."""
    if not isinstance(d.get("name"), str) or not d["name"].strip():
        raise ValueError(f"name must be a non-empty string, got {d.get('name')!r}")
    for key in ("bits", "patch", "stride"):
        if not _is_int(d.get(key)):
            raise ValueError(f"{key} must be an integer, got {d.get(key)!r}")
    if not _int_list(d.get("input_shape"), 3):
        raise ValueError(f"input_shape must be a list of 3 integers, got {d.get('input_shape')!r}")
    if "grid" in d and not _int_list(d["grid"], 2):
        raise ValueError(f"grid must be a list of 2 integers, got {d['grid']!r}")
    arch = d.get("architecture")
    if not isinstance(arch, dict):
        raise ValueError(f"architecture must be an object, got {type(arch).__name__}")
    for key in ("bits", "patch", "stride", "filters"):
        if key in arch and not _is_int(arch[key]):
            raise ValueError(f"architecture.{key} must be an integer, got {arch[key]!r}")
    for key, length in (("input_shape", 3), ("widths", None), ("stem", None)):
        if key in arch and not _int_list(arch[key], length):
            raise ValueError(f"architecture.{key} must be a list of integers, got {arch[key]!r}")
    norm = d.get("normalization")
    if not isinstance(norm, dict) or not isinstance(norm.get("mean"), list) or isinstance(norm.get("std"), bool) \
            or not isinstance(norm.get("std"), int | float):
        raise ValueError("normalization must be an object with a per-pixel 'mean' list and a numeric 'std'")
    if d.get("model_file", MODEL_FILE) != MODEL_FILE:
        raise ValueError(f"model_file must be {MODEL_FILE!r}, got {d.get('model_file')!r}")
    if "code_dtype" in d and d["code_dtype"] != code_dtype(d["bits"]).name:
        raise ValueError(f"code_dtype {d['code_dtype']!r} does not hold {d['bits']}-bit codes")
    for key in ("training", "software"):
        if d.get(key) is not None and not isinstance(d[key], dict):
            raise ValueError(f"{key} must be an object, got {type(d[key]).__name__}")
    if not all(isinstance(v, str) for v in (d.get("software") or {}).values()):
        raise ValueError("software must map names to version strings")
    if not isinstance(d.get("created", ""), str):
        raise ValueError(f"created must be a string, got {d.get('created')!r}")


_SECRET_OPTIONS = ("--storage-options",)
REDACTED = "<redacted>"


def redact_command(command: str) -> str:
    """``command`` with the values of options that may hold credentials replaced by ``<redacted>``."""
    try:
        args = shlex.split(command)
    except ValueError:  # unbalanced quotes: drop everything from the first secret option on
        cut = min((command.find(o) for o in _SECRET_OPTIONS if o in command), default=-1)
        return command if cut < 0 else command[:cut] + f"{_SECRET_OPTIONS[0]} {REDACTED}"
    out: list[str] = []
    hide = False
    for arg in args:
        if hide:
            out.append(REDACTED)
            hide = False
        elif arg in _SECRET_OPTIONS:
            out.append(arg)
            hide = True
        elif arg.startswith(tuple(o + "=" for o in _SECRET_OPTIONS)):
            out.append(arg.split("=", 1)[0] + "=" + REDACTED)
        else:
            out.append(arg)
    return shlex.join(out)


def _redact_training(training: dict[str, Any]) -> dict[str, Any]:
    command = training.get("command")
    if isinstance(command, str):
        return {**training, "command": redact_command(command)}
    return training


# What a model archive made by `patchhash train` holds, and the classes its config may name:
# Keras's own (module keras or keras.*) and patchhash's registered Binarize layer.
_ARCHIVE_FILES = frozenset({"config.json", "metadata.json", "model.weights.h5"})
_ALLOWED_CUSTOM = {("pipeline.binarize", "patchhash>Binarize")}
_CODE_CLASSES = frozenset({"Lambda", "TFOpLambda", "__lambda__", "function"})
_MAX_CONFIG_BYTES = 16 << 20


def inspect_keras_archive(data: bytes, source: str) -> None:
    """Refuse a ``.keras`` archive that is not one ``patchhash train`` could have written.

    Only reads the archive's ``config.json`` (no Keras): a ``Lambda`` layer (Python code in the
    file), any class from a module other than Keras, or a registered custom object other than
    patchhash's ``Binarize`` layer raise :class:`ModelError` naming it.
    """
    fix = "patchhash only loads models made by `patchhash train`, in Keras safe mode (no Lambda layers, no custom code)"
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = set(archive.namelist())
        info = archive.getinfo("config.json") if "config.json" in names else None
        if info is None or info.file_size > _MAX_CONFIG_BYTES:
            raise ModelError(f"{source} is not a Keras model archive made by patchhash (no usable config.json); {fix}")
        config = json.loads(archive.read(info))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(
            f"{source} is not a Keras 3 model archive ({type(exc).__name__}); {fix}. Re-create the model with `patchhash train`."
        ) from None
    extra = sorted(names - _ARCHIVE_FILES)
    if extra:
        raise ModelError(f"{source} holds unexpected files ({', '.join(extra[:5])}); {fix}")
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        if "class_name" not in node and "module" not in node:
            continue
        cls, module, registered = node.get("class_name"), node.get("module"), node.get("registered_name")
        if cls in _CODE_CLASSES:
            raise ModelError(f"{source} contains a {cls} layer (Python code stored in the model), which patchhash refuses to load; {fix}")
        if _allowed_object(cls, module, registered):
            continue
        raise ModelError(
            f"{source} uses custom code (class {cls!r} from module {module!r}), which patchhash refuses to load; {fix}"
        )


def _allowed_object(cls: Any, module: Any, registered: Any) -> bool:
    """A serialised object Keras itself provides, or patchhash's registered Binarize layer."""
    if (module, registered) in _ALLOWED_CUSTOM:
        return True
    if module is None:  # Keras's own markers (__keras_tensor__, __tuple__...); an unregistered class has none either
        return isinstance(cls, str) and cls.startswith("__") and cls.endswith("__") and registered is None
    keras_module = isinstance(module, str) and (module == "keras" or module.startswith("keras."))
    return keras_module and (registered is None or (isinstance(registered, str) and ">" not in registered))


def read_model_file(url: str, card: ModelCard, storage_options: dict | None = None) -> bytes:
    """The bytes of ``model.keras`` of the model directory ``url``, checked against ``card``.

    Raises
    ------
    ModelError
        The file is missing, its sha256 differs from the card's (either was modified), or the
        archive holds code patchhash refuses to load (:func:`inspect_keras_archive`).
    """
    model_url = join_url(url, MODEL_FILE)
    fs, path = url_to_fs(model_url, storage_options)
    try:
        data = retry_call(f"reading {model_url}", fs.cat_file, path)
    except FileNotFoundError:
        raise ModelError(f"{url}: {MODEL_FILE} is missing; re-create the model with `patchhash train`.") from None
    digest = sha256_bytes(data)
    if digest != card.model_sha256:
        raise ModelError(
            f"{url}: {MODEL_FILE} does not match {CARD_FILE} (sha256 {digest[:12]}... vs {card.model_sha256[:12]}...): "
            "the model or its card was modified. Re-create the model with `patchhash train`."
        )
    inspect_keras_archive(data, model_url)
    return data


def resolve_model_url(model: str) -> str:
    """A built-in model name (``fashion-mnist``) -> its directory inside the package; URLs pass through."""
    if model in BUILTIN_MODELS:
        return str(resources.files("pipeline") / "models" / model)
    return str(model)


def read_card(model: str, storage_options: dict | None = None, verify: bool = True) -> ModelCard:
    """Read and validate the card of a model directory or built-in model name.

    With ``verify`` (the default) the model file is checked too (:func:`read_model_file`), so
    a missing, tampered or unsafe model is refused before anything uses it.
    """
    url = resolve_model_url(model)
    fs, path = url_to_fs(join_url(url, CARD_FILE), storage_options)
    try:
        raw = retry_call(f"reading {join_url(url, CARD_FILE)}", fs.cat_file, path)
    except FileNotFoundError:
        raise ModelError(
            f"{url}: no {CARD_FILE} here: not a patchhash model directory. "
            f"Pass a directory made by `patchhash train` or a built-in name ({', '.join(BUILTIN_MODELS)})."
        ) from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ModelError(
            f"{join_url(url, CARD_FILE)}: not valid JSON ({' '.join(str(exc).split())[:200]}). "
            "Re-create the model with `patchhash train`."
        ) from None
    card = ModelCard.from_json(data, source=join_url(url, CARD_FILE))
    if verify:
        read_model_file(url, card, storage_options)
    return card
