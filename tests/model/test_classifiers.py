"""Unit tests of the classifier methods' maths, and one-epoch runs of each on real images."""

from __future__ import annotations

import io
import itertools
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from model.backbones import default_backbone, list_backbones
from model.checkpoint import Checkpoint, fingerprint, save_checkpoint
from model.classifiers.base import Batch, SceneClassifier, apply_dihedral, random_dihedral
from model.classifiers.center_loss import CenterLoss
from model.classifiers.data import paired_batches
from model.classifiers.ddrl_am import SFT, GradCamCache, build_ddrl_am, trunk_side
from model.classifiers.evaluation import classification_report, evaluate_classifier
from model.classifiers.evaluation import test_report as score_test_split
from model.classifiers.gradcam import grad_cam, grey_attention_maps, normalize_min_max
from model.classifiers.inference import load_classifier
from model.classifiers.lafe import RegionAttention, build_lafe, paired_mae, stage_sizes
from model.classifiers.method import optimizer_for, schedule_factor
from model.classifiers.pcl import build_pcl, erase_above, kl_divergence, pcl_loss
from model.classifiers.registry import build_classifier, classifier_config, get_method
from model.classifiers.training import TrainConfig, train_classifier
from model.datasets import LabeledImages, discover_dataset, limit_per_class
from model.transforms import Preprocessing
from tests.conftest import make_class_folder

REPO = Path(__file__).resolve().parents[2]
DATA_ROOT = Path(os.environ.get("RSIR_DATA_ROOT", REPO.parent / "shared" / "data")).resolve()
UCM_CLASSES = ["agricultural", "beach", "forest"]
NWPU_CLASSES = ["beach", "desert", "forest"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: the CPUs are shared, and oversubscribed threads are slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- Grad-CAM


class TinyNet(nn.Module):
    """conv -> ReLU (the target layer's output A) -> GAP -> known linear head."""

    def __init__(self, channels: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)).mean(dim=(2, 3)))


def test_grad_cam_equals_analytic_map_of_a_linear_head() -> None:
    torch.manual_seed(0)
    net = TinyNet().eval()
    x = torch.randn(2, 3, 5, 6)
    activations = net.act(net.conv(x)).detach()  # B x K x h x w
    hw = activations.shape[2] * activations.shape[3]
    for classes in (torch.tensor([2, 0]), None):
        maps, chosen, logits = grad_cam(net, net.act, x, classes)
        target = logits.argmax(1) if classes is None else classes
        assert torch.equal(chosen, target)
        # y^c = sum_k W_ck mean_ij A^k_ij + b  =>  alpha_k = W_ck / (h w)
        alpha = net.head.weight.detach()[target] / hw  # B x K
        expected = F.relu(torch.einsum("bk,bkhw->bhw", alpha, activations))
        torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)
        assert maps.shape == (2, 5, 6)


def test_grey_attention_maps_are_image_sized_in_unit_range() -> None:
    torch.manual_seed(1)
    net = TinyNet().eval()
    grey, _ = grey_attention_maps(net, net.act, torch.randn(3, 3, 8, 8))
    assert grey.shape == (3, 8, 8)
    assert float(grey.min()) >= 0.0 and float(grey.max()) <= 1.0
    peaks = grey.flatten(1).amax(1)
    assert all(math.isclose(float(p), 1.0, abs_tol=1e-6) or float(p) == 0.0 for p in peaks)


# --------------------------------------------------------------------------- DDRL-AM


def test_sft_gives_512x7x7_at_224() -> None:
    sft = SFT().eval()
    with torch.no_grad():
        out = sft(torch.rand(1, 1, 224, 224))
    assert out.shape == (1, 512, 7, 7)
    assert trunk_side(224) == 7
    convs = [m for m in sft.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (64, (7, 7), (2, 2), (3, 3)),
        (128, (3, 3), (2, 2), (1, 1)),
        (256, (3, 3), (2, 2), (1, 1)),
        (512, (3, 3), (2, 2), (1, 1)),
    ]


