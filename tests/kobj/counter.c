/* Kernel code that a live patch fixes: compiled with the kernel's flags, it
 * calls kernel functions this program does not define (mutex_lock,
 * mutex_unlock, _printk, __might_sleep: bound to stubs) and one that kstubs.c
 * implements (counter_source). The patched version (counter_patched.c) fixes
 * counter_next(), which returned the old value. */
#include "kernel.h"

extern long counter_source(void);
extern void mutex_lock(struct mutex *m);
extern void mutex_unlock(struct mutex *m);

struct mutex counter_lock;
long counter_value;

long counter_next(void)
{
	long v;

	might_sleep();
	mutex_lock(&counter_lock);
	v = counter_value;
	counter_value += counter_source();
	mutex_unlock(&counter_lock);
	return v;
}
