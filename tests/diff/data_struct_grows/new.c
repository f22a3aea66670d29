/* A struct gains a field. */
#include "lpemu.h"

struct stats {
	long hits;
	long misses;
};

struct stats stats;

__attribute__((noinline)) void hit(void)
{
	stats.hits++;
}
