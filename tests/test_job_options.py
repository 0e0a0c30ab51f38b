"""Each job's options object is built from the one Settings object (`from_settings`): a field
takes the setting of its name, and the training configs take their command's own settings
where a shared name means something else (batch size, seed, cache folder)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from indexer.options import EvaluateOptions, IndexOptions, WhitenOptions
from model.classifiers.training import TrainConfig as ClassifierConfig
from model.train_embedder import TrainConfig as EmbedderConfig
from rsir_common.settings import Settings


def configured(tmp_path: Path) -> Settings:
    """Settings none of whose fields used here is at its default."""
    return Settings(
        data_root=tmp_path / "data", index_dir=tmp_path / "index", db_url="sqlite:///x.db",
        whitening=tmp_path / "w.npz", imagenet_weights=tmp_path / "r50.pth",
        cache_dir=tmp_path / "cache", vector_engine="milvus", milvus_uri="m.db",
        milvus_collection="c", ray_address="local", device="cpu", batch_size=3, num_workers=0,
        runtime="torch", max_pixels=1000, dataset="folder", per_class=4, seed=7,
        backbone="resnet18", image_size=64, pretrained=False, freeze_stages=2, progress=False,
        pooling="mac", attention=False, train_batch_size=5, max_epochs=6, ce_epochs=1, lr=0.01,
        warmup_steps=9, min_scale=0.9, margin=0.3, negatives=4, classifier_method="pcl",
        train_ratio=0.5, classifier_max_epochs=11, classifier_batch_size=12, classifier_lr=0.2,
        classes="beach, forest", attention_epochs=13, index_factory="HNSW32", commit_every=14,
        protocol="all-vs-all", whitening_method="pca", whitening_dim=15,
        whitening_train_split=True,
    )  # fmt: skip


def test_indexer_options_take_the_settings_of_their_names(tmp_path: Path) -> None:
    settings = configured(tmp_path)
    for options in (
        IndexOptions.from_settings(settings),
        EvaluateOptions.from_settings(settings),
        WhitenOptions.from_settings(settings),
    ):
        for field in fields(options):
            if field.name in Settings.model_fields:
                assert getattr(options, field.name) == getattr(settings, field.name), field.name
    # Not settings: the library's own defaults.
    assert IndexOptions.from_settings(settings).train_size == 65536
    assert EvaluateOptions.from_settings(settings).train_fraction is None
    # What a caller decides itself wins.
    assert IndexOptions.from_settings(settings, ray_address=None).ray_address is None


def test_rsir_train_config_from_settings(tmp_path: Path) -> None:
    config = EmbedderConfig.from_settings(configured(tmp_path))
    assert (config.dataset, config.root) == ("folder", str(tmp_path / "data"))
    assert (config.backbone, config.pooling, config.attention) == ("resnet18", "mac", False)
    assert (config.image_size, config.batch_size, config.max_epochs) == (64, 5, 6)
    assert (config.ce_epochs, config.lr, config.warmup_steps) == (1, 0.01, 9)
    assert (config.min_scale, config.margin, config.negatives) == (0.9, 0.3, 4)
    assert (config.seed, config.per_class, config.freeze_stages) == (7, 4, 0)
    assert (config.num_workers, config.device, config.pretrained) == (0, "cpu", False)
    assert config.imagenet_weights == str(tmp_path / "r50.pth")
    assert EmbedderConfig.from_settings(Settings()).seed == 0


def test_rsir_train_classifier_config_from_settings(tmp_path: Path) -> None:
    config = ClassifierConfig.from_settings(configured(tmp_path))
    assert (config.method, config.backbone, config.image_size) == ("pcl", "resnet18", 64)
    assert (config.epochs, config.batch_size, config.seed) == (11, 12, 7)
    assert (config.train_ratio, config.attention_epochs, config.freeze_stages) == (0.5, 13, 2)
    assert (config.per_class, config.classes) == (4, ["beach", "forest"])
    assert (config.pretrained, config.device, config.num_workers) == (False, "cpu", 0)
    assert (config.weights_path, config.cache_dir) == (
        tmp_path / "r50.pth",
        tmp_path / "cache" / "gradcam",
    )
    assert config.progress is False and config.recipe is not None and config.recipe.lr == 0.2
    default = ClassifierConfig.from_settings(Settings())
    assert default.seed == 0 and default.classes is None and default.recipe is None
