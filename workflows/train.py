"""``patchhash train``: sample a corpus, train an autoencoder, save a model directory."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from pipeline.model import PRESETS, ModelConfig
from pipeline.modelcard import ModelCard
from storage import ConfigError, CorpusError, ImageSpec, InputRules, open_corpus
from workflows.progress import progress

__all__ = ["train", "read_sample"]

log = logging.getLogger(__name__)


def read_sample(corpus, spec: ImageSpec, sample: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Read ``sample`` images drawn without replacement (all when ``None``).

    Returns the pixels, the image ids (rows of ``corpus``) they came from, and the number of
    unreadable images skipped.
    """
    n = len(corpus)
    if sample is None or sample >= n:
        rows = np.arange(n)
    else:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    # contiguous runs of rows become one read each
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(rows, breaks) if len(r)]
    parts, ids, errors = [], [], 0
    with ThreadPoolExecutor(max_workers=4) as pool, progress(len(rows), "read", "img", leave=False) as bar:
        for data in pool.map(lambda run: corpus.read(spec, *run), runs):
            parts.append(data.pixels)
            ids.append(data.ids)
            errors += len(data.errors)
            for err in data.errors[:3]:
                log.warning("unreadable image %s: %s", err.uri, err.reason)
            bar.update(len(data.pixels) + len(data.errors))
    pixels = np.concatenate(parts) if parts else np.empty((0, spec.height, spec.width, spec.channels), np.uint8)
    return pixels, (np.concatenate(ids) if ids else np.empty(0, np.int64)), errors


def train(
    corpus: str,
    out: str,
    *,
    preset: str = "fashion-mnist",
    bits: int | None = None,
    patch: int | None = None,
    stride: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
    stem: tuple[int, ...] | None = None,
    epochs: int = 5,
    batch_size: int = 128,
    labels: str | None = None,
    label_weight: float = 3.0,
    shift_weight: float = 0.0,
    max_shift: float = 2.0,
    brightness_weight: float = 0.0,
    max_brightness: float = 0.3,
    background: str = "black",
    centre: str = "none",
    mirror: str = "none",
    levels: str = "none",
    sample: int | None = None,
    seed: int = 0,
    name: str | None = None,
    command: str | None = None,
    storage_options: dict | None = None,
) -> ModelCard:
    """Train a model on (a sample of) ``corpus`` and save it to ``out``.

    The geometry starts from ``preset`` and is overridden by any of ``bits``, ``patch``,
    ``stride``, ``input_shape``, ``stem`` (``()`` for none). ``labels`` (IDX1, ``.npy`` or CSV ``uri,label``; one per
    corpus image) makes the training label-aware with weight ``label_weight``;
    ``shift_weight`` > 0 makes it shift-consistent for shifts up to ``max_shift`` pixels, and
    ``brightness_weight`` > 0 for brightness changes up to ``max_brightness`` (a share; see
    :mod:`pipeline.train`). ``background``, ``centre``, ``mirror`` and ``levels`` are the canonical-form rules
    (:class:`storage.InputRules`) the images go through, in training and in every later index and
    query with this model. ``command`` is recorded in the card (the CLI passes its own
    command line). Returns the saved model's card.
    """
    from pipeline.train import TrainSettings, save_model, train_autoencoder

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if sample is not None and sample < 2:
        raise ConfigError(f"--sample must be at least 2, got {sample}")
    overrides = {k: v for k, v in dict(bits=bits, patch=patch, stride=stride, input_shape=input_shape, stem=stem).items()
                 if v is not None}
    try:
        config: ModelConfig = replace(PRESETS[preset], **overrides)
        settings = TrainSettings(epochs=epochs, batch_size=batch_size, seed=seed, label_weight=label_weight,
                                 shift_weight=shift_weight, max_shift=max_shift,
                                 brightness_weight=brightness_weight, max_brightness=max_brightness)
        rules = InputRules(background=background, centre=centre, mirror=mirror, levels=levels)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    spec = ImageSpec(*config.input_shape, rules=rules)
    source = open_corpus(corpus, storage_options)
    log.info("corpus %s: %d images (%s)", corpus, len(source), source.kind)
    all_labels = None
    if labels is not None:
        from storage import read_labels

        all_labels = read_labels(labels, storage_options, uris=source.uris())
    pixels, ids, errors = read_sample(source, spec, sample, seed)
    if len(pixels) < 2:
        raise CorpusError(f"{corpus}: only {len(pixels)} readable images; training needs at least 2")
    if all_labels is not None and len(np.unique(all_labels[ids])) < 2:
        raise CorpusError(f"{labels}: the training images carry fewer than 2 distinct labels; label-aware training needs 2 or more")
    log.info("training %s on %d images (%d unreadable skipped), %d epochs", config, len(pixels), errors, epochs)
    with progress(epochs, "train", "epoch") as bar:
        def on_epoch(epoch: int, logs: dict) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}")
            log.info("epoch %d/%d loss %.5f", epoch + 1, epochs, logs.get("loss", float("nan")))

        result = train_autoencoder(pixels, config, settings, on_epoch=on_epoch,
                                   labels=None if all_labels is None else all_labels[ids])
    training = {
        "corpus": corpus,
        "n_unreadable": int(errors),
        "sample": sample,
        "preset": preset,
        "labels": labels,
        "command": command,
    }
    return save_model(out, name or preset, config, result, training, storage_options, input_rules=rules)
