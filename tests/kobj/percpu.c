/* Kernel code that reads the per-CPU area: `current` through %gs (pcpu_hot,
 * as Linux 6.2+ declares it) and the stack protector's canary at %gs:0x28
 * (compiled with -fstack-protector-all -mcmodel=kernel, as the kernel is). */
#include "kernel.h"

struct task_struct;
struct pcpu_hot { struct task_struct *current_task; int preempt_count; int cpu_number; };
extern struct pcpu_hot pcpu_hot;

static __attribute__((always_inline)) inline struct task_struct *get_current(void)
{
	struct task_struct *t;
	asm("movq %%gs:%c1, %0" : "=r" (t) : "i" (&pcpu_hot.current_task));
	return t;
}

static __attribute__((always_inline)) inline int smp_processor_id(void)
{
	int cpu;
	asm("movl %%gs:%c1, %0" : "=r" (cpu) : "i" (&pcpu_hot.cpu_number));
	return cpu;
}

extern void fill(char *buf, long n);

long whoami(void)
{
	return (long)get_current();
}

long which_cpu(void)
{
	return smp_processor_id();
}

long guarded(long n)
{
	char buf[32];
	fill(buf, n);
	return buf[0] + buf[n - 1];
}
