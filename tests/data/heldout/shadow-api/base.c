/*
 * The shadow-variable API from guest code. tag() is patched; its new
 * version exercises klp_shadow_alloc/get/get_or_alloc/free/free_all on an
 * object of its own and reports each answer as 1 (as the kernel answers)
 * or 0. The original reports 2 for each. user_entry() itself (base code,
 * never patched) keeps a counter in a shadow variable of its object
 * (id 9) from its very first call, long before any patch: the API is
 * the kernel's, there with or without a patch.
 * Keys 1..5: tag()'s answers; key 6: the base counter (1, 2, 3, ...).
 */
#include "lpemu.h"

struct obj { long id; };

struct obj objs[8];

__attribute__((noinline)) void tag(struct obj *o, struct obj *other)
{
	lpemu_observe(1, 2 + o->id * 0);
	lpemu_observe(2, 2);
	lpemu_observe(3, 2);
	lpemu_observe(4, 2);
	lpemu_observe(5, 2 + other->id * 0);
}

long user_entry(long i)
{
	long *count = lpemu_shadow_get_or_alloc(&objs[2 * i], 9, sizeof(long));

	lpemu_observe(6, count ? ++*count : -1);
	tag(&objs[2 * i], &objs[2 * i + 1]);
	lpemu_sleep(2);
	return 0;
}
