"""`rsir whiten`: learn a whitening artifact for a checkpoint (then `rsir index --whitening`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rsir_common.options import DATA_ROOT, SettingOverrides, opt, setting_options
from rsir_common.settings import get_settings

app = typer.Typer()


@app.command()
@setting_options(
    "dataset",
    DATA_ROOT,
    "per_class",
    opt("whitening_method", "--method"),
    opt("whitening_dim", "--dim"),
    opt("whitening_train_split", "--train-split/--all-images"),
)
def whiten(
    checkpoint: Annotated[Path, typer.Argument(help="Embedder checkpoint the artifact is for.")],
    out: Annotated[Path, typer.Option(help="Artifact to write (.npz).")],
    *,
    overrides: SettingOverrides,
) -> None:
    """Learn PCA- or Lw-whitening with dimension reduction from labelled images; the artifact
    is bound to the checkpoint's fingerprint (other checkpoints and indexes refuse it)."""
    from pydantic import ValidationError

    from indexer.options import WhitenOptions
    from indexer.whiten import learn_whitening_artifact
    from rsir_common.progress import progress_bar

    try:
        settings = get_settings(**overrides)
    except ValidationError as exc:
        typer.secho(f"error: {exc.errors()[0]['msg']}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
    options = WhitenOptions.from_settings(settings)
    try:
        with progress_bar("embedding") as progress:
            whitening = learn_whitening_artifact(checkpoint, out, options, progress=progress)
    except (FileNotFoundError, ValueError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
    typer.echo(
        f"{whitening.method} whitening {whitening.input_dim} -> {whitening.dim} for model "
        f"{whitening.checkpoint_fingerprint}: {out} (descriptors {whitening.fingerprint()})"
    )
