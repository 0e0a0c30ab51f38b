"""Query expansion, database-side augmentation and relevance feedback."""

from __future__ import annotations

import numpy as np

from model.metrics import average_precision
from model.rerank import alpha_query_expansion, database_augmentation, rocchio
from tests.conftest import lite0_descriptors


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def test_alpha_qe_equals_a_hand_computation() -> None:
    db = np.stack([_unit([1, 0, 0]), _unit([0.8, 0.6, 0]), _unit([0, 0, 1])]).astype(np.float32)
    q = _unit([0.6, 0.8, 0])[None].astype(np.float32)
    # Similarities to q: 0.6, 0.96, 0.0; top-2 are db[1] (0.96) then db[0] (0.6).
    out = alpha_query_expansion(q, db, n=2, alpha=2.0)
    expected = q[0] + 0.96**2 * db[1] + 0.6**2 * db[0]
    assert np.allclose(out[0], expected / np.linalg.norm(expected), atol=1e-6)
    assert np.allclose(alpha_query_expansion(q, db, n=0), q)


def test_dba_equals_a_hand_computation() -> None:
    db = np.stack([_unit([1, 0]), _unit([0.6, 0.8]), _unit([0, 1])]).astype(np.float32)
    out = database_augmentation(db, n=2, alpha=1.0)
    # Row 0: itself (1.0) + db[1] (0.6); row 1: itself + db[2] (0.8 > 0.6); row 2: itself + db[1].
    for row, (j, s) in enumerate([(1, 0.6), (2, 0.8), (1, 0.8)]):
        expected = db[row] + s * db[j]
        assert np.allclose(out[row], expected / np.linalg.norm(expected), atol=1e-6)


def test_rocchio_moves_toward_relevant_and_away_from_the_rest() -> None:
    q = _unit([1, 0, 0])
    rel = np.stack([_unit([0, 1, 0])])
    non = np.stack([_unit([0, 0, 1])])
    moved = rocchio(q, rel, non, a=1.0, b=0.5, c=0.5)
    expected = _unit([1, 0.5, -0.5])
    assert np.allclose(moved, expected, atol=1e-6)
    assert np.allclose(rocchio(q, np.zeros((0, 3)), np.zeros((0, 3))), q)


def test_relevance_feedback_improves_the_ranking_of_real_images() -> None:
    """Mark the true hits among the first results of a real query: the next ranking puts more
    images of the query's class first (AP rises)."""
    classes = ["denseresidential", "mediumresidential", "sparseresidential", "buildings"]
    db, labels = lite0_descriptors(classes, 12, 96)
    improved = 0
    queries = [0, 12, 24, 36]
    for qi in queries:
        gallery = np.delete(np.arange(len(db)), qi)
        relevant_mask = labels[gallery] == labels[qi]
        before = db[gallery] @ db[qi]
        top = gallery[np.argsort(-before)[:10]]
        rel = db[top[labels[top] == labels[qi]]]
        non = db[top[labels[top] != labels[qi]]]
        after = db[gallery] @ rocchio(db[qi], rel, non)
        ap_before = average_precision(relevant_mask[np.argsort(-before)])
        ap_after = average_precision(relevant_mask[np.argsort(-after)])
        improved += ap_after > ap_before
    assert improved >= 3
