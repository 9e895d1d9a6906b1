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


class ImageFiles(Dataset):
    """Items ``(tensor, empty label, position)`` from image paths, like the data set views."""

    def __init__(self, paths: list[Path], transform, channels: int):
        self.paths, self.transform, self.mode = paths, transform, "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            with Image.open(self.paths[i]) as img:
                img = img.convert(self.mode)
        except (UnidentifiedImageError, OSError) as exc:
            raise SchnError(f"cannot read image {self.paths[i]}: {exc.__class__.__name__}; remove or replace the file") from None
        return self.transform(img), torch.zeros(0), i


def encode_files(run, files: list[Path], batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """``sign(U_I(x))`` of image files by a loaded run's network, as packed codes."""
    spec = run.checkpoint["input_spec"]
    transform = build_transform(spec["preprocess"], False, spec["input_size"], spec["mean"], spec["std"],
                                spec["channels"])
    backbone = None
    if run.cfg.model.frozen:
        # trained on cached features: the same frozen backbone turns images into features
        backbone = backbone_for(run.cfg.model, spec["channels"], spec["input_size"]).to(run.device).eval()
    signed = encode_view(run.method, ImageFiles(files, transform, spec["channels"]), run.device, batch_size,
                         progress=progress, desc="encode", backbone=backbone)
    return codes_mod.pack(signed)


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
