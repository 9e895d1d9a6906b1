"""Atomic file writes: write to a temporary file in the target folder, then rename.

A crash or Ctrl-C mid-write leaves either the previous file or nothing, never half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else it is removed.

    ``suffix`` keeps writers that insist on an extension (``np.save``, ``savefig``) from renaming it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def read_torch(path: str | Path, fmt: str, kind: str, remedy: str) -> dict:
    """A dict saved by ``torch.save`` whose ``format`` is ``fmt``; a damaged or foreign file ends
    in one line naming ``kind`` (``checkpoint``) and what to do (``remedy``)."""
    import torch

    from .errors import SchnError

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise SchnError(f"cannot read {path} ({type(exc).__name__}); the {kind} is damaged, {remedy}") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise SchnError(f"{path} is not a schn {kind} (format {fmt})")
    return obj


def fsync_dir(path: str | Path) -> None:
    """Make a folder's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
