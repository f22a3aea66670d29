"""A 64-bit digest of bytes, in pure Python: the twin of csrc/digest.c
(core.digest, which a run's trace hash uses; tests/test_digest.py holds
the two to the same value). Four 64-bit lanes over 32-byte stripes, each
word multiplied, rotated and multiplied (the structure of the xxHash
family); the words are little-endian. A fingerprint that two runs were
the same, not a cryptographic hash."""
from __future__ import annotations

import struct

K1 = 0x9E3779B185EBCA87
K2 = 0xC2B2AE3D27D4EB4F
K3 = 0x165667B19E3779F9
K4 = 0x85EBCA77C2B2AE63
K5 = 0x27D4EB2F165667C5
MASK = (1 << 64) - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & MASK


def _round(acc: int, w: int) -> int:
    return (_rotl((acc + w * K2) & MASK, 31) * K1) & MASK


def _fold(h: int, lane: int) -> int:
    return ((h ^ _round(0, lane)) * K1 + K4) & MASK


def digest(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    """The digest of data with seed (0 <= seed < 2**64)."""
    data = bytes(data)
    n = len(data)
    seed &= MASK
    p = 0
    if n >= 32:
        v = [(seed + K1 + K2) & MASK, (seed + K2) & MASK, seed, (seed - K1) & MASK]
        stripes = n // 32
        words = struct.unpack_from(f"<{stripes * 4}Q", data)
        for k in range(0, stripes * 4, 4):
            v[0] = _round(v[0], words[k])
            v[1] = _round(v[1], words[k + 1])
            v[2] = _round(v[2], words[k + 2])
            v[3] = _round(v[3], words[k + 3])
        p = stripes * 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & MASK
        for lane in v:
            h = _fold(h, lane)
    else:
        h = (seed + K5) & MASK
    h = (h + n) & MASK
    while p + 8 <= n:
        (w,) = struct.unpack_from("<Q", data, p)
        h = (_rotl(h ^ _round(0, w), 27) * K1 + K4) & MASK
        p += 8
    while p < n:
        h = (_rotl(h ^ ((data[p] * K5) & MASK), 11) * K1) & MASK
        p += 1
    h ^= h >> 33
    h = (h * K2) & MASK
    h ^= h >> 29
    h = (h * K3) & MASK
    h ^= h >> 32
    return h
