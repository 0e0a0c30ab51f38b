"""The embedder's parts: attention is the identity at init, GeM, unit descriptors, the loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.attention import ChannelAttention, DualAttention, PositionAttention
from model.embedder import EmbedderConfig, build_embedder
from model.losses import contrastive_loss
from model.pooling import GeM, gem, mac, make_pooling, spoc
from model.train_embedder import mine_tuples, tuple_loss


def test_position_attention_is_identity_at_init() -> None:
    x = torch.randn(2, 64, 5, 5)
    module = PositionAttention(64)
    assert module.alpha.item() == 0.0
    assert torch.equal(module(x), x)


def test_channel_attention_is_identity_at_init() -> None:
    x = torch.randn(2, 32, 4, 4)
    module = ChannelAttention()
    assert module.beta.item() == 0.0
    assert torch.equal(module(x), x)


def test_dual_attention_block_is_identity_at_init_and_not_after_training_alpha() -> None:
    x = torch.randn(2, 16, 3, 3)
    block = DualAttention(16, reduction=4)
    assert torch.allclose(block(x), x, atol=1e-5)
    with torch.no_grad():
        block.position.alpha.fill_(1.0)
    assert not torch.allclose(block(x), x, atol=1e-3)


def test_gem_with_p1_is_average_pooling() -> None:
    x = torch.rand(3, 8, 6, 6) + 0.01
    assert torch.allclose(gem(x, p=1.0), F.adaptive_avg_pool2d(x, 1).flatten(1), atol=1e-6)
    assert torch.allclose(spoc(x), gem(x, p=1.0), atol=1e-6)


def test_gem_tends_to_max_for_large_p_and_learns_p() -> None:
    x = torch.rand(2, 4, 5, 5) + 0.01
    assert torch.allclose(gem(x, p=200.0), mac(x), rtol=0.05)
    pool = GeM()
    assert pool.p.requires_grad and math.isclose(pool.p.item(), 3.0)
    with pytest.raises(ValueError, match="gem"):
        make_pooling("avg")


@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("pooling", ["gem", "spoc", "mac"])
def test_descriptors_have_unit_norm(attention: bool, pooling: str) -> None:
    net, init = build_embedder(EmbedderConfig("resnet18", pooling, attention), pretrained=False)
    assert init == "random"
    out = net.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 512)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


def test_resnet50_descriptor_is_2048_d() -> None:
    net, _ = build_embedder(EmbedderConfig("resnet50"), pretrained=False)
    with torch.no_grad():
        out = net.eval()(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 2048)
    assert abs(out.norm().item() - 1.0) < 1e-5


def test_contrastive_loss_equals_hand_computation() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    same = torch.tensor([True, False, False])
    # distances: |(0.4,-0.8)| = sqrt(0.8); |(0.2,-0.6)| = sqrt(0.4); 0
    d1, d2, d3 = math.sqrt(0.8), math.sqrt(0.4), 0.0
    margin = 0.7
    expected = (0.5 * d1**2 + 0.5 * max(0.0, margin - d2) ** 2 + 0.5 * (margin - d3) ** 2) / 3
    got = contrastive_loss(a, b, same, margin)
    assert math.isclose(got.item(), expected, rel_tol=1e-6)


def test_tuple_loss_uses_first_as_positive_rest_as_negatives() -> None:
    q = torch.tensor([1.0, 0.0])
    p = torch.tensor([0.0, 1.0])
    n = torch.tensor([1.0, 0.0])
    got = tuple_loss(torch.stack([q, p, n]), 1, margin=0.7)
    expected = (0.5 * 2.0 + 0.5 * 0.7**2) / 2
    assert math.isclose(got.item(), expected, rel_tol=1e-6)


def test_mining_picks_nearest_other_class_negatives() -> None:
    import random

    # query 0 (class 0); 2 is class 1 and very close; 3 is class 2 and far; 1 is its positive
    d = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.99, 0.1], [-1.0, 0.0]]), dim=1)
    tuples = mine_tuples(d, [0, 0, 1, 2], negatives=1, queries=[0], rng=random.Random(0))
    assert tuples == [[0, 1, 2]]
