"""Relevance feedback through the real CLI, on a real index of real UCM images.

Marking the same-class hits of a query's top-k relevant (and the others not relevant) moves the
query toward its class: the next top-k holds more images of that class.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.feedback import Feedback
from indexer.options import IndexOptions
from indexer.pipeline import index_source
from rsir.cli import app
from tests.conftest import ucm_files

pytestmark = pytest.mark.slow
runner = CliRunner()
K = 10
# Queries whose top-10 mixes classes under the small trained embedder (room to improve).
QUERIES = (("beach", 0), ("beach", 1), ("harbor", 0), ("harbor", 1))


@pytest.fixture(scope="module")
def index_dir(
    small_folder: Path, trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("feedback-index")
    summary = index_source(
        small_folder,
        trained_checkpoint,
        IndexOptions(index_dir=out, batch_size=16, num_workers=0, device="cpu"),
    )
    assert summary.added == 40
    return out


def cli_search(query: Path, index_dir: Path, *extra: str) -> list[dict]:
    args = ["search", str(query), "--index-dir", str(index_dir), "-k", str(K), "--json", *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    hits: list[dict] = json.loads(result.output)
    return hits


def test_cli_feedback_raises_same_class_hits(small_folder: Path, index_dir: Path) -> None:
    before = after = 0
    for cls, n in QUERIES:
        query = small_folder / cls / ucm_files(cls, n + 1)[n].name
        hits = cli_search(query, index_dir)
        relevant = [h["id"] for h in hits if h["label"] == cls]
        others = [h["id"] for h in hits if h["label"] != cls]
        assert len(relevant) >= 2 and others  # a mixed top-k: something to refine
        moved = cli_search(
            query, index_dir,
            "--relevant", ",".join(map(str, relevant)),
            "--not-relevant", ",".join(map(str, others)),
        )  # fmt: skip
        assert len(moved) == K
        before += len(relevant)
        after += sum(h["label"] == cls for h in moved)
    assert after > before, (before, after)


def test_cli_feedback_refuses_unknown_and_malformed_ids(
    small_folder: Path, index_dir: Path
) -> None:
    query = small_folder / "beach" / ucm_files("beach", 1)[0].name
    base = ["search", str(query), "--index-dir", str(index_dir)]
    unknown = runner.invoke(app, [*base, "--relevant", "1,99999"])
    assert unknown.exit_code != 0 and "99999" in unknown.output
    malformed = runner.invoke(app, [*base, "--not-relevant", "3,x"])
    assert malformed.exit_code != 0 and "'x' is not an image id" in malformed.output
    both = runner.invoke(app, [*base, "--relevant", "3", "--not-relevant", "3"])
    assert both.exit_code != 0 and "both relevant and not relevant" in both.output


def test_feedback_parse() -> None:
    assert Feedback.parse(" 3, 17,3 ", None) == Feedback((3, 17), ())
    assert not Feedback.parse("", None)
    for bad in ("0", "-2", "1.5", "1,,2", "²", str(2**31), "9" * 5000):
        with pytest.raises(ValueError):
            Feedback.parse(bad, None)
