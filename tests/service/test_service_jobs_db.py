"""Job rows on SQLite and PostgreSQL: migrations, claiming, leases, reaping, the job loop."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from indexer.db import JobRow, make_engine, utcnow
from service.cli import app as service_cli
from service.jobs import JobLostError, JobStore
from service.runner import JobContext, JobOutcome, JobRunner


def store_for(url: str, lease: float = 30.0, attempts: int = 2) -> JobStore:
    return JobStore(make_engine(url), lease_seconds=lease, max_attempts=attempts)


def test_db_upgrade_from_empty(db_url: str) -> None:
    result = CliRunner().invoke(service_cli, ["db", "upgrade", "--db-url", db_url])
    assert result.exit_code == 0, result.output
    assert "head" in result.output
    engine = make_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    assert {"images", "index_versions", "jobs", "alembic_version"} <= tables
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == (
            "0004_segments"  # the newest migration
        )
    columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
    assert {"status", "progress", "attempts", "lease_expires_at", "error", "results"} <= columns
    again = CliRunner().invoke(service_cli, ["db", "upgrade", "--db-url", db_url])
    assert again.exit_code == 0, again.output
    engine.dispose()


def test_timestamps_come_back_in_utc(migrated_db: str) -> None:
    store = store_for(migrated_db)
    row = store.create("evaluation", {"dataset": "ucm"})
    loaded = store.get(row.id)
    assert loaded is not None and loaded.created_at.utcoffset() == timedelta(0)
    assert abs((loaded.created_at - utcnow()).total_seconds()) < 60


def test_each_job_is_claimed_by_exactly_one_worker(migrated_db: str) -> None:
    store = store_for(migrated_db)
    ids = [store.create("index", {"n": i}).id for i in range(24)]
    claimed: dict[str, list[int]] = {}
    start = threading.Barrier(4)

    def worker(name: str) -> None:
        mine = claimed.setdefault(name, [])
        start.wait()
        while (claim := store.claim(name)) is not None:
            mine.append(claim.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    everything = [job for jobs in claimed.values() for job in jobs]
    assert sorted(everything) == ids  # none lost, none twice
    with Session(store.engine) as session:
        rows = session.scalars(select(JobRow)).all()
    assert all(r.status == "running" and r.attempts == 1 and r.worker_id for r in rows)
    owners = {r.id: r.worker_id for r in rows}
    for name, jobs in claimed.items():
        assert all(owners[j] == name for j in jobs)


def test_claim_takes_oldest_of_the_wanted_kind(migrated_db: str) -> None:
    store = store_for(migrated_db)
    first = store.create("evaluation", {})
    store.create("index", {})
    store.create("evaluation", {})
    claim = store.claim("w", kinds=("evaluation",))
    assert claim is not None and claim.id == first.id and claim.kind == "evaluation"
    assert claim.attempt == 1 and claim.max_attempts == 2


def test_heartbeat_progress_and_ownership(migrated_db: str) -> None:
    store = store_for(migrated_db, lease=30)
    job = store.create("index", {})
    claim = store.claim("owner")
    assert claim is not None
    before = store.get(job.id)
    assert before is not None and before.lease_expires_at is not None
    time.sleep(0.05)
    store.heartbeat(job.id, "owner", 42.5)
    after = store.get(job.id)
    assert after is not None and after.progress == 42.5
    assert after.lease_expires_at is not None and after.lease_expires_at > before.lease_expires_at
    with pytest.raises(JobLostError):
        store.heartbeat(job.id, "intruder", 99.0)
    with pytest.raises(JobLostError):
        store.finish(job.id, "intruder", {"stolen": True})
    store.finish(job.id, "owner", {"ok": 1}, artifact_png=b"\x89PNG fake")
    done = store.get(job.id)
    assert done is not None and done.status == "done" and done.results == {"ok": 1}
    assert done.progress == 100.0 and store.artifact(job.id) == b"\x89PNG fake"
    with pytest.raises(JobLostError):  # a finished job cannot be finished again
        store.fail(job.id, "owner", "late")


def test_expired_leases_are_retried_then_failed_with_a_reason(migrated_db: str) -> None:
    store = store_for(migrated_db, lease=30, attempts=2)
    job = store.create("evaluation", {})
    healthy = store.create("evaluation", {})
    assert store.claim("dead-worker") is not None
    assert store.claim("live-worker") is not None
    later = utcnow() + timedelta(seconds=31)
    store.heartbeat(healthy.id, "live-worker")  # still beating: must survive the reap
    store.lease = timedelta(seconds=120)
    store.heartbeat(healthy.id, "live-worker")
    assert store.reap_expired(now=later) == 1
    row = store.get(job.id)
    assert row is not None and row.status == "queued" and row.worker_id is None
    assert row.error is not None and "dead-worker" in row.error and "retrying" in row.error
    assert store.get(healthy.id).status == "running"  # type: ignore[union-attr]
    with pytest.raises(JobLostError):  # the dead worker, if it comes back, owns nothing
        store.finish(job.id, "dead-worker", {})
    store.lease = timedelta(seconds=30)
    claim = store.claim("second-worker")
    assert claim is not None and claim.id == job.id and claim.attempt == 2
    assert store.reap_expired(now=utcnow() + timedelta(seconds=31)) == 1
    row = store.get(job.id)
    assert row is not None and row.status == "failed" and row.finished_at is not None
    assert "second-worker" in (row.error or "") and "no attempts left" in (row.error or "")


def test_release_on_shutdown_keeps_the_attempt(migrated_db: str) -> None:
    store = store_for(migrated_db)
    job = store.create("index", {})
    store.claim("w")
    store.release(job.id, "w", "interrupted by shutdown")
    row = store.get(job.id)
    assert row is not None and row.status == "queued" and row.attempts == 0


def test_runner_runs_handlers_and_records_failures(migrated_db: str, tmp_path: Path) -> None:
    store = store_for(migrated_db, lease=0.6)
    seen: list[float] = []

    def slow(ctx: JobContext) -> JobOutcome:
        for step in range(1, 6):
            time.sleep(0.2)  # longer than a heartbeat interval: the lease must be extended
            ctx.report(step, 5)
            seen.append(ctx.progress)
        return JobOutcome({"steps": 5}, b"png")

    def broken(ctx: JobContext) -> JobOutcome:
        raise FileNotFoundError(f"no data for {ctx.claim.params['name']}")

    runner = JobRunner(store, {"evaluation": slow, "index": broken}, poll_seconds=0.05)
    good = store.create("evaluation", {})
    bad = store.create("index", {"name": "x"})
    assert runner.run_once() and runner.run_once() and not runner.run_once()
    done = store.get(good.id)
    assert done is not None and done.status == "done" and done.results == {"steps": 5}
    assert done.attempts == 1 and seen == [20.0, 40.0, 60.0, 80.0, 100.0]
    failed = store.get(bad.id)
    assert failed is not None and failed.status == "failed"
    assert failed.error == "FileNotFoundError: no data for x"


def test_runner_thread_wakes_and_stops(migrated_db: str) -> None:
    store = store_for(migrated_db, lease=5)
    started = threading.Event()

    def waits(ctx: JobContext) -> JobOutcome:
        started.set()
        while True:  # until the runner stops: progress calls raise then
            time.sleep(0.02)
            ctx.report(1, 2)

    runner = JobRunner(store, {"index": waits}, poll_seconds=10)
    runner.start()
    job = store.create("index", {})
    runner.wake()
    assert started.wait(10)
    runner.stop()
    row = store.get(job.id)
    assert row is not None and row.status == "queued" and row.attempts == 0
    assert row.error == "interrupted by shutdown"
