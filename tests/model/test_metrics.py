"""mAP and friends against hand computation and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from model.metrics import (
    average_precision,
    average_precision_at_k,
    evaluate_rankings,
    precision_at_k,
)


def test_average_precision_hand_computed() -> None:
    # relevant at ranks 1, 3, 6 of 6 -> (1/1 + 2/3 + 3/6) / 3
    rel = np.array([1, 0, 1, 0, 0, 1])
    assert math.isclose(average_precision(rel), (1 + 2 / 3 + 0.5) / 3)
    # a truncated ranking that misses one of four relevant items
    assert math.isclose(average_precision(rel, total_relevant=4), (1 + 2 / 3 + 0.5) / 4)
    assert average_precision(np.zeros(4)) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.random(30)
    truth = rng.random(30) < 0.3
    truth[0] = True
    order = np.argsort(-scores)
    assert math.isclose(
        average_precision(truth[order]), average_precision_score(truth, scores), rel_tol=1e-9
    )


def test_precision_and_ap_at_k() -> None:
    rel = np.array([1, 0, 1, 1, 0])
    assert precision_at_k(rel, 2) == 0.5
    assert precision_at_k(rel, 4) == 0.75
    # AP@3 with 3 relevant in the gallery: (1/1 + 2/3) / 3
    assert math.isclose(average_precision_at_k(rel, 3, 3), (1 + 2 / 3) / 3)


def test_evaluate_rankings_map_and_per_class() -> None:
    gallery_labels = [0, 0, 1, 1]
    query_labels = [0, 1]
    ranked = np.array([[0, 2, 1, 3], [0, 1, 2, 3]])
    m = evaluate_rankings(ranked, query_labels, gallery_labels, ["a", "b"], ks=(1, 2))
    ap0 = (1 + 2 / 3) / 2
    ap1 = (1 / 3 + 2 / 4) / 2
    assert math.isclose(m.map, (ap0 + ap1) / 2)
    assert m.per_class_ap == pytest.approx({"a": ap0, "b": ap1})
    assert m.precision_at_k[1] == 0.5
    assert m.precision_at_k[2] == 0.25
    assert len(m.pr_precision) == len(m.pr_recall) and m.pr_precision[0] >= m.pr_precision[-1]


def test_all_vs_all_counts_one_relevant_fewer() -> None:
    # the query (class 0) was removed from its ranking; the gallery holds 2 of class 0 with it
    m = evaluate_rankings(
        np.array([[1, 2]]), [0], [0, 0, 1], ["a", "b"], ks=(1,), queries_in_gallery=True
    )
    assert m.map == 1.0


def test_query_without_relevant_image_counts_as_zero_in_map_and_pr_curve_alike() -> None:
    gallery_labels = [0, 0, 1, 1]
    ranked = np.array([[0, 2, 1, 3], [0, 1, 2, 3]])
    alone = evaluate_rankings(ranked[:1], [0], gallery_labels, ["a", "b", "c"], ks=(2,))
    both = evaluate_rankings(ranked, [0, 2], gallery_labels, ["a", "b", "c"], ks=(2,))
    # class c is absent from the gallery: the second query can retrieve nothing relevant
    assert both.n_without_relevant == 1 and alone.n_without_relevant == 0
    assert math.isclose(both.map, alone.map / 2)
    assert both.map_at_k[2] == pytest.approx(alone.map_at_k[2] / 2)
    assert both.pr_precision == pytest.approx([p / 2 for p in alone.pr_precision])
    # the curve and mAP average over the same queries: its mean tracks mAP, not twice it
    assert np.mean(both.pr_precision) < np.mean(alone.pr_precision)
    summary = both.summary()
    assert summary["n_queries_without_relevant"] == 1
    assert "AP 0" in str(summary["no_relevant_convention"])
