import numpy as np
import pytest
import torch

from schn import codes
from schn.errors import SchnError


def loop_hamming(a, b):
    return np.array([[sum(x != y for x, y in zip(r, s)) for s in b] for r in a])


@pytest.mark.parametrize("bits", [1, 7, 8, 12, 13, 32, 48, 64, 65])
def test_pack_unpack_roundtrip_and_distances_match_loop(bits):
    rng = np.random.default_rng(bits)
    a = codes.to_signed(rng.standard_normal((6, bits)))
    b = codes.to_signed(rng.standard_normal((9, bits)))
    pa, pb = codes.pack(a), codes.pack(b)
    assert pa.dtype == np.uint8 and pa.shape == (6, codes.packed_width(bits))
    assert (codes.unpack(pa, bits) == a).all()
    expected = loop_hamming(a, b)
    assert (codes.hamming_signed(a, b) == expected).all()
    assert (codes.hamming_packed(pa, pb) == expected).all()


def test_bit_order_is_msb_first_with_zero_padding():
    code = np.array([[1, -1, -1, -1, -1, -1, -1, -1, 1, 1]])
    packed = codes.pack(code)
    assert packed.tolist() == [[0b10000000, 0b11000000]]


def test_sign_of_zero_is_plus_one_for_arrays_and_tensors():
    assert codes.to_signed(np.array([0.0, -0.0, -1e-9, 3])).tolist() == [1, 1, -1, 1]
    t = codes.to_signed(torch.tensor([0.0, -2.0, 0.5]))
    assert t.tolist() == [1.0, -1.0, 1.0] and t.dtype == torch.float32


def test_wrong_widths_are_clear_errors():
    with pytest.raises(SchnError, match="expected 2 bytes"):
        codes.unpack(np.zeros((3, 1), np.uint8), 12)
    with pytest.raises(SchnError, match="code lengths differ"):
        codes.hamming_signed(np.ones((1, 8)), np.ones((1, 16)))
