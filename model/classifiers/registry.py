"""Classifier methods by name, timm-style: build one, list them; an unknown name lists the rest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.classifiers.base import Recipe, SceneClassifier


@dataclass(frozen=True)
class MethodInfo:
    """How to build a method for training and for deployment, and its paper recipe."""

    name: str
    default_backbone: str
    backbones: tuple[str, ...]
    build: Callable[[dict[str, Any], bool, Path | None], tuple[SceneClassifier, str]]
    build_deployed: Callable[[dict[str, Any]], SceneClassifier]
    recipe: Callable[[int], Recipe]
    description: str


def _methods() -> dict[str, MethodInfo]:
    from model.classifiers.ddrl_am import build_ddrl_am, ddrl_am_recipe
    from model.classifiers.lafe import build_lafe, lafe_recipe
    from model.classifiers.pcl import build_pcl, build_pcl_deployed, pcl_recipe
    from model.classifiers.plain import build_plain, plain_recipe

    resnets = ("resnet18", "resnet34", "resnet50")
    return {
        "ddrl-am": MethodInfo(
            "ddrl-am",
            "resnet18",
            ("resnet18",),
            lambda c, p, w: build_ddrl_am(c, p, w),
            lambda c: build_ddrl_am(c, False, None)[0],
            ddrl_am_recipe,
            "Grad-CAM attention map + SFT stream + center loss (paper 000)",
        ),
        "pcl": MethodInfo(
            "pcl",
            "resnet50",
            resnets,
            lambda c, p, w: build_pcl(c, p, w),
            build_pcl_deployed,
            pcl_recipe,
            "pairwise-consistency learning with CAM erasing (paper 003)",
        ),
        "lafe": MethodInfo(
            "lafe",
            "resnet50",
            resnets,
            lambda c, p, w: build_lafe(c, p, w),
            lambda c: build_lafe(c, False, None)[0],
            lafe_recipe,
            "discriminative/confusable channel+region attention (paper 004)",
        ),
        "plain": MethodInfo(
            "plain",
            "resnet18",
            resnets,
            lambda c, p, w: build_plain(c, p, w),
            lambda c: build_plain(c, False, None)[0],
            plain_recipe,
            "ResNet with cross-entropy only (the baseline)",
        ),
    }


def list_methods() -> list[str]:
    """Method names that `get_method` and `build_classifier` accept."""
    return sorted(_methods())


def get_method(name: str) -> MethodInfo:
    """The method called `name`; ValueError listing the valid names otherwise."""
    methods = _methods()
    if name not in methods:
        raise ValueError(f"unknown classifier method {name!r}; choose one of {sorted(methods)}")
    return methods[name]


def classifier_config(
    method: str,
    num_classes: int,
    image_size: int,
    backbone: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The config dict a checkpoint stores: method, backbone, num_classes, image_size, options."""
    info = get_method(method)
    chosen = backbone or info.default_backbone
    if chosen not in info.backbones:
        raise ValueError(f"{method} supports backbones {list(info.backbones)}, not {chosen!r}")
    return {
        "method": method,
        "backbone": chosen,
        "num_classes": int(num_classes),
        "image_size": int(image_size),
        **options,
    }


def build_classifier(
    config: dict[str, Any], pretrained: bool = True, weights_path: Path | None = None
) -> tuple[SceneClassifier, str]:
    """The training network for config['method'] and its initialisation string."""
    return get_method(config["method"]).build(config, pretrained, weights_path)


def build_deployed(config: dict[str, Any]) -> SceneClassifier:
    """The network a checkpoint of config['method'] holds (random weights, to be loaded)."""
    return get_method(config["method"]).build_deployed(config)
