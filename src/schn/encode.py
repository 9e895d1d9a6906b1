"""``schn encode``: image files in, packed binary codes with their ids out; millions of files
streamed in chunks, resumable, data-parallel under torchrun (see :func:`encode_images`).

New images are encoded by the image network (``sign(U_I(x))``), as method.md prescribes for
anything that was not part of training. The output ``.npz`` holds ``codes`` (packed, see
``schn.codes``), ``ids`` (the file paths as given), ``bits``, and ``bit_order``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from . import codes as codes_mod
from . import distributed
from .data import build_transform
from .errors import SchnError
from .evaluate import encode_view
from .fileio import atomic_path, write_json
from .inputs import backbone_for
from .runs import open_run

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CHUNK_SIZE = 65_536  # images per chunk file of a streamed encode (the unit of resuming)
PLAN = "plan.json"


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

    def encode(self, items: list, batch_size: int = 256, progress: bool = False, num_workers: int = 0) -> np.ndarray:
        """Packed codes of image files and/or PIL images, in order; ``num_workers`` processes
        decode and resize the images while the network runs."""
        signed = encode_view(self.run.method, ImageItems(items, self.transform, self.channels), self.run.device,
                             batch_size, num_workers, progress=progress, desc="encode", backbone=self.backbone)
        return codes_mod.pack(signed)


def encode_images(run_dir, paths, out_path, device: str | None = None, batch_size: int = 256,
                  progress: bool = True, chunk_size: int = CHUNK_SIZE, workers: int = 0) -> tuple[int, Path, float]:
    """Encode image files into ``out_path`` (.npz: codes, ids, bits, bit_order), streaming.

    Files are encoded ``chunk_size`` at a time, each chunk written atomically into
    ``OUT.parts/``; a run that stops (crash, kill, Ctrl-C) is resumed by the same command, which
    skips the chunks already there, so every item is written exactly once. Under torchrun each
    process takes every world-size-th chunk; when all are done the first process merges the
    chunks, in file order, into ``out_path`` and removes ``OUT.parts/``. Returns (items, path,
    images per second of this run, over all processes)."""
    out_path = Path(out_path)
    if out_path.suffix != ".npz":
        raise SchnError(f"output file {out_path} must end in .npz")
    if chunk_size < 1:
        raise SchnError(f"--chunk-size must be at least 1, got {chunk_size}")
    here = distributed.init(device)
    if here.size > 1 and device is None and torch.cuda.is_available():
        device = f"cuda:{here.local_rank}"
    files = collect_images(paths)  # the same sorted list in every process
    run = open_run(run_dir, device)
    ids = [str(p) for p in files]
    parts = _parts_folder(out_path, ids, run, chunk_size, here)
    encoder = ImageEncoder(run)
    chunks = range(-(-len(files) // chunk_size))
    todo = [c for c in chunks if c % here.size == here.rank and not (parts / _chunk_name(c)).is_file()]
    start, done = time.perf_counter(), 0
    for number, c in enumerate(todo):
        chunk = files[c * chunk_size:(c + 1) * chunk_size]
        packed = encoder.encode(chunk, batch_size, num_workers=workers)
        with atomic_path(parts / _chunk_name(c), suffix=".npz") as tmp:
            np.savez(tmp, codes=packed, ids=np.array(ids[c * chunk_size:(c + 1) * chunk_size]))
        done += len(chunk)
        if progress:
            rate = done / (time.perf_counter() - start)
            print(f"[{here.rank}] chunk {number + 1}/{len(todo)} of this process: {done:,} images, {rate:,.0f} images/s",
                  flush=True)
    distributed.barrier()
    seconds = time.perf_counter() - start
    done = distributed.total(done)
    if here.is_main:
        _merge(parts, out_path, ids, chunks, run)
    distributed.barrier()
    distributed.finish()
    return len(files), out_path, done / seconds if seconds > 0 else 0.0


def _chunk_name(c: int) -> str:
    return f"chunk-{c:07d}.npz"


def _parts_folder(out_path: Path, ids: list[str], run, chunk_size: int, here) -> Path:
    """``OUT.parts/`` with a plan that pins the file list, the model and the chunk size; a folder
    left by a run of other files or another model is refused, not mixed in."""
    from .index.build import model_checksum

    parts = out_path.with_name(out_path.name + ".parts")
    plan = {"files": len(ids), "files_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            "chunk_size": chunk_size, "model_checksum": model_checksum(run.path)}
    if here.is_main:
        if (parts / PLAN).is_file() and json.loads((parts / PLAN).read_text()) != plan:
            raise SchnError(f"{parts} holds a stopped encode of other files, another model or chunk size; "
                            "delete it or choose another output")
        parts.mkdir(parents=True, exist_ok=True)
        write_json(parts / PLAN, plan)
    distributed.barrier()
    return parts


def _merge(parts: Path, out_path: Path, ids: list[str], chunks, run) -> None:
    codes, stored = [], []
    for c in chunks:
        with np.load(parts / _chunk_name(c)) as chunk:
            codes.append(chunk["codes"])
            stored.append(chunk["ids"])
    stored = np.concatenate(stored) if stored else np.zeros(0, dtype=str)
    if stored.tolist() != ids:  # each item once, in file order
        raise SchnError(f"the chunks in {parts} do not add up to the file list; delete {parts} and encode again")
    with atomic_path(out_path, suffix=".npz") as tmp:
        np.savez(tmp, codes=np.concatenate(codes), ids=stored, bits=run.checkpoint["bits"], bit_order="msb-first")
    shutil.rmtree(parts)
