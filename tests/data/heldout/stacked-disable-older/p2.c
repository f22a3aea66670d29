#include "lpemu.h"
extern volatile long zero;
__attribute__((noinline)) long f(void) { lpemu_observe(1, 2 + zero); return 0; }
