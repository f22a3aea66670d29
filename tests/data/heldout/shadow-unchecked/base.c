/*
 * Connections created before and after a patch. The patch adds a per-
 * connection counter kept in a shadow variable (id 7): the new
 * conn_open() attaches it, the new conn_account() reads it and must cope
 * with connections opened before the patch (klp_shadow_get() returns NULL
 * for them) by attaching one late (klp_shadow_get_or_alloc()).
 * Key 1: what conn_account() returned (the original: the connection's id,
 * 0..7; the patch: 1000 + the connection's count of accountings).
 */
#include "lpemu.h"

struct conn { long id; long bytes; };

struct conn conns[8];
long opened[8];

__attribute__((noinline)) void conn_open(struct conn *c, long id)
{
	c->id = id;
	c->bytes = 0;
}

__attribute__((noinline)) long conn_account(struct conn *c, long bytes)
{
	c->bytes += bytes;
	return c->id;
}

__attribute__((noinline)) void conn_close(struct conn *c)
{
	c->bytes = -1;
}

/* Each task owns conns[2*i] (opened once, at its first call, long before
 * the patch) and conns[2*i+1] (opened and closed again every 4th call). */
long user_entry(long i)
{
	struct conn *old = &conns[2 * i], *fresh = &conns[2 * i + 1];

	if (!opened[i]) {
		conn_open(old, 2 * i);
		opened[i] = 1;
	}
	lpemu_observe(1, conn_account(old, 10));
	if ((opened[i]++ & 3) == 1)
		conn_open(fresh, 2 * i + 1);
	lpemu_observe(1, conn_account(fresh, 5));
	if ((opened[i] & 3) == 0)
		conn_close(fresh);
	lpemu_sleep(1);
	return 0;
}
