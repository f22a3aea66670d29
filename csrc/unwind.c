/*
 * unwind.c - stack walks for reliable-stack checks, and the range checks
 * that kpatch (return addresses) and Ksplice (every stack word) use.
 *
 * The walkers follow the kernel's frame-pointer unwinder (as used by
 * arch_stack_walk_reliable) and its ORC unwinder, reduced to what the
 * emulated tasks need. emu/engine/unwind.py is the pure-Python twin: any change in
 * the semantics here must be made there too, and tests/test_unwind.py holds
 * the two to identical results on ordinary and hostile stacks.
 *
 * Nothing read from the stack is trusted: every read lies wholly inside
 * [lo, hi), every address computation is checked before it could wrap, and
 * every step moves strictly up the stack, so a walk always terminates.
 */
#include <string.h>
#include "emu.h"

/* True when a lies in one of the n sorted, disjoint ranges. */
static int __emu_in_ranges(const struct emu_range *r, int n, uint64_t a)
{
    int lo = 0, hi = n;

    /* lo ends as the number of ranges starting at or below a */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;

        if (r[mid].start <= a)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && a < r[lo - 1].end;
}

/* __emu_in_ranges, trying the range that held the last address first
 * (*last, -1 for none; updated on a hit): return addresses of a recursion
 * or of one function's calls keep landing in the same range. */
static inline int __emu_in_ranges_near(const struct emu_range *r, int n, uint64_t a, int *last)
{
    int lo = 0, hi = n;

    if (*last >= 0 && a >= r[*last].start && a < r[*last].end)
        return 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;

        if (r[mid].start <= a)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0 && a < r[lo - 1].end) {
        *last = lo - 1;
        return 1;
    }
    return 0;
}

/* True when the 8-byte word at a is aligned and lies wholly in [lo, hi).
 * Written as a > hi - 8 so that an a near 2^64 cannot wrap into range. */
static int __emu_word_ok(uint64_t lo, uint64_t hi, uint64_t a)
{
    return a % 8 == 0 && a >= lo && hi >= 8 && a <= hi - 8;
}

