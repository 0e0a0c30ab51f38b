"""Whitening learned on real descriptors: orthogonal rotation then scaling, reduced dimension."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.whitening import (
    learn_lw_whitening,
    learn_pca_whitening,
    learn_whitening,
    load_whitening,
    matching_pairs,
)
from tests.conftest import lite0_descriptors

CLASSES = ("airplane", "beach", "forest", "harbor", "parkinglot", "river")
PER_CLASS = 8


@pytest.fixture(scope="module")
def real_descriptors() -> tuple[np.ndarray, np.ndarray]:
    """ImageNet EfficientNet-Lite0 descriptors of 48 real UCM images (6 classes)."""
    descriptors, labels = lite0_descriptors(list(CLASSES), PER_CLASS, 96)
    return descriptors.astype(np.float64), labels


def test_pca_whitening_is_a_rotation_then_a_scaling(
    real_descriptors: tuple[np.ndarray, np.ndarray],
) -> None:
    x, _ = real_descriptors
    w = learn_pca_whitening(x, dim=16, checkpoint_fingerprint="abc")
    p = w.projection
    assert p.shape == (16, x.shape[1])
    # Rows are orthogonal: P = diag(lambda)^(-1/2) E^T with E orthonormal.
    gram = p @ p.T
    assert np.allclose(gram, np.diag(np.diag(gram)), atol=1e-6 * np.abs(gram).max())
    axes = p / np.linalg.norm(p, axis=1, keepdims=True)
    assert np.allclose(axes @ axes.T, np.eye(16), atol=1e-6)
    # The scales are 1/sqrt of the variances along those axes: whitened data has identity
    # covariance, and the kept axes are the ones of largest variance (descending scales).
    centred = (x - w.mean) @ p.T
    covariance = centred.T @ centred / (len(x) - 1)
    assert np.allclose(covariance, np.eye(16), atol=1e-6)
    scales = np.linalg.norm(p, axis=1)
    assert np.all(np.diff(scales) >= -1e-9)


def test_whitened_descriptors_are_unit_and_reduced(
    real_descriptors: tuple[np.ndarray, np.ndarray],
) -> None:
    x, labels = real_descriptors
    w = learn_whitening("lw", x, labels, dim=12, checkpoint_fingerprint="abc")
    out = w.apply(x)
    assert out.shape == (len(x), 12) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_lw_whitens_the_matching_pair_differences(
    real_descriptors: tuple[np.ndarray, np.ndarray],
) -> None:
    """Lw = E^T C_S^(-1/2): in the full dimension, matching-pair differences become white."""
    x, labels = real_descriptors
    q, p = matching_pairs(labels, per_image=5, seed=0)
    # Full rank needs more pairs than dimensions: reduce first with PCA (as one would).
    reduced = learn_pca_whitening(x, dim=24, checkpoint_fingerprint="f")
    z = (x - reduced.mean) @ reduced.projection.T
    w = learn_lw_whitening(z, q, p, dim=None, checkpoint_fingerprint="f")
    d = (z[q] - z[p]) @ w.projection.T
    intra = d.T @ d / len(d)
    assert np.allclose(intra, np.eye(24), atol=1e-5)
    # The rotation part is orthogonal: P C_S^(1/2) has orthonormal rows.
    values, vectors = np.linalg.eigh((z[q] - z[p]).T @ (z[q] - z[p]) / len(q))
    sqrt_intra = (vectors * np.sqrt(values)) @ vectors.T
    rotation = w.projection @ sqrt_intra
    assert np.allclose(rotation @ rotation.T, np.eye(24), atol=1e-5)


def test_artifact_is_bound_to_its_checkpoint(
    real_descriptors: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, labels = real_descriptors
    w = learn_whitening("pca", x, labels, dim=8, checkpoint_fingerprint="model-a")
    path = tmp_path / "w.npz"
    w.save(path)
    again = load_whitening(path, "model-a")
    assert np.array_equal(again.apply(x), w.apply(x))
    assert again.fingerprint() == w.fingerprint() != "model-a"
    assert w.fingerprint().startswith("model-a+w")
    with pytest.raises(ValueError, match="learned for model model-a"):
        load_whitening(path, "model-b")
    with pytest.raises(ValueError, match="between 1 and"):
        learn_whitening("pca", x, labels, dim=x.shape[1] + 1, checkpoint_fingerprint="a")
