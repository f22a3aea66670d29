"""Code to run: images built from C (gcc + ld), assembly (keystone, checked
by capstone) or ELF files; ORC unwind tables; the diff that says which
functions a patch must carry."""
from emu.images.image import build_c

__all__ = ["build_c"]