/* The little-endian word at guest address a; the caller checked a. */
static inline uint64_t __emu_load(const uint8_t *stack, uint64_t lo, uint64_t a)
{
    uint64_t v;

    memcpy(&v, stack + (a - lo), 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* Index of the last ORC entry with orc_ip <= ip, or -1. */
static int __emu_orc_find(const uint64_t *orc_ip, int norc, uint64_t ip)
{
    int lo = 0, hi = norc;

    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;

        if (orc_ip[mid] <= ip)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo - 1;
}

/* __emu_orc_find, trying the entry found last first: the frames of a
 * recursion, or of a loop of calls, keep hitting the same entry. */
static inline int __emu_orc_find_near(const uint64_t *orc_ip, int norc, uint64_t ip, int last)
{
    if (last >= 0 && orc_ip[last] <= ip && (last + 1 == norc || ip < orc_ip[last + 1]))
        return last;
    return __emu_orc_find(orc_ip, norc, ip);
}

uint64_t emu_graph_ret_addr(const struct emu_graph *g, uint64_t value, uint64_t slot)
{
    uint64_t depth, cap, i, rec[2];

    if (!g || !g->ret || value != g->ret)
        return value;
    if (!g->stack || g->size < EMU_GRAPH_HEADER)
        return 0;
    cap = (g->size - EMU_GRAPH_HEADER) / EMU_GRAPH_RECORD;
    memcpy(&depth, g->stack, 8);
    if (depth > cap)
        return 0;
    /* Newest first: a tail call leaves a record whose ret is the trampoline
     * itself over its caller's, both for the same slot. */
    for (i = depth; i-- > 0;) {
        memcpy(rec, g->stack + EMU_GRAPH_HEADER + i * EMU_GRAPH_RECORD, 16);
        if (rec[0] == slot && rec[1] != g->ret)
            return rec[1];
    }
    return 0;
}

static int __emu_walk_args_ok(const uint8_t *stack, uint64_t lo, uint64_t hi,
                              const struct emu_range *text, int ntext,
                              const struct emu_walk_in *in, const uint64_t *out,
                              const int *nout)
{
    if (!in || !nout || lo > hi || (!stack && lo != hi))
        return 0;
    if (ntext < 0 || (!text && ntext > 0))
        return 0;
    if (in->max_entries < 0 || (!out && in->max_entries > 0))
        return 0;
    return 1;
}

/* Append v to the trace, or end the walk as too deep when out[] is full. */
#define EMU_PUSH(v)                             \
    do {                                        \
        if (n == max) {                         \
            rc = EMU_WALK_TOO_DEEP;             \
            goto done;                          \
        }                                       \
        out[n++] = (v);                         \
    } while (0)

#define EMU_END(code)                           \
    do {                                        \
        rc = (code);                            \
        goto done;                              \
    } while (0)

int emu_walk_fp(const uint8_t *stack, uint64_t lo, uint64_t hi,
                const struct emu_range *text, int ntext,
                const struct emu_walk_in *in, uint64_t *out, int *nout)
{
    uint64_t bp, frame, ret, next, rsp, end_ret, end_slot;
    struct emu_graph graph;
    int n = 0, rc, max, ti = -1;

    if (!__emu_walk_args_ok(stack, lo, hi, text, ntext, in, out, nout)) {
        if (nout)
            *nout = 0;
        return EMU_EINVAL;
    }
    /* Locals, not in->: stores to out[] could alias them otherwise. */
    max = in->max_entries;
    rsp = in->rsp;
    end_ret = in->end_ret;
    end_slot = in->end_slot;
    graph = in->graph;

    EMU_PUSH(in->rip);
    if (!__emu_in_ranges(text, ntext, in->rip))
        EMU_END(EMU_WALK_BAD_RET);

    for (bp = in->rbp;;) {
        if (bp == 0)
            EMU_END(EMU_WALK_NO_END);
        frame = bp;
        /* A frame is [saved rbp][return address]; it must lie above rsp. */
        if (frame % 8 || frame < lo || hi < 16 || frame > hi - 16 || frame < rsp)
            EMU_END(EMU_WALK_OFF_STACK);
        ret = __emu_load(stack, lo, frame + 8);
        if (ret == graph.ret && ret)        /* emu_graph_ret_addr's case, tested inline */
            ret = emu_graph_ret_addr(&graph, ret, frame + 8);
        if (ret == end_ret && frame + 8 == end_slot) {
            /* The entry frame: a complete trace. A task stopped at an
             * arbitrary instruction may not have its frame set up yet, so
             * frame pointers cannot vouch for it (the kernel sees the
             * interrupt's register frame and reports unreliable). */
            EMU_PUSH(ret);
            EMU_END(in->preempted ? EMU_WALK_PREEMPTED : EMU_WALK_OK);
        }
        /* ret - 1: the call itself, which may be the last instruction of
         * its function (a call of a noreturn function), with ret already
         * past the function's end. */
        if (ret == 0 || !__emu_in_ranges_near(text, ntext, ret - 1, &ti))
            EMU_END(EMU_WALK_BAD_RET);
        EMU_PUSH(ret);
        next = __emu_load(stack, lo, frame);
        if (next != 0 && next <= frame)
            EMU_END(EMU_WALK_NOT_PROGRESSING);
        bp = next;
    }
done:
    *nout = n;
    return rc;
}

int emu_walk_orc(const uint8_t *stack, uint64_t lo, uint64_t hi,
                 const struct emu_range *text, int ntext,
                 const uint64_t *orc_ip, const struct emu_orc_entry *orc, int norc,
                 const struct emu_walk_in *in, uint64_t *out, int *nout)
{
    const struct emu_orc_entry *e;
    uint64_t ip, sp, bp, look, cfa, slot, ret, a, end_ret, end_slot;
    struct emu_graph graph;
    int n = 0, rc, first = 1, i = -1, max, ti = -1;

    if (!__emu_walk_args_ok(stack, lo, hi, text, ntext, in, out, nout) ||
        norc < 0 || (norc > 0 && (!orc_ip || !orc))) {
        if (nout)
            *nout = 0;
        return EMU_EINVAL;
    }

    /* Locals, not in->: stores to out[] could alias them otherwise. */
    max = in->max_entries;
    end_ret = in->end_ret;
    end_slot = in->end_slot;
    graph = in->graph;
    ip = in->rip;
    sp = in->rsp;
    bp = in->rbp;
    EMU_PUSH(ip);
    if (!__emu_in_ranges(text, ntext, ip))
        EMU_END(EMU_WALK_BAD_RET);

    for (;;) {
        /* A return address points after its call, which may be the last
         * instruction of the function: look the call itself up. */
        look = first ? ip : ip - 1;
        i = __emu_orc_find_near(orc_ip, norc, look, i);
        if (i < 0)
            EMU_END(EMU_WALK_NO_ORC);
        e = &orc[i];
        if (e->type == EMU_ORC_TYPE_UNDEFINED ||
            (e->sp_reg != EMU_ORC_REG_SP && e->sp_reg != EMU_ORC_REG_BP) ||
            (e->type == EMU_ORC_TYPE_TRAMPOLINES && (look - orc_ip[i]) % EMU_STUB_SIZE))
            EMU_END(EMU_WALK_NO_ORC);

        /* Offsets are signed; unsigned arithmetic wraps as intended and
         * the bounds checks below reject whatever wrapped. */
        cfa = (e->sp_reg == EMU_ORC_REG_SP ? sp : bp) + (uint64_t)(int64_t)e->sp_offset;
        slot = cfa - 8;
        if (!__emu_word_ok(lo, hi, slot))
            EMU_END(EMU_WALK_OFF_STACK);
        /* slot <= hi - 8 <= 2^64 - 9, so cfa == slot + 8 did not wrap. */
        if (cfa <= sp)
            EMU_END(EMU_WALK_NOT_PROGRESSING);
        ret = __emu_load(stack, lo, slot);
        if (ret == graph.ret && ret)        /* emu_graph_ret_addr's case, tested inline */
            ret = emu_graph_ret_addr(&graph, ret, slot);

        if (e->bp_reg == EMU_ORC_REG_BP) {
            a = cfa + (uint64_t)(int64_t)e->bp_offset;
            if (!__emu_word_ok(lo, hi, a))
                EMU_END(EMU_WALK_OFF_STACK);
            bp = __emu_load(stack, lo, a);
        } else if (e->bp_reg != EMU_ORC_REG_UNDEFINED) {
            EMU_END(EMU_WALK_NO_ORC);
        }
        sp = cfa;

        /* ORC knows every instruction's frame, preempted or not. */
        if (ret == end_ret && slot == end_slot) {
            EMU_PUSH(ret);
            EMU_END(EMU_WALK_OK);
        }
        /* ret - 1: the call itself, which may be the last instruction of
         * its function (a call of a noreturn function), with ret already
         * past the function's end. */
        if (ret == 0 || !__emu_in_ranges_near(text, ntext, ret - 1, &ti))
            EMU_END(EMU_WALK_BAD_RET);
        EMU_PUSH(ret);
        ip = ret;
        first = 0;
    }
done:
    *nout = n;
    return rc;
}

int emu_ranges_hit(const uint64_t *addrs, int n, const struct emu_range *ranges, int nranges)
{
    uint64_t lo, hi;
    int i;

    if (n < 0 || nranges < 0 || (!addrs && n > 0) || (!ranges && nranges > 0))
        return EMU_EINVAL;
    if (!nranges)
        return -1;
    lo = ranges[0].start;
    hi = ranges[nranges - 1].end;
    for (i = 0; i < n; i++)
        if (addrs[i] >= lo && addrs[i] < hi && __emu_in_ranges(ranges, nranges, addrs[i]))
            return i;
    return -1;
}

int emu_stack_scan(const uint8_t *stack, uint64_t lo, uint64_t hi, uint64_t sp,
                   const struct emu_range *ranges, int nranges, uint64_t *where,
                   uint64_t *value, const struct emu_graph *graph)
{
    uint64_t a = sp > lo ? sp : lo, v;

    if (lo > hi || (!stack && lo != hi) || nranges < 0 || (!ranges && nranges > 0) ||
        !where || !value)
        return EMU_EINVAL;
    if (a % 8) {
        if (a > UINT64_MAX - 7)
            return 0;
        a = (a + 7) & ~(uint64_t)7;
    }
    /* a <= hi - 8 <= 2^64 - 9 inside the loop, so a += 8 cannot wrap. */
    for (; hi >= 8 && a <= hi - 8; a += 8) {
        /* A diverted return address is the real one to a scan as well. */
        v = emu_graph_ret_addr(graph, __emu_load(stack, lo, a), a);
        if (__emu_in_ranges(ranges, nranges, v)) {
            *where = a;
            *value = v;
            return 1;
        }
    }
    return 0;
}
