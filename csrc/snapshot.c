/*
 * snapshot.c - take a machine's state and put it back.
 *
 * A fuzzing campaign runs one scenario thousands of times from the same
 * prefix. Building a machine costs more than most runs after it (a Unicorn
 * engine, its memory, its hooks), so a runner builds one, runs it to the
 * first action, takes a snapshot, and restores it before every run.
 *
 * A snapshot holds every region's bytes, every task's saved CPU context,
 * the patch states, the scheduler state, the clock and the sites' entries.
 * Guest memory is host-mapped, so restoring it is a compare and copy per
 * page; a code page that differs also loses its translations (Unicorn does
 * not notice writes to mapped memory). The compare is bound by memory
 * bandwidth, and most of the 1 MiB heap is zeros: a page the snapshot holds
 * as zeros is compared with one static zero page, which reads the
 * machine's page only, and a long run of such pages is not read at all but
 * dropped (drop_zeros). A clean restore of the seed scenario's machine:
 * 22 us comparing every page with the copy, 11 us comparing zero pages
 * with the zero page, 3.6 us dropping the heap's run of them. A snapshot
 * restores only into the layout it was taken of (same_layout: regions
 * mapped since, or another machine's regions, make it EMU_ERANGE); sites
 * added after it are removed.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "core.h"

#define PAGE 4096
#define DROP_RUN 16     /* pages: a shorter run of zero pages is compared */

struct emu_site_state {
    uint64_t addr;
    int32_t n;
    int32_t poke;
    struct emu_entry entries[EMU_SITE_MAX_ENTRIES];
};

struct emu_snapshot {
    int nregions;
    struct emu_range *layout;   /* each region's [addr, addr + size) ... */
    int *prot;                  /* ... and permissions: restore checks them */
    uint8_t **mem;              /* a copy of each region */
    uint8_t **zero;             /* per region, one flag a page: the copy's page is all zeros */
    int ntasks;
    uc_context **ctx;
    int8_t *state;
    uint8_t *sched;             /* the scheduler's block */
    size_t sched_bytes;
    uint64_t clock;
    uint64_t rng;
    uint64_t ev_mask;
    uint64_t ev_dropped;
    int nsites;
    struct emu_site_state *sites;
};

void emu_snapshot_free(struct emu_snapshot *s)
{
    int i;

    if (!s)
        return;
    if (s->mem)
        for (i = 0; i < s->nregions; i++)
            free(s->mem[i]);
    if (s->zero)
        for (i = 0; i < s->nregions; i++)
            free(s->zero[i]);
    free(s->mem);
    free(s->zero);
    free(s->layout);
    free(s->prot);
    if (s->ctx)
        for (i = 0; i < s->ntasks; i++)
            if (s->ctx[i])
                uc_context_free(s->ctx[i]);
    free(s->ctx);
    free(s->state);
    free(s->sched);
    free(s->sites);
    free(s);
}

/* Save the loaded task's registers into its context, so that contexts are
 * the whole truth. */
static int sync_loaded(struct emu_core *c)
{
    uc_err err;

    if (c->cur < 0)
        return EMU_OK;
    err = uc_context_save(c->uc, c->ctx[c->cur]);
    if (err) {
        c->last_err = err;
        return EMU_EUC;
    }
    return EMU_OK;
}

/* A zero page to compare with: a page the snapshot holds as zeros (most of
 * the heap) is checked against it, which reads the machine's page only,
 * not the snapshot's copy too (the restore is bound by memory bandwidth). */
static const uint8_t zeros[PAGE];

/* One flag a page of mem (size bytes): whether it is all zeros. */
static uint8_t *zero_pages(const uint8_t *mem, uint64_t size)
{
    uint64_t off, npages = (size + PAGE - 1) / PAGE;
    uint8_t *flags = calloc(npages + 1, 1);

    if (!flags)
        return NULL;
    for (off = 0; off < size; off += PAGE) {
        uint64_t n = size - off < PAGE ? size - off : PAGE;
        flags[off / PAGE] = !memcmp(mem + off, zeros, n);
    }
    return flags;
}

struct emu_snapshot *emu_snapshot_take(struct emu_core *c)
{
    struct emu_snapshot *s;
    int i;

