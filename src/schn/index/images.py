"""An index's own image store, ``IDX/images/``: the only place ``schn serve`` serves images from.

Files are named by the SHA-256 of their bytes (the same image stored twice is one file) and
recorded in the index's ``paths`` column relative to the index folder (``images/<sha>.png``), so
the folder can be moved. Files are written atomically and fsynced before the index that refers to
them is saved; a crash can leave an unreferenced file behind, never a reference to a missing one.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image

from ..fileio import atomic_path, fsync_path

STORE = "images"
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif"}
MEDIA_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".bmp": "image/bmp",
               ".gif": "image/gif"}


def stored_path(data: bytes, kind: str) -> str:
    """Where :func:`store_bytes` puts image bytes of format ``kind``, relative to the index folder
    (named by their SHA-256), known before anything is written."""
    return f"{STORE}/{hashlib.sha256(data).hexdigest()}{SUFFIXES[kind]}"


def store_bytes(index_folder, data: bytes, kind: str, sync: bool = True) -> str:
    """Write image bytes of format ``kind`` (a PIL format name) into the store; returns the path
    relative to the index folder. ``sync=False`` leaves making it durable to the caller (one
    ``os.sync()`` after many files instead of two fsyncs each)."""
    relative = stored_path(data, kind)
    target = Path(index_folder) / relative
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, sync=sync) as tmp:
            tmp.write_bytes(data)
        if sync:
            fsync_path(target.parent)
    return relative


def store_image(index_folder, image, sync: bool = True) -> str:
    """Store an image file as it is (when its format is one served) or a decoded PIL image as PNG
    (lossless); returns its path relative to the index folder."""
    if not isinstance(image, Image.Image):
        with Image.open(image) as opened:
            if opened.format in SUFFIXES:
                return store_bytes(index_folder, Path(image).read_bytes(), opened.format, sync)
            return store_image(index_folder, opened.convert("RGB"), sync)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return store_bytes(index_folder, buffer.getvalue(), "PNG", sync)


def store_all(index_folder, images) -> list[str]:
    """Store many images (files or PIL images); returns their paths. Durable on return: one
    ``os.sync()`` instead of two fsyncs per file."""
    paths = [store_image(index_folder, image, sync=False) for image in images]
    os.sync()
    return paths


def stored_file(index_folder, path: str) -> Path | None:
    """The file behind a stored path if, resolved (symbolic links included), it lies inside the
    index's own store and exists; None for anything else (absolute paths, ``..``, other folders)."""
    if not path or Path(path).is_absolute():
        return None
    store = (Path(index_folder) / STORE).resolve()
    file = (Path(index_folder) / path).resolve()
    if file.parent != store or not file.is_file() or file.suffix not in MEDIA_TYPES:
        return None
    return file


def remove_unreferenced(index_folder, paths, still_used) -> None:
    """Delete stored files among ``paths`` that no item refers to any more (``still_used(path)``)."""
    for path in set(paths):
        file = stored_file(index_folder, path)
        if file is not None and not still_used(path):
            file.unlink(missing_ok=True)
