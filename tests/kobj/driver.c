/* A small driver written the way kernel code is: every macro of kernel.h in
 * use, so its object carries what real kernel objects carry (bug table,
 * dynamic-debug descriptors, printk-index entries, .data..once flags, lockdep
 * keys, alternatives, jump labels, static calls, an __init function, a
 * notrace function, a .cold part). tests/kobj/cases.toml edits it. */
#include "kernel.h"

struct dev { long size; long pos; int flags; struct mutex lock; };

int dev_limit = 10;
static int dev_opens;
struct static_key dev_tracing;
extern long dev_hook(long x);
extern long __SCT__dev_hook(long x);

long dev_read(struct dev *d, long n)
{
	if (WARN_ON(n < 0))
		return -22;
	if (d->pos + n > d->size)
		n = d->size - d->pos;
	d->pos += n;
	return n;
}

long dev_write(struct dev *d, long n)
{
	WARN_ON_SLOWPATH(n > d->size);
	d->size += n;
	return n;
}

void dev_wait(struct dev *d)
{
	might_sleep();
	d->flags |= 1;
}

int dev_check(int x)
{
	if (WARN_ONCE(x > 100, "dev: x too big: %d\n", x))
		return 100;
	return x;
}

void dev_debug(struct dev *d)
{
	pr_debug("dev: size %ld\n", d->size);
	d->flags |= 2;
}

void dev_debug_old(struct dev *d)
{
	pr_debug_old("dev: pos %ld\n", d->pos);
	d->flags |= 4;
}

int dev_open(struct dev *d)
{
	dev_opens++;
	if (dev_opens > dev_limit)
		return -16;
	pr_info("dev: opened %d times\n", dev_opens);
	return 0;
}

void dev_setup(struct dev *d)
{
	mutex_init(&d->lock);
	d->pos = 0;
}

int dev_copy_mode(void)
{
	int mode;
	asm volatile(ALTERNATIVE("mov $1, %0", "mov $2, %0", X86_FEATURE_ERMS) : "=r" (mode));
	return mode;
}

noinline int dev_copy_slow(void)
{
	return 10;
}

noinline int dev_copy_fast(void)
{
	return 20;
}

/* an alternative whose replacement calls: moved into place, its call is re-aimed */
int dev_copy(void)
{
	int r;
	asm volatile(ALTERNATIVE("call dev_copy_slow", "call dev_copy_fast", X86_FEATURE_ERMS)
		     : "=a" (r) : : "memory", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11");
	return r;
}

int dev_traced(int x)
{
	if (static_branch_unlikely(&dev_tracing))
		return x + 1000;
	return x;
}

long dev_call(long x)
{
	return static_call(dev_hook)(x) + 1;
}

int dev_classify(int x)
{
	switch (x) {
	case 0: return 11;
	case 1: return 23;
	case 2: return 5;
	case 3: return 42;
	case 4: return 17;
	case 5: return 9;
	default: return -1;
	}
}

static noinline int dev_scale(struct dev *d)
{
	return d->flags * 3 + 1;
}

int dev_scaled(struct dev *d)
{
	return dev_scale(d) + dev_scale(d + 1);
}

int dev_ticket(void)
{
	static int next;
	return next++;
}

extern void dev_panic(const char *why) __attribute__((__cold__, __noreturn__));

long dev_seek(struct dev *d, long to)
{
	if (unlikely(to > (1L << 40))) {
		pr_info("dev: seek to %ld refused\n", to);
		dev_panic("seek");
	}
	d->pos = to;
	return to;
}

int dev_mask(int bits)
{
	return 1 << bits;
}

void __sched dev_schedule(struct dev *d)
{
	d->flags &= ~1;
}

notrace int dev_fast(int x)
{
	return x * 2;
}

int __init dev_init(void)
{
	dev_limit = 12;
	return 0;
}