def test_ddrl_am_fuses_rgb_and_map_streams_into_25088_features_at_224() -> None:
    net, _ = build_ddrl_am(classifier_config("ddrl-am", 5, 224, "resnet18"), pretrained=False)
    net.eval()
    assert net.fc.in_features == 25088
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        maps = torch.rand(1, 224, 224)
        fused = net.fused_features(x, maps)
        expected = (net.trunk(x) * net.sft(maps.unsqueeze(1))).flatten(1)
    torch.testing.assert_close(fused, expected)


def test_center_loss_centers_move_toward_their_class_means() -> None:
    torch.manual_seed(0)
    loss = CenterLoss(num_classes=3, dim=4)
    with torch.no_grad():
        loss.centers.normal_(0, 5)
    features = torch.randn(12, 4) + torch.arange(3).repeat_interleave(4).unsqueeze(1).float() * 3
    labels = torch.arange(3).repeat_interleave(4)
    means = torch.stack([features[labels == c].mean(0) for c in range(3)])
    distances = [(loss.centers.detach() - means).norm(dim=1)]
    for _ in range(20):
        loss.update_centers(features, labels, alpha=0.5)
        distances.append((loss.centers.detach() - means).norm(dim=1))
    for before, after in itertools.pairwise(distances):
        # Wen et al.: each step closes alpha * n / (1 + n) = 0.4 of the gap (n = 4 a class)
        torch.testing.assert_close(after, 0.6 * before)
    assert float(distances[-1].max()) < 1e-3 * float(distances[0].min())


def test_ddrl_am_centers_follow_wen_et_al_update_with_alpha_half() -> None:
    torch.manual_seed(0)
    net, _ = build_ddrl_am(classifier_config("ddrl-am", 3, 64, "resnet18"), pretrained=False)
    net.train()
    net.training_maps = torch.rand(6, 64, 64)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])  # unequal counts: 3, 2, 1
    batch = Batch(torch.randn(6, 3, 64, 64), labels, torch.arange(6))
    with torch.no_grad():
        net.center_loss.centers.normal_(0, 1)
    out = net.training_step(batch)
    out.loss.backward()
    assert net.center_loss.centers.grad is None  # not trained by the network's optimiser
    before = net.center_loss.centers.detach().clone()
    with torch.no_grad():
        features = net.fused_features(batch.images, net.training_maps)
    net.after_step()
    moved = net.center_loss.centers.detach()
    # c_j - 0.5 * sum_{y_i = j} (c_j - x_i) / (1 + n_j), by hand
    expected = torch.stack(
        [
            before[c]
            - 0.5 * (before[c] - features[labels == c]).sum(0) / (1 + int((labels == c).sum()))
            for c in range(3)
        ]
    )
    torch.testing.assert_close(moved, expected, rtol=1e-4, atol=1e-4)
    means = torch.stack([features[labels == c].mean(0) for c in range(3)])
    assert bool(((moved - means).norm(dim=1) < (before - means).norm(dim=1)).all())


def test_ddrl_am_optimiser_uses_paper_rates_and_schedule() -> None:
    net, _ = build_ddrl_am(classifier_config("ddrl-am", 3, 64, "resnet18"), pretrained=False)
    recipe = get_method("ddrl-am").recipe(32)
    optimizer, scheduled = optimizer_for(net, recipe)
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["amsgrad"] is True
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 1e-3])
    assert scheduled == [False, True]
    trainable = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(net.center_loss.centers) not in trainable  # own SGD
    assert not any(id(p) in trainable for p in net.attention_net.parameters())
    assert [schedule_factor(recipe, e, 40) for e in (0, 9, 10, 20)] == pytest.approx(
        [1, 1, 0.1, 0.01]
    )


def test_the_same_dihedral_transform_keeps_image_and_map_aligned() -> None:
    generator = torch.Generator().manual_seed(3)
    grey = torch.rand(8, 8)
    image = torch.stack([grey, grey * 2, grey * 3])
    for params in random_dihedral(16, generator):
        out_image, out_map = apply_dihedral(image, params), apply_dihedral(grey, params)
        torch.testing.assert_close(out_image[0], out_map)
    assert torch.equal(apply_dihedral(grey, (1, False, False)), torch.rot90(grey, 1))
    assert torch.equal(apply_dihedral(grey, (0, True, True)), grey.flip(-1).flip(-2))


