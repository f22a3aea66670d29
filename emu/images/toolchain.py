"""The toolchain: gcc compiles C with the flags that make code patchable, ld
links objects with our own linker script (code, read-only data, data, each
page aligned). Every call to an external tool goes through here, so that a
missing tool or a failed compile is one clear error with the tool's output.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from emu.errors import BuildError, ToolMissing
from emu.images.elf import slim_lto
from emu.images.image import PAGE

__all__ = ["REQUIRED_CFLAGS", "DEFAULT_CFLAGS", "KERNEL_CFLAGS", "INCLUDE_DIR", "require_tools",
           "work_dir", "run_tool", "safe_stem", "compile_c", "compile_kernel_object", "link"]

# Flags that make the code patchable and the image linkable the way we link it:
# fentry NOPs recorded in __mcount_loc, absolute (non-PIE) code, and one section
# per function and per object so that a patch module can drop what it does not
# carry (--gc-sections) and rebind it to the base image.
REQUIRED_CFLAGS = ["-pg", "-mfentry", "-mnop-mcount", "-mrecord-mcount", "-fno-PIE", "-fno-pic",
                   "-ffunction-sections", "-fdata-sections"]
# Kernel-like code: no libc, no red zone (the machine may push on any stack), frame
# pointers for the fp unwinder and .eh_frame for checking our ORC tables.
DEFAULT_CFLAGS = ["-O2", "-fno-omit-frame-pointer", "-ffreestanding", "-fno-builtin",
                  "-fno-stack-protector", "-fcf-protection=none", "-mno-red-zone",
                  "-mgeneral-regs-only", "-fasynchronous-unwind-tables"]

# What the kernel's build passes for x86-64 objects that a live patch is built
# from (kpatch-build and klp-build compile with these, original and patched):
# `call __fentry__` recorded in __mcount_loc (no -mnop-mcount: the kernel turns
# the calls into NOPs itself), one section per function and per object, the
# kernel code model, no red zone, no SSE.
KERNEL_CFLAGS = ["-O2", "-pg", "-mfentry", "-mrecord-mcount", "-ffunction-sections",
                 "-fdata-sections", "-fno-PIE", "-fno-pic", "-mcmodel=kernel", "-mno-red-zone",
                 "-ffreestanding", "-fno-builtin", "-fno-common", "-fno-stack-protector",
                 "-fcf-protection=none", "-fno-omit-frame-pointer", "-mgeneral-regs-only",
                 "-fno-asynchronous-unwind-tables"]

# lpemu.h lives here; it is on the include path of every compile.
#: what a cflags argument must be, as a wrong one is told
FLAGS = "a list of flags (\"-O2\".split() gives one)"
INCLUDE_DIR = Path(__file__).resolve().parent.parent / "include"

_INSTALL_HINT = "apt-get install gcc binutils"
_PF_X, _PF_W, _PF_R = 1, 2, 4


def require_tools(*tools: str) -> None:
    """ToolMissing naming the first of tools that is not on PATH."""
    for tool in tools:
        if shutil.which(tool) is None:
            raise ToolMissing(f"{tool} not found on PATH: building images needs gcc and "
                              f"binutils ({_INSTALL_HINT})")


@contextlib.contextmanager
def work_dir(prefix: str):
    """A temporary directory for the tools' files (removed after). BuildError
    when none can be made: TMPDIR and the system's directories all missing,
    read-only or full (tempfile tries each, then gives up)."""
    try:
        tmp = tempfile.TemporaryDirectory(prefix=prefix)
    except OSError as exc:
        why = f"{Path(exc.filename).parent}: {exc.strerror}" if exc.filename else exc.strerror or str(exc)
        raise BuildError(f"no temporary directory for the compiler's files ({why}); set TMPDIR to a "
                         f"writable directory with free space") from None
    with tmp as d:
        yield Path(d)


def run_tool(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run argv in cwd, output captured; ToolMissing when the tool is gone."""
    try:
        # errors: the tools quote symbol names, which a damaged object may
        # hold as bytes that are not UTF-8
        # stdin: nothing (a source that includes /dev/stdin would wait on the user's terminal)
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, errors="backslashreplace",
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:  # removed between the which() check and now
        raise ToolMissing(f"{argv[0]} not found: {_INSTALL_HINT}") from None


