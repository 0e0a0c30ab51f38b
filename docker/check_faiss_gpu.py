"""Build-time check of the worker image: the `faiss` package on disk is the GPU build.

Why from the installed files and not `import faiss`: the image is built on hosts without a GPU
driver, and faiss-cpu and faiss-gpu both install the same `faiss` package, so a pip install
order mistake would silently leave the CPU build in a GPU image.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path


def main() -> int:
    try:
        md.version("faiss-cpu")
    except md.PackageNotFoundError:
        pass
    else:
        print("faiss-cpu is still installed beside faiss-gpu", file=sys.stderr)
        return 1
    try:
        files = md.distribution("faiss-gpu").files or []
    except md.PackageNotFoundError:
        print("faiss-gpu is not installed", file=sys.stderr)
        return 1
    wrappers = [f for f in files if f.name.startswith("swigfaiss") and f.suffix == ".py"]
    missing = [
        str(f)
        for f in wrappers
        if not Path(str(f.locate())).is_file() or "StandardGpuResources" not in f.read_text()
    ]
    if not wrappers or missing:
        why = missing or "none found"
        print(f"the faiss wrappers are not the GPU build: {why}", file=sys.stderr)
        return 1
    print(f"faiss-gpu {md.version('faiss-gpu')}: {len(wrappers)} GPU wrapper module(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
