/* The fix: the timeout field holds milliseconds (one tick is 10 ms). */
#include "lpemu.h"

struct req {
	long timeout;
	long owner;
};

extern volatile long zero;

__attribute__((noinline)) void req_arm(struct req *r, long ticks)
{
	r->timeout = ticks * 10 + zero;
}

__attribute__((noinline)) long req_expire(struct req *r)
{
	lpemu_observe(2, r->timeout);     /* key 2: the new reader wants milliseconds (10..80) */
	return r->timeout / 10;
}
