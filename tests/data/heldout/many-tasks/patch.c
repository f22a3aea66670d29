#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long parse(long req)
{
	return 1000 + (req & 63) + zero;
}

__attribute__((noinline)) long reply(long v)
{
	lpemu_observe(2, 1 + zero);
	lpemu_observe(1, v - 1000);     /* the new reply decodes 1000..1063 */
	return v - 1000;
}

__attribute__((noinline)) long handle(long req)
{
	long v = parse(req);
	long i, s = 0;

	for (i = 0; i < 8; i++)
		s += i ^ zero;
	return reply(v) + s;
}
