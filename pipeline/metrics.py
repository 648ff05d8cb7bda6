"""Retrieval metrics by label: precision@k and mean average precision@k."""

from __future__ import annotations

import numpy as np

__all__ = ["precision_at_k", "average_precision_at_k"]


def _relevance(result_ids: np.ndarray, index_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """``[q, k]`` booleans: hit ``j`` of query ``i`` has the query's label (padding ``-1`` never does)."""
    result_ids = np.asarray(result_ids, np.int64)
    valid = result_ids >= 0
    labels = np.where(valid, np.asarray(index_labels)[np.where(valid, result_ids, 0)], -1)
    return valid & (labels == np.asarray(query_labels)[:, None])


def precision_at_k(result_ids: np.ndarray, index_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Mean over queries of (relevant hits among the first ``k``) / ``k``.

    Missing hits (id ``-1``) count as not relevant, so a query answered with fewer than ``k``
    images is not rewarded for it.
    """
    if k < 1 or result_ids.shape[1] < k:
        raise ValueError(f"need at least k={k} result columns, got {result_ids.shape[1]}")
    rel = _relevance(result_ids[:, :k], index_labels, query_labels)
    return float(rel.sum(axis=1).mean() / k) if len(rel) else 0.0


def average_precision_at_k(result_ids: np.ndarray, index_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """mAP@k: mean over queries of ``sum_j P@j * rel_j / min(k, n_relevant)``.

    ``n_relevant`` is the number of indexed images with the query's label (the usual
    definition for label-based retrieval; queries whose label is absent from the index score 0).
    """
    if k < 1 or result_ids.shape[1] < k:
        raise ValueError(f"need at least k={k} result columns, got {result_ids.shape[1]}")
    rel = _relevance(result_ids[:, :k], index_labels, query_labels).astype(np.float64)
    if not len(rel):
        return 0.0
    precision = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    counts = np.bincount(np.asarray(index_labels, np.int64))
    query_labels = np.asarray(query_labels, np.int64)
    n_relevant = np.where(query_labels < len(counts), counts[np.minimum(query_labels, len(counts) - 1)], 0)
    denom = np.minimum(k, n_relevant)
    ap = np.divide((precision * rel).sum(axis=1), denom, out=np.zeros(len(rel)), where=denom > 0)
    return float(ap.mean())
