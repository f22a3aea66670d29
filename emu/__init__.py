"""livepatch-emu: a live-patching laboratory without a VM.

Real x86-64 functions, original and patched, run inside Unicorn on emulated
tasks and CPUs; patches are applied while they run, under each consistency
model kernel live patching has had.
"""
__version__ = "0.1.0"
