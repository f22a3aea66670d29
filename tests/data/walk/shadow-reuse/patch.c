/* The fix: struct conn gains a field (the generation it was opened in, kept
 * in a shadow variable, id 1) that conn_use() checks. */
#include "lpemu.h"

#define CONN_SHADOW 1

struct conn {
	long open;
	long gen;
	long uses;
};

struct conn_extra {
	long gen;                 /* the generation this shadow was made for */
};

extern long gens;
extern volatile long zero;

__attribute__((noinline)) void conn_alloc(struct conn *c)
{
	struct conn_extra *x;

	c->gen = ++gens + zero;
	c->uses = 0;
	c->open = 1;
	x = lpemu_shadow_alloc(c, CONN_SHADOW, sizeof(*x));
	if (x)
		x->gen = c->gen;
}

__attribute__((noinline)) void conn_use(struct conn *c)
{
	struct conn_extra *x = lpemu_shadow_get(c, CONN_SHADOW);

	/* key 2: an object opened before the patch has no shadow (0); one
	 * opened after must find its own: a difference is a stale shadow */
	lpemu_observe(2, x ? x->gen - c->gen : 0);
	c->uses += 1 + zero;
}

__attribute__((noinline)) void conn_free(struct conn *c)
{
	lpemu_shadow_free(c, CONN_SHADOW);
	c->open = 0 + zero;
}
