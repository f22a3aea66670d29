#include "lpemu.h"

struct obj { long id; };

/* ids of this patch's shadow variables: one per task (1 + 2 * task), and
 * ID_ALL, freed with free_all */
#define ID_ALL 100

__attribute__((noinline)) void tag(struct obj *o, struct obj *other)
{
	long id = 1 + 2 * (o->id & 7);
	long *p1, *p2, *p3;

	p1 = lpemu_shadow_alloc(o, id, sizeof(long));
	if (p1)
		*p1 = 42;
	/* klp_shadow_alloc of an existing <obj, id>: WARN, NULL */
	p2 = lpemu_shadow_alloc(o, id, sizeof(long));
	lpemu_observe(1, p1 != 0 && p2 == 0);
	/* klp_shadow_get_or_alloc: the existing data, untouched */
	p3 = lpemu_shadow_get_or_alloc(o, id, sizeof(long));
	lpemu_observe(2, p3 == p1 && *p3 == 42);
	/* klp_shadow_free: gone */
	lpemu_shadow_free(o, id);
	lpemu_observe(3, lpemu_shadow_get(o, id) == 0);
	/* klp_shadow_free_all: every <*, ID_ALL> gone, others stay */
	lpemu_shadow_get_or_alloc(o, ID_ALL, sizeof(long));
	lpemu_shadow_get_or_alloc(other, ID_ALL, sizeof(long));
	lpemu_shadow_free_all(ID_ALL);
	lpemu_observe(4, lpemu_shadow_get(o, ID_ALL) == 0 && lpemu_shadow_get(other, ID_ALL) == 0);
	/* the base's counter (id 9) is still there */
	lpemu_observe(5, lpemu_shadow_get(o, 9) != 0);
}
