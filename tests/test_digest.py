"""The trace digest: csrc/digest.c (core.digest) and its pure-Python twin
(emu/engine/digest.py) give the same value on any bytes and seed, and it
tells apart the traces that differ."""
from hypothesis import given, settings, strategies as st

from emu.engine import core
from emu.engine import digest as twin

SEEDS = st.integers(min_value=0, max_value=2**64 - 1)


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=300), seed=SEEDS)
def test_c_and_twin_agree(data, seed):
    assert core.digest(data, seed) == twin.digest(data, seed)


@settings(max_examples=50, deadline=None)
@given(data=st.binary(min_size=1000, max_size=5000), cut=st.integers(min_value=0, max_value=40))
def test_agree_on_every_tail_and_alignment(data, cut):
    """Stripes, whole words and single bytes after them; a view that
    starts off the buffer's alignment."""
    view = memoryview(data)[cut:]
    assert core.digest(view) == twin.digest(view)
    assert core.digest(bytearray(data)) == twin.digest(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=1, max_size=200), bit=st.integers(min_value=0), seed=SEEDS)
def test_one_bit_changes_it(data, bit, seed):
    flipped = bytearray(data)
    bit %= len(data) * 8
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert core.digest(bytes(flipped), seed) != core.digest(data, seed)


def test_length_and_seed_count():
    assert core.digest(b"") != core.digest(b"\0")
    assert core.digest(b"\0" * 32) != core.digest(b"\0" * 33)
    assert core.digest(b"abc", 1) != core.digest(b"abc", 2)
    assert core.digest(b"") == twin.digest(b"")


def test_bad_seed_is_refused():
    import pytest
    for seed in (-1, 2**64):
        with pytest.raises(ValueError):
            core.digest(b"x", seed)


def test_any_buffer_is_digested_whole():
    """A buffer of wider items is digested by its bytes, not its item count."""
    import array
    words = array.array("I", range(100))
    assert core.digest(words) == twin.digest(bytes(words)) == core.digest(bytes(words))
