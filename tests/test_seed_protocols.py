"""The seeds' systems in ``patchhash evaluate``: seed 004's radius protocol and seeds 002/003's ae-annoy."""

from __future__ import annotations

import gzip
import sys
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from corpus_helpers import FASHION_TRAIN_LABELS
from smoke_runs import ROOT, RUN_DIR, smoke_run

from pipeline.baselines import lsh_codes
from pipeline.radius import TOP, as_code_words, radius_protocol
from storage import ConfigError, MissingExtraError
from storage.runlog import read_runs
from workflows.evaluate import EvaluateSettings, evaluate, render_table


def _seed_004(index_bits, query_bits, index_x, query_x, index_labels, query_labels, radii):
    """Seed 004's loop, as its tutorial writes it: enumerate the bins within each radius of a
    bit-vector hash table, rank the candidates by cosine distance, count the first 10."""
    n_bits = index_bits.shape[1]
    powers = 1 << np.arange(n_bits - 1, -1, -1)
    table = defaultdict(list)
    for i, b in enumerate(index_bits.dot(powers)):
        table[int(b)].append(i)
    unit = index_x / np.linalg.norm(index_x, axis=1, keepdims=True)
    precision = {r: [] for r in radii}
    answered = {r: 0 for r in radii}
    for bits, x, label in zip(query_bits, query_x, query_labels):
        found = set()
        for r in range(max(radii) + 1):
            for flip in combinations(range(n_bits), r):
                near = bits.copy()
                near[list(flip)] = ~near[list(flip)]
                found.update(table.get(int(near.dot(powers)), []))
            if r in radii and found:
                cands = np.array(sorted(found))
                cosine = 1 - unit[cands] @ (x / np.linalg.norm(x))
                order = cands[np.lexsort((cands, cosine))][:TOP]
                precision[r].append((index_labels[order] == label).sum() / TOP)
                answered[r] += 1
    return {r: (np.mean(precision[r]) if precision[r] else 0.0, answered[r] / len(query_bits)) for r in radii}


def _pack(bits: np.ndarray) -> np.ndarray:
    padded = np.zeros((len(bits), 64), np.uint8)
    padded[:, :bits.shape[1]] = bits
    return np.packbits(padded, axis=1, bitorder="little").view("<u8").astype(np.uint64)


def test_radius_protocol_finds_what_seed_004s_bin_enumeration_finds():
    rng = np.random.default_rng(4)
    n_bits, radii = 12, (0, 1, 2, 3)
    index_x, query_x = rng.random((400, 30)), rng.random((25, 30))
    index_labels, query_labels = rng.integers(0, 3, 400), rng.integers(0, 3, 25)
    index_bits = rng.random((400, n_bits)) < 0.5
    query_bits = index_bits[rng.integers(0, 400, 25)] ^ (rng.random((25, n_bits)) < 0.15)
    expected = _seed_004(index_bits, query_bits, index_x, query_x, index_labels, query_labels, radii)
    # the bit vector's first bit is the seed's most significant; the order of bits does not change distances
    got = radius_protocol("lsh", as_code_words(_pack(index_bits)), as_code_words(_pack(query_bits)), index_x, query_x,
                          index_labels, query_labels, radii)
    assert [r.radius for r in got] == list(radii)
    for r in got:
        assert (r.precision, r.answered) == pytest.approx(expected[r.radius])
    assert got[0].answered < 1 and got[-1].answered == 1  # some queries find nothing at radius 0, all do at 3
    assert all(a.mean_candidates <= b.mean_candidates for a, b in zip(got, got[1:]))


