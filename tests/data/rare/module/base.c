/* The base kernel: the tasks run in the module codec (loaded from the start). */
#include "lpemu.h"

volatile long zero;
long total;
