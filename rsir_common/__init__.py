"""rsir's base: the settings object, logging and progress bars. It imports nothing of the
project, so every package may use it: rsir (the CLI) > service > indexer > model > rsir_common
(import-linter holds that order, pyproject.toml [tool.importlinter])."""

__version__ = "0.1.0"
