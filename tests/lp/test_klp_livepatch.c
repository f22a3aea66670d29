/* test_klp_livepatch: /proc/cmdline says "this has been live patched" (1). */
extern volatile long zero;
long livepatch_cmdline_proc_show(void) { return 1 + zero; }
