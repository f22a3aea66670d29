/* Two fields swap places: same size, same (zero) contents, another layout. */
#include "lpemu.h"

struct cfg {
	int mode;
	long limit;
};

struct cfg cfg;

__attribute__((noinline)) long cfg_limit(void)
{
	return cfg.limit;
}
