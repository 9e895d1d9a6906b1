"""``schn encode``: image files in, packed binary codes with their ids out.

New images are encoded by the image network (``sign(U_I(x))``), as method.md prescribes for
anything that was not part of training. The output ``.npz`` holds ``codes`` (packed, see
``schn.codes``), ``ids`` (the file paths as given), ``bits``, and ``bit_order``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from . import codes as codes_mod
from .data import build_transform
from .errors import SchnError
from .evaluate import encode_view
from .fileio import atomic_path
from .inputs import backbone_for
from .runs import open_run

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def collect_images(paths) -> list[Path]:
    """Files as given, and image files found under folders (sorted, recursively)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise SchnError(f"{path} does not exist; pass image files or folders of images")
    if not found:
        raise SchnError(f"no images found in {', '.join(map(str, paths))} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


class ImageItems(Dataset):
    """Items ``(tensor, empty label, position)`` from image paths or decoded PIL images, like the
    data set views."""

    def __init__(self, items: list, transform, channels: int):
        self.items, self.transform, self.mode = items, transform, "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        if isinstance(item, Image.Image):
            return self.transform(item.convert(self.mode)), torch.zeros(0), i
        try:
            with Image.open(item) as img:
                img = img.convert(self.mode)
        except (UnidentifiedImageError, OSError) as exc:
            raise SchnError(f"cannot read image {item}: {exc.__class__.__name__}; remove or replace the file") from None
        return self.transform(img), torch.zeros(0), i


class ImageEncoder:
    """A loaded run's image network with its preprocessing (and frozen backbone), built once and
    used for many batches: ``sign(U_I(x))`` as packed codes. Safe to call from several threads."""

    def __init__(self, run):
        spec = run.checkpoint["input_spec"]
        self.run, self.channels, self.bits = run, spec["channels"], int(run.checkpoint["bits"])
        # "small" never resizes (the data set's images are already input_size); a new image may be any
        # size, so it is resized to input_size, which leaves an image of that size untouched
        kind = "plain" if spec["preprocess"] == "small" else spec["preprocess"]
        self.transform = build_transform(kind, False, spec["input_size"], spec["mean"], spec["std"], spec["channels"])
        self.backbone = None
        if run.cfg.model.frozen:
            # trained on cached features: the same frozen backbone turns images into features
            self.backbone = backbone_for(run.cfg.model, spec["channels"], spec["input_size"]).to(run.device).eval()

    def encode(self, items: list, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """Packed codes of image files and/or PIL images, in order."""
        signed = encode_view(self.run.method, ImageItems(items, self.transform, self.channels), self.run.device,
                             batch_size, progress=progress, desc="encode", backbone=self.backbone)
        return codes_mod.pack(signed)


def encode_files(run, files: list[Path], batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """``sign(U_I(x))`` of image files by a loaded run's network, as packed codes."""
    return ImageEncoder(run).encode(files, batch_size, progress)


def encode_images(run_dir, paths, out_path, device: str | None = None, batch_size: int = 256,
                  progress: bool = True) -> tuple[int, Path]:
    out_path = Path(out_path)
    if out_path.suffix != ".npz":
        raise SchnError(f"output file {out_path} must end in .npz")
    files = collect_images(paths)
    run = open_run(run_dir, device)
    packed = encode_files(run, files, batch_size, progress)
    with atomic_path(out_path, suffix=".npz") as tmp:
        np.savez(tmp, codes=packed, ids=np.array([str(p) for p in files]),
                 bits=run.checkpoint["bits"], bit_order="msb-first")
    return len(files), out_path
