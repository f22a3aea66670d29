#include "lpemu.h"
extern volatile long zero;
__attribute__((noinline)) long g(void) { return 3 + zero; }

