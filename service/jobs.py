"""Job rows: create, claim, heartbeat, finish, and reap the jobs of dead workers.

Every state change is one conditional UPDATE (`WHERE status = ... AND worker_id = ...`), so two
workers can never both own a job and a worker that lost its lease cannot overwrite the outcome.
Claiming uses `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL (several workers claim in
parallel without waiting on each other); on SQLite, which has no row locks, the conditional
UPDATE alone decides the race.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session

from indexer.db import JobRow, JobStatus, utcnow

log = logging.getLogger(__name__)


class JobLostError(RuntimeError):
    """This worker no longer owns the job (its lease expired and someone else took it over)."""


@dataclass(frozen=True)
class Claim:
    """A job this worker now owns."""

    id: int
    kind: str
    params: dict[str, Any]
    attempt: int
    max_attempts: int


class JobStore:
    """Job persistence over one engine; safe to share between threads."""

    def __init__(self, engine: Engine, lease_seconds: float, max_attempts: int) -> None:
        self.engine = engine
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts

    # --- API side -----------------------------------------------------------------------

    def create(self, kind: str, params: dict[str, Any]) -> JobRow:
        """Queue a job; returns the stored row."""
        with Session(self.engine, expire_on_commit=False) as session:
            row = JobRow(
                kind=kind,
                status=JobStatus.QUEUED,
                params=params,
                progress=0.0,
                attempts=0,
                max_attempts=self.max_attempts,
                created_at=utcnow(),
            )
            session.add(row)
            session.commit()
            return row

    def get(self, job_id: int, kind: str | None = None) -> JobRow | None:
        """One job (of `kind` when given), or None."""
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.get(JobRow, job_id)
            if row is None or (kind is not None and row.kind != kind):
                return None
            return row

    def list(self, kind: str, limit: int = 100) -> list[JobRow]:
        """Newest first."""
        with Session(self.engine, expire_on_commit=False) as session:
            stmt = select(JobRow).where(JobRow.kind == kind).order_by(JobRow.id.desc()).limit(limit)
            return list(session.scalars(stmt))

    def artifact(self, job_id: int, kind: str | None = None) -> bytes | None:
        """The job's stored PNG (PR curve), if any."""
        with Session(self.engine) as session:
            stmt = select(JobRow.artifact_png).where(JobRow.id == job_id)
            if kind is not None:
                stmt = stmt.where(JobRow.kind == kind)
            return session.scalar(stmt)

    def delete(self, job_id: int, kind: str) -> bool:
        """Delete a job that is not running; False if there is no such finished or queued job."""
        with Session(self.engine) as session:
            result = session.execute(
                delete(JobRow).where(
                    JobRow.id == job_id, JobRow.kind == kind, JobRow.status != JobStatus.RUNNING
                )
            )
            session.commit()
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def counts(self) -> dict[str, int]:
        """Jobs per status (for /metrics)."""
        with Session(self.engine) as session:
            rows = session.execute(select(JobRow.status, func.count()).group_by(JobRow.status))
            return {status: int(n) for status, n in rows}

    # --- worker side --------------------------------------------------------------------

    def claim(self, worker_id: str, kinds: tuple[str, ...] | None = None) -> Claim | None:
        """Take the oldest queued job, or None. Never gives one job to two workers."""
        now = utcnow()
        with Session(self.engine) as session:
            candidates = select(JobRow.id).where(JobRow.status == JobStatus.QUEUED)
            if kinds:
                candidates = candidates.where(JobRow.kind.in_(kinds))
            candidates = candidates.order_by(JobRow.id).limit(1)
            if self.engine.dialect.name == "postgresql":
                candidates = candidates.with_for_update(skip_locked=True)
            job_id = session.scalar(candidates)
            if job_id is None:
                return None
            result = session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED)
                .values(
                    status=JobStatus.RUNNING,
                    worker_id=worker_id,
                    attempts=JobRow.attempts + 1,
                    lease_expires_at=now + self.lease,
                    heartbeat_at=now,
                    started_at=now,
                    progress=0.0,
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()  # another worker won the race (SQLite)
                return None
            row = session.get(JobRow, job_id)
            session.commit()
            assert row is not None
            return Claim(row.id, row.kind, dict(row.params), row.attempts, row.max_attempts)

    def heartbeat(self, job_id: int, worker_id: str, progress: float | None = None) -> None:
        """Extend the lease (and store progress); JobLostError if the job is no longer ours."""
        now = utcnow()
        values: dict[str, Any] = {"lease_expires_at": now + self.lease, "heartbeat_at": now}
        if progress is not None:
            values["progress"] = max(0.0, min(100.0, float(progress)))
        self._owned_update(job_id, worker_id, values)

    def finish(
        self,
        job_id: int,
        worker_id: str,
        results: dict[str, Any],
        artifact_png: bytes | None = None,
    ) -> None:
        """Mark done with its results."""
        values: dict[str, Any] = {
            "status": JobStatus.DONE,
            "progress": 100.0,
            "results": results,
            "error": None,
            "finished_at": utcnow(),
            "lease_expires_at": None,
        }
        if artifact_png is not None:
            values["artifact_png"] = artifact_png
        self._owned_update(job_id, worker_id, values)

    def fail(self, job_id: int, worker_id: str, error: str) -> None:
        """Mark failed with the reason (a job that raised is not retried: it would raise again)."""
        self._owned_update(
            job_id,
            worker_id,
            {
                "status": JobStatus.FAILED,
                "error": error,
                "finished_at": utcnow(),
                "lease_expires_at": None,
            },
        )

    def release(self, job_id: int, worker_id: str, reason: str) -> None:
        """Give a job back to the queue on an orderly shutdown, without spending an attempt."""
        self._owned_update(
            job_id,
            worker_id,
            {
                "status": JobStatus.QUEUED,
                "worker_id": None,
                "lease_expires_at": None,
                "attempts": JobRow.attempts - 1,
                "error": reason,
            },
        )

    def reap_expired(self, now: datetime | None = None) -> int:
        """Requeue or fail running jobs whose worker stopped heartbeating. Returns how many.

        Called by every worker before it claims and by the API when it reads jobs, so a job of a
        dead worker leaves `running` as soon as anyone looks, even with no worker left alive.
        """
        now = now or utcnow()
        expired = (JobRow.status == JobStatus.RUNNING, JobRow.lease_expires_at < now)
        with Session(self.engine) as session:
            failed = session.execute(
                update(JobRow)
                .where(*expired, JobRow.attempts >= JobRow.max_attempts)
                .values(
                    status=JobStatus.FAILED,
                    finished_at=now,
                    lease_expires_at=None,
                    error=(
                        "worker "
                        + func.coalesce(JobRow.worker_id, "?")
                        + " stopped heartbeating (lease expired); no attempts left"
                    ),
                )
                .execution_options(synchronize_session=False)
            )
            requeued = session.execute(
                update(JobRow)
                .where(*expired, JobRow.attempts < JobRow.max_attempts)
                .values(
                    status=JobStatus.QUEUED,
                    lease_expires_at=None,
                    progress=0.0,
                    error=(
                        "worker "
                        + func.coalesce(JobRow.worker_id, "?")
                        + " stopped heartbeating (lease expired); retrying"
                    ),
                    worker_id=None,
                )
                .execution_options(synchronize_session=False)
            )
            session.commit()
        n_failed = int(failed.rowcount or 0)  # type: ignore[attr-defined]
        n_requeued = int(requeued.rowcount or 0)  # type: ignore[attr-defined]
        if n_failed or n_requeued:
            log.warning("reaped expired jobs: %d requeued, %d failed", n_requeued, n_failed)
        return n_failed + n_requeued

    def _owned_update(self, job_id: int, worker_id: str, values: dict[str, Any]) -> None:
        with Session(self.engine) as session:
            result = session.execute(
                update(JobRow)
                .where(
                    JobRow.id == job_id,
                    JobRow.worker_id == worker_id,
                    JobRow.status == JobStatus.RUNNING,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            session.commit()
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise JobLostError(f"job {job_id} is no longer owned by worker {worker_id}")
