"""The kernel pieces the models share: ftrace (sites, ops, text_poke_bp, the
ftrace_enabled sysctl), the function tracer, patch objects, system
states and the facts of each kernel version."""
