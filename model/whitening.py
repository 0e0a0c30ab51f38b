"""Learned whitening of descriptors, with dimension reduction, bound to the checkpoint.

Two ways to learn it, after Radenovic, Tolias and Chum (TPAMI 2019, doi:10.1109/TPAMI.2018.2846566)
and Jegou and Chum (ECCV 2012, doi:10.1007/978-3-642-33709-3_55):

- PCA-whitening ('pca'): centre on the mean m, rotate onto the principal axes E of the
  covariance, scale each axis by 1 / sqrt(its variance): P = diag(lambda)^(-1/2) E^T.
- Learned whitening ('lw', Radenovic's Lw): whiten the intra-class variability first, with the
  covariance C_S of matching-pair differences (P_1 = C_S^(-1/2)), then rotate onto the principal
  axes of the descriptors whitened so (P = E^T C_S^(-1/2)): directions along which images of one
  class differ are damped, those that separate classes kept.

Either keeps the first `dim` output axes (largest variance), applies x -> normalise(P (x - m)),
and is stored as an .npz artifact naming the fingerprint of the checkpoint it was learned for;
the whitened descriptors get a fingerprint of their own (checkpoint + projection), so an index
of whitened vectors is never searched with raw ones or the reverse. `rsir whiten` learns one
(indexer/whiten.py); `rsir index --whitening` stores whitened vectors and records the artifact
beside the index, whose queries then go through it too (indexer/index_model.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WHITENING_METHODS = ("pca", "lw")
_EPS = 1e-6


class WhiteningMismatchError(ValueError):
    """A whitening artifact used with a checkpoint or an index it was not made for."""


@dataclass(frozen=True)
class Whitening:
    """x -> normalise(projection @ (x - mean)); projection is dim_out x dim_in."""

    mean: np.ndarray
    projection: np.ndarray
    method: str
    checkpoint_fingerprint: str

    @property
    def dim(self) -> int:
        """Output dimension (what the index stores)."""
        return int(self.projection.shape[0])

    @property
    def input_dim(self) -> int:
        """Dimension of the checkpoint's raw descriptors."""
        return int(self.projection.shape[1])

    def identity(self) -> dict[str, str | int]:
        """What an index records of its artifact: enough to recognise and refuse another one."""
        return {
            "method": self.method,
            "dim": self.dim,
            "input_dim": self.input_dim,
            "checkpoint_fingerprint": self.checkpoint_fingerprint,
            "fingerprint": self.fingerprint(),
        }

    def apply(self, descriptors: np.ndarray) -> np.ndarray:
        """Whitened, reduced, L2-normalised float32 descriptors (N x dim)."""
        out = (np.asarray(descriptors, dtype=np.float64) - self.mean) @ self.projection.T
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.maximum(norms, 1e-12)).astype(np.float32)

    def fingerprint(self) -> str:
        """The fingerprint of whitened descriptors: the checkpoint's and this projection's."""
        digest = hashlib.sha256(self.checkpoint_fingerprint.encode())
        digest.update(np.ascontiguousarray(self.mean, dtype=np.float64).tobytes())
        digest.update(np.ascontiguousarray(self.projection, dtype=np.float64).tobytes())
        return f"{self.checkpoint_fingerprint}+w{digest.hexdigest()[:8]}"

    def save(self, path: Path) -> None:
        """Write the .npz atomically (temp file, then rename): a reader never sees half of it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as handle:
            np.savez(
                handle,
                mean=self.mean,
                projection=self.projection,
                method=np.array(self.method),
                checkpoint_fingerprint=np.array(self.checkpoint_fingerprint),
            )
        partial.replace(path)


def descriptor_fingerprint(checkpoint_fingerprint: str, whitening: Whitening | None) -> str:
    """The fingerprint an index of these descriptors carries: the checkpoint's, or with
    whitening the checkpoint's and the projection's."""
    return whitening.fingerprint() if whitening is not None else checkpoint_fingerprint


def load_whitening(path: Path, checkpoint_fingerprint: str | None = None) -> Whitening:
    """Read an artifact; refuse it for a checkpoint other than the one it was learned for."""
    with np.load(Path(path)) as data:
        whitening = Whitening(
            mean=data["mean"],
            projection=data["projection"],
            method=str(data["method"]),
            checkpoint_fingerprint=str(data["checkpoint_fingerprint"]),
        )
    expected = whitening.checkpoint_fingerprint
    if checkpoint_fingerprint is not None and checkpoint_fingerprint != expected:
        raise WhiteningMismatchError(
            f"whitening {path} was learned for model {whitening.checkpoint_fingerprint}, "
            f"not {checkpoint_fingerprint}: learn one for this checkpoint with `rsir whiten`"
        )
    return whitening


def _inverse_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric C^(-1/2), regularised so that rank-deficient covariances stay finite."""
    values, vectors = np.linalg.eigh(matrix)
    values = np.maximum(values, _EPS * max(float(values.max()), _EPS))
    return (vectors / np.sqrt(values)) @ vectors.T


