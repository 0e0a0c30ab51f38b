"""Run the API or the inference worker under uvicorn (`rsir serve`, `rsir worker`, the demo)."""

from __future__ import annotations

from rsir_common.settings import Settings


def run_server(settings: Settings) -> None:
    """Run the API under uvicorn until interrupted; prints the URL to open."""
    import uvicorn

    from service.app import create_app

    api = create_app(settings)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    print(f"rsir service: http://{host}:{settings.port}/ (API docs at /docs)", flush=True)
    uvicorn.run(api, host=settings.host, port=settings.port, log_level=settings.log_level.lower())


def run_worker(settings: Settings) -> None:
    """Run the inference worker (internal API on worker_host:worker_port + job loop)."""
    import uvicorn

    from service.worker import create_worker_app

    worker = create_worker_app(settings)
    print(f"rsir worker: http://{settings.worker_host}:{settings.worker_port}/internal", flush=True)
    uvicorn.run(
        worker,
        host=settings.worker_host,
        port=settings.worker_port,
        log_level=settings.log_level.lower(),
    )
