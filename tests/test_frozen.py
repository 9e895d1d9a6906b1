"""Frozen-backbone mode end to end: features cached once, codes for new images through the
real backbone equal the codes computed from the cached features."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from schn import codes
from schn.backbones import create_backbone
from schn.cli import main
from schn.config import load_config
from schn.errors import SchnError

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("frozen")
    rng = np.random.default_rng(0)
    for c, colour in enumerate(COLOURS):
        folder = root / "images" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    torch.manual_seed(0)
    weights = root / "resnet18.pth"
    torch.save(create_backbone("resnet18").state_dict(), weights)
    args = ["--set", "data.name=image_folder", "--set", f"data.root={root / 'images'}",
            "--set", "split.protocol=per_class", "--set", "split.query_per_class=2", "--set", "split.val_size=3",
            "--set", "model.backbone=resnet18", "--set", f"model.weights={weights}", "--set", "model.frozen=true",
            "--set", "model.input_size=32", "--set", f"model.cache_dir={root / 'cache'}",
            "--set", "train.iterations=2", "--set", "train.epochs_per_iteration=1", "--set", "train.bits=8",
            "--set", f"run.out_dir={root / 'runs'}", "--set", "run.name=r"]
    config = root / "c.yaml"
    config.write_text("method:\n  name: schn\n  lr: 0.001\n")
    assert main(["train", "--config", str(config), *args, "--quiet"]) == 0
    # the same with a trainable hidden layer between the cached features and the hash layer
    assert main(["train", "--config", str(config), *args, "--set", "run.name=mlp", "--set", "model.head=mlp",
                 "--set", "model.head_hidden=16", "--set", "model.head_dropout=0.5", "--quiet"]) == 0
    return root


def test_features_are_cached_once(setup):
    cache = sorted(p.suffix for p in (setup / "cache").iterdir())
    assert cache == [".json", ".npy"]
    meta = json.loads(next((setup / "cache").glob("*.json")).read_text())
    assert meta["backbone"] == "resnet18" and meta["n"] == 24 and meta["dim"] == 512


@pytest.mark.parametrize("name", ["r", "mlp"])
def test_encode_new_images_through_the_frozen_backbone_matches_cached_features(setup, name):
    run = setup / "runs" / name
    saved = np.load(run / "codes.npz")
    split = json.loads((run / "split.json").read_text())
    files = sorted((setup / "images").rglob("*.png"))  # the reader's order: sorted classes, files
    query_files = [str(files[i]) for i in split["query"]]
    out = setup / "q.npz"
    assert main(["encode", str(run), *query_files, "-o", str(out), "--quiet"]) == 0
    encoded = np.load(out)
    assert (encoded["codes"] == saved["query_codes"]).all()
    assert codes.unpack(encoded["codes"], 8).shape == (len(query_files), 8)


def test_frozen_mode_without_pretrained_weights_is_refused():
    with pytest.raises(SchnError, match="model.frozen=true needs pretrained weights"):
        load_config(None, ["model.frozen=true", "model.backbone=resnet18"])
