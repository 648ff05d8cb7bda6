"""Fashion-MNIST images moved by one pixel: is the original among the first 10, and at what cost?

Indexes the 60,000 train images twice, with the shipped ``fashion-mnist`` model (input rule
``centre: box``, its weights trained with it) and with the same weights behind a card without
the rule (``centre: none``), and, against each index, in one run:

* queries ``--queries`` train images, each moved by one pixel in one of the 8 directions
  (black coming in, what falls off the edge lost), through the whole ``patchhash query`` job
  with default settings: recall@1 and recall@10 of the original (without the rule also with
  ``--shift-radius 1``, the earlier answer to moves, 9 searches per query); and the same images
  dimmed to 75%, with Gaussian noise (sigma 12) and re-encoded as JPEG (quality 70), the copies
  of ``near_duplicates.py``, to show what the rule costs where nothing moved;
* evaluates the 10,000 test images by label (``patchhash evaluate``, default mode): P@10,
  mAP@100 and the job's ms/query, measured ``--repeats`` times, alternating the two indexes.

    python benchmarks/fashion_shifts.py [--queries 1000] [--repeats 3]
    python benchmarks/fashion_shifts.py --smoke      # 2000 indexed images, 50 moved copies

Figures in ``benchmarks/results/fashion_shifts.json``; docs/QUALITY.md ("Moves of
Fashion-MNIST images").
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, add_smoke_and_out_json, parser, write_json

from storage.canonical import moved

MOVES = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


def moved_queries(images: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` of ``images`` drawn at random, each moved one pixel in a random direction: (ids, copies)."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(len(images), n, replace=False))
    moves = rng.integers(0, len(MOVES), n)
    return ids, np.stack([moved(images[i], *MOVES[m]) for i, m in zip(ids, moves)])


def jpeg70(image: np.ndarray, rng=None) -> np.ndarray:
    """``image`` (``uint8 [h, w]``) saved as JPEG at quality 70 and decoded again."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="jpeg", quality=70)
    return np.asarray(Image.open(buffer))


