#include "lpemu.h"
volatile long zero;
__attribute__((noinline)) long f(long t) { lpemu_sleep(t); return 1 + zero; }
__attribute__((noinline)) long g(void) { return 1 + zero; }
long sleeper(long t) { lpemu_observe(1, f(t)); return 0; }
long worker(long x) { lpemu_observe(2, g()); lpemu_sleep(1); return 0; }
