"""Retrieval metrics against hand-computed cases."""

import numpy as np
import pytest

from pipeline.metrics import average_precision_at_k, precision_at_k

INDEX_LABELS = np.array([0, 0, 1, 1, 2, 0])  # image id -> label


def test_precision_hand_computed():
    ids = np.array([[0, 2, 5], [4, 3, -1]])
    queries = np.array([0, 1])
    # query 0: hits 0 (0), 2 (1), 5 (0) -> 2/3 ; query 1: 4 (2), 3 (1), pad -> 1/3
    assert precision_at_k(ids, INDEX_LABELS, queries, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert precision_at_k(ids, INDEX_LABELS, queries, 1) == pytest.approx(0.5)


def test_average_precision_hand_computed():
    ids = np.array([[2, 0, 5], [3, 2, 4]])
    queries = np.array([0, 1])
    # q0 (label 0, 3 relevant in index): rel = 0,1,1 -> (1/2 + 2/3) / min(3, 3)
    # q1 (label 1, 2 relevant): rel = 1,1,0 -> (1 + 1) / min(3, 2)
    expected = ((1 / 2 + 2 / 3) / 3 + 2 / 2) / 2
    assert average_precision_at_k(ids, INDEX_LABELS, queries, 3) == pytest.approx(expected)


def test_label_absent_from_index_scores_zero():
    assert average_precision_at_k(np.array([[0, 1]]), INDEX_LABELS, np.array([7]), 2) == 0.0


def test_too_few_columns():
    with pytest.raises(ValueError, match="k=5"):
        precision_at_k(np.zeros((2, 3), int), INDEX_LABELS, np.array([0, 0]), 5)
