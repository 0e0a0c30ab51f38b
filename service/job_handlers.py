"""What each job kind does: an evaluation, or an indexing run, on the worker that claimed it.

Paths were checked by the API; they are checked again here against this worker's own data
root, since a job row is input too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indexer.options import EvaluateOptions, IndexOptions
from indexer.scenes import TileOptions
from rsir_common.settings import Settings
from service.runner import Handler, JobContext, JobOutcome
from service.search_engine import SearchEngine
from service.security import resolve_inside


def job_dir(settings: Settings, job_id: int) -> Path:
    """Where a job writes its files (results.json, split.json, plots)."""
    return Path(settings.index_dir) / "jobs" / str(job_id)


def tile_options(tiles: dict[str, Any] | None) -> TileOptions | None:
    """An index job's `tiles` parameters as the indexer's options (SceneError if invalid)."""
    if not tiles:
        return None
    bands = tuple(tiles["bands"]) if tiles.get("bands") else None
    return TileOptions(**{**tiles, "bands": bands})


def make_handlers(settings: Settings, retrieval: SearchEngine) -> dict[str, Handler]:
    """Handlers by job kind, bound to this worker's settings and its search engine (whose
    embedder the jobs use, and which serves what an index job adds)."""

    def evaluation(ctx: JobContext) -> JobOutcome:
        from indexer.evaluate import evaluate_retrieval

        params = ctx.claim.params
        checkpoint = retrieval.embedder_checkpoint_for(params.get("model"))
        root = resolve_inside(params["root"], settings.data_root)
        out_dir = job_dir(settings, ctx.claim.id)
        options = EvaluateOptions.from_settings(
            settings,
            dataset=params["dataset"],
            data_root=root,
            protocol=params.get("protocol", "split"),
            seed=params.get("seed"),
            per_class=params.get("per_class"),
        )
        cache_dir = settings.resolved_cache_dir()
        results = evaluate_retrieval(
            checkpoint, out_dir, options, cache_dir=cache_dir, progress=ctx.report
        )
        plot = out_dir / "pr_curve.png"
        return JobOutcome(results, plot.read_bytes() if plot.is_file() else None)

    def index(ctx: JobContext) -> JobOutcome:
        from indexer.pipeline import index_source

        params = ctx.claim.params
        checkpoint = retrieval.embedder_checkpoint_for(None)
        source = resolve_inside(params["source"], settings.data_root)
        # The job's factory, if it names one; embedded on this worker (never on Ray).
        factory = params.get("factory") or settings.index_factory
        options = IndexOptions.from_settings(settings, index_factory=factory, ray_address=None)
        tiles = tile_options(params.get("tiles"))
        summary = index_source(source, checkpoint, options, tiles=tiles, progress=ctx.report)
        retrieval.refresh_index()
        return JobOutcome(summary.to_dict())

    return {"evaluation": evaluation, "index": index}
