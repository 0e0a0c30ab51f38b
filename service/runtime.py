"""The worker side as one object: the inference core plus the job loop.

The API builds one in its own process (embedded default); `rsir worker` builds one in a
separate process and puts its internal HTTP API in front of it.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine

from rsir.settings import Settings
from service.inference import InferenceCore
from service.job_handlers import make_handlers
from service.jobs import JobStore
from service.metrics import Metrics
from service.runner import JobRunner

log = logging.getLogger(__name__)

INDEX_REFRESH_SECONDS = 5.0


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
    ) -> None:
        self.settings = settings
        self.core = InferenceCore(settings, engine, metrics)
        self.jobs = jobs
        self._last_refresh = time.monotonic()
        self.runner: JobRunner | None = None
        if run_jobs:
            self.runner = JobRunner(
                jobs,
                make_handlers(settings, self.core),
                poll_seconds=poll_seconds,
                on_idle=self._idle,
            )

    def start(self) -> None:
        """Load models and index, then start claiming jobs."""
        self.core.load()
        if self.runner is not None:
            self.runner.start()
            log.info("job loop started as worker %s", self.runner.worker_id)

    def stop(self) -> None:
        """Release any running job, stop the batchers."""
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
            if self.core.refresh_index():
                log.info("index reloaded")
