"""Schema fuzzing: Schemathesis against the running app's own OpenAPI document.

A real uvicorn server on a free port of 127.0.0.1 serves a real index of real UCM images, on
SQLite and on PostgreSQL, and every operation is called with generated inputs with and without
the API key. Every Schemathesis check must pass: no 5xx, and every answer (status, content type,
body) as the document says. The example count is small so the run stays within minutes; the
hostile probe of issue 8 ran the same checks with 50 examples per operation.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from indexer.db import upgrade_db
from indexer.options import IndexOptions
from indexer.pipeline import index_source
from tests.helpers import served

if TYPE_CHECKING:
    from conftest import World

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("RSIR_FUZZ_EXAMPLES", "4"))
POSTGRES_URL = os.environ.get(
    "RSIR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TARGETS = [("sqlite", True), ("sqlite", False), ("postgresql", True), ("postgresql", False)]


def _postgres_schema(name: str) -> str:
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
            connection.execute(text(f'CREATE SCHEMA "{name}"'))
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    finally:
        admin.dispose()
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={name}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture(
    scope="module", params=TARGETS, ids=[f"{d}-{'key' if k else 'nokey'}" for d, k in TARGETS]
)
def fuzz_target(
    request: pytest.FixtureRequest, world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A served app over its own copy of the index: base URL and the headers to send."""
    from service.app import create_app

    db, with_key = request.param
    root = tmp_path_factory.mktemp(f"fuzz-{db}")
    index_dir = root / "index"
    db_url = None
    if db == "sqlite":
        shutil.copytree(world.index_dir, index_dir)
    else:
        db_url = _postgres_schema(f"rsir_fuzz_{os.getpid()}_{int(with_key)}")
        upgrade_db(db_url)
        index_source(
            world.collection,
            world.checkpoint,
            IndexOptions(index_dir=index_dir, db_url=db_url, num_workers=0, device="cpu"),
        )
    settings_ = world.settings(index_dir=index_dir, db_url=db_url)
    with served(create_app(settings_, run_jobs=False)) as base:
        assert httpx.get(base + "/ready", timeout=10).status_code == 200
        headers = {"X-API-Key": world.api_key} if with_key else {}
        yield {"base": base, "headers": headers, "name": f"{db}-{'key' if with_key else 'nokey'}"}


def test_every_operation_answers_as_documented(fuzz_target: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_url(fuzz_target["base"] + "/openapi.json")
    calls = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def call(case: Any) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(
                headers=fuzz_target["headers"],
                timeout=60,
                # An image API cannot state "these bytes decode" in a schema: a schema-valid
                # upload of random bytes is rightly refused (415/422), so this check is off.
                excluded_checks=[positive_data_acceptance],
            )

        try:
            call()
        except (Exception, BaseExceptionGroup) as exc:  # every operation runs; all reported
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    print(
        f"fuzz {fuzz_target['name']}: {calls} generated cases, {len(failures)} failing operations"
    )
    assert calls > 0
    assert not failures, "\n\n".join(failures)
