/*
 * 64 user tasks on 4 CPUs. A system call parses a request and replies to
 * it; the patch changes the request format (parse() returns
 * 1000 + the old value) and reply() to match, and carries handle(), the
 * caller of both. Key 1: the request as reply() decodes it (0..63 when
 * parse() and reply() agree), key 2: reply()'s version.
 */
#include "lpemu.h"

volatile long zero;
long served[64];

__attribute__((noinline)) long parse(long req)
{
	return (req & 63) + zero;
}

__attribute__((noinline)) long reply(long v)
{
	lpemu_observe(2, 0 + zero);
	lpemu_observe(1, v);            /* the old reply decodes 0..63 as is */
	return v;
}

__attribute__((noinline)) long handle(long req)
{
	long v = parse(req);
	long i, s = 0;

	for (i = 0; i < 8; i++)         /* some work between the two */
		s += i ^ zero;
	return reply(v) + s;
}

long user_entry(long id)
{
	served[id & 63] += handle(id + served[id & 63]);
	lpemu_sleep(1 + (id & 3));
	return 0;
}
