"""Seed 001's system run by patchhash's own commands (issue 21): the ``seed-001`` preset is its
dense autoencoder (one 17-bit code per image), indexed and queried like any model."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from workflows.index import IndexSettings, index
from workflows.query import QuerySettings, query
from workflows.train import train


def test_seed_001_preset_trains_indexes_and_finds_each_image(client, fmnist_train, tmp_path):
    images = fmnist_train[:300, :, :, 0]
    np.save(tmp_path / "corpus.npy", images)
    np.save(tmp_path / "queries.npy", images[:30])
    card = train(str(tmp_path / "corpus.npy"), str(tmp_path / "model"), preset="seed-001", epochs=1, batch_size=64)
    assert (card.grid, card.bits) == ((1, 1), 17)
    index(str(tmp_path / "corpus.npy"), str(tmp_path / "index"), str(tmp_path / "model"), IndexSettings(), client=client)
    for mode in ("seed", "default"):
        out = tmp_path / f"{mode}.parquet"
        query(str(tmp_path / "index"), str(tmp_path / "queries.npy"), str(out), QuerySettings(mode=mode, k=300), client=client)
        table = pq.read_table(out).to_pydict()
        hits: dict[int, list[tuple[int, int, int]]] = {}
        for q, rank, image, score in zip(table["query_id"], table["rank"], table["image_id"], table["score"]):
            hits.setdefault(q, []).append((rank, image, score))
        for q in range(30):  # every image is within radius 0 of itself: always a hit, with the top score
            ranked = sorted(hits[q])
            best = ranked[0][2]
            assert any(image == q and score == best for _, image, score in ranked), (mode, q)
