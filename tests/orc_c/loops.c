/* Loops, nested loops and early returns through `pop rbp; ret` in the middle
 * of a function, followed by more code. */
#define noinline __attribute__((noinline))

volatile long sink;

noinline long step(long x) { sink += x; return sink & 7; }

noinline long sum(const long *a, long n)
{
	long s = 0;
	for (long i = 0; i < n; i++)
		s += a[i];
	return s;
}

noinline long nested(long n)
{
	long s = 0;
	for (long i = 0; i < n; i++)
		for (long j = 0; j < i; j++)
			s += step(i ^ j);
	return s;
}

noinline long find(const long *a, long n, long key)
{
	if (!a)
		return -1;
	for (long i = 0; i < n; i++) {
		if (a[i] == key)
			return i;
		if (step(a[i]) == 3)
			return -2;
	}
	if (n > 100)
		return step(n);
	return -3;
}

noinline long early(long x, long y)
{
	if (x < 0)
		return 0;
	if (y > 10)
		return step(x) + step(y);
	long r = step(x * y);
	if (r == 5)
		return r;
	while (r < 100)
		r += step(r);
	return r;
}
