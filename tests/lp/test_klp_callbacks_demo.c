/* test_klp_callbacks_demo: replaces the busy module's work function. */
#include "lpemu.h"

void busymod_work_func(void) { __lpemu_hypercall(32, 3, 0, 0); }   /* patched_work_func */