    if (!c || c->stop || sync_loaded(c))
        return NULL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->nregions = c->nregions;
    s->mem = calloc((size_t)c->nregions + 1, sizeof(*s->mem));
    s->zero = calloc((size_t)c->nregions + 1, sizeof(*s->zero));
    s->layout = calloc((size_t)c->nregions + 1, sizeof(*s->layout));
    s->prot = calloc((size_t)c->nregions + 1, sizeof(*s->prot));
    s->ntasks = c->ntasks;
    s->ctx = calloc((size_t)c->ntasks + 1, sizeof(*s->ctx));
    s->state = malloc((size_t)c->ntasks + 1);
    s->sched_bytes = c->sched_bytes;
    s->sched = malloc(c->sched_bytes + 1);
    s->nsites = c->nsites;
    s->sites = calloc((size_t)c->nsites + 1, sizeof(*s->sites));
    if (!s->mem || !s->zero || !s->layout || !s->prot || !s->ctx || !s->state || !s->sched || !s->sites)
        goto fail;
    for (i = 0; i < c->nregions; i++) {
        s->layout[i].start = c->regions[i].addr;
        s->layout[i].end = c->regions[i].addr + c->regions[i].size;
        s->prot[i] = c->regions[i].prot;
        s->mem[i] = malloc(c->regions[i].size);
        if (!s->mem[i])
            goto fail;
        memcpy(s->mem[i], c->regions[i].host, c->regions[i].size);
        s->zero[i] = zero_pages(s->mem[i], c->regions[i].size);
        if (!s->zero[i])
            goto fail;
    }
    for (i = 0; i < c->ntasks; i++) {
        /* a context is only copied through the CPU: load it, save it */
        if (uc_context_alloc(c->uc, &s->ctx[i]) || uc_context_restore(c->uc, c->ctx[i])
            || uc_context_save(c->uc, s->ctx[i]))
            goto fail;
    }
    if (c->ntasks) {
        memcpy(s->state, c->state, (size_t)c->ntasks);
        c->cur = -1;        /* the CPU holds the last task copied, not the loaded one */
    }
    if (c->sched_bytes)
        memcpy(s->sched, c->sched_mem, c->sched_bytes);
    for (i = 0; i < c->nsites; i++) {
        s->sites[i].addr = c->sites[i]->addr;
        s->sites[i].n = c->sites[i]->n;
        s->sites[i].poke = c->sites[i]->poke;
        memcpy(s->sites[i].entries, c->sites[i]->entries, sizeof(s->sites[i].entries));
    }
    s->clock = c->clock;
    s->rng = c->rng;
    s->ev_mask = c->ev_mask;
    s->ev_dropped = c->ev_dropped;
    return s;
fail:
    emu_snapshot_free(s);
    return NULL;
}

/* Remove the sites added after the snapshot (the newest are last). */
static void drop_sites(struct emu_core *c, int keep)
{
    int i, j;

    while (c->nsites > keep) {
        struct emu_site *site = c->sites[--c->nsites];
        for (i = j = 0; i <= c->nsites; i++)
            if (c->by_addr[i] != site)
                c->by_addr[j++] = c->by_addr[i];
        if (site->watch) {
            uc_hook_del(c->uc, site->watch);
            uc_ctl_remove_cache(c->uc, site->addr, site->addr + 1);
        }
        free(site);
    }
}

/* A code page differs: put back each run of changed bytes (runs closer
 * than 16 bytes merged) and drop only the translations that cover it, so
 * that a restore retranslates a patched site's block, not the page. */
static void restore_code(struct emu_core *c, struct emu_region *r, const uint8_t *saved,
                         uint64_t off, uint64_t n)
{
    uint64_t k = 0, from, to;

    while (k < n) {
        if (r->host[off + k] == saved[off + k]) {
            k++;
            continue;
        }
        from = to = k;
        while (k < n && k - to <= 16) {
            if (r->host[off + k] != saved[off + k])
                to = k;
            k++;
        }
        memcpy(r->host + off + from, saved + off + from, to - from + 1);
        uc_ctl_remove_cache(c->uc, r->addr + off + from, r->addr + off + to + 1);
        k = to + 1;
    }
}

/* A snapshot goes back only into the layout it was taken of: the same
 * regions (address, size, permissions), the same tasks, the same scheduler
 * counts, and no fewer sites. Anything else would copy past the end of a
 * region or of a table. */
