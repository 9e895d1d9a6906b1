"""Image -> normalised CHW float tensor, for ImageNet-sized backbones or small images."""
from __future__ import annotations

from typing import Sequence

from PIL import Image
from torchvision import transforms as T

from ..errors import SchnError


class ToMode:
    """Convert a PIL image to 'RGB' or 'L' (a class, not a lambda, so workers can pickle it)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"ToMode({self.mode!r})"


def _stats(values: Sequence[float], channels: int, what: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise SchnError(f"{what} has {len(values)} values for {channels} channels")
    return values


def build_transform(kind: str, train: bool, input_size: int, mean: Sequence[float],
                    std: Sequence[float], channels: int = 3) -> T.Compose:
    """``imagenet``: resize + centre crop (train: random resized crop + flip), always RGB.
    ``small``: no resize (train: padded random crop + flip), ``channels`` 1 or 3.
    ``plain``: resize to ``input_size`` square, never augmented (raw-pixel features)."""
    if kind == "imagenet":
        channels = 3
        if train:
            steps = [T.RandomResizedCrop(input_size), T.RandomHorizontalFlip()]
        else:
            steps = [T.Resize(round(input_size * 256 / 224)), T.CenterCrop(input_size)]
    elif kind in ("small", "plain"):
        if channels not in (1, 3):
            raise SchnError(f"channels must be 1 or 3, got {channels}")
        # padding 4 at 32 pixels, scaled with the image size
        steps = [T.RandomCrop(input_size, padding=max(1, input_size // 8)),
                 T.RandomHorizontalFlip()] if train else []
        if kind == "plain":
            steps = [T.Resize((input_size, input_size))]
    else:
        raise SchnError(f"unknown transform kind {kind!r}; choose imagenet, small or plain")
    mode = "RGB" if channels == 3 else "L"
    return T.Compose([ToMode(mode), *steps, T.ToTensor(),
                      T.Normalize(_stats(mean, channels, "mean"), _stats(std, channels, "std"))])
