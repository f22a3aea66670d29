/* A pointer initialised to a string literal is data: its value is the address. */
#include "lpemu.h"

const char *greeting = "hello, world";

__attribute__((noinline)) long greet(void)
{
	lpemu_observe(9, (long)greeting);
	return 0;
}
