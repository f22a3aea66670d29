/*
 * core.c - one emu_core per machine: the engine handle it shares with the
 * Python binding, host-backed guest memory, instruction bitmaps for the
 * virtual clock, task contexts and the event ring.
 */
#include <stdlib.h>
#include <string.h>
#include "core.h"

#ifndef EMU_BUILD_STAMP
#define EMU_BUILD_STAMP "unknown"
#endif

#define PAGE 4096ULL

const char *emu_build_stamp(void)
{
    return EMU_BUILD_STAMP;
}

/* emu/engine/core.py compares this with the binding's own uc_hook_add: if they
 * differ, two copies of libunicorn are loaded and handles do not match. */
uintptr_t emu_uc_hook_add_address(void)
{
    return (uintptr_t)&uc_hook_add;
}

int emu_last_uc_error(struct emu_core *c)
{
    return c ? (int)c->last_err : 0;
}

static bool hook_invalid(uc_engine *uc, uc_mem_type type, uint64_t addr, int size,
                         int64_t value, void *ud)
{
    struct emu_core *c = ud;
    int kind;
    uint64_t rip = 0;

    switch (type) {
    case UC_MEM_READ_UNMAPPED:  kind = EMU_FAULT_UNMAPPED_READ; break;
    case UC_MEM_WRITE_UNMAPPED: kind = EMU_FAULT_UNMAPPED_WRITE; break;
    case UC_MEM_FETCH_UNMAPPED: kind = EMU_FAULT_UNMAPPED_FETCH; break;
    case UC_MEM_READ_PROT:      kind = EMU_FAULT_PROT_READ; break;
    case UC_MEM_WRITE_PROT:     kind = EMU_FAULT_PROT_WRITE; break;
    case UC_MEM_FETCH_PROT:     kind = EMU_FAULT_PROT_FETCH; break;
    default:                    kind = EMU_FAULT_OTHER; break;
    }
    uc_reg_read(uc, UC_X86_REG_RIP, &rip);
    __emu_fault(c, kind, rip, addr, 0);
    return false;   /* not handled: uc_emu_start returns the error */
}

struct emu_core *emu_core_new(uintptr_t uch, int flags, int event_capacity)
{
    struct emu_core *c;

    if (!uch || event_capacity < 64)
        return NULL;
    c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->uc = (uc_engine *)uch;
    c->flags = flags;
    c->cur = -1;
    c->ev_cap = event_capacity;
    c->ev_mask = ~0ULL;
    c->ev = calloc((size_t)event_capacity, sizeof(*c->ev));
    if (!c->ev)
        goto fail;
    /* Unicorn's default translation buffer is 1 GiB, and translations of
     * dropped code (text writes, restored snapshots) are only reclaimed when
     * it fills: a process running many runs grows by what it retranslates.
     * Guest programs here are small; a small buffer bounds that growth. */
    uc_ctl_set_tcg_buffer_size(c->uc, EMU_TCG_BUFFER);
    /* Fast memory sees faults in its TLB fill; any memory hook would send
     * every store down Unicorn's slow path (measured: 10x on a store loop). */
    if (flags & EMU_FLAG_FAST_MEMORY) {
        if (__emu_tlb_install(c))
            goto fail;
    } else if (uc_hook_add(c->uc, &c->h_invalid, UC_HOOK_MEM_INVALID, (void *)hook_invalid, c, 1, 0)) {
        goto fail;
    }
    if (__emu_slicer_install(c) || __emu_redirect_install(c) || __emu_sysinsn_install(c))
        goto fail;
    return c;
fail:
    emu_core_free(c);
    return NULL;
}

void emu_core_free(struct emu_core *c)
{
    int i;

    if (!c)
        return;
    /* The engine may outlive the core (the binding owns it): take every
     * hook away so none fires with a dangling user-data pointer. */
    if (c->h_invalid) uc_hook_del(c->uc, c->h_invalid);
    if (c->h_block) uc_hook_del(c->uc, c->h_block);
    if (c->h_syscall) uc_hook_del(c->uc, c->h_syscall);
    if (c->h_intr) uc_hook_del(c->uc, c->h_intr);
    if (c->h_tlb) uc_hook_del(c->uc, c->h_tlb);
    __emu_redirect_free(c);
    __emu_sysinsn_free(c);
    for (i = 0; i < c->nregions; i++) {
        uc_mem_unmap(c->uc, c->regions[i].addr, c->regions[i].size);
        free(c->regions[i].alloc);
    }
    free(c->regions);
    for (i = 0; i < c->ncode; i++)
        free(c->code[i].bits);
    for (i = 0; i < c->ntasks; i++)
        if (c->ctx[i])
            uc_context_free(c->ctx[i]);
    free(c->ctx);
    free(c->state);
    free(c->ev);
    free(c);
}

