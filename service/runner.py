"""The job loop of a worker: reap dead workers' jobs, claim one, run it under a heartbeat.

A job handler gets a `JobContext`; it reports progress through it, and the context raises
`JobLostError` (or `JobInterrupted` on shutdown) from inside the progress call, which is the
only place long-running library code gives control back to us.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.jobs import Claim, JobLostError, JobStore

log = logging.getLogger(__name__)


class JobInterruptedError(RuntimeError):
    """The worker is shutting down; the job goes back to the queue."""


@dataclass
class JobOutcome:
    """What a handler returns: JSON results and an optional PNG."""

    results: dict[str, Any]
    artifact_png: bytes | None = None


@dataclass
class JobContext:
    """Handed to a handler: the claim, and a thread-safe progress sink."""

    claim: Claim
    stop: threading.Event
    progress: float = 0.0
    lost: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self, done: int, total: int) -> None:
        """Progress callback (done of total); raises when the job must stop."""
        with self._lock:
            self.progress = 100.0 * done / total if total > 0 else 0.0
        self.check()

    def check(self) -> None:
        """Raise if this worker lost the job or is shutting down."""
        if self.lost is not None:
            raise JobLostError(self.lost)
        if self.stop.is_set():
            raise JobInterruptedError("worker shutting down")


Handler = Callable[[JobContext], JobOutcome]


def make_worker_id() -> str:
    """host:pid:random — names the owner in leases and in error messages."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class JobRunner:
    """Runs jobs one at a time on a background thread until stopped."""

    def __init__(
        self,
        store: JobStore,
        handlers: dict[str, Handler],
        poll_seconds: float = 1.0,
        worker_id: str | None = None,
        on_idle: Callable[[], object] | None = None,
    ) -> None:
        self.store = store
        self.on_idle = on_idle
        self.handlers = handlers
        self.poll_seconds = poll_seconds
        self.worker_id = worker_id or make_worker_id()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: int | None = None

    def start(self) -> None:
        """Start the loop thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rsir-jobs", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Look for work now (called when the API queues a job in this process)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to stop; a running job is released back to the queue."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_once()
            except Exception:  # the DB may be briefly unreachable; keep the worker alive
                log.exception("job loop error")
                ran = False
            if not ran:
                if self.on_idle is not None:
                    try:
                        self.on_idle()
                    except Exception:
                        log.exception("idle hook failed")
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    def run_once(self) -> bool:
        """Reap, claim and run at most one job. Returns whether a job ran."""
        self.store.reap_expired()
        claim = self.store.claim(self.worker_id, tuple(self.handlers))
        if claim is None:
            return False
        self.current = claim.id
        try:
            self._run(claim)
        finally:
            self.current = None
        return True

    def _run(self, claim: Claim) -> None:
        log.info("job %d (%s) attempt %d started", claim.id, claim.kind, claim.attempt)
        ctx = JobContext(claim, self._stop)
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(ctx, beat_stop), name=f"rsir-job-{claim.id}", daemon=True
        )
        beat.start()
        try:
            outcome = self.handlers[claim.kind](ctx)
            ctx.check()
        except JobLostError as exc:
            log.warning("job %d lost: %s", claim.id, exc)
            return
        except JobInterruptedError:
            self._safely(self.store.release, claim.id, self.worker_id, "interrupted by shutdown")
            log.info("job %d released on shutdown", claim.id)
            return
        except Exception as exc:
            log.exception("job %d failed", claim.id)
            self._safely(self.store.fail, claim.id, self.worker_id, f"{type(exc).__name__}: {exc}")
            return
        finally:
            beat_stop.set()
            beat.join()
        self._safely(
            self.store.finish, claim.id, self.worker_id, outcome.results, outcome.artifact_png
        )
        log.info("job %d done", claim.id)

    def _heartbeat(self, ctx: JobContext, done: threading.Event) -> None:
        interval = max(self.store.lease.total_seconds() / 3.0, 0.05)
        while not done.wait(interval):
            try:
                self.store.heartbeat(ctx.claim.id, self.worker_id, ctx.progress)
            except JobLostError as exc:
                ctx.lost = str(exc)
                return
            except Exception:  # a DB hiccup: try again next beat, the lease has slack
                log.exception("heartbeat of job %d failed", ctx.claim.id)

    def _safely(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except JobLostError as exc:
            log.warning("%s", exc)
