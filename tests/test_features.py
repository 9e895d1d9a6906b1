import os

import numpy as np
import pytest
import torch
from PIL import Image

from schn.backbones import ModelConfig
from schn.features import cache_path, cache_key, cached_features, feature_view


def cfg(tmp_path, backbone="small_cnn", **kw):
    return ModelConfig(backbone=backbone, cache_dir=str(tmp_path), **kw)


class FakeData:
    """The part of HashingDataset that the feature cache uses."""

    def __init__(self, n=6, size=16, channels=3, fingerprint="fake-1"):
        rng = np.random.default_rng(0)
        shape = (n, size, size, channels) if channels == 3 else (n, size, size)
        self.pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        self.labels = np.eye(3, dtype=np.uint8)[np.arange(n) % 3]
        self.channels, self.fingerprint = channels, fingerprint

    def __len__(self):
        return len(self.labels)

    def load_image(self, i):
        return Image.fromarray(self.pixels[i])

    def default_mean_std(self):
        return [0.5] * self.channels, [0.25] * self.channels


def test_cache_miss_then_hit(tmp_path, monkeypatch):
    data = FakeData()
    first = cached_features(data, cfg(tmp_path), batch_size=4, progress=False)
    assert first.shape == (6, 256) and first.dtype in (np.float16, np.float32)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npy"]  # no temp files left

    def boom(*a, **k):
        raise AssertionError("the backbone must not be built on a cache hit")

    monkeypatch.setattr("schn.inputs.create_backbone", boom)
    again = cached_features(data, cfg(tmp_path), progress=False)
    assert isinstance(again, np.memmap) and np.array_equal(first, again)


def test_random_init_features_are_reproducible(tmp_path):
    data = FakeData(n=3, channels=1, size=8)
    a = np.array(cached_features(data, cfg(tmp_path / "a"), progress=False))
    b = np.array(cached_features(data, cfg(tmp_path / "b"), progress=False))
    assert a.shape == (3, 256) and np.array_equal(a, b)


def test_key_depends_on_input_size_weights_precision_and_data(tmp_path):
    w = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, w)

    def key(fp="fp", **kw):
        return cache_key(fp, ModelConfig(**{"backbone": "resnet18", "input_size": 224, "weights": "imagenet", **kw}))

    base = cache_path(str(tmp_path), key())
    others = [key(input_size=128), key(weights="none"), key(weights=str(w)), key("fp2"),
              key(backbone="resnet50"), key(feature_precision="bf16")]
    paths = {cache_path(str(tmp_path), k) for k in others}
    assert base not in paths and len(paths) == len(others)
    # a weights file is identified by content, not by name
    assert key(weights=str(w))["weights"].startswith("sha256:")
    torch.save({"x": torch.ones(1)}, w)
    assert cache_path(str(tmp_path), key(weights=str(w))) not in paths


def test_new_input_size_computes_new_entry(tmp_path):
    data = FakeData(size=32)
    a = cached_features(data, cfg(tmp_path, "resnet18", input_size=32), progress=False)
    b = cached_features(data, cfg(tmp_path, "resnet18", input_size=64), progress=False)
    assert a.shape == b.shape == (6, 512) and not np.array_equal(a, b)
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_bf16_features_stay_close_to_fp32(tmp_path):
    data = FakeData(size=32)
    a = np.array(cached_features(data, cfg(tmp_path, "resnet18", input_size=32), progress=False), np.float32)
    b = np.array(cached_features(data, cfg(tmp_path, "resnet18", input_size=32, feature_precision="bf16"),
                                 progress=False), np.float32)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", fail)
    with pytest.raises(OSError):
        cached_features(FakeData(n=2), cfg(tmp_path), progress=False)
    assert os.listdir(tmp_path) == []


def test_feature_view_items():
    feats = np.arange(12, dtype=np.float16).reshape(4, 3)
    labels = np.eye(2, dtype=np.uint8)[[0, 1, 1, 0]]
    view = feature_view(feats, labels, [2, 0])
    assert len(view) == 2 and list(view.indices) == [2, 0]
    x, y, p = view[0]
    assert x.dtype == y.dtype == torch.float32 and p == 0
    assert x.tolist() == [6, 7, 8] and y.tolist() == [0, 1]


@pytest.mark.parametrize("planted", ["object-array", "labels", "garbage"])
def test_a_planted_cache_file_is_never_unpickled(tmp_path, planted):
    from schn.errors import SchnError

    data = FakeData()
    path = cache_path(str(tmp_path), cache_key(data.fingerprint, cfg(tmp_path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    if planted == "object-array":
        np.save(path, np.array([{"a": 1}] * 6, dtype=object), allow_pickle=True)
    elif planted == "labels":
        np.save(path, np.zeros((6, 3), np.uint8))
    else:
        path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(SchnError, match="delete it"):
        cached_features(data, cfg(tmp_path), progress=False)
