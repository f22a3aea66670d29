/*
 * A kthread whose safe point is inside a patched function: work() calls
 * part_a(), passes a kthread safe point (kGraft's try_to_freeze()), sleeps
 * 0.3 s, then hands part_a()'s value to part_b(). work(), part_a() and
 * part_b() are all patched. Key 1: part_a()'s version; key 2: part_b()'s;
 * key 3: work()'s (after the sleep).
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long part_a(long x)
{
	lpemu_observe(1, 0 + zero);
	return x + zero;
}

__attribute__((noinline)) long part_b(long x)
{
	lpemu_observe(2, 0 + zero);
	return x + zero;
}

__attribute__((noinline)) long work(long ticks)
{
	long v = part_a(ticks);

	lpemu_safe_point();
	lpemu_sleep(ticks);
	lpemu_observe(3, 0 + zero);
	return part_b(v) + 1;
}

long kthread_entry(long ticks)
{
	for (;;)
		work(ticks);
	return 0;
}
