"""rsir: content-based remote sensing image retrieval. Holds the CLI root and the settings."""

__version__ = "0.1.0"
