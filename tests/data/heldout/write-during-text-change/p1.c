#include "lpemu.h"
extern volatile long zero;
__attribute__((noinline)) long f(long t) { lpemu_sleep(t); return 2 + zero; }
__attribute__((noinline)) long g(void) { return 2 + zero; }