def recall(results: str, originals: np.ndarray) -> dict[str, float]:
    """Recall@1 and @10 of ``originals`` (per query id) in a results file."""
    import pyarrow.parquet as pq

    table = pq.read_table(results, columns=["query_id", "rank", "image_id"]).to_pydict()
    hits = {}
    for q, r, i in zip(table["query_id"], table["rank"], table["image_id"]):
        if i == originals[q]:
            hits[q] = r
    ranks = np.array([hits.get(q, 0) for q in range(len(originals))])
    return {"recall@1": float(np.mean(ranks == 1)), "recall@10": float(np.mean((ranks >= 1) & (ranks <= 10)))}


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--queries", type=int, default=1000, help="moved copies queried")
    ap.add_argument("--repeats", type=int, default=3, help="timed evaluations per index (median reported)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "patchhash-fashion-shifts"),
                    help="folder for the indexes (reused when present)")
    add_smoke_and_out_json(ap, "2000 indexed images, 50 moved copies, 200 test queries, one timing",
                           "write the figures here (docs: benchmarks/results/fashion_shifts.json)")
    args = ap.parse_args(argv)

    from copies import with_rules
    from near_duplicates import dimmer, noisier

    from storage import ImageSpec, open_corpus, read_labels
    from workflows.cluster import ClusterSettings, dask_client
    from workflows.evaluate import EvaluateSettings, evaluate
    from workflows.index import index
    from workflows.query import QuerySettings, query

    n_index, n_queries, n_test, repeats = (2000, 50, 200, 1) if args.smoke else (60_000, args.queries, None, args.repeats)
    work = Path(args.work) / ("smoke" if args.smoke else "full")
    work.mkdir(parents=True, exist_ok=True)
    spec = ImageSpec(28, 28, 1)
    train = open_corpus(TRAIN_IMAGES).read(spec, 0, n_index).pixels[..., 0]
    originals, copies = moved_queries(train, n_queries)
    rng = np.random.default_rng(1)
    kinds = {"moved 1 px": copies, **{name: np.stack([alter(train[i], rng) for i in originals])
                                      for name, alter in (("dimmed to 75%", dimmer), ("noise sigma 12", noisier), ("JPEG q70", jpeg70))}}
    paths = {name: str(work / f"{name}.npy") for name in ("corpus", "labels", "test", "test_labels")}
    np.save(paths["corpus"], train)
    np.save(paths["labels"], read_labels(TRAIN_LABELS)[:n_index])
    for n, (kind, images) in enumerate(kinds.items()):
        paths[kind] = str(work / f"copies-{n}.npy")
        np.save(paths[kind], images)
    test_labels = read_labels(TEST_LABELS)[:n_test]
    np.save(paths["test"], open_corpus(TEST_IMAGES).read(spec, 0, len(test_labels)).pixels[..., 0])
    np.save(paths["test_labels"], test_labels)

    shutil.rmtree(work / "before", ignore_errors=True)  # the model copy; its index keeps one of its own
    models = {"shipped (centre: box)": "fashion-mnist", "without the rule (centre: none)": with_rules("fashion-mnist", "black,none", work / "before")}
    started = time.perf_counter()
    rows = {}
    # the smoke run on threads of this process: worker processes would each import TensorFlow again
    with dask_client(ClusterSettings(workers=args.workers, processes=not args.smoke)) as client:
        indexes = {}
        for name, model in models.items():
            indexes[name] = str(work / f"{'shipped' if model == 'fashion-mnist' else 'before'}.index")
            if not Path(indexes[name]).exists():
                index(paths["corpus"], indexes[name], model, client=client)
        query(indexes["shipped (centre: box)"], paths["moved 1 px"], str(work / "results.parquet"), client=client)  # warm-up, not timed
        for kind in kinds:
            for name, url in indexes.items():
                runs = [("default", QuerySettings(k=10))]
                if name.startswith("without the rule") and kind == "moved 1 px":
                    runs.append(("--shift-radius 1", QuerySettings(k=10, shift_radius=1)))
                for label, settings in runs:
                    out = str(work / "results.parquet")
                    t0 = time.perf_counter()
                    query(url, paths[kind], out, settings, client=client)
                    rows[f"{kind}: {name}, {label}"] = {**recall(out, originals), "query_job_s": round(time.perf_counter() - t0, 2)}
        timings = {name: [] for name in indexes}
        quality = {}
        for _ in range(repeats):
            for name, url in indexes.items():  # alternating, so that a slow minute costs both alike
                result = evaluate(url, paths["test"], paths["labels"], paths["test_labels"],
                                  EvaluateSettings(modes=("default",), baselines=(), ks=(1, 10)), client=client)
                (method,) = result.methods
                timings[name].append(method.ms_per_query)
                quality[name] = {"P@1": method.precision[1], "P@10": method.precision[10], "mAP@100": method.map}
    ms = {name: statistics.median(v) for name, v in timings.items()}
    without, shipped = "without the rule (centre: none)", "shipped (centre: box)"
    figures = {
        "n_index": n_index, "n_moved_queries": n_queries, "n_test_queries": len(test_labels), "repeats": repeats,
        "moved_copies": rows, "test_queries": {name: {**quality[name], "ms_per_query": ms[name], "ms_per_query_runs": timings[name]}
                                               for name in indexes},
        "cost_ratio_shipped_vs_without": ms[shipped] / ms[without], "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"\n{n_queries} train images altered, queried against {n_index:,} indexed (original's rank):")
    print("| copy: index, query settings | recall@1 | recall@10 | query job s |\n| --- | --- | --- | --- |")
    for label, r in rows.items():
        print(f"| {label} | {r['recall@1']:.3f} | {r['recall@10']:.3f} | {r['query_job_s']:.1f} |")
    print(f"\n{figures['n_test_queries']:,} test queries by label, default mode (median of {repeats} timed runs):")
    print("| index | P@1 | P@10 | mAP@100 | ms/query |\n| --- | --- | --- | --- | --- |")
    for name, q in figures["test_queries"].items():
        print(f"| {name} | {q['P@1']:.4f} | {q['P@10']:.4f} | {q['mAP@100']:.4f} | {q['ms_per_query']:.3f} |")
    print(f"\ncost ratio, shipped / without the rule: {figures['cost_ratio_shipped_vs_without']:.2f}")
    write_json(args.out_json, figures, newline=True)
    return figures


if __name__ == "__main__":
    main()
