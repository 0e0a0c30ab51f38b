"""Relevance feedback on an index: the one place where CLI and service move a query.

The user marks hits relevant or not; the query descriptor moves toward the mean of the marked
relevant ones' stored descriptors and away from the others' (`model.rerank.rocchio`), and the
index is searched again with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexer.db import MAX_ROW_ID
from indexer.engines import VectorIndex
from model.rerank import rocchio

# Ids a query may mark in all: each one is one stored vector read and one row in a form.
MAX_FEEDBACK_IDS = 200


class UnknownFeedbackIdError(LookupError):
    """A marked id is not a live image of the index."""


@dataclass(frozen=True)
class Feedback:
    """The ids a user marked relevant and not relevant."""

    relevant: tuple[int, ...] = ()
    not_relevant: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.relevant or self.not_relevant)

    @classmethod
    def parse(cls, relevant: str | None, not_relevant: str | None) -> Feedback:
        """From comma-separated id lists ("3,17"); ValueError with the reason if malformed."""
        feedback = cls(_ids(relevant, "relevant"), _ids(not_relevant, "not_relevant"))
        if len(feedback.relevant) + len(feedback.not_relevant) > MAX_FEEDBACK_IDS:
            raise ValueError(f"at most {MAX_FEEDBACK_IDS} relevant and not_relevant ids in all")
        both = set(feedback.relevant) & set(feedback.not_relevant)
        if both:
            raise ValueError(f"ids marked both relevant and not relevant: {sorted(both)}")
        return feedback


def _ids(text: str | None, name: str) -> tuple[int, ...]:
    if text is None or not text.strip():
        return ()
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit() and len(part) <= 10) or not (
            1 <= int(part) <= MAX_ROW_ID
        ):
            raise ValueError(f"{name}: {part[:20]!r} is not an image id (comma-separated ids)")
        if int(part) not in out:
            out.append(int(part))
    return tuple(out)


def stored_vectors(store: VectorIndex, ids: tuple[int, ...]) -> np.ndarray:
    """The stored descriptors of `ids`, (n, D); UnknownFeedbackIdError names the missing ones."""
    found = [store.reconstruct(i) for i in ids]
    missing = [i for i, v in zip(ids, found, strict=True) if v is None]
    if missing:
        raise UnknownFeedbackIdError(f"no indexed image with a stored vector for ids {missing}")
    return np.stack([v for v in found if v is not None]) if ids else np.zeros((0, store.dim))


def apply_feedback(store: VectorIndex, query: np.ndarray, feedback: Feedback) -> np.ndarray:
    """The query moved by the feedback (Rocchio, default weights); unchanged without any."""
    if not feedback:
        return np.asarray(query, dtype=np.float32).reshape(-1)
    relevant = stored_vectors(store, feedback.relevant)
    not_relevant = stored_vectors(store, feedback.not_relevant)
    return rocchio(query, relevant, not_relevant)
