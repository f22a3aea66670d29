/* A task that calls driver.c's kernel code, and the static call's target. */
#include "lpemu.h"

extern int dev_copy_mode(void);
extern int dev_copy(void);
extern long dev_call(long x);
extern int dev_traced(int x);
extern int dev_classify(int x);

long dev_hook(long x)
{
	return x * 10;
}

long user_entry(long i)
{
	lpemu_observe(1, dev_copy_mode());   /* 1: original, 2: the ERMS alternative */
	lpemu_observe(2, dev_call(5));       /* the static call bound to dev_hook: 51 */
	lpemu_observe(3, dev_traced(7));     /* the jump label at its default (off): 7 */
	lpemu_observe(4, dev_classify(3));
	lpemu_observe(5, dev_copy());          /* 10, or 20 with ERMS */
	lpemu_exit(0);
	return 0;
}