def safe_stem(path: Path) -> str:
    """path's stem in plain characters (object names go into the linker script)."""
    # Object names appear inside the linker script: keep them to plain characters.
    return re.sub(r"[^A-Za-z0-9_]", "_", path.stem) or "src"


#: bytes of a C or assembly source: far above what a source file holds, and
#: bounded because gcc spends time on every byte, even NULs (a sparse file of
#: 100 MiB took 27 s to compile here; one of 2 GiB made `lpemu diff` run for
#: many minutes)
MAX_SOURCE = 64 << 20


def compile_c(src: Path, obj: Path, cflags, tmp: Path) -> None:
    """gcc -c src -o obj with DEFAULT_CFLAGS, cflags, REQUIRED_CFLAGS and lpemu.h's
    folder on the include path; BuildError with gcc's output when it fails or
    makes no object (a file gcc does not compile by its suffix), or naming
    src when it is larger than MAX_SOURCE."""
    try:
        size = Path(src).stat().st_size
    except OSError as exc:
        raise BuildError(f"{src}: cannot read it ({exc.strerror or exc})") from None
    if size > MAX_SOURCE:
        raise BuildError(f"{src}: {size:_} bytes, larger than the {MAX_SOURCE:_} a source may be")
    # The folders of the source and of lpemu.h are named alike wherever they
    # are (__FILE__, debug information): a scenario copied elsewhere is the same run.
    prefix_maps = [f"-ffile-prefix-map={Path(src).parent}=.", f"-ffile-prefix-map={INCLUDE_DIR}=lpemu"]
    argv = ["gcc", "-c", *prefix_maps, *DEFAULT_CFLAGS, *cflags, *REQUIRED_CFLAGS, "-I", str(INCLUDE_DIR),
            str(src), "-o", str(obj)]
    r = run_tool(argv, tmp)
    if r.returncode != 0:
        raise BuildError(f"compiling {src} failed:\n{r.stderr.rstrip()}")
    if not obj.is_file():      # gcc takes a file it cannot compile (by its suffix) as linker input
        said = f":\n{r.stderr.rstrip()}" if r.stderr.strip() else ""
        raise BuildError(f"{src}: gcc made no object of it: a source is C (.c), assembly (.s, .S) or an "
                         f"x86-64 ELF object{said}")
    if slim_lto(obj.read_bytes()):
        raise BuildError(f"{src}: compiled with -flto, gcc made an LTO object (GIMPLE bytecode, no machine "
                         f"code) that only a link with LTO turns into code; remove -flto from the flags")


# -- linking ----------------------------------------------------------------------


# The tables kernel objects carry beside their code (what describes code, never
# code itself: an alternative's replacement is data until applied), and the
# writable ones (jump labels, dynamic-debug descriptors, once flags).
_KERNEL_RODATA = (".altinstr_replacement .altinstr_aux __bug_table __ex_table "
                  ".static_call_sites .smp_locks .parainstructions .printk_index .return_sites "
                  ".call_sites .retpoline_sites __tracepoints_ptrs __tracepoints_strings __param "
                  ".orc_unwind .orc_unwind_ip")
_KERNEL_DATA = "__jump_table __dyndbg __verbose __tracepoints"


