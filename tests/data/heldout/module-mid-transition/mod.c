long helper(long);

__attribute__((noinline)) long mod_fn(long x)
{
	return helper(x) * 10;
}
