/* The fix: skb_headroom() in eighths of a byte, nic_xmit() to match. */
#include "lpemu.h"

extern volatile long zero;
extern long sent;                 /* the module's: bound when nic loads (a klp relocation) */

__attribute__((noinline)) long skb_headroom(long len)
{
	return (16 + (len & 7)) * 8 + zero;  /* eighths of a byte */
}

__attribute__((noinline)) long nic_xmit(long room)
{
	lpemu_observe(2, room);              /* key 2: the new driver must get eighths */
	sent += room / 8 + zero;
	return 0;
}
