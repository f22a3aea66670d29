/* The project's seed: foo() calls bar(), something_else() and baz(); tail()
 * ends in a tail call that gcc -O2 turns into `jmp baz`. */
#define noinline __attribute__((noinline))

volatile long sink;

noinline long bar(long x) { return x * 3 + 1; }
noinline void something_else(void) { sink++; }
noinline long baz(long f) { sink += f; return sink; }

noinline long foo(long x)
{
	long f = bar(x);
	something_else();
	return baz(f);
}

noinline long tail(long x) { return baz(x + 1); }