def test_grad_cam_cache_is_keyed_by_model_and_content_and_reused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net, _ = build_ddrl_am(classifier_config("ddrl-am", 3, 64, "resnet18"), pretrained=False)
    net.eval()
    net.map_cache = GradCamCache(tmp_path, "fp1")
    x = torch.randn(2, 3, 64, 64)
    first = net.cached_maps(x, ["aa", "bb"], torch.tensor([1, 2]))
    assert sorted(p.name for p in (tmp_path / "fp1").iterdir()) == ["aa_gt1.npz", "bb_gt2.npz"]
    again = GradCamCache(tmp_path, "fp1")
    net.map_cache = again
    second = net.cached_maps(torch.zeros_like(x), ["aa", "bb"], torch.tensor([1, 2]))
    assert again.hits == 2 and again.misses == 0
    torch.testing.assert_close(first, second, atol=1e-3, rtol=0)  # stored as float16
    expected, _ = net.attention_maps(x, torch.tensor([1, 2]))
    torch.testing.assert_close(first, expected)


# --------------------------------------------------------------------------- PCL


def test_cam_erasing_zeroes_exactly_the_pixels_above_gamma() -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 6, 6) + 5  # no pixel is zero by chance
    maps = torch.rand(2, 6, 6)
    maps[0, 0, 0] = 0.7  # at gamma: kept
    erased = erase_above(images, maps, 0.7)
    above = (maps > 0.7).unsqueeze(1).expand_as(images)
    assert bool((erased[above] == 0).all())
    assert torch.equal(erased[~above], images[~above])
    assert bool(erased[0, :, 0, 0].ne(0).all())


def test_pcl_erases_where_the_min_max_cam_of_the_prediction_exceeds_gamma() -> None:
    torch.manual_seed(0)
    net, _ = build_pcl(classifier_config("pcl", 3, 64, "resnet18"), pretrained=False)
    net.eval()
    images = torch.randn(2, 3, 64, 64) + 10
    with torch.no_grad():
        stage3 = net._stage3(images)
        p = net.fc(net._pooled(stage3))
        _, activations = net.cam_module(stage3)
        erased = net.erase(images, activations, p.argmax(1))
        cam = torch.einsum("bc,bchw->bhw", net.cam_module.fc.weight[p.argmax(1)], activations)
        maps = F.interpolate(normalize_min_max(cam).unsqueeze(1), size=(64, 64), mode="bilinear")[
            :, 0
        ]
    assert stage3.shape[-1] == 4  # layer3's output: 14 x 14 at 224, 4 x 4 at 64
    zeroed = erased.eq(0).all(dim=1)
    assert torch.equal(zeroed, maps > 0.7)
    assert 0 < int(zeroed.sum()) < zeroed.numel()


def test_pcl_loss_equals_a_hand_computation() -> None:
    p = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    r = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]])
    q = torch.tensor([[1.0, 1.0, -2.0], [-0.5, 0.0, 0.5]])
    labels = torch.tensor([0, 2])

    def softmax(v: np.ndarray) -> np.ndarray:
        e = np.exp(v - v.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    pp, rr, qq = softmax(p.numpy()), softmax(r.numpy()), softmax(q.numpy())
    idx = (np.arange(2), labels.numpy())
    ce_p = -np.log(pp[idx]).mean()
    ce_r = -np.log(rr[idx]).mean()
    ce_q = -np.log(qq[idx]).mean()
    kl = (qq * np.log(qq / pp)).sum(axis=1).mean()
    expected = ce_p + ce_r + 1.0 * ce_q + 2.0 * kl
    total, terms = pcl_loss(p, r, q, labels, alpha=1.0, beta=2.0)
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert terms["kl"] == pytest.approx(kl, rel=1e-5)
    assert float(kl_divergence(p, p)) == pytest.approx(0.0, abs=1e-7)


def test_pcl_deploys_only_backbone_and_main_classifier() -> None:
    config = classifier_config("pcl", 3, 64, "resnet34")
    net, _ = build_pcl(config, pretrained=False)
    state = net.deploy_state_dict()
    assert not any("cam_module" in k or "mod_fc" in k for k in state)
    deployed = get_method("pcl").build_deployed(config)
    deployed.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    net.eval()
    deployed.eval()
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), net(x))


# --------------------------------------------------------------------------- LAFE


