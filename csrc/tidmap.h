/*
 * tidmap.h - task id -> dense slot, for the passes over a finished trace
 * (handover.c, units.c, promise.c), and the per-task arrays they index. A trace's task ids are whatever its events say:
 * the machine's tasks, the idle tasks' negative ids, or any int32 a
 * damaged trace holds, so they are hashed, never used as indexes.
 */
#ifndef EMU_TIDMAP_H
#define EMU_TIDMAP_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct tidmap {
    int32_t *key;
    int32_t *slot;      /* -1: empty */
    size_t cap;         /* a power of two */
    size_t n;
};

static inline size_t __tidmap_hash(int32_t k, size_t cap)
{
    return (size_t)(((uint32_t)k * 2654435761u) & (cap - 1));
}

static inline void tidmap_free(struct tidmap *m)
{
    free(m->key);
    free(m->slot);
    m->key = NULL;
    m->slot = NULL;
    m->cap = m->n = 0;
}

static inline int __tidmap_grow(struct tidmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 64, i, j;
    int32_t *key = malloc(cap * sizeof(*key)), *slot = malloc(cap * sizeof(*slot));

    if (!key || !slot) {
        free(key);
        free(slot);
        return -1;
    }
    for (i = 0; i < cap; i++)
        slot[i] = -1;
    for (i = 0; i < m->cap; i++) {
        if (m->slot[i] < 0)
            continue;
        for (j = __tidmap_hash(m->key[i], cap); slot[j] >= 0; j = (j + 1) & (cap - 1))
            ;
        key[j] = m->key[i];
        slot[j] = m->slot[i];
    }
    free(m->key);
    free(m->slot);
    m->key = key;
    m->slot = slot;
    m->cap = cap;
    return 0;
}

/* The slot of task k: an existing one, or the next free one (m->n before
 * the call, so slots are dense and given in order of first sight); -1 when
 * memory ran out. *fresh says which. */
static inline int32_t tidmap_get(struct tidmap *m, int32_t k, int *fresh)
{
    size_t j;

    *fresh = 0;
    if ((m->n + 1) * 2 > m->cap && __tidmap_grow(m))
        return -1;
    for (j = __tidmap_hash(k, m->cap); m->slot[j] >= 0; j = (j + 1) & (m->cap - 1))
        if (m->key[j] == k)
            return m->slot[j];
    if (m->n >= INT32_MAX)
        return -1;
    m->key[j] = k;
    m->slot[j] = (int32_t)m->n++;
    *fresh = 1;
    return m->slot[j];
}

/* The per-task array arr (*n elements of elem bytes), grown to hold a
 * slot that tidmap_get just gave: doubled, what it adds zeroed. NULL when
 * memory ran out (arr is then as it was). */
static inline void *tidmap_room(void *arr, size_t *n, int32_t slot, size_t elem)
{
    size_t want;
    char *p;

    if ((size_t)slot < *n)
        return arr;
    want = *n ? *n * 2 : 16;
    while (want <= (size_t)slot)
        want *= 2;
    if (!(p = realloc(arr, want * elem)))
        return NULL;
    memset(p + *n * elem, 0, (want - *n) * elem);
    *n = want;
    return p;
}

/* The slot of task k in m, with the per-task array *arr (*n elements of
 * elem bytes) grown to hold it when it is new: what a pass over a trace
 * does for each event of a task. -1 when memory ran out (*arr is then as
 * it was, and still the caller's to free). */
static inline int32_t tidmap_task(struct tidmap *m, int32_t k, void **arr, size_t *n, size_t elem)
{
    int fresh;
    int32_t slot = tidmap_get(m, k, &fresh);
    void *grown;

    if (slot < 0 || !fresh)
        return slot;
    if (!(grown = tidmap_room(*arr, n, slot, elem)))
        return -1;
    *arr = grown;
    return slot;
}

#endif
