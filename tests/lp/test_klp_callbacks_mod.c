/* test_klp_callbacks_mod: a module that only exists to be patched. */
long callbacks_mod_value(void) { return 42; }
