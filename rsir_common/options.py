"""Command-line options that are settings, declared once by the settings' names.

Every option of a command that is configuration is also a setting (README): `--batch-size`
sets `batch_size` for one run, RSIR_BATCH_SIZE for every run. A command names the settings it
takes with `setting_options`; each becomes an option of the setting's type whose help names
the variable and whose default is None (not given: the setting decides), and the command
receives them as `overrides` for `get_settings`. So the settings stay the one place an option's
type, default and meaning are written, and a command's signature is not rebuilt option by
option.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import typer

from rsir_common.settings import Settings, option_help

# What a command receives: each of its setting options by setting name, None where not given.
SettingOverrides = dict[str, Any]
Command = TypeVar("Command", bound=Callable[..., Any])


@dataclass(frozen=True)
class SettingOption:
    """One setting as an option: its flags (default `--<setting-name>`, with `--no-...` for a
    switch), help text put before the setting's variable and default, click's other keywords."""

    setting: str
    flags: tuple[str, ...] = ()
    help: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def parameter(self) -> inspect.Parameter:
        info = typer.Option(*self.flags, help=option_help(self.setting, self.help), **self.extra)
        annotation = Annotated[option_type(self.setting) | None, info]  # type: ignore[valid-type]
        return inspect.Parameter(
            self.setting, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
        )


def opt(setting: str, *flags: str, help: str | None = None, **extra: Any) -> SettingOption:
    """A setting option with its own flags, help text or click keywords (`min=2`)."""
    return SettingOption(setting, flags, help, extra)


def option_type(setting: str) -> type:
    """The type an option of this setting parses: the setting's, less None; a Literal's values
    are parsed as their type (the settings object then refuses a value outside them)."""
    annotation = Settings.model_fields[setting].annotation
    if get_origin(annotation) in (Union, UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not NoneType]
    if get_origin(annotation) is Literal:
        annotation = type(get_args(annotation)[0])
    assert isinstance(annotation, type), f"setting {setting} has no option type"
    return annotation


def setting_options(*options: str | SettingOption) -> Callable[[Command], Command]:
    """Give a command one option per setting named (a string may name several, separated by
    spaces), in this order, where its keyword-only parameter `overrides: SettingOverrides`
    stands; the command is called with them in `overrides`."""
    wanted = [
        item
        for option in options
        for item in (
            [SettingOption(name) for name in option.split()]
            if isinstance(option, str)
            else [option]
        )
    ]

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        assert "overrides" in signature.parameters, f"{command.__name__} takes no overrides"
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            if parameter.name == "overrides":
                parameters.extend(option.parameter() for option in wanted)
            else:
                parameters.append(parameter)

        @functools.wraps(command)
        def with_overrides(*args: Any, **kwargs: Any) -> Any:
            overrides = {option.setting: kwargs.pop(option.setting) for option in wanted}
            return command(*args, overrides=overrides, **kwargs)

        # What typer reads: this signature and these (evaluated) annotations.
        with_overrides.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_overrides.__annotations__ = {
            **{p.name: p.annotation for p in parameters},
            "return": signature.return_annotation,
        }
        return with_overrides  # type: ignore[return-value]

    return decorate


# Settings whose flags differ from their names in every command that takes them.
DATA_ROOT = opt("data_root", "--root", "--data-root")
DB_URL = opt("db_url", "--db")
