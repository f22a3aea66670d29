"""Shared helpers: tests build their own small programs from C text.

The generated tests (@given) draw their examples from a seed fixed per test
(profile "fixed", the default): `make test` checks the same examples on
every machine, so a change lands or not on its own merits. `make explore`
draws new ones (profile "explore", a new seed each round); whatever it
finds becomes an @example of its test."""
import shutil
import textwrap
from pathlib import Path

import pytest
from hypothesis import settings

from emu.images.build import build_c

settings.register_profile("fixed", derandomize=True)
settings.register_profile("explore", derandomize=False, database=None)
settings.load_profile("fixed")


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
