#include "lpemu.h"

struct conn { long id; long bytes; };

#define SV_COUNT 7

__attribute__((noinline)) void conn_open(struct conn *c, long id)
{
	long *count;

	c->id = id;
	c->bytes = 0;
	count = lpemu_shadow_get_or_alloc(c, SV_COUNT, sizeof(long));
	if (count)
		*count = 0;
}

__attribute__((noinline)) long conn_account(struct conn *c, long bytes)
{
	long *count = lpemu_shadow_get(c, SV_COUNT);

	if (!count)                 /* opened before the patch: attach now */
		count = lpemu_shadow_get_or_alloc(c, SV_COUNT, sizeof(long));
	c->bytes += bytes;
	if (!count)
		return -1;          /* out of memory: never here */
	return 1000 + ++*count;
}

__attribute__((noinline)) void conn_close(struct conn *c)
{
	c->bytes = -1;
	lpemu_shadow_free(c, SV_COUNT);
}
