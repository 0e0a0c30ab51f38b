"""The worker side as one object: the search engine and classifiers plus the job loop.

The API builds one in its own process (embedded default); `rsir worker` builds one in a
separate process and puts its internal HTTP API in front of it.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine

from indexer.db import schema_problem
from rsir_common.settings import Settings
from service.inference import InferenceCore
from service.job_handlers import make_handlers
from service.jobs import JobStore
from service.metrics import Metrics
from service.runner import JobRunner

log = logging.getLogger(__name__)

INDEX_REFRESH_SECONDS = 5.0
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0


def current_db_problem(engine: Engine) -> str | None:
    """None when the DB answers at the code's schema, else why not (asked now, not at start)."""
    try:
        return schema_problem(engine)
    except Exception as exc:
        return f"metadata DB unreachable: {str(exc).splitlines()[0]}"


class WorkerRuntime:
    """Loaded models + index + the job loop. `start()` once, `stop()` at exit."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        metrics: Metrics,
        jobs: JobStore,
        run_jobs: bool = True,
        poll_seconds: float = 1.0,
        db_problem: str | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.db_problem = db_problem  # None once the DB answers at the code's schema
        self.core = InferenceCore(settings, engine, metrics)
        self.jobs = jobs
        self._last_refresh = time.monotonic()
        self._stopping = threading.Event()
        self._recovery: threading.Thread | None = None
        self.runner: JobRunner | None = None
        if run_jobs:
            self.runner = JobRunner(
                jobs,
                make_handlers(settings, self.core.retrieval),
                poll_seconds=poll_seconds,
                on_idle=self._idle,
            )

    def start(self) -> None:
        """Load models and index, then start claiming jobs; what failed is retried with backoff."""
        self.core.load()
        if self.db_problem is None:
            self._start_jobs()
        retrieval = self.core.retrieval
        if self.db_problem is not None or (retrieval.store is None and retrieval.index_retryable):
            self._recovery = threading.Thread(
                target=self._recover, name="rsir-recover", daemon=True
            )
            self._recovery.start()

    def _start_jobs(self) -> None:
        if self.runner is not None:
            self.runner.start()
            log.info("job loop started as worker %s", self.runner.worker_id)

    def _recover(self) -> None:
        """Retry the DB and the index with exponential backoff (as the FastAPI template's
        pre-start retries the DB), until both are there or the failure is permanent."""
        delay = RETRY_FIRST_SECONDS
        while not self._stopping.wait(delay):
            if self.db_problem is not None:
                self.db_problem = current_db_problem(self.engine)
                if self.db_problem is None:
                    log.info("metadata DB is back")
                    self._start_jobs()
                else:
                    log.warning("%s; retrying in %.0f s", self.db_problem, delay)
            retrieval = self.core.retrieval
            if retrieval.store is None and retrieval.index_retryable and retrieval.refresh_index():
                log.info("index loaded")
            if self.db_problem is None and (
                retrieval.store is not None or not retrieval.index_retryable
            ):
                return
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    def stop(self) -> None:
        """Release any running job, stop the batchers."""
        self._stopping.set()
        if self.runner is not None:
            self.runner.stop()
        self.core.close()

    def wake(self) -> None:
        """A job was queued in this process: look now rather than at the next poll."""
        if self.runner is not None:
            self.runner.wake()

    def _idle(self) -> None:
        """Between jobs: pick up an index written by another process (`rsir index`)."""
        now = time.monotonic()
        if now - self._last_refresh >= INDEX_REFRESH_SECONDS:
            self._last_refresh = now
            if self.core.retrieval.refresh_index():
                log.info("index reloaded")
