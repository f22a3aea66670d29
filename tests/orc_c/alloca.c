/* Variable-sized stack allocations and an over-aligned local: rbp-based
 * frames with `and rsp, -N` and `lea rsp, [rbp-N]` epilogues. */
#define noinline __attribute__((noinline))

volatile long sink;

noinline long use(long *p, long n) { for (long i = 0; i < n; i++) sink += p[i]; return sink; }

noinline long vla(long n)
{
	long a[n];
	for (long i = 0; i < n; i++)
		a[i] = i;
	return use(a, n);
}

noinline long with_alloca(long n, long m)
{
	long *p = __builtin_alloca(n * sizeof(long));
	long *q = __builtin_alloca(m * sizeof(long));
	for (long i = 0; i < n; i++)
		p[i] = i;
	q[0] = n;
	return use(p, n) + use(q, 1);
}

noinline long aligned(long n)
{
	long a[8] __attribute__((aligned(64)));
	for (int i = 0; i < 8; i++)
		a[i] = n + i;
	return use(a, 8);
}

noinline long vla_saved(long n, long k)
{
	long a[n];
	long s = 0;
	for (long i = 0; i < n; i++) {
		a[i] = i * k;
		s += use(a, i + 1);
	}
	return s + k;
}
