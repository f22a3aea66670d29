"""Code to run: the image model (image), the gcc/ld toolchain (toolchain),
ELF reading (elf), binding modules to a base image (binding), building images
from C and objects (build), kernel objects made runnable (kobject), assembly
(asm), ORC unwind tables (orc), and the diff that says which functions a patch
must carry (diff, with the kernel tools' rules for objects in kdiff_rules)."""
from emu.images.build import build_c, load_elf

__all__ = ["build_c", "load_elf"]
