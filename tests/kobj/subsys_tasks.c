/* A task that calls subsys.c's kernel code, and what subsys.c leaves undefined. */
#include "lpemu.h"

extern int sub_weight(int i);

void sub_report(const char *what, int v) { (void)what; (void)v; }
void sub_log(int v, int line) { (void)v; (void)line; }

long user_entry(long i)
{
	lpemu_observe(1, sub_weight(2));
	lpemu_sleep(1);
	return 0;
}
