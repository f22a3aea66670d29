/*
 * The base kernel of the modules example: a driver interface (an ops
 * table, as struct net_device_ops or struct file_operations are) that a
 * module fills in when it loads. Base code reaches the module's code only
 * through that pointer, as the kernel does; until a module registers,
 * requests are dropped.
 */
#include "lpemu.h"

struct codec_ops {
	long (*encode)(long);
	long (*decode)(long);
};

/* The registration point: written by the module's init, cleared by its exit. */
const struct codec_ops *codec;
long requests;

/* A base helper the module calls. */
__attribute__((noinline)) long checksum(long v)
{
	return (v * 31) & 0xffff;
}

/* The "system call": one request through whatever codec is registered. */
__attribute__((noinline)) long handle_request(long id)
{
	const struct codec_ops *ops = codec;

	requests++;
	if (!ops)
		return -1;
	return ops->decode(ops->encode(id));
}

/* A user task: a request, back to user, a short sleep, again. */
long client(long id)
{
	lpemu_observe(1, handle_request(id));
	lpemu_sleep(1);
	return 0;
}
