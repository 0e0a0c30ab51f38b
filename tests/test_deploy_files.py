"""The compose stack validates with the Compose CLI (no engine needed) and has its parts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) when present, else the standalone `docker-compose`."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.fixture
def compose() -> list[str]:
    command = compose_command()
    if command is None:
        message = "no Compose CLI (docker compose or docker-compose) on this machine"
        if os.environ.get("CI"):
            pytest.fail(message + "; scripts/test.sh installs Debian's docker-compose")
        pytest.skip(message)
    return command


def run_compose(
    compose: list[str], *args: str, key: str | None = "k" * 32
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RSIR_API_KEY"}
    if key is not None:
        env["RSIR_API_KEY"] = key
    return subprocess.run([*compose, *args], cwd=REPO, env=env, capture_output=True, text=True)


def test_compose_config_is_valid_and_has_the_stack(compose: list[str]) -> None:
    result = run_compose(compose, "config", "-q")
    assert result.returncode == 0, result.stderr
    services = run_compose(compose, "config", "--services").stdout.split()
    assert {"postgres", "api", "worker"} <= set(services)
    rendered = run_compose(compose, "config").stdout
    assert "driver: nvidia" in rendered and "capabilities:" in rendered
    assert "healthcheck" in rendered and "postgresql+psycopg://" in rendered


def test_compose_refuses_to_start_without_an_api_key(compose: list[str]) -> None:
    result = run_compose(compose, "config", key=None)
    assert result.returncode != 0
    assert "RSIR_API_KEY" in result.stderr


def test_dockerfiles_pin_the_torch_build() -> None:
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        text = (REPO / "docker" / name).read_text()
        assert "torch==2.14.1" in text and "torchvision==0.29.1" in text, name


def test_images_can_talk_to_milvus() -> None:
    """RSIR_VECTOR_ENGINE=milvus (the compose profile) needs pymilvus inside both images."""
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        text = (REPO / "docker" / name).read_text()
        assert re.search(r'pip install "\.\[[a-z,]*milvus[a-z,]*\]"', text), name


def test_images_install_the_project_plainly() -> None:
    """A plain `pip install .` (the wheel carries the migrations and web files, tests/
    test_install.py), never editable, and no folder copied in beside it for `rsir db upgrade`."""
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        text = (REPO / "docker" / name).read_text()
        installs = re.findall(r"pip install [^\n]*\.\[", text)
        assert installs and all(" -e " not in i and "--editable" not in i for i in installs), name
        assert not re.search(r"^COPY\s.*migrations", text, re.MULTILINE), name
        assert "rm -rf /src" in text, name  # only the installed copy stays in the image


def test_compose_milvus_profile_adds_a_milvus_server(compose: list[str]) -> None:
    result = run_compose(compose, "--profile", "milvus", "config", "-q")
    assert result.returncode == 0, result.stderr
    services = run_compose(compose, "--profile", "milvus", "config", "--services").stdout.split()
    assert {"milvus", "etcd", "minio", "api", "worker"} <= set(services)
    rendered = run_compose(compose, "--profile", "milvus", "config").stdout
    assert "RSIR_MILVUS_URI: http://milvus:19530" in rendered
    assert "profiles:" in rendered  # only started with --profile milvus
