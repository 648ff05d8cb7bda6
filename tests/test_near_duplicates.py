"""Reverse image search: altered copies of indexed images find the original at the top.

Real Fashion-MNIST images, the shipped default model, the default query mode through the
whole job. Each copy is written as an image file (PNG, or JPEG for re-encoding) and queried
as a folder, as a user would. The alterations live in benchmarks/near_duplicates.py, which
prints the same figures for docs/QUALITY.md. A copy moved by a pixel at the model's
resolution is moved back by the card's input rule ``centre: box`` (39 of 40 first with default
settings, 6 before the rule; 0.90 of 1,000 among 60,000 images, benchmarks/fashion_shifts.py); a
larger copy moved by half a pixel at 28x28 needs half-pixel query shifts (default settings find
35 of 40).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from near_duplicates import N_INDEX, found_first, write_copies  # noqa: E402

from workflows.query import QuerySettings, query  # noqa: E402


@pytest.fixture(scope="module")
def shipped_index(make_index, fmnist_train):
    return make_index(fmnist_train[:N_INDEX], shard_size=1000, partitions=2, model="fashion-mnist")[1]


@pytest.mark.parametrize("name, settings, missed", [
    ("gaussian noise sigma 12", QuerySettings(k=3), 0),
    # the input rule centre: box centres the box of what is not black, and a pixel of value 1
    # that dimming takes to 0 can move it: one copy in 40 (docs/QUALITY.md, "Near-duplicates")
    ("dimmed to 75%", QuerySettings(k=3), 1),
    ("re-encoded as JPEG q=70", QuerySettings(k=3), 0),
    # moved back by the box rule; one copy in 40 still ranks another garment first (the
    # weights trained with the rule; 40 with those before, which lost precision by label)
    ("28x28 copy shifted by 1 pixel", QuerySettings(k=3), 1),
    ("28x28 copy shifted by 1 pixel", QuerySettings(k=3, shift_radius=1), 0),
    ("112x112 copy shifted by 2 pixels", QuerySettings(k=3, shift_radius=1, shift_step=0.5), 0),
    ("28x28 copy shifted by 1 pixel", QuerySettings(k=3, shift_radius=1, shift_step=0.5), 0),
])
def test_altered_copy_finds_its_original_first(client, shipped_index, fmnist_train, tmp_path, name, settings, missed):
    write_copies(fmnist_train, name, tmp_path / "copies")
    out = tmp_path / "r.parquet"
    query(shipped_index, str(tmp_path / "copies"), str(out), settings, client=client)
    found = found_first(str(out))
    assert (~found).sum() <= missed, f"{name}: {int((~found).sum())} of {len(found)} copies did not find their original first"
