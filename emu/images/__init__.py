"""Code to run: the image model (image), the gcc/ld toolchain (toolchain),
ELF reading (elf), binding modules to a base image (binding), building images
from C and objects (build), kernel objects made runnable (kobject) with the
per-CPU area behind %gs (percpu), assembly (asm), ORC unwind tables (orc), and
the diff that says which functions a patch must carry (diff, with the kernel
patch builders' rules for objects in kernel_rules)."""
from emu.images.build import build_c, load_elf

__all__ = ["build_c", "load_elf"]
