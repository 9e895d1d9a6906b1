"""Indexes from trained runs: the run's database codes, or new images encoded by its network.

The manifest records the run and the SHA-256 of its checkpoint; images are only ever encoded into
an index by the very model that made its codes (a retrained run is refused: rebuild the index).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SchnError
from ..fileio import sha256_file
from . import images as images_mod
from .base import CodeIndex, create_index_backend, is_milvus_location


def model_checksum(run_dir) -> str:
    ckpt = Path(run_dir) / "checkpoint.pt"
    if not ckpt.is_file():
        raise SchnError(f"{run_dir} has no checkpoint.pt; pass a finished run folder written by `schn train`")
    return "sha256:" + sha256_file(ckpt)


def _item_path(dataset, i: int) -> str:
    """Where item i's image lives (file readers), or '' for in-memory data sets."""
    paths, source = getattr(dataset, "paths", None), getattr(dataset, "source", None)
    if paths is None or source is None:
        return ""
    where = source.describe(paths[i])  # a file under a folder, or "archive.tar:member"
    if Path(where).is_file():
        return str(Path(where).resolve())
    archive = str(getattr(source, "path", ""))
    if archive and where.startswith(archive + ":"):  # absolute, so the path means the same from anywhere
        return str(Path(archive).resolve()) + where[len(archive):]
    return where


def run_database(run):
    """The database of an opened run as indexed by default: packed codes (as evaluated: the learned
    codes for asymmetric methods), data set ids, labels, image paths, class names, and the items'
    images (PIL, read lazily, in order)."""
    from ..data import create_dataset

    run_dir = run.path
    saved = run_dir / "codes.npz"
    if not saved.is_file():
        raise SchnError(f"{run_dir} has no codes.npz; train or evaluate the run first (`schn evaluate {run_dir}`)")
    with np.load(saved) as npz:
        packed, rows = npz["database_codes"], npz["database_indices"]
    dataset = create_dataset(run.cfg.data)
    if len(dataset) <= int(rows.max(initial=0)):
        raise SchnError(f"the data set of {run_dir} changed since training ({len(dataset)} items); "
                        "index images with --images instead")
    ids = [str(dataset.ids[i]) for i in rows]
    return (packed, ids, dataset.labels[rows], [_item_path(dataset, int(i)) for i in rows], list(dataset.class_names),
            (dataset.load_image(int(i)) for i in rows))


def build_index(run_dir, location, images=None, collection: str | None = None, overwrite: bool = False,
                device: str | None = None, progress: bool = True, store_images: bool = False) -> CodeIndex:
    """A new index of the run's database (default) or of image files/folders, saved at ``location``.
    ``store_images`` copies every item's image into the index's own store (``IDX/images/``: image
    files as they are, in-memory images as PNG), which is what ``schn serve`` shows; the paths
    column then points there."""
    from ..runs import open_run

    backend = "milvus" if is_milvus_location(location) else "local"
    if store_images and backend != "local":
        raise SchnError("--store-images needs a local index folder, not a Milvus location")
    run = open_run(run_dir, device)
    info = {"method": run.cfg.method_name, "run": str(Path(run_dir).resolve()), "model_checksum": model_checksum(run_dir),
            "dataset": run.cfg.data.name, "source": "images" if images else "run database"}
    bits = int(run.checkpoint["bits"])
    if images:
        from ..encode import ImageEncoder, collect_images

        files = collect_images(images)
        packed = ImageEncoder(run).encode(files, progress=progress)
        ids, paths = [str(p) for p in files], [str(p.resolve()) for p in files]
        labels = names = None
        pictures = files
    else:
        packed, ids, labels, paths, names, pictures = run_database(run)
    options = {"collection": collection} if backend == "milvus" else {}
    index = create_index_backend(backend, str(location), bits=bits, id_kind="str", class_names=names, info=info,
                                 overwrite=overwrite, **options)
    if store_images:
        paths = images_mod.store_all(location, pictures)  # durable before the index that refers to them
    index.add(packed, ids=ids, labels=labels, paths=paths)
    index.save()
    return index


def index_encoder(index: CodeIndex, run_dir=None, device: str | None = None):
    """An :class:`~schn.encode.ImageEncoder` of the very model that made the index's codes (its
    recorded run, or ``run_dir`` if it moved; a retrained run is refused by checksum)."""
    from ..encode import ImageEncoder
    from ..runs import open_run

    if not (run_dir or index.info.get("run")):
        raise SchnError("this index records no run; pass --run RUN to encode images")
    run_dir = Path(run_dir or index.info["run"])
    if not (run_dir / "checkpoint.pt").is_file():
        raise SchnError(f"the index's run {run_dir} is gone; pass --run with the run folder that built the index")
    want = index.info.get("model_checksum")
    if want and model_checksum(run_dir) != want:
        raise SchnError(f"{run_dir}/checkpoint.pt is not the model that built this index (checksum differs); "
                        "rebuild the index with `schn index build`")
    run = open_run(run_dir, device)
    if int(run.checkpoint["bits"]) != index.bits:
        raise SchnError(f"run {run_dir} makes {run.checkpoint['bits']}-bit codes, the index holds {index.bits}-bit codes")
    return ImageEncoder(run)


def encode_for_index(index: CodeIndex, images, run_dir=None, device: str | None = None,
                     progress: bool = False) -> tuple[np.ndarray, list[Path]]:
    """Packed codes of image files by the model that made the index's codes."""
    from ..encode import collect_images

    encoder = index_encoder(index, run_dir, device)
    files = collect_images(images)
    return encoder.encode(files, progress=progress), files
