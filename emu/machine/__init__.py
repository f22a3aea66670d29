"""The machine: memory layout, images and symbols, CPUs and tasks, the
scheduler binding, virtual time and kernel work, stacks, fault reports,
snapshots, scheduling policies, hypercalls, shadow variables (the kernel's
klp_shadow_* API) and the runtime page the emulator
writes itself (one module each; machine.py is the facade)."""
from emu.machine.machine import Machine

__all__ = ["Machine"]