def _principal_axes(centred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of the covariance of rows."""
    covariance = centred.T @ centred / max(1, len(centred) - 1)
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order]


def learn_pca_whitening(
    descriptors: np.ndarray, dim: int | None, checkpoint_fingerprint: str
) -> Whitening:
    """PCA-whitening of `descriptors` (N x D), keeping `dim` axes (None: all)."""
    x = np.asarray(descriptors, dtype=np.float64)
    mean = x.mean(axis=0)
    values, vectors = _principal_axes(x - mean)
    keep = _check_dim(dim, x.shape[1])
    values = np.maximum(values[:keep], _EPS * max(float(values[0]), _EPS))
    projection = (vectors[:, :keep] / np.sqrt(values)).T
    return Whitening(mean, projection, "pca", checkpoint_fingerprint)


def learn_lw_whitening(
    descriptors: np.ndarray,
    queries: np.ndarray,
    positives: np.ndarray,
    dim: int | None,
    checkpoint_fingerprint: str,
) -> Whitening:
    """Radenovic's Lw from matching pairs (queries[i], positives[i]) of rows of `descriptors`."""
    x = np.asarray(descriptors, dtype=np.float64)
    keep = _check_dim(dim, x.shape[1])
    differences = x[queries] - x[positives]
    intra = differences.T @ differences / max(1, len(differences))
    to_intra_white = _inverse_sqrt(intra)
    mean = x.mean(axis=0)
    _, vectors = _principal_axes((x - mean) @ to_intra_white.T)
    projection = vectors[:, :keep].T @ to_intra_white
    return Whitening(mean, projection, "lw", checkpoint_fingerprint)


def matching_pairs(labels: np.ndarray, per_image: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """For each image, `per_image` random other images of its class (the matching pairs)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    queries, positives = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        for i in members:
            others = members[members != i]
            chosen = rng.choice(others, size=min(per_image, len(others)), replace=False)
            queries.extend([i] * len(chosen))
            positives.extend(chosen.tolist())
    return np.asarray(queries, dtype=np.int64), np.asarray(positives, dtype=np.int64)


def learn_whitening(
    method: str,
    descriptors: np.ndarray,
    labels: np.ndarray,
    dim: int | None,
    checkpoint_fingerprint: str,
    seed: int = 0,
) -> Whitening:
    """Learn `method` ('pca' or 'lw') on labelled descriptors (labels feed Lw's pairs)."""
    if method == "pca":
        return learn_pca_whitening(descriptors, dim, checkpoint_fingerprint)
    if method == "lw":
        queries, positives = matching_pairs(labels, per_image=5, seed=seed)
        return learn_lw_whitening(descriptors, queries, positives, dim, checkpoint_fingerprint)
    raise ValueError(f"unknown whitening {method!r}; choose one of {list(WHITENING_METHODS)}")


def _check_dim(dim: int | None, width: int) -> int:
    if dim is None:
        return width
    if not 1 <= dim <= width:
        raise ValueError(f"whitening dimension must be between 1 and {width}, not {dim}")
    return dim
