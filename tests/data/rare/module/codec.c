/*
 * A module loaded before the patch: codec_frame() gets a length from
 * codec_len() and hands it to codec_put(); one frame in 55 of each task
 * first waits for the device's FIFO to drain (sleeping in drain_fifo()).
 */
#include "lpemu.h"

extern volatile long zero;
extern long total;
static long frames[8];

__attribute__((noinline)) long codec_len(void)
{
	return 9 + zero;            /* bytes */
}

__attribute__((noinline)) long codec_put(long len)
{
	lpemu_observe(1, len);
	total += len;
	return 0;
}

__attribute__((noinline)) void drain_fifo(void)
{
	lpemu_sleep(2);
}

__attribute__((noinline)) long codec_frame(long i)
{
	long len = codec_len();
	if (++frames[i & 7] % 55 == 0)
		drain_fifo();
	return codec_put(len);
}

long codec_client(long i, long phase)
{
	if (frames[i & 7] == 0)
		frames[i & 7] = phase;
	codec_frame(i);
	lpemu_sleep(1);
	return 0;
}
