"""`rsir export`: a checkpoint as an ONNX Runtime or OpenVINO model, checked against torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rsir.settings import get_settings

app = typer.Typer()


@app.command("export")
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Embedder or classifier checkpoint (.pt).")],
    runtime: Annotated[str, typer.Option(help="onnx or openvino.")] = "onnx",
    int8: Annotated[bool, typer.Option(help="Static int8 quantization (needs --calibration).")] = (
        False
    ),
    calibration: Annotated[
        Path | None, typer.Option(help="Folder of real images for int8 calibration.")
    ] = None,
    calibration_count: Annotated[int, typer.Option(help="Calibration images used.")] = 300,
    images: Annotated[
        Path | None,
        typer.Option(help="Real images for the parity check (default: RSIR_DATA_ROOT)."),
    ] = None,
    parity_count: Annotated[int, typer.Option(help="Parity images used.")] = 64,
) -> None:
    """Export the whole network beside the checkpoint (<stem>.exports/), check it against torch
    on real images and record the result; exit 1 when the check fails (the export is then
    recorded as failed and never used)."""
    from model.export import ExportError, export_checkpoint

    settings = get_settings()
    try:
        record, path = export_checkpoint(
            checkpoint,
            runtime,
            int8=int8,
            calibration_dir=calibration,
            parity_dir=images or calibration or settings.data_root,
            calibration_count=calibration_count,
            parity_count=parity_count,
        )
    except (ExportError, FileNotFoundError, ValueError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    parity = record.parity
    typer.echo(
        f"{record.name} of model {record.fingerprint}: mean cosine to torch "
        f"{parity['mean_cosine']:.5f} (min {parity['min_cosine']:.5f}) on {parity['images']} "
        f"images, {record.speedup:.1f}x torch; record {path}"
    )
    if not record.passed:
        typer.secho(
            f"parity check failed (mean cosine < {parity['threshold_mean_cosine']}): this export "
            "will not be used",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(1)