def test_grid_codes_count_a_position_within_r_and_skip_big_buckets():
    # 6 images with 2 positions of 8-bit codes; the query is image 0's grid with one bit changed at position 1
    index_codes = np.array([[1, 16], [1, 17], [1, 48], [1, 200], [2, 17], [1, 255]], np.uint32)
    query = np.array([[1, 18]], np.uint32)
    x = np.eye(6, 6)[[0, 1, 2, 3, 4, 5]] + 0.01
    labels = np.array([0, 0, 1, 1, 0, 1])

    def candidates(r, max_bucket):
        (res,) = radius_protocol("grid", as_code_words(index_codes), as_code_words(query), x, x[:1], labels, labels[:1], (r,),
                                 max_bucket=max_bucket)
        return res.mean_candidates

    # position 0's code 1 is shared by 5 images: with it, all but image 4 (code 2) match at radius 0
    assert candidates(0, None) == 5
    # a bucket of more than 4 images is skipped: then only position 1 (and image 4's own bucket at 0) count.
    # 18 = 0b10010 is 1 bit from 16 (image 0), 2 from 17 (images 1, 4) and 48 (image 2), 5 from 200, 6 from 255
    assert candidates(0, 4) == 0
    assert candidates(1, 4) == 1
    assert candidates(2, 4) == 4
    assert candidates(6, 4) == 6


def test_ae_annoy_trains_seed_002s_network_and_finds_indexed_images(fmnist_train):
    pytest.importorskip("annoy")
    from pipeline.ae_annoy import AeAnnoy, AeAnnoySettings

    pixels = fmnist_train[:300]
    model = AeAnnoy.build(pixels, AeAnnoySettings(epochs=1, batch_size=100))
    assert model.dim == 128  # 4x4x8, the seed's latent
    assert model.encoder.output_shape == (None, 128)
    assert model.build_seconds >= model.train_seconds > 0
    found = model.search(pixels[:50], 5)
    assert found.shape == (50, 5)
    assert (found[:, 0] == np.arange(50)).mean() >= 0.95  # an indexed image is its own nearest latent
    assert model.search(pixels[:2], 400).tolist()[0][-1] == -1  # fewer images than k: -1 past the last


def test_ae_annoy_without_annoy_names_the_extra(monkeypatch, fmnist_train):
    from pipeline.ae_annoy import AeAnnoy

    monkeypatch.setitem(sys.modules, "annoy", None)
    with pytest.raises(MissingExtraError, match=r"patchhash\[annoy\]"):
        AeAnnoy.build(fmnist_train[:10])


