"""rsir: content-based remote sensing image retrieval. This package holds the CLI root and settings."""

__version__ = "0.1.0"
