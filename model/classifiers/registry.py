"""Classifier methods by name, timm-style: build one, list them; an unknown name lists the rest.

Each method registers itself once, as `METHOD` in its own module (a `ClassifierMethod`: its
builders, recipe, sampler and trainer); this module only collects them. Every method works on
every registered backbone (model/backbones.py).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from model.backbones import default_backbone, get_backbone
from model.classifiers.base import SceneClassifier
from model.classifiers.method import ClassifierMethod

_METHOD_MODULES = ("ddrl_am", "lafe", "pcl", "plain")


def _methods() -> dict[str, ClassifierMethod]:
    methods: dict[str, ClassifierMethod] = {}
    for module in _METHOD_MODULES:
        method = importlib.import_module(f"model.classifiers.{module}").METHOD
        methods[method.name] = method
    return methods


def list_methods() -> list[str]:
    """Method names that `get_method` and `build_classifier` accept."""
    return sorted(_methods())


def get_method(name: str) -> ClassifierMethod:
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
    """The config dict a checkpoint stores: method, backbone, num_classes, image_size, options.

    The backbone defaults to `model.backbones.default_backbone()` (ImageNet-initialised on
    every install); an unknown one lists the registered backbones.
    """
    get_method(method)
    chosen = backbone or default_backbone()
    get_backbone(chosen)
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