@pytest.mark.parametrize("kwargs, match", [
    ({"baselines": ("ae-anoy",)}, "unknown baseline 'ae-anoy'.*ae-annoy"),
    ({"radii": (-1,)}, "radii"),
    ({"ae_epochs": 0}, "ae-epochs"),
])
def test_settings_are_checked(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EvaluateSettings(**kwargs)


def test_evaluate_runs_the_seeds_protocols(client, make_index, fmnist_train, tmp_path):
    pytest.importorskip("annoy")
    with gzip.open(FASHION_TRAIN_LABELS) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    np.save(tmp_path / "labels.npy", labels[:500])
    np.save(tmp_path / "queries.npy", fmnist_train[3000:3040, :, :, 0])
    np.save(tmp_path / "query_labels.npy", labels[3000:3040])
    _, url = make_index(fmnist_train[:500], shard_size=250, partitions=1)
    settings = EvaluateSettings(ks=(10,), modes=("default",), baselines=("ae-annoy", "lsh-16"), radii=(0, 2, 4), map_k=10,
                                ae_epochs=1)
    result = evaluate(url, str(tmp_path / "queries.npy"), str(tmp_path / "labels.npy"), str(tmp_path / "query_labels.npy"),
                      settings=settings, client=client)
    by_name = {m.name: m for m in result.methods}
    assert list(by_name) == ["default t=3", "ae-annoy", "lsh-16"]
    # a mode's build time is the index's index runs, from its run log
    runs = [r for r in read_runs(url, last=None) if r["command"] == "index" and r["status"] == "ok"]
    assert by_name["default t=3"].build_seconds == pytest.approx(sum(r["seconds"] for r in runs)) and runs
    annoy = by_name["ae-annoy"]
    assert annoy.build_seconds > 0 and annoy.mean_candidates == 10 and annoy.precision[10] > 0.3
    # radius rows: the index's codes, then LSH's, each at every radius
    assert [(r.method.split(" ")[0], r.radius) for r in result.radius] == [
        ("tiny", 0), ("tiny", 2), ("tiny", 4), ("lsh-16", 0), ("lsh-16", 2), ("lsh-16", 4)]
    mean = fmnist_train[:500].reshape(500, -1).mean(axis=0)
    expected = radius_protocol("lsh-16", as_code_words(lsh_codes(fmnist_train[:500], 16, mean)),
                               as_code_words(lsh_codes(fmnist_train[3000:3040], 16, mean)), fmnist_train[:500],
                               fmnist_train[3000:3040], labels[:500], labels[3000:3040], (0, 2, 4))
    assert result.radius[3:] == expected
    codes = result.radius[:3]
    assert all(0 <= r.precision <= 1 and 0 <= r.answered <= 1 for r in codes)
    assert codes[0].mean_candidates <= codes[1].mean_candidates <= codes[2].mean_candidates < 500
    table = render_table(result)
    assert "seed 004's protocol" in table and "build s" in table and "ae-annoy" in table


@smoke_run("seeds.py", "--work", RUN_DIR, "--workers", "1")
def test_seeds_table_smoke(smoke):
    pytest.importorskip("annoy")
    figures, stdout = smoke
    seeds = [r["seed"] for r in figures["rows"]]
    assert seeds == ["000", "-", "001", "002/003", "004", "-"]
    for r in figures["rows"]:
        assert 0 <= r["p10"] <= 1 and 0 <= r["map100"] <= 1 and r["queries_per_s"] > 0
    default, knn = figures["rows"][1], figures["rows"][5]
    assert default["p10"] > 0.5 and default["build_s"] > 0 and knn["p10"] > 0.5
    methods = list(dict.fromkeys(r["method"] for r in figures["radius"]))
    assert methods == ["fashion-mnist codes (7x7 x 32 bits)", "lsh-32", "seed-001 codes (1x1 x 17 bits)"]
    for m in methods:
        rows = [r for r in figures["radius"] if r["method"] == m]
        assert [r["radius"] for r in rows] == list(range(11))
        assert all(a["answered"] <= b["answered"] and a["mean_candidates"] <= b["mean_candidates"] for a, b in zip(rows, rows[1:]))
    assert "| system | seed | P@10 | mAP@100 | queries/s | build s |" in stdout and "seed 004's protocol" in stdout


def test_colour_icons_corpus_is_each_distinct_32px_icon_labelled_by_its_context(tmp_path):
    """benchmarks/colour_icons.py's corpus, on a made-up tree of both theme layouts (its full run
    trains the cifar preset for minutes; the training, indexing and evaluation it calls are the
    library's, tested elsewhere)."""
    from PIL import Image

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from colour_icons import icons, split, write_csv
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    themes = tmp_path / "usr/share/icons"
    rng = np.random.default_rng(0)

    def save(path, size=32, pixels=None):
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 4), np.uint8) if pixels is None else pixels
        Image.fromarray(pixels).save(path)
        return pixels

    for i in range(12):
        save(themes / f"A/32x32/apps/app{i}.png")  # <theme>/32x32/<context>/<name>.png
        save(themes / f"B/actions/32/act{i}.png")  # <theme>/<context>/32/<name>.png
    twin = save(themes / "A/32x32/mimes/doc.png")
    save(themes / "B/mimes/32/doc-copy.png", pixels=twin)  # the same pixels: kept once
    save(themes / "A/48x48/apps/big.png", size=48)  # another size: left out
    save(themes / "A/32x32/apps/odd.png", size=30)  # in a 32x32 folder but not 32 px: left out
    (themes / "A/32x32/apps/link.png").symlink_to(themes / "A/32x32/apps/app0.png")  # a link: left out
    found = icons(tmp_path)
    assert sorted(c for _, c in found) == ["actions"] * 12 + ["apps"] * 12 + ["mimetypes"]  # elementary's "mimes"
    index_rows, query_rows = split(found, min_class=5)
    assert not {p.stem for p, _ in index_rows} & {p.stem for p, _ in query_rows}  # split by name
    assert len(index_rows) + len(query_rows) == 24 and query_rows  # the one-icon context dropped
    contexts = sorted({c for _, c in index_rows + query_rows})
    text = Path(write_csv(query_rows, contexts, tmp_path / "q.csv")).read_text()
    assert text.splitlines()[0] == "uri,label" and all(line.rsplit(",", 1)[1] in ("0", "1") for line in text.splitlines()[1:])
