"""Models whose card indexes each image in several placements (issue 19, overlaid text): the
card's ``"placements"``, the conversion that stacks them, the encoder, query copies, the re-rank
that scores the better placement from the union of each placement's shortlist, and whole jobs.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_canonical import flattened, icon, png

from pipeline.buckets import build_bucket_map
from pipeline.rerank import rerank_search
from storage import ImageSpec, InputRules, ModelError
from storage.images import convert_batch, decode_and_convert

AS_IS = InputRules(background="black-luma", centre="none", mirror="mean")


def with_placements(tmp_path, placements=(AS_IS,), penalty=40, model="icons-photos"):
    """A copy of ``model`` whose card names ``placements`` (the shipped ``icons-photos``' own by default)."""
    from pipeline.modelcard import resolve_model_url

    folder = tmp_path / f"placements-{len(placements)}"
    shutil.copytree(resolve_model_url(model), folder)
    card = json.loads((folder / "card.json").read_text())
    card["placements"] = [rules.to_json() for rules in placements]
    card["placement_penalty"] = penalty
    (folder / "card.json").write_text(json.dumps(card))
    return str(folder)


def test_the_card_names_the_placements_and_the_grid_holds_them(tmp_path):
    from pipeline.modelcard import ModelCard, read_card

    card = read_card(with_placements(tmp_path))
    assert card.placements == (AS_IS,) and card.placement_penalty == 40
    assert card.grid == (14, 7) and card.image_spec.shape == (56, 28, 1)
    assert card.image_spec.each()[1] == ImageSpec(28, 28, 1, rules=AS_IS)
    d = card.to_json()
    assert d["grid"] == [14, 7] and d["placements"] == [AS_IS.to_json()]
    assert ModelCard.from_json(d).placements == (AS_IS,)
    assert read_card("icons-photos").placements == (AS_IS,) and read_card("icons-photos").placement_penalty == 40  # shipped
    assert "placements" not in read_card("fashion-mnist").to_json()  # one placement: the card as before
    for bad, message in (([{"centre": "middle"}], "centre must be one of"), ("as-is", "placements must be a list")):
        with pytest.raises(ModelError, match=message):
            ModelCard.from_json({**d, "placements": bad})
    with pytest.raises(ModelError, match="placement_penalty must be an integer from 0 to a placement's 1568 bits"):
        ModelCard.from_json({**d, "placement_penalty": 1568})


def test_an_image_converts_to_its_placements_one_below_the_other(tmp_path):
    from pipeline.modelcard import read_card

    spec = read_card(with_placements(tmp_path)).image_spec
    first, second = spec.each()
    for seed, size in enumerate((28, 48, 200)):
        data = png(flattened(icon(seed, size), (255, 255, 255)))
        both = decode_and_convert(data, "i.png", spec)
        assert np.array_equal(both, np.concatenate([decode_and_convert(data, "i.png", one) for one in (first, second)]))
        assert not np.array_equal(both[:28], both[28:])  # centred and as is: not the same pixels
    arrays = np.stack([np.asarray(flattened(icon(seed, 40), (0, 0, 0))) for seed in range(3)])
    pixels, ok = convert_batch(arrays, spec)
    assert pixels.shape == (3, 56, 28, 3 if spec.channels == 3 else 1) and ok.all()
    assert np.array_equal(pixels[:, 28:], convert_batch(arrays, second)[0])


def test_the_encoder_encodes_each_placement_with_the_same_weights(tmp_path):
    from pipeline.encode import load_encoder

    two, one = load_encoder(with_placements(tmp_path)), load_encoder(with_placements(tmp_path, placements=(), penalty=0))
    spec = two.card.image_spec
    pixels = np.stack([decode_and_convert(png(icon(seed, 48)), "i.png", spec) for seed in range(5)])
    codes = two.encode(pixels)
    assert codes.shape == (5, 14, 7)
    assert np.array_equal(codes[:, :7], one.encode(pixels[:, :28])) and np.array_equal(codes[:, 7:], one.encode(pixels[:, 28:]))
    with pytest.raises(ValueError, match="expected images of shape"):
        two.encode(pixels[:, :28])


def test_query_copies_move_and_mirror_each_placement_on_its_own():
    from pipeline.shifts import query_copies, shifted_copies

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 2 * 10, 10, 1), dtype=np.uint8)
    copies = query_copies(pixels, 1, 1, flip=True, places=2)
    top, bottom = (shifted_copies(part, 1, 1) for part in (pixels[:, :10], pixels[:, 10:]))
    mirrored = [shifted_copies(part[:, :, ::-1], 1, 1) for part in (pixels[:, :10], pixels[:, 10:])]
    expected = np.concatenate([np.concatenate([top, bottom], axis=1).reshape(3, 9, 20, 10, 1),
                               np.concatenate(mirrored, axis=1).reshape(3, 9, 20, 10, 1)], axis=1).reshape(-1, 20, 10, 1)
    assert np.array_equal(copies, expected)


def test_each_placement_shortlists_on_its_own():
    """Eight decoys share 5 of the 8 positions with the query (3 in the first placement, 2 in the
    second); the original only the second placement's 4. One shortlist over the whole grid
    holds the decoys alone; a shortlist per placement holds the original too, and it scores
    the best: all 64 bits of its second placement equal."""
    rng = np.random.default_rng(1)
    bits, n_decoys = 16, 8
    query = rng.integers(0, 2**bits, 8, dtype=np.uint32)
    far = lambda n: rng.integers(0, 2**bits, (n, 8), dtype=np.uint32) ^ np.uint32(0xAAAA)  # noqa: E731
    decoys = far(n_decoys)
    decoys[:, [0, 1, 2, 4, 5]] = query[[0, 1, 2, 4, 5]]
    original = far(1)
    original[0, 4:] = query[4:]
    codes = np.concatenate([decoys, original, far(20)])
    ids = np.arange(len(codes))
    bmap = build_bucket_map(codes, ids, positional=True)
    search = dict(threshold=0, bits=bits, k=3, shortlist=1, id_range=(0, len(codes)), method="scan")
    two = rerank_search(query[None], bmap, codes, placements=2, penalty=0, **search)
    assert two.ids[0, 0] == n_decoys and two.scores[0, 0] == 4 * bits
    whole = rerank_search(query[None], bmap, codes, **search)
    assert n_decoys not in whole.ids[0]


def test_jobs_with_two_placements_find_each_image_as_itself(make_index, fmnist_train, client, tmp_path):
    """Index and query jobs with a model of two placements: each indexed image is its own first
    hit, scoring a whole placement's bits (1,568: the better placement, not the sum)."""
    import pyarrow.parquet as pq
    import zarr

    from workflows.query import QuerySettings, query

    images = fmnist_train[:120]
    _, index_url = make_index(images, shard_size=50, partitions=2, model=with_placements(tmp_path))
    assert zarr.open_array(f"{index_url}/codes", mode="r").shape == (120, 14, 7)
    np.save(tmp_path / "queries.npy", images[:30])
    out = str(tmp_path / "results.parquet")
    query(index_url, str(tmp_path / "queries.npy"), out, QuerySettings(k=3), client=client)
    table = pq.read_table(out).to_pydict()
    first = {q: (i, s) for q, r, i, s in zip(table["query_id"], table["rank"], table["image_id"], table["score"]) if r == 1}
    assert all(first[q] == (q, 1568.0) for q in range(30)), first
