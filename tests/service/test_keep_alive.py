"""Idle connections are closed (issue 8, defect 20): real sockets against the real app under a
real uvicorn server configured as `rsir serve` configures it (service/serving.py)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI

from rsir_common.settings import Settings
from service.app import create_app
from service.serving import server_options
from tests.helpers import served

if TYPE_CHECKING:
    from conftest import World

TIMEOUT = 1  # RSIR_KEEP_ALIVE_TIMEOUT of these servers, seconds


def connect(base_url: str) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.settimeout(10)
    return sock


def read_response(sock: socket.socket) -> bytes:
    """One whole response (headers and a Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def seconds_until_closed(sock: socket.socket) -> float:
    """Seconds until the server closes the connection (recv returns b'' or a reset)."""
    start = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[str]:
    settings = world.settings(keep_alive_timeout=TIMEOUT)
    with served(create_app(settings, run_jobs=False), **server_options(settings)) as base:
        yield base


def test_the_keep_alive_timeout_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSIR_KEEP_ALIVE_TIMEOUT", "7")
    assert server_options(Settings())["timeout_keep_alive"] == 7


def test_an_idle_keep_alive_connection_is_closed(server: str) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        assert TIMEOUT * 0.5 < seconds_until_closed(sock) < TIMEOUT + 3


def test_a_connection_that_never_sends_a_request_is_closed(server: str) -> None:
    with connect(server) as sock:
        assert seconds_until_closed(sock) < TIMEOUT + 3


def test_a_request_head_that_stalls_is_closed(server: str) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        time.sleep(TIMEOUT * 0.5)
        sock.sendall(b"Host: t\r\n")  # trickling bytes do not extend the deadline
        assert seconds_until_closed(sock) < TIMEOUT + 3


def test_a_request_slower_than_the_timeout_is_answered_and_the_next_one_too() -> None:
    app = FastAPI()

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(TIMEOUT * 2.5)
        return {"status": "done"}

    settings = Settings(keep_alive_timeout=TIMEOUT)
    with served(app, **server_options(settings)) as base, connect(base) as sock:
        time.sleep(TIMEOUT * 0.5)  # the opening deadline has run half
        for _ in range(2):
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200")
