"""Every option of the `rsir` command is also a setting (README): its default comes from the
one Settings object, so RSIR_<NAME> in the environment changes what the command does."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperOption
from typer.testing import CliRunner

from rsir.cli import app
from rsir_common.settings import Settings

# Options that are not configuration: they name what one run acts on, asks or prints, so a
# variable in the environment would silently apply to every later run. Arguments (the image,
# folder or ids a command acts on) and required options (--out, the classifier evaluated)
# have no default and are not listed here.
PER_RUN = {
    # what a search asks for and how its answer is printed
    ("search", "k"),
    ("search", "label"),
    ("search", "bbox"),
    ("search", "scene"),
    ("search", "window"),
    ("search", "place"),
    ("search", "relevant"),
    ("search", "not_relevant"),
    ("search", "as_json"),
    ("search", "as_geojson"),
    # which images `rsir remove` deletes
    ("remove", "source"),
    # a one-off download: mirror and checksum of this file
    ("weights fetch", "url"),
    ("weights fetch", "sha256"),
    # which migration `rsir db upgrade` goes to
    ("db upgrade", "revision"),
}


def commands() -> Iterator[tuple[str, Any]]:
    """Every leaf command of `rsir`, by its full name ("db upgrade")."""

    def walk(prefix: str, command: Any) -> Iterator[tuple[str, Any]]:
        if hasattr(command, "commands"):  # a group
            for name, sub in command.commands.items():
                yield from walk(f"{prefix} {name}".strip(), sub)
        else:
            yield prefix, command

    yield from walk("", typer.main.get_command(app))


def setting_options(command: Any, name: str) -> list[TyperOption]:
    return [
        p
        for p in command.params
        if isinstance(p, TyperOption)
        and not p.required
        and p.name != "help"
        and (name, p.name) not in PER_RUN
    ]


def test_every_option_is_a_setting() -> None:
    """Each option has the name of a Settings field and no default of its own (None: the
    setting decides), and its help names the variable; the allow-list holds only options
    that exist."""
    seen = set()
    names = [name for name, _ in commands()]
    assert {"train", "index", "search", "evaluate", "train-classifier", "serve"} <= set(names)
    for name, command in commands():
        for param in command.params:
            if isinstance(param, TyperOption) and (name, param.name) in PER_RUN:
                seen.add((name, param.name))
        for option in setting_options(command, name):
            where = f"rsir {name} {option.opts[0]}"
            assert option.name in Settings.model_fields, f"{where}: no setting {option.name}"
            assert option.default is None, f"{where} has its own default {option.default!r}"
            assert f"RSIR_{option.name.upper()}" in (option.help or ""), where
    assert seen == PER_RUN


def test_every_option_reaches_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command passes each of its setting options to get_settings (which then prefers the
    option when given, else the environment): seen by a get_settings that records and stops."""

    class Stop(Exception):
        pass

    for name, command in commands():
        wanted = {o.name for o in setting_options(command, name)}
        if not wanted:
            continue
        assert command.callback is not None
        function = inspect.unwrap(command.callback)  # typer wraps the command's function
        passed: dict[str, Any] = {}

        def spy(passed: dict[str, Any] = passed, **overrides: Any) -> Settings:
            passed.update(overrides)
            raise Stop

        monkeypatch.setitem(function.__globals__, "get_settings", spy)
        args = []
        for param in command.params:
            if param.required:
                if isinstance(param, TyperOption):
                    args.append(param.opts[0])
                args.append("1")
        with pytest.raises(Stop):
            command.main(args=args, prog_name=f"rsir {name}", standalone_mode=False)
        assert wanted <= set(passed), f"rsir {name}: {wanted - set(passed)} not passed"


def test_train_reads_its_options_from_the_environment(
    small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RSIR_TRAIN_BATCH_SIZE and RSIR_LR (no options given) are what `rsir train` trains with,
    as its checkpoint records; an option given on the command line wins over the variable."""
    from model.checkpoint import load_checkpoint

    for key, value in {
        "RSIR_DATA_ROOT": str(small_folder),
        "RSIR_DATASET": "folder",
        "RSIR_BACKBONE": "resnet18",
        "RSIR_IMAGE_SIZE": "64",
        "RSIR_MAX_EPOCHS": "0",  # no epoch: the run writes its checkpoint at once
        "RSIR_TRAIN_BATCH_SIZE": "5",
        "RSIR_LR": "0.0123",
        "RSIR_PRETRAINED": "false",
        "RSIR_NUM_WORKERS": "0",
    }.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "e.pt"
    result = CliRunner().invoke(app, ["train", "--out", str(out), "--margin", "0.55"])
    assert result.exit_code == 0, result.output
    config = load_checkpoint(out).extra["train_config"]
    assert config["batch_size"] == 5 and config["lr"] == 0.0123
    assert config["margin"] == 0.55 and config["pretrained"] is False
    assert config["dataset"] == "folder" and config["image_size"] == 64


@pytest.mark.slow
def test_index_and_evaluate_read_their_options_from_the_environment(
    small_folder: Path, other_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RSIR_BATCH_SIZE and RSIR_COMMIT_EVERY make `rsir index` embed 10 images a batch and
    commit a version after each (40 images: 4 versions, not 1); RSIR_CHECKPOINT and
    RSIR_PROTOCOL are what `rsir evaluate` uses."""
    monkeypatch.setenv("RSIR_CHECKPOINT", str(other_checkpoint))
    monkeypatch.setenv("RSIR_NUM_WORKERS", "0")
    monkeypatch.setenv("RSIR_BATCH_SIZE", "10")
    monkeypatch.setenv("RSIR_COMMIT_EVERY", "10")
    result = CliRunner().invoke(app, ["index", str(small_folder), "--index-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "index holds 40 (version 4)" in result.output

    monkeypatch.setenv("RSIR_PROTOCOL", "all-vs-all")
    monkeypatch.setenv("RSIR_DATASET", "folder")
    monkeypatch.setenv("RSIR_DATA_ROOT", str(small_folder))
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == "all-vs-all" and results["n_queries"] == 40


def test_one_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caches live in RSIR_CACHE_DIR, by default `cache` in the index folder."""
    monkeypatch.delenv("RSIR_CACHE_DIR", raising=False)
    assert Settings(index_dir=tmp_path).resolved_cache_dir() == tmp_path / "cache"
    monkeypatch.setenv("RSIR_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert Settings(index_dir=tmp_path).resolved_cache_dir() == tmp_path / "elsewhere"
