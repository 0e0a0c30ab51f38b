"""Pick the compute device: CUDA when present, else CPU; never hard-coded."""

from __future__ import annotations

import torch


def best_device(preference: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; any other value is taken as given."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)
