/*
 * digest.c - a 64-bit digest of a byte string: what a run's trace hash is
 * made of (emu/runs/fuzz.py's trace_hash over EventLog.raw()). Its
 * pure-Python twin is emu/engine/digest.py; tests/test_digest.py holds the
 * two to the same value on any bytes.
 *
 * Why in C: the trace of a kGraft seed run is about 100 KB of events, and
 * sha256 took 50 us of the run to hash it. This digest reads the bytes in
 * four independent 64-bit lanes (multiply-rotate-multiply per word, the
 * structure of the xxHash family), about 10 bytes a cycle. It is a
 * fingerprint that two runs were the same, not a cryptographic hash.
 *
 * The bytes are taken as little-endian words whatever the host (memcpy
 * loads): the same bytes give the same digest everywhere.
 */
#include <string.h>
#include "core.h"

#define K1 0x9E3779B185EBCA87ULL
#define K2 0xC2B2AE3D27D4EB4FULL
#define K3 0x165667B19E3779F9ULL
#define K4 0x85EBCA77C2B2AE63ULL
#define K5 0x27D4EB2F165667C5ULL

static uint64_t rotl(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static uint64_t word(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

static uint64_t round1(uint64_t acc, uint64_t w)
{
    return rotl(acc + w * K2, 31) * K1;
}

static uint64_t fold(uint64_t h, uint64_t lane)
{
    return (h ^ round1(0, lane)) * K1 + K4;
}

uint64_t emu_digest(const void *data, size_t n, uint64_t seed)
{
    const uint8_t *p = data, *end;
    uint64_t h;

    if (!p)
        n = 0;
    end = p + n;
    if (n >= 32) {
        uint64_t v1 = seed + K1 + K2, v2 = seed + K2, v3 = seed, v4 = seed - K1;
        const uint8_t *last = end - 32;
        do {
            v1 = round1(v1, word(p));
            v2 = round1(v2, word(p + 8));
            v3 = round1(v3, word(p + 16));
            v4 = round1(v4, word(p + 24));
            p += 32;
        } while (p <= last);
        h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
        h = fold(h, v1);
        h = fold(h, v2);
        h = fold(h, v3);
        h = fold(h, v4);
    } else {
        h = seed + K5;
    }
    h += (uint64_t)n;
    for (; p + 8 <= end; p += 8)
        h = rotl(h ^ round1(0, word(p)), 27) * K1 + K4;
    for (; p < end; p++)
        h = rotl(h ^ (*p * K5), 11) * K1;
    h ^= h >> 33;
    h *= K2;
    h ^= h >> 29;
    h *= K3;
    h ^= h >> 32;
    return h;
}