def _linker_script(base: int, *, keep_mcount: bool, roots: list[tuple[str, str]]) -> str:
    """Code at base, then read-only data, then data and bss, each page aligned.

    .eh_frame and __mcount_loc are linked and loaded with the read-only data: ld
    resolves .eh_frame's PC-relative FDE ranges against its final address, so they
    are exact absolute ranges of the linked code. A patch module (keep_mcount False)
    cannot keep __mcount_loc: it references every function of the object and would
    make --gc-sections keep them all; its sites are found by their bytes instead.
    roots: (object, section) pairs that --gc-sections must keep."""
    keep_roots = "".join(f"    KEEP({obj}({sec}))\n" for obj, sec in roots)
    mcount = "KEEP(*(__mcount_loc))" if keep_mcount else "*(__mcount_loc)"
    return f"""\
PHDRS {{
  text PT_LOAD FLAGS({_PF_R | _PF_X});
  rodata PT_LOAD FLAGS({_PF_R});
  data PT_LOAD FLAGS({_PF_R | _PF_W});
}}
SECTIONS {{
  . = {base:#x};
  .text : {{
{keep_roots}    *(.text .text.* .init.text .exit.text .noinstr.text .entry.text .sched.text .ref.text)
  }} :text
  . = ALIGN({PAGE});
  .rodata : {{ *(.rodata .rodata.*) }} :rodata
  .kernel_tables : {{
    __alt_instructions = .; *(.altinstructions) __alt_instructions_end = .;
    *({_KERNEL_RODATA})
  }} :rodata
  .eh_frame : {{ KEEP(*(.eh_frame)) }} :rodata
  __mcount_loc : {{ {mcount} }} :rodata
  . = ALIGN({PAGE});
  .data : {{ *(.data .data.* .init.data .ref.data {_KERNEL_DATA}) }} :data
  . = ALIGN({PAGE});
  .bss : {{ *(.bss .bss.* COMMON) }} :data
  /DISCARD/ : {{ *(.note.GNU-stack) *(.note.gnu.property) *(.comment) *(.discard .discard.*) *(.modinfo) *(.kpatch.*) }}
}}
"""


def link(objs: list[Path], tmp: Path, base: int, *, defsyms: dict[str, int] | None = None,
          roots: list[tuple[str, str]] | None = None) -> bytes:
    """Link objs (inside tmp) at base; with roots, as a module (--gc-sections)."""
    module = roots is not None
    script = tmp / "image.ld"
    script.write_text(_linker_script(base, keep_mcount=not module, roots=roots or []))
    argv = ["ld", "-T", script.name, "-nostdlib", "-static", "-e", "0", "-z", "max-page-size=4096",
            "-z", "noexecstack", "--build-id=none", "-o", "image.elf"]
    if module:
        argv.append("--gc-sections")
    argv += [f"--defsym={name}={addr:#x}" for name, addr in (defsyms or {}).items()]
    argv += [o.name for o in objs]
    r = run_tool(argv, tmp)
    if r.returncode != 0:
        undefined = sorted(set(re.findall(r"undefined reference to `([^']+)'", r.stderr)))
        what = f" (undefined symbols: {', '.join(undefined)})" if undefined else ""
        raise BuildError(f"linking failed{what}:\n{r.stderr.rstrip()}", undefined=undefined)
    return (tmp / "image.elf").read_bytes()



def compile_kernel_object(src: Path, obj: Path, cflags=(), *, cwd: Path | None = None) -> None:
    """gcc -c src -o obj with KERNEL_CFLAGS then cflags, as the kernel's build
    makes the objects kpatch-build and klp-build compare, in cwd (default: the
    folder of obj; src relative to it is what __FILE__ says); BuildError with
    gcc's output when it fails."""
    require_tools("gcc", "as")
    # src as given, relative to cwd: __FILE__ is what the kernel's build passes
    # (a path relative to the tree), the same for the original and the patched build
    argv = ["gcc", "-c", *KERNEL_CFLAGS, *cflags, str(src), "-o", str(Path(obj).resolve())]
    r = run_tool(argv, cwd or Path(obj).resolve().parent)
    if r.returncode != 0:
        raise BuildError(f"compiling {src} failed:\n{r.stderr.rstrip()}")
