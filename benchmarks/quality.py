"""Retrieval-quality ablation: modes x models x thresholds (and shortlist sizes), with the pixel
baselines, all measured in one run with ``patchhash evaluate``'s library API.

    python benchmarks/quality.py                          # docs/QUALITY.md (10k test queries, 60k index)
    python benchmarks/quality.py --smoke                  # 2000 images, 100 queries (CI)
    python benchmarks/quality.py --models default=fashion-mnist,ae32=/path/to/model

Each model gets an index of the Fashion-MNIST train images under ``--work`` (reused when
present: rerunning only re-measures); the 10k test images are the queries. Prints a markdown
table and writes ``benchmarks/results/quality.json``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import HERE, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, parser

from pipeline.modelcard import read_card, resolve_model_url
from workflows.cluster import ClusterSettings, dask_client
from workflows.evaluate import EvaluateSettings, evaluate
from workflows.index import index
from pipeline.rerank import DEFAULT_SHORTLIST
from workflows.query import DEFAULT_MAX_BUCKET_FRACTION

log = logging.getLogger("quality")
N_TRAIN = 60_000
UNBOUNDED = 2**62  # a vote budget no query reaches


def describe(model_url: str) -> dict:
    card = read_card(resolve_model_url(model_url))
    training = card.training
    return {
        "bits": card.bits, "stem": list(card.config.stem), "patch": card.config.patch, "stride": card.config.stride,
        "label_aware": bool(training.get("n_classes")), "label_weight": training.get("label_weight", 0.0),
        "epochs": training.get("epochs"), "n_images": training.get("n_images"), "command": training.get("command"),
    }


def smoke_inputs(work: Path, n_index: int = 2000, n_queries: int = 100) -> tuple[str, str, str, str]:
    """The first ``n_index`` train images as the corpus and ``n_queries`` test images as queries, as .npy files."""
    from storage import ImageSpec, open_corpus, read_labels

    paths = [work / n for n in ("corpus.npy", "labels.npy", "queries.npy", "query_labels.npy")]
    if not paths[0].exists():
        spec = ImageSpec(28, 28, 1)
        np.save(paths[0], open_corpus(TRAIN_IMAGES).read(spec, 0, n_index).pixels[..., 0])
        np.save(paths[1], read_labels(TRAIN_LABELS)[:n_index])
        np.save(paths[2], open_corpus(TEST_IMAGES).read(spec, 0, n_queries).pixels[..., 0])
        np.save(paths[3], read_labels(TEST_LABELS)[:n_queries])
    return tuple(str(p) for p in paths)


def table(rows: list[dict], ks: tuple[int, ...]) -> str:
    head = ["mode / method", "model", "bits", "t", "shortlist", "skip buckets >", "vote budget", *(f"P@{k}" for k in ks), "mAP@100",
            "candidates", "ms/query"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["method"], r["model"], str(r["bits"]), "" if r["threshold"] is None else str(r["threshold"]),
            "" if r["shortlist"] is None else str(r["shortlist"]),
            "" if r["max_bucket_fraction"] is None else f"{r['max_bucket_fraction']:g} or {r['max_bucket']:,}",
            "" if r["vote_budget"] is None else "none" if r["vote_budget"] >= UNBOUNDED else f"{r['vote_budget']:,}",
            *(f"{r['precision'][str(k)]:.3f}" for k in ks), f"{r['map']:.3f}",
            f"{r['mean_candidates']:,.0f}", f"{r['ms_per_query']:.2f}",
        ]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--models", default="default=fashion-mnist", help="name=model, comma-separated (a model dir or built-in name)")
    ap.add_argument("--thresholds", default="0,1,2,3", help="t values for both modes")
    ap.add_argument("--shortlists", default="100,400,1000", help="default mode, first model, default t")
    ap.add_argument("--max-bucket-fractions", default="1,0.02", help="default mode, first model, default t")
    ap.add_argument("--limit", type=int, default=None, help="first N test queries only")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "patchhash-quality"), help="folder for the indexes")
    ap.add_argument("--out-json", default=str(HERE / "results" / "quality.json"))
    ap.add_argument("--smoke", action="store_true", help="2000 images, 100 queries, t=0,1, one shortlist")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    work = Path(args.work) / ("smoke" if args.smoke else "full")
    work.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        corpus, labels, queries, query_labels = smoke_inputs(work)
        thresholds, shortlists, fractions = (0, 1), (), ()
    else:
        corpus, labels, queries, query_labels = TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS
        thresholds = tuple(int(v) for v in args.thresholds.split(","))
        shortlists = tuple(int(v) for v in args.shortlists.split(",") if v)
        fractions = tuple(float(v) for v in args.max_bucket_fractions.split(",") if v)
    models = dict(spec.split("=", 1) for spec in args.models.split(","))
    ks = (1, 10, 100)
    rows, started = [], time.perf_counter()

    def add(result, model, info, settings: EvaluateSettings) -> None:
        for m in result.methods:
            default = m.name.startswith("default")
            rows.append({
                "method": m.name.split(" ")[0], "model": model if m.category == "mode" else "(pixels)",
                "bits": info["bits"] if m.category == "mode" else "", "threshold": m.threshold,
                "shortlist": (settings.shortlist or "auto") if default else None,
                "max_bucket_fraction": settings.max_bucket_fraction if default else None,
                "max_bucket": settings.max_bucket if default else None,
                "vote_budget": settings.vote_budget if default else None,
                "precision": {str(k): v for k, v in m.precision.items()}, "map": m.map,
                "mean_candidates": m.mean_candidates, "ms_per_query": m.ms_per_query,
            })

    # the smoke run on threads of this process: worker processes would each import TensorFlow again
    with dask_client(ClusterSettings(workers=args.workers, processes=not args.smoke)) as client:
        infos = {}
        for i, (name, model) in enumerate(models.items()):
            infos[name] = info = describe(model)
            index_url = str(work / f"{name}.index")
            index(corpus, index_url, model, client=client)
            first = i == 0
            runs = [EvaluateSettings(modes=("seed", "default"), baselines=("pixel-knn", "lsh-64", "lsh-256") if first else (),
                                     thresholds=thresholds, ks=ks, limit=args.limit)]
            if first:  # the default mode's other knobs, one at a time, at its default t
                runs += [EvaluateSettings(modes=("default",), baselines=(), shortlist=s, ks=ks, limit=args.limit)
                         for s in shortlists if s != DEFAULT_SHORTLIST]
                runs += [EvaluateSettings(modes=("default",), baselines=(), max_bucket_fraction=f, ks=ks, limit=args.limit)
                         for f in fractions if f != DEFAULT_MAX_BUCKET_FRACTION]
                if not args.smoke:  # the default before the scale bounds (2026-11-27): a tenth of a partition only, no budget
                    runs += [EvaluateSettings(modes=("default",), baselines=(), max_bucket=N_TRAIN, vote_budget=UNBOUNDED, ks=ks,
                                              limit=args.limit)]
            for settings in runs:
                add(evaluate(index_url, queries, labels, query_labels, settings, client=client), name, info, settings)
    text = table(rows, ks)
    print("\n" + text)
    for name, info in infos.items():
        print(f"\n{name}: {json.dumps(info)}")
    if not args.smoke or args.out_json != str(HERE / "results" / "quality.json"):
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps({
            "queries": queries, "index_corpus": corpus, "limit": args.limit, "models": infos, "rows": rows,
            "seconds": round(time.perf_counter() - started, 1),
        }, indent=1))
        print(f"\nwritten to {args.out_json}")


if __name__ == "__main__":
    main()
