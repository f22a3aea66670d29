/* The same fix, carrying dev_ioctl() too: a task inside it keeps its lock's version. */
#include "lpemu.h"

extern volatile long zero;
extern long ioctls;
void wait_hw(void);

long cfg_lock[4];

__attribute__((noinline)) void dev_lock(long dev)
{
	cfg_lock[dev & 3] += 1 + zero;
}

__attribute__((noinline)) void dev_unlock(long dev)
{
	lpemu_observe(2, cfg_lock[dev & 3]);
	cfg_lock[dev & 3] -= 1 + zero;
}

__attribute__((noinline)) long dev_ioctl(long dev, long cmd)
{
	dev_lock(dev);
	wait_hw();
	ioctls += cmd;
	dev_unlock(dev);
	return 0;
}
