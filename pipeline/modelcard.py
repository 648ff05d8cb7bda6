"""Model directories: ``model.keras`` + ``card.json``, validated and hash-checked.

The card records everything a consumer needs without loading Keras (geometry, code dtype,
bit order, normalisation) and how the model was made (data, command, epochs, loss, time).
``model_sha256`` binds the card to the weights: a card that does not match its model file is
refused, and an index records it to refuse being searched or extended with another model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from pipeline.model import ModelConfig
from pipeline.normalize import Normalization
from pipeline.packing import code_dtype
from storage import ModelError, join_url, url_to_fs

__all__ = [
    "CARD_FORMAT",
    "CARD_VERSION",
    "MODEL_FILE",
    "CARD_FILE",
    "BUILTIN_MODELS",
    "ModelCard",
    "resolve_model_url",
    "read_card",
    "sha256_bytes",
]

CARD_FORMAT = "patchhash-model"
CARD_VERSION = 1
MODEL_FILE = "model.keras"
CARD_FILE = "card.json"
BUILTIN_MODELS = ("fashion-mnist", "fashion-mnist-unsupervised")


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

    @property
    def bits(self) -> int:
        return self.config.bits

    @property
    def grid(self) -> tuple[int, int]:
        return self.config.grid

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
            "grid": list(cfg.grid),
            "input_shape": list(cfg.input_shape),
            "code_dtype": self.code_dtype.name,
            "bit_order": "little: bottleneck unit j is bit j (code = sum(bit_j << j))",
            "architecture": cfg.to_dict(),
            "normalization": self.normalization.to_json(),
            "model_file": MODEL_FILE,
            "model_sha256": self.model_sha256,
            "training": self.training,
            "created": self.created,
            "software": self.software,
        }

    def summary(self) -> dict[str, Any]:
        """The card without the bulky normalisation mean (for ``info`` and manifests)."""
        d = self.to_json()
        d["normalization"] = {"mean": f"<{len(self.normalization.mean.ravel())} per-pixel values>", "std": self.normalization.std}
        return d

    @classmethod
    def from_json(cls, d: Any, source: str = "card.json") -> "ModelCard":
        try:
            if not isinstance(d, dict) or d.get("format") != CARD_FORMAT:
                raise ValueError(f"not a patchhash model card (format should be {CARD_FORMAT!r})")
            if d.get("format_version") != CARD_VERSION:
                raise ValueError(
                    f"card format_version {d.get('format_version')!r} is not supported (this patchhash reads {CARD_VERSION}); upgrade patchhash"
                )
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
            )
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ModelError(f"{source}: invalid model card: {detail}. Re-create the model with `patchhash train`.") from None


def resolve_model_url(model: str) -> str:
    """A built-in model name (``fashion-mnist``) -> its directory inside the package; URLs pass through."""
    if model in BUILTIN_MODELS:
        return str(resources.files("pipeline") / "models" / model)
    return str(model)


def read_card(model: str, storage_options: dict | None = None) -> ModelCard:
    """Read and validate the card of a model directory or built-in model name."""
    url = resolve_model_url(model)
    fs, path = url_to_fs(join_url(url, CARD_FILE), storage_options)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        raise ModelError(
            f"{url}: no {CARD_FILE} here: not a patchhash model directory. "
            f"Pass a directory made by `patchhash train` or a built-in name ({', '.join(BUILTIN_MODELS)})."
        ) from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ModelError(f"{join_url(url, CARD_FILE)}: not valid JSON ({exc}).") from None
    return ModelCard.from_json(data, source=join_url(url, CARD_FILE))
