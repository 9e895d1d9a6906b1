"""What a method's network sees: images through a backbone's transform, or cached frozen features.

In frozen-backbone mode the backbone runs once over the whole data set (``schn.features``) and the
method trains on the cached features with ``nn.Identity`` as its backbone. New images are then
encoded by the real backbone followed by the trained head (:meth:`ModelInputs.image_encoder`).
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones import ModelConfig, create_backbone
from .data import HashingDataset, build_transform
from .errors import SchnError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SchnError(f"train.device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SchnError(f"train.device is {name!r} but no CUDA device is available; use train.device=cpu or auto")
    return device


def input_size_for(backbone, dataset, configured: int | None) -> int:
    """Configured size, else the backbone's default, else the images' own size (small CNN)."""
    size = configured or backbone.default_input_size
    return int(size or min(dataset.load_image(0).size))


def backbone_for(model_cfg: ModelConfig, channels: int, image_size: int, weights: str | None = None) -> nn.Module:
    """The configured backbone for images of ``channels`` and side ``image_size`` (the input size
    when one is configured); ``weights`` overrides the configured ones (e.g. "none" before loading
    a checkpoint)."""
    return create_backbone(model_cfg.backbone, model_cfg.weights if weights is None else weights,
                           in_channels=channels, image_size=model_cfg.input_size or image_size,
                           width=model_cfg.width)


def backbone_transform(backbone: nn.Module, dataset: HashingDataset, train: bool, input_size: int | None):
    """The transform a backbone expects: ImageNet statistics, or the data set's own (small CNN)."""
    if backbone.preprocess == "imagenet":
        mean, std = backbone.mean, backbone.std
    else:
        mean, std = dataset.default_mean_std()
    return build_transform(backbone.preprocess, train, input_size_for(backbone, dataset, input_size),
                           mean, std, dataset.channels)


class ModelInputs:
    """Builds the backbone and the data views for one data set and model config."""

    def __init__(self, model_cfg: ModelConfig, dataset: HashingDataset, device: torch.device,
                 progress: bool = True, num_workers: int = 0):
        self.cfg = model_cfg
        self.dataset = dataset
        self.device = device
        self._features = None
        self._image_backbone = None
        if model_cfg.frozen:
            from .features import cached_features

            self._features = cached_features(dataset, model_cfg, device=device, progress=progress,
                                             num_workers=num_workers)
            self.backbone: nn.Module = nn.Identity()
            self.feature_dim = int(self._features.shape[1])
        else:
            self.backbone = self._create_backbone()
            self.feature_dim = self.backbone.feature_dim

    def _create_backbone(self) -> nn.Module:
        return backbone_for(self.cfg, self.dataset.channels, min(self.dataset.load_image(0).size))

    def _transform(self, backbone: nn.Module, train: bool):
        return backbone_transform(backbone, self.dataset, train, self.cfg.input_size)

    def input_size(self, backbone) -> int:
        return input_size_for(backbone, self.dataset, self.cfg.input_size)

    def view(self, indices, train: bool):
        """Items ``(input, label, position)`` for data set ``indices``; train=True adds augmentation."""
        if self._features is not None:
            from .features import feature_view

            return feature_view(self._features, self.dataset.labels, indices)
        return self.dataset.view(indices, self._transform(self.backbone, train))

    def image_backbone(self) -> nn.Module:
        """The backbone that turns images into the method's inputs (the real one in frozen mode)."""
        if self._features is None:
            return nn.Identity()
        if self._image_backbone is None:
            self._image_backbone = self._create_backbone().to(self.device).eval()
        return self._image_backbone

    def image_transform(self):
        """Eval transform for new images (the real backbone's, also in frozen mode)."""
        backbone = self.backbone if self._features is None else self.image_backbone()
        return self._transform(backbone, train=False)
