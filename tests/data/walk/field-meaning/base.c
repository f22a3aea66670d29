/*
 * A request's timeout field changes meaning: req_arm() stores it, the
 * request sleeps in the queue, req_expire() reads it. The fix stores it in
 * milliseconds instead of ticks (req_arm and req_expire both change); the
 * caller, queue_request(), is not in the patch. The value crosses versions
 * through the heap (struct req), where no register follows it.
 */
#include "lpemu.h"

struct req {
	long timeout;             /* ticks; milliseconds after the fix */
	long owner;
};

struct req reqs[4];
volatile long zero;

__attribute__((noinline)) void req_arm(struct req *r, long ticks)
{
	r->timeout = ticks + zero;
}

__attribute__((noinline)) long req_expire(struct req *r)
{
	lpemu_observe(1, r->timeout);     /* key 1: the old reader wants ticks (1..8) */
	return r->timeout;
}

__attribute__((noinline)) void wait_queue(void)
{
	lpemu_sleep(2);
}

__attribute__((noinline)) long queue_request(long id)
{
	struct req *r = &reqs[id & 3];

	r->owner = id;
	req_arm(r, 1 + (id & 7));
	wait_queue();
	return req_expire(r);
}

long user_entry(long id)
{
	queue_request(id);
	lpemu_sleep(1);
	return 0;
}