static int same_layout(const struct emu_core *c, const struct emu_snapshot *s)
{
    int i;

    if (c->nregions != s->nregions || c->ntasks != s->ntasks || c->sched_bytes != s->sched_bytes
        || c->nsites < s->nsites)
        return 0;
    for (i = 0; i < c->nregions; i++)
        if (c->regions[i].addr != s->layout[i].start
            || c->regions[i].addr + c->regions[i].size != s->layout[i].end
            || c->regions[i].prot != s->prot[i])
            return 0;
    if (c->sched_bytes) {
        const struct emu_sched_globals *g = (const struct emu_sched_globals *)(const void *)s->sched;
        if (g->ntasks != c->sched.g->ntasks || g->ncpus != c->sched.g->ncpus)
            return 0;
    }
    for (i = 0; i < s->nsites; i++)
        if (c->sites[i]->addr != s->sites[i].addr)
            return 0;
    return 1;
}

/* From page off of region r: a run of at least DROP_RUN pages that the
 * snapshot holds as zeros (zero: its flags) is dropped with MADV_DONTNEED
 * (guest memory is private and anonymous: emu.h, emu_map): it reads as
 * zeros from then on and is faulted in again only where it is used,
 * instead of compared page by page, which reads all of it and evicts the
 * host's caches. Not code (its translations must go page by page). Linux
 * only: elsewhere MADV_DONTNEED need not zero what it drops. The bytes
 * dropped (0: none, the run is shorter, or madvise refused). */
static uint64_t drop_zeros(const struct emu_region *r, const uint8_t *zero, uint64_t off)
{
    uint64_t end = off;

#ifndef __linux__
    return 0;
#endif
    if (r->prot & EMU_PROT_EXEC)
        return 0;
    while (end < r->size && zero[end / PAGE])
        end += PAGE;
    if (end - off < DROP_RUN * PAGE || madvise(r->host + off, end - off, MADV_DONTNEED))
        return 0;
    return end - off;
}

int emu_snapshot_restore(struct emu_core *c, const struct emu_snapshot *s)
{
    int i;
    uint64_t off;

    if (!c || !s || c->stop)
        return EMU_EINVAL;
    if (!same_layout(c, s))
        return EMU_ERANGE;
    for (i = 0; i < c->nregions; i++) {
        struct emu_region *r = &c->regions[i];
        /* The sites' trampolines are the same code whatever the run did
         * (redirect.c): left alone, their translations survive; their
         * slots are set again below. */
        if (c->stubs_size && r->addr >= c->stubs && r->addr + r->size <= c->stubs + c->stubs_size)
            continue;
        for (off = 0; off < r->size; off += PAGE) {
            uint64_t n = r->size - off < PAGE ? r->size - off : PAGE, dropped;
            if (s->zero[i][off / PAGE] && (dropped = drop_zeros(r, s->zero[i], off))) {
                off += dropped - PAGE;
                continue;
            }
            if (!memcmp(r->host + off, s->zero[i][off / PAGE] ? zeros : s->mem[i] + off, n))
                continue;
            if (r->prot & EMU_PROT_EXEC)
                restore_code(c, r, s->mem[i], off, n);
            else
                memcpy(r->host + off, s->mem[i] + off, n);
        }
    }
    for (i = 0; i < c->ntasks; i++) {
        uc_err err = uc_context_restore(c->uc, s->ctx[i]);
        if (!err)
            err = uc_context_save(c->uc, c->ctx[i]);
        if (err) {
            c->last_err = err;
            return EMU_EUC;
        }
    }
    c->cur = -1;
    if (c->ntasks)
        memcpy(c->state, s->state, (size_t)c->ntasks);
    if (c->sched_bytes)
        memcpy(c->sched_mem, s->sched, c->sched_bytes);
    drop_sites(c, s->nsites);
    for (i = 0; i < s->nsites; i++) {
        c->sites[i]->n = s->sites[i].n;
        c->sites[i]->poke = s->sites[i].poke;
        memcpy(c->sites[i]->entries, s->sites[i].entries, sizeof(s->sites[i].entries));
    }
    c->clock = s->clock;
    c->rng = s->rng;
    c->ev_mask = s->ev_mask;
    c->ev_dropped = s->ev_dropped;
    c->ev_n = 0;
    /* the sites' bytes are back: so is the watch of each that is not the
     * call to its trampoline, and each trampoline's choice (redirect.c) */
    __emu_slots_reset(c);
    for (i = 0; i < s->nsites; i++)
        if (__emu_site_rewatch(c, c->sites[i]))
            return EMU_EUC;
    return EMU_OK;
}
