/* __builtin_expect and cold attributes: gcc moves the unlikely path into a
 * separate `.cold` part with its own FDE; a noreturn callee ends paths. */
#define noinline __attribute__((noinline))
#define unlikely(x) __builtin_expect(!!(x), 0)

volatile long sink;

noinline __attribute__((cold)) void report(long x) { sink = x; }
noinline __attribute__((noreturn)) void die(long code) { for (;;) sink = code; }

noinline long step(long x) { sink += x; return sink; }

noinline long checked(long x, long y)
{
	long r = step(x);
	if (unlikely(r < 0)) {
		report(r);
		step(y);
		r = step(r * y);
	}
	return r + step(y);
}

noinline long must(long x)
{
	if (unlikely(x == 0))
		die(1);
	if (x < 0)
		die(2);
	return step(x) * 2;
}

noinline long cold_loop(long *a, long n)
{
	long s = 0;
	for (long i = 0; i < n; i++) {
		if (unlikely(a[i] < 0)) {
			report(i);
			s -= step(a[i]);
			continue;
		}
		s += a[i];
	}
	return s;
}

/* Shrink-wrapped: the early return runs before the frame is set up and the
 * noreturn call sits last, after code whose frame is already gone. */
noinline long guard(long x)
{
	if (x == 0)
		return 0;
	if (x < 0)
		die(x);
	return step(x) + 1;
}