def test_lafe_region_attention_has_one_weight_per_position() -> None:
    torch.manual_seed(0)
    attention = RegionAttention(positions=5 * 7)
    assert attention.fc1.in_features == 35 and attention.fc1.out_features == 35 // 7
    assert attention.fc2.out_features == 35
    x = torch.randn(2, 6, 5, 7)
    weights = attention.weights(x)
    assert weights.shape == (2, 35)
    out = attention(x)
    torch.testing.assert_close(out, x * weights.view(2, 1, 5, 7))  # same weight on all channels
    with pytest.raises(ValueError, match="positions"):
        attention(torch.randn(1, 6, 4, 4))


def test_lafe_uses_stages_3_to_5_of_resnet50_with_position_sized_attention() -> None:
    net, _ = build_lafe(classifier_config("lafe", 4, 64, "resnet50"), pretrained=False)
    assert net.config["backbone"] == "resnet50"
    assert stage_sizes(64) == (8, 4, 2) and stage_sizes(224) == (28, 14, 7)
    positions = [stage.dis_region.positions for stage in net.attention]
    assert positions == [64, 16, 4]
    assert [stage.con_region.positions for stage in net.attention] == positions
    assert [stage.dis_channel.fc2.out_features for stage in net.attention] == [512, 1024, 2048]
    net.train()
    out = net.training_step(
        Batch(torch.randn(4, 3, 64, 64), torch.tensor([1, 1, 3, 3]), torch.arange(4))
    )
    assert set(out.terms) == {"cls", "dis", "con"}
    assert float(out.loss.detach()) == pytest.approx(sum(out.terms.values()), rel=1e-5)


def test_lafe_discriminative_loss_pairs_adjacent_same_label_images() -> None:
    features = torch.tensor([[1.0, 2.0], [3.0, 2.0], [0.0, 0.0], [5.0, 5.0]])
    assert float(paired_mae(features, torch.tensor([0, 0, 1, 1]))) == pytest.approx((1.0 + 5.0) / 2)
    assert float(paired_mae(features, torch.tensor([0, 0, 1, 2]))) == pytest.approx(1.0)


def test_paired_sampler_puts_same_label_images_side_by_side() -> None:
    labels = [0] * 5 + [1] * 4 + [2] * 7
    batches = list(paired_batches(labels, 6, torch.Generator().manual_seed(0)))
    seen = set()
    for batch in batches:
        assert len(batch) % 2 == 0 and len(batch) <= 6
        for a, b in zip(batch[0::2], batch[1::2], strict=True):
            assert labels[a] == labels[b]
        seen.update(batch)
    assert seen == set(range(len(labels)))


# --------------------------------------------------------------------------- registry, metrics


