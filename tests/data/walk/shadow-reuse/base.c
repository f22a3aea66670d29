/*
 * A connection table shared by the tasks: the user tasks open (conn_alloc)
 * and use (conn_use) connections, a garbage-collector kthread closes them
 * (conn_gc -> conn_free), sleeping between slots. Each opening of a slot is
 * a new object, with a new generation number.
 *
 * The fix adds a field to struct conn with a shadow variable (id 1): the new
 * conn_alloc() attaches it, the new conn_free() frees it, the new conn_use()
 * checks that the shadow it finds belongs to this object (same generation).
 */
#include "lpemu.h"

#define NCONN 4

struct conn {
	long open;
	long gen;
	long uses;
};

struct conn conns[NCONN];
long gens;
volatile long zero;

__attribute__((noinline)) void conn_alloc(struct conn *c)
{
	c->gen = ++gens + zero;
	c->uses = 0;
	c->open = 1;
}

__attribute__((noinline)) void conn_use(struct conn *c)
{
	c->uses += 1 + zero;
}

__attribute__((noinline)) void conn_free(struct conn *c)
{
	c->open = 0 + zero;
}

/* The system call: open slot id if it is closed, else use it. */
long user_entry(long id)
{
	struct conn *c = &conns[id & (NCONN - 1)];

	if (!c->open)
		conn_alloc(c);
	else
		conn_use(c);
	lpemu_sleep(1);
	return 0;
}

/* The collector: one pass closes every connection used at least twice. */
__attribute__((noinline)) void conn_gc(void)
{
	for (long i = 0; i < NCONN; i++) {
		lpemu_sleep(1);
		if (conns[i].open && conns[i].uses >= 2)
			conn_free(&conns[i]);
	}
}

long gc_thread(long unused)
{
	for (;;) {
		conn_gc();
		lpemu_sleep_freezable(1);
	}
}
