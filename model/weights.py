"""`rsir weights fetch`: put a backbone's ImageNet file where rsir looks for it, checked.

For users with internet: torchvision's ResNet files go into the torch hub cache under their
official names, so that from then on `create_trunk` finds them (and ResNet-50 becomes the
default backbone). torchvision names each file after the first hex digits of its SHA-256
(`resnet50-0676ba61.pth`); the download is refused unless its SHA-256 starts with them, or
equals the full digest given with `sha256`. Nothing in rsir downloads at run time: only this
explicit command does.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

import torch

from model.backbones import get_backbone, torch_cache_file

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth?$")


class WeightsFetchError(RuntimeError):
    """The weights could not be fetched or did not match their published hash."""


def expected_hash(official_url: str) -> str:
    """The SHA-256 prefix that torchvision writes into a weights file's name."""
    match = _HASH_IN_NAME.search(official_url)
    if match is None:
        raise WeightsFetchError(f"no hash in the file name of {official_url}")
    return match.group(1)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_weights(
    backbone: str, url: str | None = None, sha256: str | None = None, progress: bool = True
) -> Path:
    """Download a backbone's ImageNet file into the torch cache and verify its SHA-256.

    `url` replaces the official address (a mirror); `sha256` the published hash (a full digest
    or a prefix). The file appears under its official name only once verified.
    """
    spec = get_backbone(backbone)
    if not spec.source.startswith(("http://", "https://")):
        raise WeightsFetchError(
            f"{backbone}'s weights come with rsir ({spec.source}): nothing to fetch"
        )
    target = torch_cache_file(spec.source)
    want = (sha256 or expected_hash(spec.source)).lower()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        try:
            torch.hub.download_url_to_file(url or spec.source, str(partial), progress=progress)
        except Exception as exc:  # network errors come in many types; all mean the same here
            raise WeightsFetchError(f"could not download {url or spec.source}: {exc}") from exc
        got = sha256_of(partial)
        if not got.startswith(want):
            raise WeightsFetchError(
                f"SHA-256 of the download is {got}, expected {want}...: file discarded"
            )
        partial.replace(target)
    return target