/* ---- memory ---------------------------------------------------------- */

/* Index of the last region that starts at or below addr, or -1. */
static int region_floor(const struct emu_core *c, uint64_t addr)
{
    int lo = 0, hi = c->nregions;

    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;

        if (c->regions[mid].addr <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo - 1;
}

static int map_region(struct emu_core *c, uint64_t addr, uint64_t size, int prot, uint8_t *host)
{
    struct emu_region *r;
    void *mem = host;
    uc_err err;
    int i;

    if (!c || (addr | size) & (PAGE - 1) || !size || addr + size < addr || (prot & ~7))
        return EMU_EINVAL;
    if (c->nregions == EMU_MAX_REGIONS)
        return EMU_EFULL;
    if (c->nregions == c->cap_regions) {
        int cap = c->cap_regions ? 2 * c->cap_regions : 32;
        struct emu_region *grown = realloc(c->regions, (size_t)cap * sizeof(*grown));

        if (!grown)
            return EMU_ENOMEM;
        c->regions = grown;
        c->cap_regions = cap;
    }
    if (!host) {
        if (posix_memalign(&mem, PAGE, size))
            return EMU_ENOMEM;
        memset(mem, 0, size);
    }
    /* Unicorn refuses overlapping maps, so the table stays disjoint. */
    err = uc_mem_map_ptr(c->uc, addr, size, (uint32_t)prot, mem);
    if (err) {
        if (!host)
            free(mem);
        c->last_err = err;
        return EMU_EUC;
    }
    i = region_floor(c, addr) + 1;
    memmove(&c->regions[i + 1], &c->regions[i], (size_t)(c->nregions - i) * sizeof(*r));
    c->nregions++;
    c->last_region = 0;
    r = &c->regions[i];
    r->addr = addr;
    r->size = size;
    r->host = mem;
    r->alloc = host ? NULL : mem;
    r->prot = prot;
    return EMU_OK;
}

int emu_map(struct emu_core *c, uint64_t addr, uint64_t size, int prot)
{
    return map_region(c, addr, size, prot, NULL);
}

int emu_map_host(struct emu_core *c, uint64_t addr, uint64_t size, int prot, uint8_t *host)
{
    if (!host || (uintptr_t)host & (PAGE - 1))
        return EMU_EINVAL;
    return map_region(c, addr, size, prot, host);
}

static inline int region_holds(const struct emu_region *r, uint64_t addr, uint64_t size)
{
    return addr >= r->addr && addr - r->addr < r->size && size <= r->size - (addr - r->addr);
}

struct emu_region *__emu_region_of(struct emu_core *c, uint64_t addr, uint64_t size)
{
    int i;

    if (!c->nregions)
        return NULL;
    i = c->last_region;
    if (region_holds(&c->regions[i], addr, size))
        return &c->regions[i];
    /* Task stacks are mapped one after another and checked in that order. */
    if (i + 1 < c->nregions && region_holds(&c->regions[i + 1], addr, size)) {
        c->last_region = i + 1;
        return &c->regions[i + 1];
    }
    i = region_floor(c, addr);
    if (i < 0 || !region_holds(&c->regions[i], addr, size))
        return NULL;
    c->last_region = i;
    return &c->regions[i];
}

uint8_t *__emu_ptr(struct emu_core *c, uint64_t addr, uint64_t size)
{
    struct emu_region *r = __emu_region_of(c, addr, size);
    return r ? r->host + (addr - r->addr) : NULL;
}

uint8_t *emu_host_ptr(struct emu_core *c, uint64_t addr, uint64_t size)
{
    return c ? __emu_ptr(c, addr, size) : NULL;
}

/* ---- instruction bitmaps ------------------------------------------------ */

int emu_add_code(struct emu_core *c, uint64_t base, uint64_t size, const uint8_t *bitmap)
{
    struct emu_code *k;
    size_t words;

    if (!c || !size || !bitmap || base + size < base)
        return EMU_EINVAL;
    if (c->ncode == EMU_MAX_CODE)
        return EMU_EFULL;
    words = (size + 63) / 64;
    k = &c->code[c->ncode];
    k->bits = calloc(words, sizeof(uint64_t));
    if (!k->bits)
        return EMU_ENOMEM;
    /* bitmap is little-endian bytes, bit i of byte j = address base + 8j + i */
    memcpy(k->bits, bitmap, (size + 7) / 8);
    k->base = base;
    k->size = size;
    c->ncode++;
    memset(c->icache, 0, sizeof(c->icache));
    return EMU_OK;
}

/* The block hook asks for every block: remember the last hit. */
static struct emu_code *code_of(struct emu_core *c, uint64_t addr)
{
    struct emu_code *k;
    int i;

    if (!c->ncode)
        return NULL;
    k = &c->code[c->last_code];
    if (addr >= k->base && addr - k->base < k->size)
        return k;
    for (i = 0; i < c->ncode; i++) {
        k = &c->code[i];
        if (addr >= k->base && addr - k->base < k->size) {
            c->last_code = i;
            return k;
        }
    }
    return NULL;
}

static uint64_t popcount_range(const uint64_t *bits, uint64_t from, uint64_t to)
{
    uint64_t n = 0;

    while (from < to) {
        uint64_t w = from / 64, b = from % 64;
        uint64_t take = 64 - b;
        uint64_t word = bits[w] >> b;

        if (take > to - from) {
            take = to - from;
            word &= (1ULL << take) - 1;
        }
        n += (uint64_t)__builtin_popcountll(word);
        from += take;
    }
    return n;
}

/* Instructions that start in [addr, addr + size): a block's length in
 * virtual time. Never 0, so that every block moves the clock. */
uint64_t __emu_icount(struct emu_core *c, uint64_t addr, uint64_t size)
{
    struct emu_code *k = code_of(c, addr);
    uint64_t off, end, n;

    if (!k)
        return 1;
    off = addr - k->base;
    end = off + size;
    if (end > k->size)
        end = k->size;
    n = popcount_range(k->bits, off, end);
    return n ? n : 1;
}

/* __emu_icount of a translated block, remembered: the block hook asks for
 * every block that runs, and a loop runs the same few blocks over and over.
 * An entry is only good while the bitmaps stay as they were (emu_add_code
 * forgets them all). */
uint64_t __emu_block_icount(struct emu_core *c, uint64_t addr, uint32_t size)
{
    /* Fibonacci hashing: code of several images at 1 MiB-aligned bases
     * must not fall into the same few slots. */
    struct emu_icache *e = &c->icache[(addr * 0x9e3779b97f4a7c15ULL) >> (64 - EMU_ICACHE_BITS)];
    uint64_t n;

    if (e->addr == addr && e->size == size && size)
        return e->n;
    n = __emu_icount(c, addr, size);
    e->addr = addr;
    e->size = size;
    e->n = (uint32_t)n;     /* n <= size */
    return n;
}

/* Address of the instruction that comes after the first n instructions of
 * [addr, addr + size), or 0 when there is no such instruction. */
uint64_t __emu_nth_insn(struct emu_core *c, uint64_t addr, uint64_t size, uint64_t n)
{
    struct emu_code *k = code_of(c, addr);
    uint64_t off, end;

    if (!k)
        return 0;
    off = addr - k->base;
    end = off + size;
    if (end > k->size)
        end = k->size;
    for (; off < end; off++) {
        if (k->bits[off / 64] >> (off % 64) & 1) {
            if (n == 0)
                return k->base + off;
            n--;
        }
    }
    return 0;
}

/* ---- tasks ---------------------------------------------------------------- */

int emu_tasks_init(struct emu_core *c, int ntasks)
{
    int i;

    if (!c || ntasks <= 0 || c->ntasks)
        return EMU_EINVAL;
    c->ctx = calloc((size_t)ntasks, sizeof(*c->ctx));
    c->state = malloc((size_t)ntasks);
    if (!c->ctx || !c->state)
        return EMU_ENOMEM;
    memset(c->state, EMU_UNDEFINED, (size_t)ntasks);
    c->ntasks = ntasks;
    for (i = 0; i < ntasks; i++) {
        uc_err err = uc_context_alloc(c->uc, &c->ctx[i]);
        if (!err)
            err = uc_context_save(c->uc, c->ctx[i]);
        if (err) {
            c->last_err = err;
            return EMU_EUC;
        }
    }
    return EMU_OK;
}

int emu_switch(struct emu_core *c, int tid)
{
    uc_err err;

    if (!c || tid < 0 || tid >= c->ntasks)
        return EMU_EINVAL;
    if (tid == c->cur)
        return EMU_OK;
    if (c->cur >= 0) {
        err = uc_context_save(c->uc, c->ctx[c->cur]);
        if (err) {
            c->last_err = err;
            return EMU_EUC;
        }
    }
    err = uc_context_restore(c->uc, c->ctx[tid]);
    if (err) {
        c->last_err = err;
        return EMU_EUC;
    }
    c->cur = tid;
    __emu_slots_follow(c);
    return EMU_OK;
}

int emu_current(struct emu_core *c)
{
    return c ? c->cur : -1;
}

int emu_task_set_state(struct emu_core *c, int tid, int state)
{
    if (!c || tid < 0 || tid >= c->ntasks || state < EMU_UNDEFINED || state > EMU_PATCHED)
        return EMU_EINVAL;
    c->state[tid] = (int8_t)state;
    if (tid == c->cur)
        __emu_slots_follow(c);
    return EMU_OK;
}

/* ---- events ---------------------------------------------------------------- */

int __emu_event(struct emu_core *c, int kind, int task, int64_t a, int64_t b, uint64_t cval,
                uint64_t clock)
{
    struct emu_event *e;

    if (kind >= 0 && kind < 64 && !(c->ev_mask >> kind & 1)) {
        c->ev_dropped++;
        return EMU_OK;
    }
    if (c->ev_n == c->ev_cap)
        return EMU_EFULL;
    e = &c->ev[c->ev_n++];
    e->clock = clock;
    e->kind = kind;
    e->task = task;
    e->a = a;
    e->b = b;
    e->c = cval;
    /* Stop the run while a few slots are still free: the instruction that
     * is running may add one or two more before the stop takes effect. */
    if (c->ev_n >= c->ev_cap - 8 && c->stop && !c->stop->reason) {
        c->stop->reason = EMU_STOP_EVENTS_FULL;
        uc_emu_stop(c->uc);
    }
    return EMU_OK;
}

int emu_event_push(struct emu_core *c, int kind, int task, int64_t a, int64_t b, uint64_t cval,
                   uint64_t clock)
{
    if (!c)
        return EMU_EINVAL;
    return __emu_event(c, kind, task, a, b, cval, clock);
}

int emu_events_of_kind(const struct emu_event *ev, size_t n, int32_t kind, struct emu_event *out, size_t cap,
                       size_t *count)
{
    size_t i, k = 0;

    if (!count || (n && !ev) || (cap && !out))
        return EMU_EINVAL;
    for (i = 0; i < n; i++)
        if (ev[i].kind == kind) {
            if (k < cap)
                out[k] = ev[i];
            k++;
        }
    *count = k;
    return EMU_OK;
}

int emu_events_take(struct emu_core *c, struct emu_event *out, int max)
{
    int n;

    if (!c || !out || max < 0)
        return EMU_EINVAL;
    n = c->ev_n < max ? c->ev_n : max;
    memcpy(out, c->ev, (size_t)n * sizeof(*out));
    if (n < c->ev_n)
        memmove(c->ev, c->ev + n, (size_t)(c->ev_n - n) * sizeof(*out));
    c->ev_n -= n;
    return n;
}

const struct emu_event *emu_events_ring(struct emu_core *c)
{
    return c ? c->ev : NULL;
}

int emu_events_drop(struct emu_core *c, int n)
{
    if (!c || n < 0 || n > c->ev_n)
        return EMU_EINVAL;
    if (n < c->ev_n)
        memmove(c->ev, c->ev + n, (size_t)(c->ev_n - n) * sizeof(*c->ev));
    c->ev_n -= n;
    return EMU_OK;
}

int emu_events_pending(struct emu_core *c)
{
    return c ? c->ev_n : 0;
}

uint64_t emu_set_event_mask(struct emu_core *c, uint64_t mask)
{
    uint64_t old;

    if (!c)
        return 0;
    old = c->ev_mask;
    c->ev_mask = mask;
    return old;
}

uint64_t emu_events_dropped(struct emu_core *c)
{
    return c ? c->ev_dropped : 0;
}

void __emu_fault(struct emu_core *c, int kind, uint64_t rip, uint64_t addr, int intno)
{
    if (!c->stop || c->stop->reason == EMU_STOP_FAULT)
        return;     /* keep the first fault */
    c->stop->reason = EMU_STOP_FAULT;
    c->stop->fault_kind = kind;
    c->stop->rip = rip;
    c->stop->addr = addr;
    c->stop->intno = intno;
}
