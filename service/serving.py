"""Run the API or the inference worker under uvicorn (`rsir serve`, `rsir worker`, the demo)."""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from rsir_common.settings import Settings


class IdleClosingProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with one more rule: the keep-alive timeout also bounds the
    wait for a request's head. uvicorn arms it only after a response and drops it on the
    first byte, so a connection that never sends a request, or sends half a head and stalls,
    would stay open for good; here the timer starts when the connection opens (as after each
    response) and stops only when a whole request head has arrived."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def data_received(self, data: bytes) -> None:
        deadline, self.timeout_keep_alive_task = self.timeout_keep_alive_task, None
        super().data_received(data)
        if deadline is None:
            return
        if self.conn.their_state is h11.IDLE and self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = deadline  # the head is not complete: it still stands
        else:
            deadline.cancel()


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn options every server of the project runs with (API, worker, tests)."""
    return {
        "http": IdleClosingProtocol,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "log_level": settings.log_level.lower(),
    }


def run_server(settings: Settings) -> None:
    """Run the API under uvicorn until interrupted; prints the URL to open."""
    import uvicorn

    from service.app import create_app

    api = create_app(settings)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    print(f"rsir service: http://{host}:{settings.port}/ (API docs at /docs)", flush=True)
    uvicorn.run(api, host=settings.host, port=settings.port, **server_options(settings))


def run_worker(settings: Settings) -> None:
    """Run the inference worker (internal API on worker_host:worker_port + job loop)."""
    import uvicorn

    from service.worker import create_worker_app

    worker = create_worker_app(settings)
    print(f"rsir worker: http://{settings.worker_host}:{settings.worker_port}/internal", flush=True)
    uvicorn.run(
        worker, host=settings.worker_host, port=settings.worker_port, **server_options(settings)
    )
