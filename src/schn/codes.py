"""Binary codes: the one sign convention and the one bit-packing convention of the project.

Codes live in three forms:
- *signed*: ``{-1, +1}`` int8/float rows, as learned (``B``) and as the network's ``sign(U)``;
- *bits*: ``{0, 1}`` uint8 rows, with bit ``1`` meaning ``+1``;
- *packed*: uint8 rows of ``ceil(bits / 8)`` bytes. Bit ``j`` of a code is stored in byte
  ``j // 8`` at position ``7 - j % 8`` (most significant bit first, NumPy's ``packbits``
  default ``bitorder="big"``). Unused trailing bits of the last byte are 0 for every code, so
  padding never changes a Hamming distance.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import SchnError


def to_signed(x):
    """``sign`` with ``sign(0) = +1``, so every code is +-1 (method.md). Keeps the input type."""
    if isinstance(x, torch.Tensor):
        return torch.where(x >= 0, 1, -1).to(torch.int8 if not x.is_floating_point() else x.dtype)
    x = np.asarray(x)
    return np.where(x >= 0, 1, -1).astype(np.int8)


def packed_width(bits: int) -> int:
    return (int(bits) + 7) // 8


def pack(signed) -> np.ndarray:
    """Pack ``(n, bits)`` +-1 (or 0/1) codes into ``(n, ceil(bits/8))`` uint8 rows."""
    if isinstance(signed, torch.Tensor):
        signed = signed.detach().cpu().numpy()
    a = np.asarray(signed)
    if a.ndim != 2:
        raise SchnError(f"codes must be a 2-d array (items x bits), got shape {a.shape}")
    return np.packbits(a > 0, axis=1, bitorder="big")


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack`: ``(n, bytes)`` uint8 -> ``(n, bits)`` int8 in {-1, +1}."""
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.ndim != 2 or packed.shape[1] != packed_width(bits):
        raise SchnError(
            f"packed codes of shape {packed.shape} do not hold {bits}-bit codes "
            f"(expected {packed_width(bits)} bytes per row)"
        )
    b = np.unpackbits(packed, axis=1, count=bits, bitorder="big")
    return (b.astype(np.int8) * 2 - 1)


def hamming_signed(query, database) -> np.ndarray:
    """Hamming distances between +-1 code matrices: ``(c - q . d) / 2``, int32 ``(nq, nd)``."""
    q = np.asarray(query, dtype=np.float32)
    d = np.asarray(database, dtype=np.float32)
    if q.shape[1] != d.shape[1]:
        raise SchnError(f"code lengths differ: queries {q.shape[1]} bits, database {d.shape[1]} bits")
    return np.rint((q.shape[1] - q @ d.T) / 2).astype(np.int32)


def hamming_packed(query: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Hamming distances between packed code matrices by XOR + popcount, int32 ``(nq, nd)``."""
    q = np.asarray(query, dtype=np.uint8)
    d = np.asarray(database, dtype=np.uint8)
    if q.shape[1] != d.shape[1]:
        raise SchnError(f"code widths differ: queries {q.shape[1]} bytes, database {d.shape[1]} bytes")
    out = np.empty((q.shape[0], d.shape[0]), dtype=np.int32)
    for i in range(q.shape[0]):  # one row at a time bounds memory at nd x bytes
        out[i] = np.bitwise_count(np.bitwise_xor(d, q[i])).sum(axis=1, dtype=np.int32)
    return out