def test_registry_builds_by_name_and_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"ddrl-am.*lafe.*pcl.*plain"):
        get_method("resnet-magic")
    with pytest.raises(ValueError, match="unknown backbone"):
        classifier_config("ddrl-am", 3, 64, "resnet-magic")
    net, init = build_classifier(classifier_config("plain", 7, 64, "resnet34"), pretrained=False)
    assert init == "random"
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_classification_report_counts_rows_as_true_classes() -> None:
    report = classification_report([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert report.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report.overall_accuracy == pytest.approx(3 / 5)
    assert report.per_class_accuracy == pytest.approx({"a": 0.5, "b": 1.0, "c": 0.0})


# --------------------------------------------------------------------------- integration


needs_data = pytest.mark.skipif(
    not (DATA_ROOT / "UCMerced_LandUse" / "Images").is_dir(), reason="no ../shared/data"
)


METHODS = [
    ("ddrl-am", "resnet18"),
    ("pcl", "resnet18"),
    ("lafe", "resnet50"),
    ("plain", "resnet18"),
]


@dataclass
class Trained:
    path: Path
    cache: Path
    net: SceneClassifier
    fingerprint: str
    history: list[dict[str, Any]]
    images: LabeledImages


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    """Each method trained for one epoch on 3 UCM classes x 6 real images at 64 px."""
    if not (DATA_ROOT / "UCMerced_LandUse" / "Images").is_dir():
        pytest.skip("no ../shared/data")
    root = tmp_path_factory.mktemp("classifiers")
    images = limit_per_class(discover_dataset("ucm", DATA_ROOT), 6, UCM_CLASSES)
    out: dict[str, Trained] = {}
    for method, backbone in METHODS:
        config = TrainConfig(
            method=method,
            backbone=backbone,
            image_size=64,
            epochs=1,
            batch_size=6,
            seed=0,
            train_ratio=0.5,
            pretrained=False,
            device="cpu",
            progress=False,
            cache_dir=root / "cache",
            per_class=6,
            classes=UCM_CLASSES,
        )
        result = train_classifier(images, config, root / f"{method}.pt")
        out[method] = Trained(
            root / f"{method}.pt",
            root / "cache",
            result.net,
            result.checkpoint.fingerprint,
            result.history,
            images,
        )
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("method", "backbone"), METHODS)
def test_each_method_trains_one_epoch_and_its_checkpoint_classifies(
    trained: dict[str, Trained], method: str, backbone: str
) -> None:
    run = trained[method]
    assert len(run.history) == (2 if method == "ddrl-am" else 1)
    assert all(math.isfinite(h["loss"]) for h in run.history)
    assert run.path.with_name(f"{method}.split.json").is_file()

    loaded = load_classifier(run.path, "cpu")
    assert (loaded.method, loaded.backbone, loaded.kind) == (method, backbone, "classifier")
    assert loaded.class_names == UCM_CLASSES
    assert loaded.init == "random" and loaded.fingerprint == run.fingerprint
    pil = [Image.open(run.images.paths[i]).convert("RGB") for i in (0, 7, 14)]
    probabilities = loaded.predict(pil)
    assert len(probabilities) == 3
    for row in probabilities:
        assert len(row) == 3 and sum(row) == pytest.approx(1.0, abs=1e-5)
        assert min(row) >= 0
    # The loaded model answers as the trained one did (same weights, same preprocessing).
    x = torch.stack([loaded.preprocessing.eval_transform()(im) for im in pil])
    with torch.no_grad():
        expected = torch.softmax(run.net(x), dim=1)
    torch.testing.assert_close(torch.tensor(probabilities), expected, atol=1e-4, rtol=1e-3)
    png = loaded.explain(pil[0])  # every method has a map (defect 7 of issue 8)
    assert png is not None
    grey = Image.open(io.BytesIO(png))
    assert grey.mode == "L" and grey.size == pil[0].size
    if method == "ddrl-am":
        assert any(run.cache.rglob("*_gt*.npz"))


@pytest.mark.slow
def test_the_workers_classify_call_answers_with_every_method(
    trained: dict[str, Trained], tmp_path: Path
) -> None:
    """What `/classify` runs: the service's ClassifierPool loading the four checkpoints."""
    import anyio

    from rsir_common.settings import get_settings
    from service.classifier_pool import ClassifierPool
    from service.metrics import Metrics

    paths = [trained[m].path for m, _ in METHODS]
    settings = get_settings(index_dir=tmp_path, classifier_checkpoints=paths, device="cpu")
    pool = ClassifierPool(settings, Metrics(), torch.device("cpu"))
    pool.load()
    try:
        names = {load_classifier(p).method: load_classifier(p).name for p in paths}
        assert set(pool.loaded) == set(names.values())
        image = Image.open(trained["plain"].images.paths[3]).convert("RGB")
        for method, name in names.items():
            result = anyio.run(pool.classify, image, name, 3, True)
            assert result.model == name
            assert sorted(p.label for p in result.predictions) == sorted(UCM_CLASSES)
            assert sum(p.probability for p in result.predictions) == pytest.approx(1.0, abs=1e-5)
            assert result.explanation_png is not None, method
    finally:
        pool.close()


@pytest.mark.slow
@needs_data
def test_evaluate_classifier_reports_mean_and_std_over_seeded_nwpu_splits(tmp_path: Path) -> None:
    images = limit_per_class(discover_dataset("nwpu", DATA_ROOT), 6, NWPU_CLASSES)
    assert images.class_names == NWPU_CLASSES
    config = TrainConfig(
        method="plain",
        backbone="resnet18",
        image_size=64,
        epochs=1,
        batch_size=6,
        seed=3,
        train_ratio=0.5,
        pretrained=False,
        device="cpu",
        progress=False,
        per_class=6,
        classes=NWPU_CLASSES,
    )
    train_classifier(images, config, tmp_path / "plain.pt")
    results = evaluate_classifier(
        tmp_path / "plain.pt",
        "nwpu",
        DATA_ROOT,
        tmp_path / "eval",
        repeats=2,
        device="cpu",
        progress=False,
    )
    assert results["split_seeds"] == [3, 4]
    assert results["method"] == "plain" and results["init"] == "random"
    assert results["train_fraction"] == 0.5 and results["machine"]["cores"]
    runs = results["runs"]
    assert [r["n_test"] for r in runs] == [9, 9]
    oa = [r["overall_accuracy"] for r in runs]
    assert results["overall_accuracy"]["mean"] == pytest.approx(np.mean(oa))
    assert results["overall_accuracy"]["std"] == pytest.approx(np.std(oa, ddof=1))
    for seed in (3, 4):
        confusion = json.loads((tmp_path / "eval" / f"seed{seed}" / "confusion.json").read_text())
        assert np.asarray(confusion["confusion"]).sum() == 9
        assert (tmp_path / "eval" / f"seed{seed}" / "confusion.png").stat().st_size > 1000
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["split_seeds"] == [3, 4]


@pytest.mark.slow
@needs_data
def test_cli_trains_and_evaluates_a_classifier(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from model.classifier_cli import app

    runner = CliRunner()
    common = ["--dataset", "ucm", "--root", str(DATA_ROOT)]
    result = runner.invoke(
        app,
        [
            "train-classifier",
            "--method",
            "pcl",
            "--backbone",
            "resnet18",
            *common,
            "--out",
            str(tmp_path / "pcl.pt"),
            "--per-class",
            "5",
            "--classes",
            ",".join(UCM_CLASSES),
            "--image-size",
            "64",
            "--max-epochs",
            "1",
            "--batch-size",
            "4",
            "--train-ratio",
            "0.6",
            "--no-pretrained",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "test OA" in result.output
    trained_figures = json.loads((tmp_path / "pcl.results.json").read_text())
    assert trained_figures["init"] == "random" and trained_figures["split_seeds"] == [0]
    assert trained_figures["test"]["n_test"] == 6 and trained_figures["machine"]["cores"]
    result = runner.invoke(
        app,
        [
            "evaluate-classifier",
            "--checkpoint",
            str(tmp_path / "pcl.pt"),
            *common,
            "--out",
            str(tmp_path / "eval"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["method"] == "pcl" and results["classes"] == UCM_CLASSES
    assert results["runs"][0]["n_test"] == 6
    result = runner.invoke(
        app, ["train-classifier", "--method", "nope", *common, "--out", str(tmp_path / "x.pt")]
    )
    assert result.exit_code != 0
    assert "choose one of" in str(result.exception)


# --------------------------------------------------------------------------- any backbone


def _small_ucm(per_class: int = 2) -> LabeledImages:
    if not (DATA_ROOT / "UCMerced_LandUse" / "Images").is_dir():
        pytest.skip("no ../shared/data")
    return limit_per_class(discover_dataset("ucm", DATA_ROOT), per_class, UCM_CLASSES[:2])


def test_classifiers_default_to_the_imagenet_backbone_every_install_has() -> None:
    config = classifier_config("plain", 3, 64)
    assert config["backbone"] == default_backbone()
    net, init = build_classifier(config)
    assert init.startswith("imagenet:")  # EfficientNet-Lite0's file comes with every install
    assert TrainConfig().resolved_backbone() == default_backbone()
    assert TrainConfig(backbone="efficientnet_lite0").resolved_image_size() == 224
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 3)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list_backbones())
@pytest.mark.parametrize("method", ["ddrl-am", "pcl", "lafe", "plain"])
def test_every_method_trains_and_explains_on_every_backbone(
    method: str, backbone: str, tmp_path: Path
) -> None:
    images = _small_ucm()
    config = TrainConfig(
        method=method,
        backbone=backbone,
        image_size=64,
        epochs=1,
        batch_size=4,
        train_ratio=0.5,
        pretrained=False,
        device="cpu",
        progress=False,
        freeze_stages=1,
    )
    trained = train_classifier(images, config, tmp_path / "model.pt")
    assert all(math.isfinite(h["loss"]) for h in trained.history)
    loaded = load_classifier(tmp_path / "model.pt", "cpu")
    assert (loaded.method, loaded.backbone) == (method, backbone)
    # Each backbone's own normalisation travels in the checkpoint.
    assert loaded.preprocessing == Preprocessing.for_backbone(backbone, 64)
    pil = Image.open(images.paths[0]).convert("RGB")
    assert len(loaded.predict([pil])[0]) == 2
    png = loaded.explain(pil)
    assert png is not None and Image.open(io.BytesIO(png)).size == pil.size


@pytest.mark.slow
def test_frozen_stages_keep_their_weights_and_batch_norm_statistics() -> None:
    images = _small_ucm(4)
    config = TrainConfig(
        backbone="resnet18",
        image_size=48,
        epochs=1,
        batch_size=4,
        pretrained=False,
        device="cpu",
        progress=False,
        freeze_stages=2,
    )
    trained = train_classifier(images, config)
    torch.manual_seed(config.seed)  # as the trainer does before building
    fresh, _ = build_classifier(classifier_config("plain", 2, 48, "resnet18"), pretrained=False)
    for i, (before, after) in enumerate(
        zip(fresh.trunk.stages, trained.net.trunk.stages, strict=True)
    ):
        same = all(
            torch.equal(a, b)
            for a, b in zip(before.state_dict().values(), after.state_dict().values(), strict=True)
        )
        assert same == (i < 2), f"stage {i}"


# --------------------------------------------------------------------------- issue 8 defects


def _save_untrained(path: Path, method: str) -> Path:
    torch.manual_seed(0)
    config = classifier_config(method, 3, 64, "resnet18")
    net, init = build_classifier(config, pretrained=False)
    prep = Preprocessing.for_backbone("resnet18", 64)
    state = net.deploy_state_dict()
    save_checkpoint(
        Checkpoint(
            "classifier", net.deploy_config(), prep, list(UCM_CLASSES), state, init, "ucm",
            fingerprint(state, prep), {"name": f"{method}-x"},
        ),
        path,
    )  # fmt: skip
    return path


def test_the_plain_classifiers_heat_map_reaches_the_service(tmp_path: Path) -> None:
    """Defect 7: the worker's /classify?explain answered no map for a plain classifier."""
    import anyio

    from rsir_common.settings import get_settings
    from service.classifier_pool import ClassifierPool
    from service.metrics import Metrics

    path = _save_untrained(tmp_path / "plain.pt", "plain")
    image = Image.open(_small_ucm().paths[0]).convert("RGB")
    png = load_classifier(path).explain(image)
    assert png is not None and Image.open(io.BytesIO(png)).size == image.size
    settings = get_settings(index_dir=tmp_path, classifier_checkpoints=[path], device="cpu")
    pool = ClassifierPool(settings, Metrics(), torch.device("cpu"))
    pool.load()
    try:
        result = anyio.run(pool.classify, image, "plain-x", 3, True)
        assert result.explanation_png is not None
        assert Image.open(io.BytesIO(result.explanation_png)).format == "PNG"
    finally:
        pool.close()


def test_classifier_training_skips_and_counts_an_unreadable_image(tmp_path: Path) -> None:
    """Defect 9: one unreadable image ended classifier training; the embedder skips and counts
    it. Now both do: the run finishes and says how many it left out."""
    _small_ucm()  # skips without the real images
    root = make_class_folder(tmp_path / "data", 4, tuple(UCM_CLASSES[:2]))
    (root / UCM_CLASSES[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    images = discover_dataset("folder", root)
    assert len(images) == 9
    config = TrainConfig(
        backbone="resnet18",
        image_size=32,
        epochs=1,
        batch_size=4,
        train_ratio=0.5,
        pretrained=False,
        device="cpu",
        progress=False,
    )
    trained = train_classifier(images, config, tmp_path / "plain.pt")
    broken = images.paths.index(root / UCM_CLASSES[0] / "broken.jpg")
    assert trained.bank.unreadable == 1 and not bool(trained.bank.readable[broken])
    report = score_test_split(
        trained.net,
        trained.bank,
        trained.split,
        images.class_names,
        trained.checkpoint.preprocessing,
        torch.device("cpu"),
    )
    skipped = trained.checkpoint.extra["unreadable_train_images"] + report.n_unreadable
    assert skipped == 1
    assert report.n_test == len(trained.split.test) - report.n_unreadable
