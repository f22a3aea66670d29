/* test_klp_atomic_replace: /proc/meminfo says "this has been live patched" (2). */
extern volatile long zero;
long livepatch_meminfo_proc_show(void) { return 2 + zero; }
