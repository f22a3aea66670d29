/* The driver module: registers its ops at init, clears them at exit. */
#include "lpemu.h"

struct nic_ops {
	long (*xmit)(long room);
};

extern const struct nic_ops *nic;
extern volatile long zero;
long sent;                        /* the driver's own counter */

__attribute__((noinline)) long nic_xmit(long room)
{
	lpemu_observe(1, room);              /* key 1: the old driver got room in bytes */
	sent += room + zero;
	return 0;
}

static const struct nic_ops ops = { .xmit = nic_xmit };

int nic_init(void)
{
	nic = &ops;
	return 0;
}

void nic_exit(void)
{
	nic = 0;
}
