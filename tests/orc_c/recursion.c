/* Plain and mutual recursion, and a recursion gcc turns into a loop. */
#define noinline __attribute__((noinline))

volatile long sink;

noinline long fib(long n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

noinline long is_odd(long n);
noinline long is_even(long n) { sink++; return n == 0 ? 1 : is_odd(n - 1); }
noinline long is_odd(long n) { sink++; return n == 0 ? 0 : is_even(n - 1); }

noinline long fact(long n, long acc) { return n <= 1 ? acc : fact(n - 1, acc * n); }

noinline long walk(long *tree, long i, long n)
{
	if (i >= n || !tree[i])
		return 0;
	return tree[i] + walk(tree, 2 * i + 1, n) + walk(tree, 2 * i + 2, n);
}
