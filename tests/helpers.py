"""Helpers the test modules share: the app in-process (ASGI, lifespan included) or under a real
uvicorn server on a free port of 127.0.0.1.

Plain functions rather than fixtures, so that module-scoped fixtures and single tests can use
them alike (`async with running_app(settings) as client`, `with served(app) as base_url`).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import uvicorn


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def asgi_client(
    app: Any, base_url: str = "http://test", headers: dict[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` over the ASGI transport, inside the app's lifespan."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url=base_url, headers=headers
        ) as http:
            yield http


@asynccontextmanager
async def running_app(
    settings: Any,
    *,
    poll_seconds: float = 0.1,
    base_url: str = "http://test",
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app of `settings` (create_app's other arguments in `kwargs`), lifespan included."""
    from service.app import create_app

    app = create_app(settings, poll_seconds=poll_seconds, **kwargs)
    async with asgi_client(app, base_url, headers) as http:
        yield http


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # runs in a thread: leave signals to pytest
        pass


@contextmanager
def served(app: Any, start_timeout: float = 60.0, **config: Any) -> Iterator[str]:
    """`app` under a real uvicorn server (in a thread) on a free port of 127.0.0.1; yields its
    base URL. `config` goes to `uvicorn.Config` (e.g. `timeout_keep_alive`)."""
    port = free_port()
    config.setdefault("log_level", "warning")
    server = _ThreadServer(uvicorn.Config(app, host="127.0.0.1", port=port, **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
