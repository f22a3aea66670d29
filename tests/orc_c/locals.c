/* Many locals and callee-saved registers: push rbx, r12..r15 and a large
 * stack frame. */
#define noinline __attribute__((noinline))

volatile long sink;

noinline long use(long *p, long n) { for (long i = 0; i < n; i++) sink += p[i]; return sink; }
noinline long mix(long a, long b, long c, long d, long e, long f) { return a ^ b ^ c ^ d ^ e ^ f; }

noinline long heavy(long a, long b, long c, long d, long e, long f)
{
	long buf[64];
	long x1 = mix(a, b, c, d, e, f);
	long x2 = mix(x1, a, b, c, d, e);
	long x3 = mix(x2, x1, a, b, c, d);
	long x4 = mix(x3, x2, x1, a, b, c);
	long x5 = mix(x4, x3, x2, x1, a, b);
	for (int i = 0; i < 64; i++)
		buf[i] = x1 * i + x2;
	long r = use(buf, 64);
	return r + x1 + x2 + x3 + x4 + x5 + a + b + c + d + e + f;
}

noinline long big_frame(long n)
{
	long a[2000];
	for (long i = 0; i < 2000; i++)
		a[i] = i * n;
	return use(a, 2000);
}

noinline long many_args(long a, long b, long c, long d, long e, long f, long g, long h)
{
	return mix(a, b, c, d, e, f) + mix(g, h, a, b, c, d) + g * h;
}

noinline long caller(void)
{
	return many_args(1, 2, 3, 4, 5, 6, 7, 8) + heavy(1, 2, 3, 4, 5, 6);
}
