"""The kernel pieces the models share: ftrace (sites, ops, text_poke_bp),
patch objects, shadow variables and system states."""
