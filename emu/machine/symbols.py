"""What is loaded where: the images of a machine, their functions by name
and by address, the known code (text ranges) and the merged ORC table the
stack walks use. Mapping the images' memory is the machine's (machine.py);
this module only indexes them."""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from emu.engine import core
from emu.errors import UserError
from emu.images.image import Image
from emu.images.orc import OrcTable
from emu.machine.runtime import Runtime


@dataclass(frozen=True)
class FunctionRef:
    """A function of a loaded image, with the machine-wide id events use."""
    id: int
    name: str
    image: str
    start: int
    end: int
    site: int | None


class Symbols:
    """The loaded images and their functions. by_name maps 'f' (the base
    image's, or the first loaded) and 'image:f'; an unloaded module's names
    are gone from it, its functions stay (ids never change)."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.images: list[Image] = []
        self.unloaded: set[str] = set()         # names of modules unloaded (still mapped)
        self.functions: list[FunctionRef] = []
        self.by_name: dict[str, FunctionRef] = {}
        self._starts: list[int] = []            # sorted function starts, for function_at
        self._by_start: list[FunctionRef] = []
        self._orc_tables: list[OrcTable] = [runtime.orc]   # the runtime page's own, and the trampolines'
        self._text: list[tuple[int, int]] = [(runtime.base, runtime.base + runtime.size), runtime.regs]
        self.orc = OrcTable.merge(*self._orc_tables)
        self.orc_arrays = core.OrcArrays(self.orc.ips, self.orc.entries)
        self.text_ranges = core.Ranges(self._text)

    def relist(self, image: Image) -> bool:
        """For an image already loaded: make an unloaded module's names known
        again. False when the image is new."""
        if image not in self.images:
            return False
        if image.name in self.unloaded:
            self.unloaded.discard(image.name)
            for ref in self.functions:
                if ref.image == image.name:
                    self.by_name.setdefault(ref.name, ref)
                    self.by_name[f"{image.name}:{ref.name}"] = ref
        return True

    def check_new(self, image: Image) -> None:
        """UserError when image shares a name or addresses with a loaded one."""
        for other in self.images:
            if other.name == image.name:
                # "image:function" names would resolve to either, and a patch
                # named like its target would patch itself
                raise UserError(f"a second image named '{image.name}': the program, its modules and "
                                f"its patches each need a name of their own")
            if image.lo < other.hi and other.lo < image.hi:
                raise UserError(f"image '{image.name}' ({image.lo:#x}-{image.hi:#x}) overlaps "
                                f"image '{other.name}' ({other.lo:#x}-{other.hi:#x}): link each image at "
                                f"addresses of its own (Machine.module_base() is past the images loaded so "
                                f"far, not past one built and not loaded yet: link the next image past "
                                f"that one's .hi)")

    def add(self, image: Image) -> None:
        """Index a new image's functions, code and ORC entries."""
        self.images.append(image)
        for fn in sorted(image.functions.values(), key=lambda f: f.start):
            ref = FunctionRef(len(self.functions), fn.name, image.name, fn.start, fn.end, fn.site)
            self.functions.append(ref)
            if image is self.images[0] or fn.name not in self.by_name:
                self.by_name.setdefault(fn.name, ref)
            self.by_name[f"{image.name}:{fn.name}"] = ref
            i = bisect_right(self._starts, fn.start)
            self._starts.insert(i, fn.start)
            self._by_start.insert(i, ref)
            self._text.append((fn.start, fn.end))
        self._orc_tables += image.orc_tables()
        self.orc = OrcTable.merge(*self._orc_tables)
        self.orc_arrays = core.OrcArrays(self.orc.ips, self.orc.entries)
        self.text_ranges = core.Ranges(self._text)

    def unload(self, image: Image) -> None:
        self.unloaded.add(image.name)
        for key in [k for k, ref in self.by_name.items() if ref.image == image.name]:
            del self.by_name[key]

    def function(self, name: str) -> FunctionRef:
        """A function by name ('f' or 'image:f'); UserError naming it if unknown."""
        ref = self.by_name.get(name)
        if ref is None:
            raise UserError(f"no function '{name}' in the loaded images")
        return ref

    def function_at(self, addr: int) -> FunctionRef | None:
        i = bisect_right(self._starts, addr) - 1
        if i >= 0 and self._by_start[i].start <= addr < self._by_start[i].end:
            return self._by_start[i]
        return None

    def symbolize_pb(self, addr: int) -> str:
        """addr as the kernel's %pB prints a return address: name+offset/size,
        with [image] after a module's (a patch's included); the runtime's
        code and unknown addresses as symbolize() gives them. %pB
        (sprint_backtrace, kernel/kallsyms.c) looks up the symbol of
        addr - 1 and prints addr's offset from it: a call that is the last
        instruction of its function (a call of a noreturn function) returns
        past the function's end, and is still named after its caller. The
        size is kallsyms's, which keeps no sizes: up to the next symbol of
        the image (get_symbol_pos; a module's nearest symbol above,
        find_kallsyms_symbol), alignment padding included; the last
        function of an image ends where its code does."""
        fn = self.function_at(addr - 1)
        if fn is None:
            return self.symbolize(addr)
        i = bisect_right(self._starts, fn.start)     # the next function, if fn's image has one
        nxt = self._by_start[i] if i < len(self._by_start) and self._by_start[i].image == fn.image else None
        size = (nxt.start if nxt is not None else fn.end) - fn.start
        module = "" if self.images and fn.image == self.images[0].name else f" [{fn.image}]"
        return f"{fn.name}+{addr - fn.start:#x}/{size:#x}{module}"

    def symbolize(self, addr: int) -> str:
        fn = self.function_at(addr)
        if fn:
            return f"{fn.name}+{addr - fn.start:#x}"
        rt = self.runtime
        site = rt.trampoline_at(addr)
        if site is not None:
            return f"ftrace_trampoline+{addr - rt.trampoline(site):#x}"
        if rt.contains(addr):
            names = [("task_user", rt.task_user), ("task_kthread", rt.task_kthread), ("task_once", rt.task_once),
                     ("ftrace_return", rt.ret_trampoline)]
            name, start = max((n for n in names if n[1] <= addr), key=lambda n: n[1])
            return f"{name}+{addr - start:#x}"
        return f"{addr:#x}"
