"""Shared helpers: tests build their own small programs from C text."""
import shutil
import textwrap
from pathlib import Path

import pytest

from emu.images.build import build_c


@pytest.fixture
def compile_c(tmp_path):
    """compile_c(source_text, name="base", base=0x400000, **build_c kwargs) -> Image"""
    counter = [0]

    def _compile(text, *, name="base", base=0x400000, **kw):
        counter[0] += 1
        src = tmp_path / f"{name}_{counter[0]}.c"
        src.write_text('#include "lpemu.h"\n' + textwrap.dedent(text))
        return build_c([src], base=base, name=name, **kw)

    return _compile


SEED = Path(__file__).resolve().parent.parent / "emu" / "seed"


@pytest.fixture
def seed_copy(tmp_path):
    """A directory holding copies of the seed's C files, to change at will."""
    for name in ("base.c", "patch.c", "patch_foo.c"):
        shutil.copy(SEED / name, tmp_path / name)
    return tmp_path
