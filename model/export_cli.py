"""`rsir export`: a checkpoint as an ONNX Runtime or OpenVINO model, checked against torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rsir_common.options import SettingOverrides, opt, setting_options
from rsir_common.settings import get_settings

app = typer.Typer()


@app.command("export")
@setting_options(
    opt("export_runtime", "--runtime"),
    opt("int8", "--int8/--no-int8"),
    "calibration calibration_count",
    opt("parity_images", "--images"),
    "parity_count",
)
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Embedder or classifier checkpoint (.pt).")],
    *,
    overrides: SettingOverrides,
) -> None:
    """Export the whole network beside the checkpoint (<stem>.exports/), check it against torch
    on real images and record the result; exit 1 when the check fails (the export is then
    recorded as failed and never used)."""
    from model.export import ExportError, export_checkpoint

    settings = get_settings(**overrides)
    try:
        record, path = export_checkpoint(
            checkpoint,
            settings.export_runtime,
            int8=settings.int8,
            calibration_dir=settings.calibration,
            parity_dir=settings.parity_images or settings.calibration or settings.data_root,
            calibration_count=settings.calibration_count,
            parity_count=settings.parity_count,
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
