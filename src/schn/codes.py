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
    q_words, d_words = to_words(q), to_words(d)
    out = np.empty((q.shape[0], d.shape[0]), dtype=np.int32)
    for i in range(q.shape[0]):  # one row at a time bounds memory at nd x words
        out[i] = word_distances(q_words[i], d_words)
    return out


def check_packed(packed, bits: int) -> np.ndarray:
    """Validate ``(n, ceil(bits/8))`` packed codes: a C-contiguous uint8 array whose padding bits are 0."""
    a = np.asarray(packed)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2 or a.dtype != np.uint8 or a.shape[1] != packed_width(bits):
        raise SchnError(
            f"codes of shape {a.shape} and type {a.dtype} are not packed {bits}-bit codes; expected uint8 "
            f"rows of {packed_width(bits)} bytes (pack +-1 codes with schn.codes.pack)"
        )
    spare = packed_width(bits) * 8 - int(bits)
    if spare and len(a) and (a[:, -1] & np.uint8((1 << spare) - 1)).any():
        raise SchnError(f"{bits}-bit codes have non-zero padding bits in their last byte; pack them with schn.codes.pack")
    return np.ascontiguousarray(a)


def to_words(packed: np.ndarray) -> np.ndarray:
    """Packed rows as ``(n, ceil(bytes/8))`` uint64 words, big-endian, zero-padded.

    Bit ``j`` of a code is bit ``63 - j % 64`` of word ``j // 64``, so substrings of a code are
    shifts and masks of words, and the popcount of XORed words is the Hamming distance.
    """
    packed = np.asarray(packed, dtype=np.uint8)
    n, width = packed.shape
    words = -(-width // 8)
    if width != words * 8:
        padded = np.zeros((n, words * 8), dtype=np.uint8)
        padded[:, :width] = packed
        packed = padded
    return np.ascontiguousarray(packed).view(">u8").astype(np.uint64).reshape(n, words)


def word_distances(query_words: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Hamming distances (int32) of one query's words ``(W,)`` to rows of words ``(n, W)``."""
    counts = np.bitwise_count(np.bitwise_xor(words, query_words))
    return counts[:, 0].astype(np.int32) if counts.shape[1] == 1 else counts.sum(axis=1, dtype=np.int32)
