"""cffi builder for the C core (out-of-line API mode).

Declarative on purpose: it imports nothing from `emu`. The cdef is csrc/emu.h
without its preprocessor lines, the sources are csrc/*.c, and the module is
linked against the libunicorn.so.2 that the `unicorn` wheel ships, with an
rpath, so that the extension and the Python binding share one engine library.
"""
import hashlib
import os
import re
import tomllib
from pathlib import Path

import unicorn
from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
UNICORN_DIR = Path(unicorn.__file__).resolve().parent
SOURCES = sorted(CSRC.glob("*.c"))


def build_stamp():
    """Package version + hash of the C sources; emu/engine/core.py checks it at import."""
    version = tomllib.loads((HERE / "pyproject.toml").read_text())["project"]["version"]
    digest = hashlib.sha256()
    for path in sorted(CSRC.glob("*.[ch]")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{version}+{digest.hexdigest()[:12]}"


def cdef_text():
    """emu.h minus preprocessor lines; #define NAME value become cdef constants."""
    out = []
    for line in (CSRC / "emu.h").read_text().splitlines():
        m = re.match(r"\s*#define\s+(EMU_\w+)\s+(-?\w+)", line)
        if m:
            out.append(f"#define {m.group(1)} {m.group(2)}")
        elif not line.lstrip().startswith("#"):
            out.append(line)
    return "\n".join(out)


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "emu._core_c",
    '#include "emu.h"\n',
    sources=[str(p.relative_to(HERE)) for p in SOURCES],
    depends=[str(p.relative_to(HERE)) for p in sorted(CSRC.glob("*.h"))],
    include_dirs=[str(CSRC), str(UNICORN_DIR / "include")],
    library_dirs=[str(UNICORN_DIR / "lib")],
    libraries=[":libunicorn.so.2"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        f'-DEMU_BUILD_STAMP="{build_stamp()}"'] + os.environ.get("EMU_CFLAGS", "").split(),
    extra_link_args=["-Wl,-rpath,$ORIGIN/../unicorn/lib", f"-Wl,-rpath,{UNICORN_DIR / 'lib'}"]
    + os.environ.get("EMU_LDFLAGS", "").split(),
)

if __name__ == "__main__":
    # `python build_ext.py [DIR]`: build into DIR (default: here), e.g. the
    # sanitizer build of `make asan`, which must not replace the normal one.
    import sys
    os.chdir(HERE)
    ffibuilder.compile(tmpdir=sys.argv[1] if len(sys.argv) > 1 else ".", verbose=False)
