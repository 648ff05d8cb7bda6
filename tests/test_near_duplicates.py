"""Reverse image search: altered copies of indexed images find the original at the top.

Real Fashion-MNIST images, the shipped default model, the default query mode through the
whole job. Each copy is written as an image file (PNG, or JPEG for re-encoding) and queried
as a folder, as a user would.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from workflows.index import IndexSettings, index
from workflows.query import QuerySettings, query

N_INDEX = 3000
ORIGINALS = np.arange(7, N_INDEX, 75)  # 40 indexed images spread over the index


@pytest.fixture(scope="module")
def shipped_index(tmp_path_factory, client, fmnist_train):
    root = tmp_path_factory.mktemp("dup")
    np.save(root / "corpus.npy", fmnist_train[:N_INDEX, :, :, 0])
    url = str(root / "idx")
    index(str(root / "corpus.npy"), url, "fashion-mnist", IndexSettings(shard_size=1000, partitions=2), client=client)
    return url


def shifted(img, rng):
    """Moved one pixel diagonally at the model's own 28x28 resolution (background fills in)."""
    dy, dx = rng.choice([-1, 1], 2)
    out = np.roll(img, (dy, dx), axis=(0, 1))
    out[0 if dy > 0 else -1, :] = 0
    out[:, 0 if dx > 0 else -1] = 0
    return out


def shifted_large(img, rng):
    """A 112x112 copy moved by 2 pixels: what a slightly shifted photo looks like to the model."""
    big = np.asarray(Image.fromarray(img).resize((112, 112), Image.BILINEAR))
    dy, dx = rng.choice([-2, 2], 2)
    return np.roll(big, (dy, dx), axis=(0, 1))


def noisier(img, rng):
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def dimmer(img, rng):
    return (img * 0.75).astype(np.uint8)


# name: (alteration, file format, query settings)
ALTERATIONS = {
    "gaussian noise sigma 12": (noisier, "png", QuerySettings(k=3)),
    "dimmed to 75%": (dimmer, "png", QuerySettings(k=3)),
    "re-encoded as JPEG q=70": (lambda img, rng: img, "jpeg", QuerySettings(k=3)),
    "112x112 copy shifted by 2 pixels": (shifted_large, "png", QuerySettings(k=3)),
    "28x28 copy shifted by 1 pixel, --shift-radius 1": (shifted, "png", QuerySettings(k=3, shift_radius=1)),
}


@pytest.mark.parametrize("name", list(ALTERATIONS))
def test_altered_copy_finds_its_original_first(client, shipped_index, fmnist_train, tmp_path, name):
    alter, fmt, settings = ALTERATIONS[name]
    rng = np.random.default_rng(0)
    folder = tmp_path / "copies"
    folder.mkdir()
    for n, i in enumerate(ORIGINALS):
        copy = alter(fmnist_train[i, :, :, 0].astype(np.float64) if name.startswith("gaussian") else fmnist_train[i, :, :, 0], rng)
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(copy, np.uint8)).save(buffer, format=fmt, **({"quality": 70} if fmt == "jpeg" else {}))
        (folder / f"{n:03d}.{fmt}").write_bytes(buffer.getvalue())
    out = tmp_path / "r.parquet"
    query(shipped_index, str(folder), str(out), settings, client=client)
    table = pq.read_table(out).to_pydict()
    top = {q: i for q, r, i in zip(table["query_id"], table["rank"], table["image_id"]) if r == 1}
    found = np.array([top.get(n) == i for n, i in enumerate(ORIGINALS)])
    assert found.all(), f"{name}: {int((~found).sum())} of {len(found)} copies did not find their original first"
