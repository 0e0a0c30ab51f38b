"""What the API's lifespan loads once and hands to every request.

Built in a worker thread at start-up (loading models takes seconds), never at import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from indexer.db import is_embedded, make_engine, schema_problem, upgrade_db
from rsir_common.settings import Settings
from service.backend import Backend, LocalBackend, RemoteBackend
from service.jobs import JobStore
from service.metrics import Metrics
from service.runtime import WorkerRuntime
from service.sources import SourceCache

log = logging.getLogger(__name__)


def prepare_db(settings: Settings) -> tuple[Engine, str | None]:
    """Engine for the metadata DB; SQLite (embedded default) is migrated here, others checked."""
    url = settings.resolved_db_url()
    if is_embedded(url):
        upgrade_db(url)
    engine = make_engine(url)
    try:
        return engine, schema_problem(engine)
    except Exception as exc:
        return engine, f"metadata DB unreachable: {exc}"


@dataclass
class AppState:
    """Everything a request may use; one per app."""

    settings: Settings
    engine: Engine
    metrics: Metrics
    jobs: JobStore
    backend: Backend
    runtime: WorkerRuntime | None
    db_problem: str | None
    sources: SourceCache

    @classmethod
    def build(
        cls, settings: Settings, metrics: Metrics, run_jobs: bool, poll_seconds: float
    ) -> AppState:
        """Open the DB, then load the in-process worker or connect to the remote one."""
        engine, problem = prepare_db(settings)
        if problem:
            log.error("%s", problem)
        jobs = JobStore(engine, settings.job_lease_seconds, settings.job_max_attempts)
        runtime: WorkerRuntime | None = None
        backend: Backend
        if settings.worker_url:
            backend = RemoteBackend(settings.worker_url, settings.api_key)
            log.info("inference worker at %s", settings.worker_url)
        else:
            runtime = WorkerRuntime(
                settings, engine, metrics, jobs, run_jobs=run_jobs,
                poll_seconds=poll_seconds, db_problem=problem,
            )  # fmt: skip
            runtime.start()
            backend = LocalBackend(runtime.core)
        sources = SourceCache(settings.max_pixels)
        return cls(settings, engine, metrics, jobs, backend, runtime, problem, sources)

    def close(self) -> None:
        """Stop the in-process worker and close DB connections."""
        if self.runtime is not None:
            self.runtime.stop()
        self.engine.dispose()
