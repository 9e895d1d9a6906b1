"""Property tests of ``schn.codes``: packing, distances and word forms agree with plain loops on
any code length and any codes Hypothesis can find (seeded, bounded: part of ``make test``)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from schn import codes
from schn.errors import SchnError

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)


@st.composite
def signed_codes(draw, max_rows: int = 6):
    bits = draw(st.integers(1, 130))
    rows = draw(st.integers(0, max_rows))
    return draw(arrays(np.int8, (rows, bits), elements=st.sampled_from([-1, 1])))


def loop_distance(a, b) -> int:
    return sum(int(x != y) for x, y in zip(a, b))


@SETTINGS
@given(signed_codes())
def test_pack_then_unpack_is_the_identity(signed):
    packed = codes.pack(signed)
    assert packed.dtype == np.uint8 and packed.shape == (len(signed), codes.packed_width(signed.shape[1]))
    assert np.array_equal(codes.unpack(packed, signed.shape[1]), signed)
    codes.check_packed(packed, signed.shape[1])  # padding bits are zero


@SETTINGS
@given(signed_codes(), st.data())
def test_every_distance_form_equals_the_loop(database, data):
    bits = database.shape[1]
    query = data.draw(arrays(np.int8, (3, bits), elements=st.sampled_from([-1, 1])))
    want = np.array([[loop_distance(q, d) for d in database] for q in query], dtype=np.int32).reshape(3, len(database))
    packed_q, packed_d = codes.pack(query), codes.pack(database)
    assert np.array_equal(codes.hamming_signed(query, database), want)
    assert np.array_equal(codes.hamming_packed(packed_q, packed_d), want)
    words_q, words_d = codes.to_words(packed_q), codes.to_words(packed_d)
    for i in range(len(query)):
        assert np.array_equal(codes.word_distances(words_q[i], words_d), want[i])


@SETTINGS
@given(signed_codes(), st.integers(0, 129))
def test_bit_j_sits_where_the_convention_says(signed, j):
    if not len(signed) or j >= signed.shape[1]:
        return
    packed = codes.pack(signed)
    bit = (packed[:, j // 8] >> (7 - j % 8)) & 1
    assert np.array_equal(bit.astype(bool), signed[:, j] > 0)
    words = codes.to_words(packed)
    word_bit = (words[:, j // 64] >> np.uint64(63 - j % 64)) & np.uint64(1)
    assert np.array_equal(word_bit.astype(bool), signed[:, j] > 0)


@SETTINGS
@given(st.integers(1, 130), st.data())
def test_a_set_padding_bit_or_a_wrong_width_is_refused(bits, data):
    packed = codes.pack(np.ones((2, bits), np.int8))
    if bits % 8:
        spoiled = packed.copy()
        spoiled[1, -1] |= 1  # the last padding bit
        with pytest.raises(SchnError):
            codes.check_packed(spoiled, bits)
    wrong = data.draw(st.integers(1, 130).filter(lambda b: codes.packed_width(b) != codes.packed_width(bits)))
    with pytest.raises(SchnError):
        codes.check_packed(packed, wrong)


@SETTINGS
@given(arrays(np.float32, st.tuples(st.integers(0, 4), st.integers(1, 40)),
              elements=st.floats(-3, 3, width=32)))
def test_sign_of_zero_is_plus_one(values):
    signed = codes.to_signed(values)
    assert set(np.unique(signed).tolist()) <= {-1, 1}
    assert np.array_equal(signed > 0, values >= 0)
