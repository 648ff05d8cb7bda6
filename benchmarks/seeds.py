"""Every seed's system beside patchhash's modes, on the same Fashion-MNIST queries, in one table.

    python benchmarks/seeds.py            # docs/QUALITY.md: 10k test queries against the 60k train images
    python benchmarks/seeds.py --smoke    # 1,000 images, 50 queries, one-epoch trainings (CI)

The systems, each run by patchhash's own commands (``patchhash train``, ``index`` and
``evaluate``'s library API) on one Dask cluster:

* seed 000: its scoring over per-patch codes, ``--mode seed``, with the shipped model;
* patchhash's default mode with the shipped model;
* seed 001: one 17-bit code per image from its dense autoencoder (the ``seed-001`` preset,
  trained here unless ``--seed-001-model`` names one), every image within Hamming radius 3;
* seeds 002/003: their convolutional autoencoder's float latents in Annoy (``ae-annoy``,
  trained here by ``evaluate``: 20 epochs, as the seed);
* seed 004: LSH with its 32 random hyperplanes, ranked by Hamming distance; and its own
  protocol, precision@10 of the candidates within radius r = 0..10 (second table), for LSH, the
  shipped model's codes and seed 001's codes, on the first ``--radius-queries`` queries;
* exact kNN on pixels, for reference.

Build time: a mode's is its index's ``index`` runs (from the run log), a trained baseline's
its training, encoding and index; the training of a shipped or given model is its own column
(its card's). Queries/s: the mode's whole query job (2 workers), a baseline's in this process.
Writes ``benchmarks/results/seeds.json``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from _common import HERE, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, add_smoke_and_out_json, parser, write_json
from quality import smoke_inputs

from pipeline.modelcard import read_card, resolve_model_url
from workflows.cluster import ClusterSettings, dask_client
from workflows.evaluate import EvaluateSettings, evaluate
from workflows.index import index
from workflows.train import train

log = logging.getLogger("seeds")
RADII = tuple(range(11))
SEED_004_BITS = 32  # its tutorial's 32 hyperplanes


def seed_001_model(work: Path, corpus: str, given: str | None, epochs: int) -> str:
    """The seed-001 model: ``given``, or trained under ``work`` (reused when present)."""
    if given:
        return given
    out = work / f"seed-001-{epochs}ep"
    if not (out / "card.json").exists():
        log.info("training the seed-001 preset, %d epochs", epochs)
        train(corpus, str(out), preset="seed-001", epochs=epochs, seed=0, name="seed-001")
    return str(out)


def row(system: str, seed: str, method, training: float | None) -> dict:
    return {
        "system": system, "seed": seed, "method": method.name, "p10": method.precision[10], "map100": method.map,
        "queries_per_s": 1000 / method.ms_per_query if method.ms_per_query > 0 else None,
        "build_s": method.build_seconds, "training_s": training, "candidates": method.mean_candidates,
    }


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def table(rows: list[dict]) -> str:
    lines = ["| system | seed | P@10 | mAP@100 | queries/s | build s | training s (model) | candidates/query |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        qps = "" if r["queries_per_s"] is None else f"{r['queries_per_s']:,.0f}"
        lines.append(f"| {r['system']} | {r['seed']} | {r['p10']:.3f} | {r['map100']:.3f} | {qps} | {_seconds(r['build_s'])} "
                     f"| {_seconds(r['training_s'])} | {r['candidates']:,.0f} |")
    return "\n".join(lines)


def radius_table(results: list[dict]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in results))
    head = "| r | " + " | ".join(f"{m}: P@10 / answered / candidates" for m in methods) + " |"
    lines = [head, "|---|" + "---|" * len(methods)]
    for radius in sorted({r["radius"] for r in results}):
        cells = []
        for m in methods:
            (r,) = [x for x in results if x["method"] == m and x["radius"] == radius]
            cells.append(f"{r['precision']:.3f} / {r['answered']:.2f} / {r['mean_candidates']:,.0f}")
        lines.append(f"| {radius} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--model", default="fashion-mnist", help="patchhash's model (a model dir or built-in name)")
    ap.add_argument("--seed-001-model", help="a trained seed-001 model dir (default: train one under --work)")
    ap.add_argument("--seed-001-epochs", type=int, default=10, help="epochs when training seed-001 here (the seed ran 300)")
    ap.add_argument("--ae-epochs", type=int, default=20, help="ae-annoy's training epochs (the seed's 20)")
    ap.add_argument("--radius-queries", type=int, default=1000, help="queries of seed 004's protocol (the seed used 120)")
    ap.add_argument("--limit", type=int, default=None, help="first N test queries only")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "patchhash-seeds"), help="folder for models and indexes")
    add_smoke_and_out_json(ap, "1,000 images, 50 queries, one-epoch trainings", "write the figures here as JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    work = Path(args.work) / ("smoke" if args.smoke else "full")
    work.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        corpus, labels, queries, query_labels = smoke_inputs(work, 1000, 50)
        seed_epochs, ae_epochs, radius_queries = 1, 1, 25
    else:
        corpus, labels, queries, query_labels = TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS
        seed_epochs, ae_epochs, radius_queries = args.seed_001_epochs, args.ae_epochs, args.radius_queries
    started = time.perf_counter()
    seed_model = seed_001_model(work, corpus, args.seed_001_model, seed_epochs)
    rows, radius = [], []
    # the smoke run on threads of this process: worker processes would each import TensorFlow again
    with dask_client(ClusterSettings(workers=args.workers, processes=not args.smoke)) as client:
        def run(model: str, name: str, settings: EvaluateSettings):
            index_url = str(work / f"{name}.index")
            if not Path(index_url).exists():
                index(corpus, index_url, model, client=client)
            return evaluate(index_url, queries, labels, query_labels, settings, client=client)

        shipped_training = read_card(resolve_model_url(args.model)).training.get("seconds")
        seed_training = read_card(resolve_model_url(seed_model)).training.get("seconds")
        main_run = run(args.model, "patchhash", EvaluateSettings(
            ks=(10,), modes=("seed", "default"), baselines=("pixel-knn", f"lsh-{SEED_004_BITS}", "ae-annoy"),
            limit=args.limit, ae_epochs=ae_epochs))
        by_name = {m.name: m for m in main_run.methods}
        seed_run = run(seed_model, "seed-001", EvaluateSettings(ks=(10,), modes=("default",), baselines=(), limit=args.limit))
        rows = [
            row("seed 000's scoring (`--mode seed`), shipped model", "000", by_name["seed t=3"], shipped_training),
            row("patchhash default mode, shipped model", "-", by_name["default t=3"], shipped_training),
            row("one 17-bit code per image, radius 3 (`seed-001` preset)", "001", seed_run.methods[0], seed_training),
            row("conv. autoencoder + Annoy (`ae-annoy`)", "002/003", by_name["ae-annoy"], None),
            row(f"LSH, {SEED_004_BITS} hyperplanes, Hamming ranking (`lsh-{SEED_004_BITS}`)", "004",
                by_name[f"lsh-{SEED_004_BITS}"], None),
            row("exact kNN on pixels (`pixel-knn`)", "-", by_name["pixel-knn"], None),
        ]
        protocol = EvaluateSettings(ks=(10,), modes=(), baselines=(f"lsh-{SEED_004_BITS}",), radii=RADII, limit=radius_queries)
        radius = [*run(args.model, "patchhash", protocol).radius,
                  *run(seed_model, "seed-001", EvaluateSettings(ks=(10,), modes=(), baselines=(), radii=RADII,
                                                                limit=radius_queries)).radius]
    radius = [{"method": r.method, "radius": r.radius, "precision": r.precision, "answered": r.answered,
               "mean_candidates": r.mean_candidates} for r in radius]
    print("\n" + table(rows))
    print(f"\nseed 004's protocol on the first {radius_queries} queries: precision@10 / share of queries answered / "
          "candidates per query\n")
    print(radius_table(radius))
    write_json(args.out_json if args.out_json or args.smoke else str(HERE / "results" / "seeds.json"), {
        "queries": queries, "index_corpus": corpus, "limit": args.limit, "radius_queries": radius_queries,
        "seed_001_model": seed_model, "ae_epochs": ae_epochs, "rows": rows, "radius": radius,
        "seconds": round(time.perf_counter() - started, 1),
    })


if __name__ == "__main__":
    main()
