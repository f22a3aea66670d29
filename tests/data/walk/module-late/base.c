/*
 * A network stack with a driver interface: the nic module registers its
 * transmit function when it loads. skb_headroom() (base) tells the driver
 * how much room to reserve; the driver's nic_xmit() (module) uses it.
 * The fix changes the unit of skb_headroom() (bytes -> eighths of a byte,
 * for a finer alignment) and the driver to match: a pair across two objects.
 */
#include "lpemu.h"

struct nic_ops {
	long (*xmit)(long room);
};

const struct nic_ops *nic;
volatile long zero;

__attribute__((noinline)) long skb_headroom(long len)
{
	return 16 + (len & 7) + zero;        /* bytes */
}

__attribute__((noinline)) long dev_queue_xmit(long len)
{
	const struct nic_ops *ops = nic;

	if (!ops)
		return -1;                   /* no driver yet: dropped */
	return ops->xmit(skb_headroom(len));
}

long user_entry(long id)
{
	dev_queue_xmit(id * 3);
	lpemu_sleep(1);
	return 0;
}
