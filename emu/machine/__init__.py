"""The machine: memory layout, CPUs, tasks, the virtual clock, scheduling
policies, hypercalls and the runtime page the emulator writes itself."""
from emu.machine.machine import Machine

__all__ = ["Machine"]
