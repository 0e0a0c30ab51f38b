"""rsir: content-based remote sensing image retrieval. This package is the `rsir` command (the
top layer: nothing of the project imports it); the settings live in `common`."""

from rsir_common import __version__

__all__ = ["__version__"]
