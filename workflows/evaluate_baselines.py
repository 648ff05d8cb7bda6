"""The baselines of ``patchhash evaluate`` and seed 004's radius protocol, on the indexed images' pixels.

Each baseline reads the pixels of every readable indexed image and of the queries (converted
to the index model's input, as the modes see them) and ranks the indexed images itself:
``pixel-knn`` and ``lsh-B`` (:mod:`pipeline.baselines`) and ``ae-annoy``
(:mod:`pipeline.ae_annoy`, trained here). A baseline's build time is what it computes before
its first query (LSH's codes of the index; ae-annoy's training, encoding and trees), and its
ms/query the rest. They hold the pixels in memory: they are for evaluation-sized corpora.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from storage.location import IndexLocation
from storage.manifest import Manifest
from workflows.evaluate import AE_ANNOY, LSH_BASELINE, EvaluateSettings

__all__ = ["run_baselines"]

log = logging.getLogger(__name__)


def run_baselines(settings: EvaluateSettings, index: IndexLocation, manifest: Manifest, uris: np.ndarray, source,
                  labels: tuple[np.ndarray, np.ndarray], figures) -> list:
    """Run ``settings.baselines`` through ``figures`` and return seed 004's radius results (empty without ``radii``).

    ``labels`` are those of the index's image ids and of the queries; ``figures(name, category,
    threshold, ids, candidates, ms, build)`` records one method's ranking.
    """
    from pipeline.baselines import hamming_knn, lsh_codes, pixel_knn
    from pipeline.modelcard import read_card
    from storage.corpus import UriListCorpus
    from storage.layout import MODEL_DIR

    storage_options = index.storage_options
    card = read_card(index.join(MODEL_DIR), storage_options)
    readable = np.flatnonzero([u is not None for u in uris])
    log.info("reading the pixels of %d indexed images and %d queries for the baselines", len(readable), len(source))
    data = UriListCorpus("indexed images", storage_options, [uris[i] for i in readable]).read(card.image_spec)
    index_ids = readable[data.ids]
    index_pixels = data.pixels
    query_data = source.read(card.image_spec)
    depth = settings.depth
    n_queries = len(source)

    def spread(local: np.ndarray) -> np.ndarray:
        """Rows of the readable queries, as image ids of the index; -1 elsewhere."""
        ids = np.full((n_queries, depth), -1, np.int64)
        ids[query_data.ids] = np.where(local >= 0, index_ids[np.maximum(local, 0)], -1)
        return ids

    # compile the numba kernels before timing (a no-op once numba's cache holds them)
    first = index_pixels[:2]
    tiny = lsh_codes(first, 8, first.reshape(len(first), -1).mean(axis=0))
    hamming_knn(tiny, tiny, 1)
    mean = index_pixels.reshape(len(index_pixels), -1).mean(axis=0)
    lsh = {}  # bits -> (index codes, query codes), for the radius protocol
    for name in settings.baselines:
        started = time.perf_counter()
        build = 0.0
        if name == "pixel-knn":
            local, candidates = pixel_knn(index_pixels, query_data.pixels, depth), len(index_ids)
        elif name == AE_ANNOY:
            from pipeline.ae_annoy import AeAnnoy, AeAnnoySettings

            model = AeAnnoy.build(index_pixels, AeAnnoySettings(epochs=settings.ae_epochs))
            build, started = model.build_seconds, time.perf_counter()
            local, candidates = model.search(query_data.pixels, depth), depth
        else:
            bits = int(LSH_BASELINE.match(name).group(1))
            index_codes = lsh_codes(index_pixels, bits, mean)
            build, started = time.perf_counter() - started, time.perf_counter()
            query_codes = lsh_codes(query_data.pixels, bits, mean)
            local, candidates = hamming_knn(index_codes, query_codes, depth), len(index_ids)
            lsh[bits] = (index_codes, query_codes)
        seconds = time.perf_counter() - started
        figures(name, "baseline", None, spread(local), float(candidates), 1000 * seconds / max(1, n_queries), build)
    if not settings.radii:
        return []
    return _radius(settings, index, manifest, card, (index_pixels, index_ids), query_data, labels, lsh)


def _radius(settings, index: IndexLocation, manifest: Manifest, card, indexed, query_data, labels, lsh) -> list:
    """Seed 004's protocol for the index's own codes and each LSH baseline's."""
    from pipeline.encode import load_encoder
    from pipeline.radius import as_code_words, radius_protocol
    from storage.arrays import read_rows
    from storage.layout import MODEL_DIR

    index_pixels, index_ids = indexed
    index_labels, query_labels = labels
    rows = np.empty((len(index_ids), *card.grid), card.code_dtype)
    for partition in manifest.partitions:
        inside = (index_ids >= partition.start) & (index_ids < partition.stop)
        if inside.any():
            codes = read_rows(index.resolve(partition.codes), partition.start, partition.stop, index.storage_options)
            rows[inside] = codes.reshape(len(codes), *card.grid)[index_ids[inside] - partition.start]
    encoder = load_encoder(index.join(MODEL_DIR), index.storage_options)
    query_codes = encoder.encode(query_data.pixels)
    q_labels = query_labels[query_data.ids]
    i_labels = index_labels[index_ids]
    method = f"{card.name} codes ({card.grid[0]}x{card.grid[1]} x {card.bits} bits)"
    _, max_bucket = settings.query_settings().partition_limits(len(index_ids))
    log.info("seed 004's radius protocol: %s (buckets of more than %d images skipped, as in the default mode), radii %s",
             method, max_bucket, ", ".join(map(str, settings.radii)))
    results = radius_protocol(method, as_code_words(rows), as_code_words(query_codes), index_pixels, query_data.pixels,
                              i_labels, q_labels, settings.radii, max_bucket=max_bucket)
    for bits, (index_codes, query_codes) in lsh.items():
        results += radius_protocol(f"lsh-{bits}", as_code_words(index_codes), as_code_words(query_codes), index_pixels,
                                   query_data.pixels, i_labels, q_labels, settings.radii)
    return results
