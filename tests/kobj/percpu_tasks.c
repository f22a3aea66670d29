/* Tasks that call percpu.c's kernel code, and the kernel functions it needs. */
#include "lpemu.h"

extern long whoami(void);
extern long which_cpu(void);
extern long guarded(long n);

void fill(char *buf, long n)
{
	for (long i = 0; i < n; i++)
		buf[i] = (char)i;
}

void __stack_chk_fail(void)
{
	lpemu_observe(9, 1);        /* a smashed canary: key 9 */
	lpemu_exit(1);
}

long user_entry(long i)
{
	lpemu_observe(1, whoami());
	lpemu_observe(2, which_cpu());
	lpemu_observe(3, guarded(i ? 40 : 8));   /* 40 > 32: the task with i != 0 smashes its stack */
	lpemu_exit(0);
	return 0;
}
