"""``schn encode``: image files in, packed binary codes with their ids out; millions of files
streamed in chunks, resumable, data-parallel under torchrun (see :func:`encode_images`).

New images are encoded by the image network (``sign(U_I(x))``), as method.md prescribes for
anything that was not part of training. The output ``.npz`` holds ``codes`` (packed, see
``schn.codes``), ``ids`` (the file paths as given), ``bits``, and ``bit_order``.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from . import codes as codes_mod
from . import distributed
from .bounds import check_range
from .data import build_transform
from .data.files import IMAGE_ERRORS
from .errors import SchnError
from .evaluate import encode_view
from .fileio import atomic_path, write_json
from .inputs import backbone_for
from .runs import open_run

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CHUNK_SIZE = 65_536  # images per chunk file of a streamed encode (the unit of resuming)
PLAN = "plan.json"
CHUNK_FILE = re.compile(r"chunk-\d{7}\.npz")  # the names _chunk_name gives


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


BAD_IMAGE_CHOICES = ("error", "skip")


class ImageItems(Dataset):
    """Items ``(tensor, unreadable flag (1,), position)`` from image paths or decoded PIL images,
    shaped like the data set views. ``skip_bad``: an unreadable file (missing, corrupt, or a
    decompression bomb) becomes a blank input flagged 1, for the caller to drop; else one line."""

    def __init__(self, items: list, transform, channels: int, skip_bad: bool = False):
        self.items, self.transform, self.mode = items, transform, "L" if channels == 1 else "RGB"
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        if isinstance(item, Image.Image):
            return self.transform(item.convert(self.mode)), torch.zeros(1), i
        try:
            with Image.open(item) as img:
                img = img.convert(self.mode)
        except IMAGE_ERRORS as exc:
            if not self.skip_bad:
                raise SchnError(f"cannot read image {item}: {exc.__class__.__name__}; remove or replace the file, "
                                "or pass --on-bad-image skip") from None
            return self.transform(Image.new(self.mode, (8, 8))), torch.ones(1), i
        return self.transform(img), torch.zeros(1), i


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
        decode and resize the images while the network runs. An unreadable file: one line."""
        return self.encode_readable(items, batch_size, progress, num_workers, skip_bad=False)[0]

    def encode_readable(self, items: list, batch_size: int = 256, progress: bool = False, num_workers: int = 0,
                        skip_bad: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Packed codes of the readable items and a mask of which items those are."""
        signed, flags = encode_view(self.run.method, ImageItems(items, self.transform, self.channels, skip_bad),
                                    self.run.device, batch_size, num_workers, progress=progress, desc="encode",
                                    backbone=self.backbone, with_labels=True)
        readable = flags[:, 0] == 0
        return codes_mod.pack(signed[readable]), readable


def encode_images(run_dir, paths, out_path, device: str | None = None, batch_size: int = 256,
                  progress: bool = True, chunk_size: int = CHUNK_SIZE, workers: int = 0,
                  on_bad_image: str = "error", echo=print) -> tuple[int, Path, float, list[str]]:
    """Encode image files into ``out_path`` (.npz: codes, ids, bits, bit_order), streaming.

    Files are encoded ``chunk_size`` at a time, each chunk written atomically into
    ``OUT.parts/``; a run that stops (crash, kill, Ctrl-C) is resumed by the same command, which
    skips the chunks already there, so every item is written exactly once. Under torchrun each
    process takes every world-size-th chunk; when all are done the first process merges the
    chunks, in file order, into ``out_path`` and removes what it wrote in ``OUT.parts/``.
    ``on_bad_image="skip"`` leaves unreadable files out (counted) instead of stopping.
    Returns (items written, path, images per second of this run over all processes, skipped ids)."""
    out_path = Path(out_path)
    if out_path.suffix != ".npz":
        raise SchnError(f"output file {out_path} must end in .npz")
    check_range("--chunk-size", chunk_size, 1, 10**9)
    check_range("--batch-size", batch_size, 1, 65_536)
    check_range("--workers", workers, 0, 256)
    if on_bad_image not in BAD_IMAGE_CHOICES:
        raise SchnError(f"--on-bad-image must be {' or '.join(BAD_IMAGE_CHOICES)}, got {on_bad_image!r}")
    here = distributed.init(device)
    if here.size > 1 and device is None and torch.cuda.is_available():
        device = f"cuda:{here.local_rank}"
    files = collect_images(paths)  # the same sorted list in every process
    run = open_run(run_dir, device)
    ids = [str(p) for p in files]
    parts = _parts_folder(out_path, ids, run, chunk_size, on_bad_image, here, echo)
    try:
        seconds, done = _encode_chunks(ImageEncoder(run), files, ids, parts, chunk_size, batch_size, workers,
                                       on_bad_image == "skip", here, progress)
    except BaseException:
        if here.is_main:
            _remove_if_unstarted(parts)  # a failed start leaves nothing behind
        raise
    distributed.barrier()
    done = distributed.total(done)
    skipped = _merge(parts, out_path, ids, range(_chunk_count(files, chunk_size)), run) if here.is_main else []
    distributed.barrier()
    distributed.finish()
    return len(files) - len(skipped), out_path, done / seconds if seconds > 0 else 0.0, skipped


def _chunk_count(files, chunk_size: int) -> int:
    return -(-len(files) // chunk_size)


def _encode_chunks(encoder, files, ids, parts: Path, chunk_size: int, batch_size: int, workers: int,
                   skip_bad: bool, here, progress: bool) -> tuple[float, int]:
    """This process's chunks that are not on disk yet; returns (seconds, images encoded)."""
    todo = [c for c in range(_chunk_count(files, chunk_size))
            if c % here.size == here.rank and not (parts / _chunk_name(c)).is_file()]
    start, done = time.perf_counter(), 0
    for number, c in enumerate(todo):
        chunk, chunk_ids = files[c * chunk_size:(c + 1) * chunk_size], np.array(ids[c * chunk_size:(c + 1) * chunk_size])
        packed, readable = encoder.encode_readable(chunk, batch_size, num_workers=workers, skip_bad=skip_bad)
        with atomic_path(parts / _chunk_name(c), suffix=".npz") as tmp:
            np.savez(tmp, codes=packed, ids=chunk_ids[readable], skipped=chunk_ids[~readable])
        done += len(chunk)
        if progress:
            rate = done / (time.perf_counter() - start)
            print(f"[{here.rank}] chunk {number + 1}/{len(todo)} of this process: {done:,} images, {rate:,.0f} images/s",
                  flush=True)
    return time.perf_counter() - start, done


def _chunk_name(c: int) -> str:
    return f"chunk-{c:07d}.npz"


def _own_files(parts: Path) -> list[Path]:
    """What an encode writes in ``OUT.parts/``: its plan and its chunks, by their exact names."""
    return [p for p in parts.iterdir() if p.name == PLAN or CHUNK_FILE.fullmatch(p.name)]


def _remove_own(parts: Path) -> None:
    """Remove the encode's own files, and the folder if nothing else is in it."""
    for p in _own_files(parts):
        p.unlink(missing_ok=True)
    if not any(parts.iterdir()):
        parts.rmdir()


def _remove_if_unstarted(parts: Path) -> None:
    if parts.is_dir() and not any(CHUNK_FILE.fullmatch(p.name) for p in parts.iterdir()):
        _remove_own(parts)


def _parts_folder(out_path: Path, ids: list[str], run, chunk_size: int, on_bad_image: str, here, echo) -> Path:
    """``OUT.parts/`` with a plan that pins the file list, the model, the chunk size and what
    happens to bad images; chunks left by a stopped encode of anything else are not mixed in: that
    encode's files are removed and this one starts afresh, saying so."""
    from .index.build import model_checksum

    parts = out_path.with_name(out_path.name + ".parts")
    plan = {"files": len(ids), "files_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            "chunk_size": chunk_size, "model_checksum": model_checksum(run.path), "on_bad_image": on_bad_image}
    if here.is_main:
        if parts.is_dir() and _own_files(parts):
            if _read_plan(parts) != plan:
                echo(f"{parts} held a stopped encode of other files, another model or other options; "
                     "starting afresh")
                _remove_own(parts)
        parts.mkdir(parents=True, exist_ok=True)
        write_json(parts / PLAN, plan)
    distributed.barrier()
    return parts


def _read_plan(parts: Path) -> dict | None:
    try:
        return json.loads((parts / PLAN).read_text())
    except (OSError, ValueError):  # missing or damaged: not this encode's plan
        return None


def _merge(parts: Path, out_path: Path, ids: list[str], chunks, run) -> list[str]:
    """Write the output from the chunks, in file order; returns the skipped ids."""
    codes, stored, skipped = [], [], []
    for c in chunks:
        with np.load(parts / _chunk_name(c)) as chunk:
            codes.append(chunk["codes"])
            stored.append(chunk["ids"])
            skipped.extend(chunk["skipped"].tolist())
    stored = np.concatenate(stored) if stored else np.zeros(0, dtype=str)
    left_out = set(skipped)
    if stored.tolist() != [i for i in ids if i not in left_out]:  # each item once, in file order
        raise SchnError(f"the chunks in {parts} do not add up to the file list; delete {parts} and encode again")
    with atomic_path(out_path, suffix=".npz") as tmp:
        np.savez(tmp, codes=np.concatenate(codes), ids=stored, bits=run.checkpoint["bits"], bit_order="msb-first")
    _remove_own(parts)
    return skipped
