"""The project as installed (`pip install .`, the Docker images): what the code reads beside its
modules is package data of the wheel, not something only a source checkout has."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Run by the installed copy, with the checkout off sys.path: migrate a fresh SQLite file to head
# and show where every module of the project (and Alembic's env.py) was loaded from.
CHILD = r"""
import json, sys
from pathlib import Path

repo, target, db = (Path(p) for p in sys.argv[1:4])
assert not any(Path(p or ".").resolve() == repo for p in sys.path), sys.path

from sqlalchemy import inspect
from indexer.db import MIGRATIONS_DIR, make_engine, schema_problem, upgrade_db

upgrade_db(f"sqlite:///{db}")
engine = make_engine(f"sqlite:///{db}")
tables = sorted(inspect(engine).get_table_names())
problem = schema_problem(engine)
with engine.connect() as connection:
    version = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
engine.dispose()
files = sorted(
    str(Path(m.__file__).resolve()) for m in list(sys.modules.values())
    if getattr(m, "__file__", None)
)
print(json.dumps({
    "migrations": str(MIGRATIONS_DIR), "tables": tables, "problem": problem,
    "version": version, "files": files,
}))
"""


def _packages() -> list[str]:
    """The top-level packages the wheel carries, by pyproject's `packages.find` include."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return [pattern.removesuffix("*") for pattern in include]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install --no-deps --target` of a clean copy of the sources (the copy keeps pip's
    in-tree build/ and egg-info out of the checkout); the dependencies stay the test venv's."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules", "build", "*.egg-info")
    for package in _packages():
        shutil.copytree(REPO / package, src / package, ignore=skip)
    # Stand-ins for Leaflet, which `npm ci` puts here (scripts/setup.sh, the API image).
    leaflet = src / "service" / "vendor" / "node_modules" / "leaflet"
    (leaflet / "dist" / "images").mkdir(parents=True)
    for name in ("LICENSE", "dist/leaflet.js", "dist/leaflet.css", "dist/images/layers.png"):
        (leaflet / name).write_text("stand-in\n")
    target = root / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(target), str(src)],
        capture_output=True, text=True, cwd=root,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def test_the_installed_copy_migrates_a_fresh_db_with_its_own_migrations(
    installed: Path, tmp_path: Path
) -> None:
    import json

    from indexer.db import MIGRATIONS_DIR
    from indexer.db.migrate import _alembic_config

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = str(installed)
    db = tmp_path / "fresh" / "metadata.db"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(REPO), str(installed), str(db)],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])

    installed_migrations = Path(report["migrations"])
    assert installed_migrations.is_relative_to(installed.resolve())
    assert (installed_migrations / "env.py").is_file()
    assert (installed_migrations / "script.py.mako").is_file()
    shipped = sorted(p.name for p in (installed_migrations / "versions").glob("0*.py"))
    assert shipped == sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("0*.py"))
    # Every module of the project (those env.py imports included) came from the installed copy.
    # (The venv may live inside the checkout, as scripts/setup.sh puts it: its files are not
    # the project's.)
    venv = Path(sys.prefix).resolve()
    project = [
        f
        for f in report["files"]
        if Path(f).is_relative_to(REPO.resolve()) and not Path(f).is_relative_to(venv)
    ]
    assert not project, project

    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert report["version"] == head and report["problem"] is None
    assert {
        "images", "scenes", "index_versions", "index_segments", "index_tombstones", "jobs",
    } <= set(report["tables"])  # fmt: skip


def test_the_installed_copy_has_the_web_page_files(installed: Path) -> None:
    """Templates, static files and Leaflet (when npm has installed it) travel in the wheel, so
    the API image's map works from a plain `pip install .`."""
    service = installed / "service"
    assert (service / "templates").is_dir() and any((service / "templates").iterdir())
    for name in (p.name for p in (REPO / "service" / "static").iterdir()):
        assert (service / "static" / name).is_file(), name
    leaflet = service / "vendor" / "node_modules" / "leaflet"
    for name in ("LICENSE", "dist/leaflet.js", "dist/leaflet.css", "dist/images/layers.png"):
        assert (leaflet / name).is_file(), name
