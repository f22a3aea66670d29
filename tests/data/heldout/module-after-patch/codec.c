/*
 * A module: its init registers an ops table into the base's `codec`
 * pointer (module_init), its exit takes it out again (module_exit). Both
 * run as guest code in the loader task (insmod-codec, rmmod-codec). Its
 * functions call back into the base (checksum()).
 */
#include "lpemu.h"

struct codec_ops {
	long (*encode)(long);
	long (*decode)(long);
};

extern const struct codec_ops *codec;
long checksum(long v);

__attribute__((noinline)) long codec_encode(long v)
{
	lpemu_observe(3, 0);                    /* key 3: the version of codec_encode() that ran */
	return v * 100 + checksum(v) % 7;
}

__attribute__((noinline)) long codec_decode(long v)
{
	return v / 100;
}

static const struct codec_ops ops = {
	.encode = codec_encode,
	.decode = codec_decode,
};

long codec_init(void)
{
	codec = &ops;
	lpemu_observe(2, 1);                    /* key 2: registered */
	return 0;
}

long codec_exit(void)
{
	codec = 0;
	lpemu_observe(2, 0);                    /* key 2: unregistered */
	return 0;
}
