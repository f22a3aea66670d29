"""Upstream livepatch (emu/models/livepatch/): the kernel's own selftests
(tools/testing/selftests/livepatch) as golden transcripts, and the
consistency rules they do not show: who blocks a transition, where tasks
switch, what force does."""
import errno
import os
import re
from pathlib import Path
from string import Template
from textwrap import dedent

import pytest

from emu.engine import core
from emu.errors import Busy
from emu.kernel.ftrace import FENTRY_NOP, Ops
from emu.kernel.tracer import FunctionTracer
from emu.images.build import build_c
from emu.images import percpu
from emu.machine.machine import EV_PATCH_STATE, EV_WAKE, MODULE_ALIGN, MODULE_BASE, PERCPU_BASE, Machine
from emu.models.livepatch import Livepatch, PatchRefused
from emu.kernel import versions
from emu.kernel.patch import VMLINUX, make_patch
from emu.machine.task import PATCHED, UNDEFINED, UNPATCHED, RunState

LP = Path(__file__).resolve().parent / "lp"

# Where each module of the selftests is linked (they may load in any order).
SLOTS = ["test_klp_livepatch", "test_klp_atomic_replace", "test_klp_callbacks_mod",
         "test_klp_callbacks_busy", "test_klp_callbacks_demo", "patch2", "patch3", "test_klp_syscall"]
# The new_func of each klp_func whose name differs from its old_name.
NEW_NAMES = {"cmdline_proc_show": "livepatch_cmdline_proc_show",
             "meminfo_proc_show": "livepatch_meminfo_proc_show",
             "__x64_sys_getpid": "lp_sys_getpid"}
PID_BASE = 1000     # task tid -> the pid its fork gave it

MOD_LIVEPATCH = "test_klp_livepatch"
MOD_REPLACE = "test_klp_atomic_replace"
MOD_DEMO = "test_klp_callbacks_demo"
MOD_DEMO2 = "test_klp_callbacks_demo2"
MOD_TARGET = "test_klp_callbacks_mod"
MOD_TARGET_BUSY = "test_klp_callbacks_busy"

SAY = 32   # the busy module's message hypercall
SAID = {1: f"{MOD_TARGET_BUSY}: busymod_work_func enter", 2: f"{MOD_TARGET_BUSY}: busymod_work_func exit",
        3: f"{MOD_DEMO}: patched_work_func"}

MODULE_STATE = {"LIVE": "[MODULE_STATE_LIVE] Normal state",
                "COMING": "[MODULE_STATE_COMING] Full formed, running module_init",
                "GOING": "[MODULE_STATE_GOING] Going away"}


def transcript(text: str, **names) -> list[str]:
    """A check_result() text of the selftests, its $MOD_* names filled in."""
    names = {"MOD_LIVEPATCH": MOD_LIVEPATCH, "MOD_REPLACE": MOD_REPLACE, "MOD_TARGET": MOD_TARGET,
             "MOD_TARGET_BUSY": MOD_TARGET_BUSY, **names}
    return Template(dedent(text).strip("\n")).substitute(names).splitlines()


class Selftest:
    """functions.sh in the emulator: a machine with the selftests' kernel,
    commands logged as '% ...', loads that wait for the transition as
    load_lp does, and the error lines modprobe/insmod print."""

    def __init__(self, *, cpus: int = 2, kernel: str | None = None, tasks=()):
        self.base = build_c([LP / "vmlinux.c"], base=0x400000, name="vmlinux")
        self.m = Machine(self.base, cpus=cpus, quantum=500)
        self.m.add_task("cat", "cat_entry")
        self.m.add_task("kworker/0:1", "kworker", kind="kthread")
        for name, entry, args, kind, cpu in tasks:
            self.m.add_task(name, entry, args, kind=kind, cpu=cpu)
        self.m.hypercalls[SAY] = lambda m, task, args: m.printk(SAID[args[0]]) or 0
        self.lp = Livepatch(self.m, kernel=kernel)
        self.m.start()
        for task in self.m.tasks:        # fork: current->pid (vmlinux.c's task_struct)
            at = PERCPU_BASE + task.tid * percpu.AREA_SIZE + percpu.TASK_BLOCK
            self.m.engine.view(at, 8)[:] = self.pid(task).to_bytes(8, "little")
        self.m.run(until=self.m.seconds(0.1))

    @staticmethod
    def pid(task) -> int:
        return PID_BASE + task.tid

    # ---- images -----------------------------------------------------------------------
    def image(self, name: str, *, source: str | None = None, keep=None):
        at = MODULE_BASE + SLOTS.index(name) * MODULE_ALIGN
        return build_c([LP / f"{source or name}.c"], base=at, name=name, link_against=self.base, keep=keep)

    def patch(self, name, functions, *, source=None, **kw):
        img = None
        if functions:
            olds = {f.rpartition(":")[2] for f in functions}
            img = self.image(name, source=source, keep={NEW_NAMES.get(f, f) for f in olds})
            self.m.load(img)
        return make_patch(self.m, name, img, functions, new_names=NEW_NAMES, **kw)

    # ---- the shell -------------------------------------------------------------------------
    def cmd(self, text: str) -> None:
        self.m.printk(f"% {text}")

    def run(self, seconds: float = 0.05, *, until=None) -> None:
        self.m.run(until=self.m.now + self.m.seconds(seconds), stop_when=until)

    def wait_transition(self) -> None:
        self.run(60, until=lambda: self.lp.transition_patch is None)
        assert self.lp.transition_patch is None, self.lp.status()["transition"]

    def wait_logged(self, line: str) -> None:
        self.run(10, until=lambda: any(text == line for _, text in self.m.log))
        assert any(text == line for _, text in self.m.log), line

    def error(self, tool: str, name: str, exc) -> None:
        err = exc.errno if isinstance(exc, PatchRefused) else Busy.errno
        if tool == "insmod":
            self.m.printk(f"insmod: ERROR: could not insert module test_modules/{name}.ko: {os.strerror(err)}")
        else:
            self.m.printk(f"modprobe: ERROR: could not insert '{name}': {os.strerror(err)}")

    def load_lp(self, patch, args: str = "", *, tool: str = "modprobe", wait: bool = True) -> None:
        self.cmd(f"{tool} {'test_modules/' + patch.name + '.ko' if tool == 'insmod' else patch.name}{args}")
        if patch.image is not None and patch.image.name in self.m.unloaded:
            self.m.load(patch.image)          # the module again, as it was
        self.lp.enable(patch)
        if wait:
            self.wait_transition()

    def load_failing_lp(self, patch, args: str = "", *, tool: str = "modprobe") -> Exception:
        with pytest.raises((Busy, PatchRefused)) as info:
            self.load_lp(patch, args, tool=tool)
        self.error(tool, patch.name, info.value)
        return info.value

    def disable_lp(self, patch) -> None:
        self.cmd(f"echo 0 > /sys/kernel/livepatch/{patch.name}/enabled")
        self.lp.disable(patch)
        self.wait_transition()

    def unload_lp(self, patch) -> None:
        self.cmd(f"rmmod {patch.name}")
        self.lp.remove(patch)

    def load_mod(self, image, args: str = "", *, init=None, tool: str = "modprobe") -> None:
        self.cmd(f"modprobe {image.name}{args}" if tool == "modprobe" else
                 f"insmod test_modules/{image.name}.ko{args}")
        self.lp.load_module(image, init=init or (lambda: self.m.printk(f"{image.name}: {image.name}_init")))

    def load_failing_mod(self, image) -> None:
        with pytest.raises((Busy, PatchRefused)) as info:
            self.load_mod(image)
        self.error("modprobe", image.name, info.value)

    def unload_mod(self, image, *, exit=None) -> None:
        self.cmd(f"rmmod {image.name}")
        self.lp.unload_module(image, exit=exit or (lambda: self.m.printk(f"{image.name}: {image.name}_exit")))

    # ---- what the tests look at --------------------------------------------------------------
    def grep_live_patched(self) -> None:
        """grep 'live patched' /proc/cmdline /proc/meminfo > /dev/kmsg"""
        since = self.m.now
        self.run(0.05)
        last = {}
        for e in self.m.trace:
            if e.kind == core.EV_OBSERVE and e.clock >= since:
                last[e.key] = e.value
        assert set(last) == {1, 2}, "the reader did not run"
        if last[1] == 1:
            self.m.printk(f"{MOD_LIVEPATCH}: this has been live patched")
        if last[2] == 2:
            self.m.printk(f"{MOD_REPLACE}: this has been live patched")

    def log(self) -> list[str]:
        return [text for _, text in self.m.log]

    def since(self, n: int) -> list[str]:
        """check_result: the lines logged after the first n (start_test)."""
        return self.log()[n:]

    def does_sysfs_exist(self, mod: str, rel: str) -> bool:
        return f"{mod}/{rel}".rstrip("/") in self.lp.sysfs()

    def check_sysfs_rights(self, mod: str, rel: str, rights: str) -> None:
        entry = self.lp.sysfs()[f"{mod}/{rel}".rstrip("/")]
        assert entry["mode"] == rights, (mod, rel, entry)

    def check_sysfs_value(self, mod: str, rel: str, value: str) -> None:
        entry = self.lp.sysfs()[f"{mod}/{rel}"]
        assert entry["value"] == value, (mod, rel, entry)

    def write(self, image, symbol: str, value: int) -> None:
        self.m.engine.view(image.symbols[symbol], 8)[:] = value.to_bytes(8, "little")


# ---- test-livepatch.sh --------------------------------------------------------------------------
def test_basic_function_patching():
    st = Selftest()
    patch = st.patch(MOD_LIVEPATCH, ["cmdline_proc_show"])
    st.load_lp(patch)
    st.grep_live_patched()
    st.disable_lp(patch)
    st.unload_lp(patch)
    st.grep_live_patched()
    assert st.log() == transcript("""
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        livepatch: '$MOD_LIVEPATCH': patching complete
        $MOD_LIVEPATCH: this has been live patched
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        % rmmod $MOD_LIVEPATCH
        """)
    # the last patch of the function gone, its site is a NOP again
    assert st.lp.ftrace.site_bytes(st.m.function("cmdline_proc_show")) == FENTRY_NOP
    assert [t.result for t in st.lp.transitions] == ["completed", "completed"]


def test_multiple_livepatches():
    st = Selftest()
    p1 = st.patch(MOD_LIVEPATCH, ["cmdline_proc_show"])
    p2 = st.patch(MOD_REPLACE, ["meminfo_proc_show"])
    st.load_lp(p1)
    st.grep_live_patched()
    st.load_lp(p2, " replace=0")
    st.grep_live_patched()
    st.disable_lp(p2)
    st.unload_lp(p2)
    st.grep_live_patched()
    st.disable_lp(p1)
    st.unload_lp(p1)
    st.grep_live_patched()
    assert st.log() == transcript("""
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        livepatch: '$MOD_LIVEPATCH': patching complete
        $MOD_LIVEPATCH: this has been live patched
        % modprobe $MOD_REPLACE replace=0
        livepatch: enabling patch '$MOD_REPLACE'
        livepatch: '$MOD_REPLACE': initializing patching transition
        livepatch: '$MOD_REPLACE': starting patching transition
        livepatch: '$MOD_REPLACE': completing patching transition
        livepatch: '$MOD_REPLACE': patching complete
        $MOD_LIVEPATCH: this has been live patched
        $MOD_REPLACE: this has been live patched
        % echo 0 > /sys/kernel/livepatch/$MOD_REPLACE/enabled
        livepatch: '$MOD_REPLACE': initializing unpatching transition
        livepatch: '$MOD_REPLACE': starting unpatching transition
        livepatch: '$MOD_REPLACE': completing unpatching transition
        livepatch: '$MOD_REPLACE': unpatching complete
        % rmmod $MOD_REPLACE
        $MOD_LIVEPATCH: this has been live patched
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        % rmmod $MOD_LIVEPATCH
        """)


def test_atomic_replace_livepatch():
    st = Selftest()
    p1 = st.patch(MOD_LIVEPATCH, ["cmdline_proc_show"])
    p2 = st.patch(MOD_REPLACE, ["meminfo_proc_show"], replace=True)
    st.load_lp(p1)
    st.grep_live_patched()
    st.load_lp(p2, " replace=1")
    st.grep_live_patched()
    cmdline = st.m.function("cmdline_proc_show")
    # the nop that sent cmdline_proc_show back to the original is gone, and
    # with it the last user of the site
    assert st.lp.ftrace.site_bytes(cmdline) == FENTRY_NOP and not st.lp.stacks.get(cmdline.id)
    assert [f.name for _, f in p2.funcs()] == ["meminfo_proc_show"]
    assert not p1.enabled and [p.name for p in st.lp.installed] == [MOD_REPLACE]
    st.unload_lp(p1)
    st.grep_live_patched()
    st.disable_lp(p2)
    st.unload_lp(p2)
    st.grep_live_patched()
    assert st.log() == transcript("""
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        livepatch: '$MOD_LIVEPATCH': patching complete
        $MOD_LIVEPATCH: this has been live patched
        % modprobe $MOD_REPLACE replace=1
        livepatch: enabling patch '$MOD_REPLACE'
        livepatch: '$MOD_REPLACE': initializing patching transition
        livepatch: '$MOD_REPLACE': starting patching transition
        livepatch: '$MOD_REPLACE': completing patching transition
        livepatch: '$MOD_REPLACE': patching complete
        $MOD_REPLACE: this has been live patched
        % rmmod $MOD_LIVEPATCH
        $MOD_REPLACE: this has been live patched
        % echo 0 > /sys/kernel/livepatch/$MOD_REPLACE/enabled
        livepatch: '$MOD_REPLACE': initializing unpatching transition
        livepatch: '$MOD_REPLACE': starting unpatching transition
        livepatch: '$MOD_REPLACE': completing unpatching transition
        livepatch: '$MOD_REPLACE': unpatching complete
        % rmmod $MOD_REPLACE
        """)


# ---- test-callbacks.sh ----------------------------------------------------------------------------
class Callbacks:
    """test_klp_callbacks_demo{,2}'s callbacks: each prints its name and the
    object with its module state; pre_patch returns pre_patch_ret."""

    def __init__(self, st: Selftest, modname: str):
        self.st, self.modname = st, modname
        self.pre_patch_ret = 0

    def info(self, callback, obj):
        state = self.st.lp.module_state(obj.name)
        what = "vmlinux" if state is None else f"{obj.name} -> {MODULE_STATE[state]}"
        self.st.m.printk(f"{self.modname}: {callback}: {what}")

    def table(self):
        def pre_patch(m, patch, obj):
            self.info("pre_patch_callback", obj)
            return self.pre_patch_ret
        return {"pre_patch": pre_patch,
                "post_patch": lambda m, p, obj: self.info("post_patch_callback", obj),
                "pre_unpatch": lambda m, p, obj: self.info("pre_unpatch_callback", obj),
                "post_unpatch": lambda m, p, obj: self.info("post_unpatch_callback", obj)}


def demo_patch(st: Selftest, name: str = MOD_DEMO, *, replace: bool = False):
    """test_klp_callbacks_demo: vmlinux, the plain module and the busy one
    (whose work function it replaces), all with callbacks. demo2 has only
    vmlinux."""
    cbs = Callbacks(st, name)
    objects = [VMLINUX, MOD_TARGET, MOD_TARGET_BUSY] if name == MOD_DEMO else [VMLINUX]
    funcs = [f"{MOD_TARGET_BUSY}:busymod_work_func"] if name == MOD_DEMO else []
    patch = st.patch(name, funcs, replace=replace, callbacks={o: cbs.table() for o in objects})
    patch.objects.sort(key=lambda o: objects.index(o.name))
    return patch, cbs


def busy_module(st: Selftest):
    image = st.image(MOD_TARGET_BUSY)

    def load(block: bool):
        def init():
            st.m.printk(f"{MOD_TARGET_BUSY}: {MOD_TARGET_BUSY}_init")
            st.write(image, "block_transition", int(block))
            st.write(st.base, "pending_work", image.functions["busymod_work_func"].start)   # schedule_work
            st.wait_logged(SAID[1])                                                       # ...started
            if not block:
                st.wait_logged(SAID[2])                                                   # flush_work
        st.load_mod(image, f" block_transition={'Y' if block else 'N'}", init=init)

    def unload():
        def exit_():
            st.write(image, "block_transition", 0)
            st.wait_logged(SAID[2])
            st.m.printk(f"{MOD_TARGET_BUSY}: {MOD_TARGET_BUSY}_exit")
        st.unload_mod(image, exit=exit_)

    return load, unload


def test_callbacks_target_module_before_livepatch():
    st = Selftest()
    target = st.image(MOD_TARGET)
    patch, _ = demo_patch(st)
    st.load_mod(target)
    st.load_lp(patch)
    st.disable_lp(patch)
    st.unload_lp(patch)
    st.unload_mod(target)
    assert st.log() == transcript("""
        % modprobe $MOD_TARGET
        $MOD_TARGET: ${MOD_TARGET}_init
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        $MOD_LIVEPATCH: pre_patch_callback: vmlinux
        $MOD_LIVEPATCH: pre_patch_callback: $MOD_TARGET -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        $MOD_LIVEPATCH: post_patch_callback: vmlinux
        $MOD_LIVEPATCH: post_patch_callback: $MOD_TARGET -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': patching complete
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
        $MOD_LIVEPATCH: pre_unpatch_callback: vmlinux
        $MOD_LIVEPATCH: pre_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        $MOD_LIVEPATCH: post_unpatch_callback: vmlinux
        $MOD_LIVEPATCH: post_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        % rmmod $MOD_LIVEPATCH
        % rmmod $MOD_TARGET
        $MOD_TARGET: ${MOD_TARGET}_exit
        """, MOD_LIVEPATCH=MOD_DEMO)


def test_callbacks_module_coming_notifier():
    st = Selftest()
    target = st.image(MOD_TARGET)
    patch, _ = demo_patch(st)
    st.load_lp(patch)
    st.load_mod(target)
    st.disable_lp(patch)
    st.unload_lp(patch)
    st.unload_mod(target)
    assert st.log() == transcript("""
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        $MOD_LIVEPATCH: pre_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        $MOD_LIVEPATCH: post_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': patching complete
        % modprobe $MOD_TARGET
        livepatch: applying patch '$MOD_LIVEPATCH' to loading module '$MOD_TARGET'
        $MOD_LIVEPATCH: pre_patch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
        $MOD_LIVEPATCH: post_patch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
        $MOD_TARGET: ${MOD_TARGET}_init
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
        $MOD_LIVEPATCH: pre_unpatch_callback: vmlinux
        $MOD_LIVEPATCH: pre_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        $MOD_LIVEPATCH: post_unpatch_callback: vmlinux
        $MOD_LIVEPATCH: post_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        % rmmod $MOD_LIVEPATCH
        % rmmod $MOD_TARGET
        $MOD_TARGET: ${MOD_TARGET}_exit
        """, MOD_LIVEPATCH=MOD_DEMO)


def test_callbacks_module_going_notifier():
    st = Selftest()
    target = st.image(MOD_TARGET)
    patch, _ = demo_patch(st)
    st.load_mod(target)
    st.load_lp(patch)
    st.unload_mod(target)
    st.disable_lp(patch)
    st.unload_lp(patch)
    assert st.log() == transcript("""
        % modprobe $MOD_TARGET
        $MOD_TARGET: ${MOD_TARGET}_init
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        $MOD_LIVEPATCH: pre_patch_callback: vmlinux
        $MOD_LIVEPATCH: pre_patch_callback: $MOD_TARGET -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        $MOD_LIVEPATCH: post_patch_callback: vmlinux
        $MOD_LIVEPATCH: post_patch_callback: $MOD_TARGET -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': patching complete
        % rmmod $MOD_TARGET
        $MOD_TARGET: ${MOD_TARGET}_exit
        $MOD_LIVEPATCH: pre_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_GOING] Going away
        livepatch: reverting patch '$MOD_LIVEPATCH' on unloading module '$MOD_TARGET'
        $MOD_LIVEPATCH: post_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_GOING] Going away
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
        $MOD_LIVEPATCH: pre_unpatch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        $MOD_LIVEPATCH: post_unpatch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        % rmmod $MOD_LIVEPATCH
        """, MOD_LIVEPATCH=MOD_DEMO)


def test_callbacks_module_coming_and_going_notifiers():
    st = Selftest()
    target = st.image(MOD_TARGET)
    patch, _ = demo_patch(st)
    st.load_lp(patch)
    st.load_mod(target)
    st.unload_mod(target)
    st.disable_lp(patch)
    st.unload_lp(patch)
    assert st.log() == transcript("""
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        $MOD_LIVEPATCH: pre_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        $MOD_LIVEPATCH: post_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': patching complete
        % modprobe $MOD_TARGET
        livepatch: applying patch '$MOD_LIVEPATCH' to loading module '$MOD_TARGET'
        $MOD_LIVEPATCH: pre_patch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
        $MOD_LIVEPATCH: post_patch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
        $MOD_TARGET: ${MOD_TARGET}_init
        % rmmod $MOD_TARGET
        $MOD_TARGET: ${MOD_TARGET}_exit
        $MOD_LIVEPATCH: pre_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_GOING] Going away
        livepatch: reverting patch '$MOD_LIVEPATCH' on unloading module '$MOD_TARGET'
        $MOD_LIVEPATCH: post_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_GOING] Going away
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
        $MOD_LIVEPATCH: pre_unpatch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        $MOD_LIVEPATCH: post_unpatch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        % rmmod $MOD_LIVEPATCH
        """, MOD_LIVEPATCH=MOD_DEMO)


def test_callbacks_target_module_not_present():
    st = Selftest()
    patch, _ = demo_patch(st)
    st.load_lp(patch)
    st.disable_lp(patch)
    st.unload_lp(patch)
    assert st.log() == transcript("""
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        $MOD_LIVEPATCH: pre_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        $MOD_LIVEPATCH: post_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': patching complete
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
        $MOD_LIVEPATCH: pre_unpatch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        $MOD_LIVEPATCH: post_unpatch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        % rmmod $MOD_LIVEPATCH
        """, MOD_LIVEPATCH=MOD_DEMO)


def test_callbacks_pre_patch_callback_enodev():
    st = Selftest()
    target = st.image(MOD_TARGET)
    patch, cbs = demo_patch(st)
    cbs.pre_patch_ret = -errno.ENODEV
    st.load_mod(target)
    exc = st.load_failing_lp(patch, " pre_patch_ret=-19")
    st.unload_mod(target)
    assert isinstance(exc, PatchRefused) and exc.errno == errno.ENODEV
    assert st.log() == transcript("""
        % modprobe $MOD_TARGET
        $MOD_TARGET: ${MOD_TARGET}_init
        % modprobe $MOD_LIVEPATCH pre_patch_ret=-19
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        test_klp_callbacks_demo: pre_patch_callback: vmlinux
        livepatch: pre-patch callback failed for object 'vmlinux'
        livepatch: failed to enable patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': canceling patching transition, going to unpatch
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        modprobe: ERROR: could not insert '$MOD_LIVEPATCH': No such device
        % rmmod $MOD_TARGET
        $MOD_TARGET: ${MOD_TARGET}_exit
        """, MOD_LIVEPATCH=MOD_DEMO)
    assert st.lp.installed == [] and st.lp.transitions[-1].result == "cancelled"
    assert all(t.patch_state == UNDEFINED for t in st.lp.all_tasks())


def test_callbacks_module_coming_pre_patch_callback_enodev():
    st = Selftest()
    target = st.image(MOD_TARGET)
    patch, cbs = demo_patch(st)
    st.load_lp(patch)
    st.cmd(f"echo -19 > /sys/module/{MOD_DEMO}/parameters/pre_patch_ret")
    cbs.pre_patch_ret = -errno.ENODEV
    st.load_failing_mod(target)
    st.disable_lp(patch)
    st.unload_lp(patch)
    assert st.log() == transcript("""
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        $MOD_LIVEPATCH: pre_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        $MOD_LIVEPATCH: post_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': patching complete
        % echo -19 > /sys/module/$MOD_LIVEPATCH/parameters/pre_patch_ret
        % modprobe $MOD_TARGET
        livepatch: applying patch '$MOD_LIVEPATCH' to loading module '$MOD_TARGET'
        $MOD_LIVEPATCH: pre_patch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
        livepatch: pre-patch callback failed for object '$MOD_TARGET'
        livepatch: patch '$MOD_LIVEPATCH' failed for module '$MOD_TARGET', refusing to load module '$MOD_TARGET'
        modprobe: ERROR: could not insert '$MOD_TARGET': No such device
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
        $MOD_LIVEPATCH: pre_unpatch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        $MOD_LIVEPATCH: post_unpatch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        % rmmod $MOD_LIVEPATCH
        """, MOD_LIVEPATCH=MOD_DEMO)
    assert st.lp.module_state(MOD_TARGET) is None      # refused: not loaded


def test_callbacks_module_coming_refused_by_the_second_patch_cleans_up_the_first():
    """klp_module_coming() walks klp_patches: the first patch is applied to
    the module (pre_patch, post_patch); the second's pre_patch refuses, so
    klp_cleanup_module_patches_limited(mod, limit = the second) reverts the
    first only (pre_unpatch: it is not the transition patch, "reverting",
    post_unpatch) and the load fails; klp_module_going() is not called
    (load_module's error path after prepare_coming_module)."""
    st = Selftest()
    target = st.image(MOD_TARGET)
    first, _ = demo_patch(st)
    second_cbs = Callbacks(st, "second")
    second = st.patch("second", [], callbacks={VMLINUX: second_cbs.table(), MOD_TARGET: second_cbs.table()})
    st.load_lp(first)
    st.load_lp(second)
    n = len(st.log())
    st.cmd("echo -19 > /sys/module/second/parameters/pre_patch_ret")
    second_cbs.pre_patch_ret = -errno.ENODEV
    st.load_failing_mod(target)
    assert st.since(n) == transcript("""
        % echo -19 > /sys/module/second/parameters/pre_patch_ret
        % modprobe $MOD_TARGET
        livepatch: applying patch '$MOD_LIVEPATCH' to loading module '$MOD_TARGET'
        $MOD_LIVEPATCH: pre_patch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
        $MOD_LIVEPATCH: post_patch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
        livepatch: applying patch 'second' to loading module '$MOD_TARGET'
        second: pre_patch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
        livepatch: pre-patch callback failed for object '$MOD_TARGET'
        livepatch: patch 'second' failed for module '$MOD_TARGET', refusing to load module '$MOD_TARGET'
        $MOD_LIVEPATCH: pre_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
        livepatch: reverting patch '$MOD_LIVEPATCH' on unloading module '$MOD_TARGET'
        $MOD_LIVEPATCH: post_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
        modprobe: ERROR: could not insert '$MOD_TARGET': No such device
        """, MOD_LIVEPATCH=MOD_DEMO)
    assert st.lp.module_state(MOD_TARGET) is None
    assert not first.object(MOD_TARGET).patched and not second.object(MOD_TARGET).patched


def test_callbacks_pre_patch_failing_on_a_later_object_unpatches_the_earlier_ones():
    """__klp_enable_patch runs pre_patch and klp_patch_object object by
    object; a refusal from the second one cancels (klp_cancel_transition ->
    klp_complete_transition, target UNPATCHED): post_unpatch runs for each
    loaded object whose pre_patch succeeded (post_unpatch_enabled), vmlinux
    here, never for the refusing one."""
    st = Selftest()
    target = st.image(MOD_TARGET)
    patch, cbs = demo_patch(st)
    table = patch.object(MOD_TARGET).callbacks
    refuse = table["pre_patch"]
    table["pre_patch"] = lambda m, p, obj: refuse(m, p, obj) or -errno.ENODEV
    st.load_mod(target)
    exc = st.load_failing_lp(patch)
    assert isinstance(exc, PatchRefused) and exc.errno == errno.ENODEV
    assert st.log() == transcript("""
        % modprobe $MOD_TARGET
        $MOD_TARGET: ${MOD_TARGET}_init
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        $MOD_LIVEPATCH: pre_patch_callback: vmlinux
        $MOD_LIVEPATCH: pre_patch_callback: $MOD_TARGET -> [MODULE_STATE_LIVE] Normal state
        livepatch: pre-patch callback failed for object '$MOD_TARGET'
        livepatch: failed to enable patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': canceling patching transition, going to unpatch
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        $MOD_LIVEPATCH: post_unpatch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        modprobe: ERROR: could not insert '$MOD_LIVEPATCH': No such device
        """, MOD_LIVEPATCH=MOD_DEMO)
    assert st.lp.installed == [] and not st.lp.sysfs()
    assert not any(o.patched for o in patch.objects)


def test_callbacks_a_module_loaded_during_the_patching_transition():
    """klp_module_coming runs pre_patch for the patch in transition but
    not post_patch (patch == klp_transition_patch); klp_complete_transition
    then runs post_patch for every loaded object, the new module too, now
    LIVE."""
    st = Selftest()
    target = st.image(MOD_TARGET)
    load_busy, _ = busy_module(st)
    patch, _ = demo_patch(st)
    load_busy(block=True)
    st.load_lp(patch, wait=False)
    st.run(2)
    st.load_mod(target)
    assert st.lp.transition_patch is patch
    st.cmd(f"echo N > /sys/module/{MOD_TARGET_BUSY}/parameters/block_transition")
    st.write(st.image(MOD_TARGET_BUSY), "block_transition", 0)
    st.wait_transition()
    assert st.log() == transcript("""
        % modprobe $MOD_TARGET_BUSY block_transition=Y
        $MOD_TARGET_BUSY: ${MOD_TARGET_BUSY}_init
        $MOD_TARGET_BUSY: busymod_work_func enter
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        $MOD_LIVEPATCH: pre_patch_callback: vmlinux
        $MOD_LIVEPATCH: pre_patch_callback: $MOD_TARGET_BUSY -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        % modprobe $MOD_TARGET
        livepatch: applying patch '$MOD_LIVEPATCH' to loading module '$MOD_TARGET'
        $MOD_LIVEPATCH: pre_patch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
        $MOD_TARGET: ${MOD_TARGET}_init
        % echo N > /sys/module/$MOD_TARGET_BUSY/parameters/block_transition
        $MOD_TARGET_BUSY: busymod_work_func exit
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        $MOD_LIVEPATCH: post_patch_callback: vmlinux
        $MOD_LIVEPATCH: post_patch_callback: $MOD_TARGET -> [MODULE_STATE_LIVE] Normal state
        $MOD_LIVEPATCH: post_patch_callback: $MOD_TARGET_BUSY -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': patching complete
        """, MOD_LIVEPATCH=MOD_DEMO)
    assert st.lp.sysfs()[f"{MOD_DEMO}/{MOD_TARGET}/patched"]["value"] == "1"


def test_callbacks_a_module_loaded_during_the_unpatching_transition():
    """A patch in its unpatching transition is still on klp_patches:
    klp_module_coming applies it to the module (pre_patch, the functions
    in transition; no post_patch, it is klp_transition_patch), and
    klp_complete_transition unpatches the module with the rest and runs its
    post_unpatch (its pre_patch enabled it)."""
    st = Selftest()
    target = st.image(MOD_TARGET)
    load_busy, _ = busy_module(st)
    patch, _ = demo_patch(st)
    load_busy(block=True)
    st.load_lp(patch, wait=False)
    st.run(2)
    n = len(st.log())
    st.cmd(f"echo 0 > /sys/kernel/livepatch/{MOD_DEMO}/enabled")
    st.lp.disable(patch)                   # reversed: now unpatching, until the next retry
    st.load_mod(target)
    assert st.lp.transition_patch is patch and patch.object(MOD_TARGET).patched
    st.wait_transition()
    assert st.since(n) == transcript("""
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': reversing transition from patching to unpatching
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        % modprobe $MOD_TARGET
        livepatch: applying patch '$MOD_LIVEPATCH' to loading module '$MOD_TARGET'
        $MOD_LIVEPATCH: pre_patch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
        $MOD_TARGET: ${MOD_TARGET}_init
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        $MOD_LIVEPATCH: post_unpatch_callback: vmlinux
        $MOD_LIVEPATCH: post_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_LIVE] Normal state
        $MOD_LIVEPATCH: post_unpatch_callback: $MOD_TARGET_BUSY -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        """, MOD_LIVEPATCH=MOD_DEMO)
    assert st.lp.installed == [] and not patch.object(MOD_TARGET).patched


def test_callbacks_a_module_going_during_the_unpatching_transition():
    """klp_cleanup_module_patches_limited() skips pre_unpatch for
    klp_transition_patch and runs post_unpatch (its pre_patch enabled it)
    after "reverting patch"; klp_complete_transition() then runs
    post_unpatch for the objects still loaded only (klp_is_object_loaded)."""
    st = Selftest()
    target = st.image(MOD_TARGET)
    load_busy, _ = busy_module(st)
    patch, _ = demo_patch(st)
    st.load_mod(target)
    load_busy(block=True)
    st.load_lp(patch, wait=False)
    st.run(2)
    n = len(st.log())
    st.cmd(f"echo 0 > /sys/kernel/livepatch/{MOD_DEMO}/enabled")
    st.lp.disable(patch)                   # reversed: now unpatching, until the next retry
    st.unload_mod(target)
    assert st.lp.transition_patch is patch and not patch.object(MOD_TARGET).patched
    st.wait_transition()
    assert st.since(n) == transcript("""
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': reversing transition from patching to unpatching
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        % rmmod $MOD_TARGET
        $MOD_TARGET: ${MOD_TARGET}_exit
        livepatch: reverting patch '$MOD_LIVEPATCH' on unloading module '$MOD_TARGET'
        $MOD_LIVEPATCH: post_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_GOING] Going away
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        $MOD_LIVEPATCH: post_unpatch_callback: vmlinux
        $MOD_LIVEPATCH: post_unpatch_callback: $MOD_TARGET_BUSY -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        """, MOD_LIVEPATCH=MOD_DEMO)
    assert st.lp.installed == []


def test_callbacks_multiple_target_modules():
    st = Selftest()
    target = st.image(MOD_TARGET)
    load_busy, unload_busy = busy_module(st)
    patch, _ = demo_patch(st)
    load_busy(block=False)
    st.load_lp(patch)
    st.load_mod(target)
    st.unload_mod(target)
    st.disable_lp(patch)
    st.unload_lp(patch)
    unload_busy()
    assert st.log() == transcript("""
        % modprobe $MOD_TARGET_BUSY block_transition=N
        $MOD_TARGET_BUSY: ${MOD_TARGET_BUSY}_init
        $MOD_TARGET_BUSY: busymod_work_func enter
        $MOD_TARGET_BUSY: busymod_work_func exit
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        $MOD_LIVEPATCH: pre_patch_callback: vmlinux
        $MOD_LIVEPATCH: pre_patch_callback: $MOD_TARGET_BUSY -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        $MOD_LIVEPATCH: post_patch_callback: vmlinux
        $MOD_LIVEPATCH: post_patch_callback: $MOD_TARGET_BUSY -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': patching complete
        % modprobe $MOD_TARGET
        livepatch: applying patch '$MOD_LIVEPATCH' to loading module '$MOD_TARGET'
        $MOD_LIVEPATCH: pre_patch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
        $MOD_LIVEPATCH: post_patch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
        $MOD_TARGET: ${MOD_TARGET}_init
        % rmmod $MOD_TARGET
        $MOD_TARGET: ${MOD_TARGET}_exit
        $MOD_LIVEPATCH: pre_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_GOING] Going away
        livepatch: reverting patch '$MOD_LIVEPATCH' on unloading module '$MOD_TARGET'
        $MOD_LIVEPATCH: post_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_GOING] Going away
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
        $MOD_LIVEPATCH: pre_unpatch_callback: vmlinux
        $MOD_LIVEPATCH: pre_unpatch_callback: $MOD_TARGET_BUSY -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        $MOD_LIVEPATCH: post_unpatch_callback: vmlinux
        $MOD_LIVEPATCH: post_unpatch_callback: $MOD_TARGET_BUSY -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        % rmmod $MOD_LIVEPATCH
        % rmmod $MOD_TARGET_BUSY
        $MOD_TARGET_BUSY: ${MOD_TARGET_BUSY}_exit
        """, MOD_LIVEPATCH=MOD_DEMO)


def test_callbacks_busy_target_module():
    st = Selftest()
    target = st.image(MOD_TARGET)
    load_busy, unload_busy = busy_module(st)
    patch, _ = demo_patch(st)
    load_busy(block=True)
    st.load_lp(patch, wait=False)
    # loop_until 'grep -q ^1$ /sys/kernel/livepatch/$MOD_LIVEPATCH/transition'
    st.run(3)
    status = st.lp.status()
    assert status["patches"][0]["transition"] and status["transition"]["attempts"] >= 3
    (blocker, stack), = [(b["task"], b["stack"]) for b in status["transition"]["blockers"]]
    assert blocker == "kworker/0:1" and stack[-1] == "(sleeping on function busymod_work_func)"
    assert any(line.startswith("busymod_work_func+") for line in stack)
    st.load_mod(target)
    st.unload_mod(target)
    st.disable_lp(patch)
    st.unload_lp(patch)
    unload_busy()
    assert st.log() == transcript("""
        % modprobe $MOD_TARGET_BUSY block_transition=Y
        $MOD_TARGET_BUSY: ${MOD_TARGET_BUSY}_init
        $MOD_TARGET_BUSY: busymod_work_func enter
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        $MOD_LIVEPATCH: pre_patch_callback: vmlinux
        $MOD_LIVEPATCH: pre_patch_callback: $MOD_TARGET_BUSY -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        % modprobe $MOD_TARGET
        livepatch: applying patch '$MOD_LIVEPATCH' to loading module '$MOD_TARGET'
        $MOD_LIVEPATCH: pre_patch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
        $MOD_TARGET: ${MOD_TARGET}_init
        % rmmod $MOD_TARGET
        $MOD_TARGET: ${MOD_TARGET}_exit
        livepatch: reverting patch '$MOD_LIVEPATCH' on unloading module '$MOD_TARGET'
        $MOD_LIVEPATCH: post_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_GOING] Going away
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': reversing transition from patching to unpatching
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        $MOD_LIVEPATCH: post_unpatch_callback: vmlinux
        $MOD_LIVEPATCH: post_unpatch_callback: $MOD_TARGET_BUSY -> [MODULE_STATE_LIVE] Normal state
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        % rmmod $MOD_LIVEPATCH
        % rmmod $MOD_TARGET_BUSY
        $MOD_TARGET_BUSY: busymod_work_func exit
        $MOD_TARGET_BUSY: ${MOD_TARGET_BUSY}_exit
        """, MOD_LIVEPATCH=MOD_DEMO)
    assert [t.result for t in st.lp.transitions] == ["reversed", "completed"]
    # the worker never ran the patched work function
    assert SAID[3] not in st.log()


def test_a_module_loaded_after_the_patch_runs_the_new_function():
    st = Selftest()
    patch, _ = demo_patch(st)
    st.load_lp(patch)
    busy = st.image(MOD_TARGET_BUSY)
    work = busy.functions["busymod_work_func"].start

    def init():           # runs once the module's patched site is enabled
        assert st.lp.module_state(MOD_TARGET_BUSY) == "COMING"
        st.write(st.base, "pending_work", work)

    st.load_mod(busy, init=init)
    st.wait_logged(SAID[3])
    assert st.lp.ftrace.site_bytes(st.m.function(f"{MOD_TARGET_BUSY}:busymod_work_func"))[0] == 0xE8
    assert SAID[1] not in st.log() and st.lp.module_state(MOD_TARGET_BUSY) == "LIVE"
    st.disable_lp(patch)
    st.write(st.base, "pending_work", work)
    st.wait_logged(SAID[2])          # the original again, after the patch left the module
    assert st.log()[-3:] == [f"livepatch: '{MOD_DEMO}': unpatching complete", SAID[1], SAID[2]]


def test_callbacks_multiple_livepatches():
    st = Selftest()
    p1, _ = demo_patch(st)
    p2, _ = demo_patch(st, MOD_DEMO2)
    st.load_lp(p1)
    st.load_lp(p2)
    st.disable_lp(p2)
    st.disable_lp(p1)
    st.unload_lp(p2)
    st.unload_lp(p1)
    assert st.log() == transcript("""
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        $MOD_LIVEPATCH: pre_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        $MOD_LIVEPATCH: post_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': patching complete
        % modprobe $MOD_LIVEPATCH2
        livepatch: enabling patch '$MOD_LIVEPATCH2'
        livepatch: '$MOD_LIVEPATCH2': initializing patching transition
        $MOD_LIVEPATCH2: pre_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH2': starting patching transition
        livepatch: '$MOD_LIVEPATCH2': completing patching transition
        $MOD_LIVEPATCH2: post_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH2': patching complete
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH2/enabled
        livepatch: '$MOD_LIVEPATCH2': initializing unpatching transition
        $MOD_LIVEPATCH2: pre_unpatch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH2': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH2': completing unpatching transition
        $MOD_LIVEPATCH2: post_unpatch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH2': unpatching complete
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
        $MOD_LIVEPATCH: pre_unpatch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        $MOD_LIVEPATCH: post_unpatch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        % rmmod $MOD_LIVEPATCH2
        % rmmod $MOD_LIVEPATCH
        """, MOD_LIVEPATCH=MOD_DEMO, MOD_LIVEPATCH2=MOD_DEMO2)


def test_callbacks_atomic_replace():
    st = Selftest()
    p1, _ = demo_patch(st)
    p2, _ = demo_patch(st, MOD_DEMO2, replace=True)
    st.load_lp(p1)
    st.load_lp(p2, " replace=1")
    st.disable_lp(p2)
    st.unload_lp(p2)
    st.unload_lp(p1)
    assert st.log() == transcript("""
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        $MOD_LIVEPATCH: pre_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        $MOD_LIVEPATCH: post_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH': patching complete
        % modprobe $MOD_LIVEPATCH2 replace=1
        livepatch: enabling patch '$MOD_LIVEPATCH2'
        livepatch: '$MOD_LIVEPATCH2': initializing patching transition
        $MOD_LIVEPATCH2: pre_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH2': starting patching transition
        livepatch: '$MOD_LIVEPATCH2': completing patching transition
        $MOD_LIVEPATCH2: post_patch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH2': patching complete
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH2/enabled
        livepatch: '$MOD_LIVEPATCH2': initializing unpatching transition
        $MOD_LIVEPATCH2: pre_unpatch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH2': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH2': completing unpatching transition
        $MOD_LIVEPATCH2: post_unpatch_callback: vmlinux
        livepatch: '$MOD_LIVEPATCH2': unpatching complete
        % rmmod $MOD_LIVEPATCH2
        % rmmod $MOD_LIVEPATCH
        """, MOD_LIVEPATCH=MOD_DEMO, MOD_LIVEPATCH2=MOD_DEMO2)


# ---- test-state.sh ------------------------------------------------------------------------------
CONSOLE_LOGLEVEL_STATE = 1
CONSOLE_LOGLEVEL_DEFAULT, CONSOLE_LOGLEVEL_MOTORMOUTH = 7, 15


class Console:
    """console_loglevel and the klp_state data of test_klp_state{,2,3}."""

    def __init__(self):
        self.loglevel = CONSOLE_LOGLEVEL_DEFAULT
        self.data = {}          # State -> the saved loglevel (its klp_state->data)


def state_patch(st: Selftest, console: Console, name: str, version: int):
    """test_klp_state (version 1) and test_klp_state2/3 (version 2, which
    take the change over from an older patch): replace patches with only
    vmlinux callbacks and one system state."""
    lp, takes_over = st.lp, version >= 2

    def say(text):
        st.m.printk(f"{name}: {text}")

    def prev():
        return lp.get_prev_state(CONSOLE_LOGLEVEL_STATE) if takes_over else None

    def pre_patch(m, patch, obj):
        say("pre_patch_callback: vmlinux")
        if prev():
            say("allocate_loglevel_state: space to store console_loglevel already allocated")
            return 0
        state = lp.get_state(patch, CONSOLE_LOGLEVEL_STATE)
        if state is None:
            return -errno.EINVAL
        console.data[state] = None
        say("allocate_loglevel_state: allocating space to store console_loglevel")
        return 0

    def post_patch(m, patch, obj):
        say("post_patch_callback: vmlinux")
        state = lp.get_state(patch, CONSOLE_LOGLEVEL_STATE)
        if prev():
            say("fix_console_loglevel: taking over the console_loglevel change")
            console.data[state] = console.data[prev()]
            return
        say("fix_console_loglevel: fixing console_loglevel")
        console.data[state] = console.loglevel
        console.loglevel = CONSOLE_LOGLEVEL_MOTORMOUTH

    def pre_unpatch(m, patch, obj):
        say("pre_unpatch_callback: vmlinux")
        if prev():
            say("restore_console_loglevel: passing the console_loglevel change back to the old livepatch")
            return
        say("restore_console_loglevel: restoring console_loglevel")
        console.loglevel = console.data[lp.get_state(patch, CONSOLE_LOGLEVEL_STATE)]

    def post_unpatch(m, patch, obj):
        say("post_unpatch_callback: vmlinux")
        if prev():
            say("free_loglevel_state: keeping space to store console_loglevel")
            return
        say("free_loglevel_state: freeing space for the stored console_loglevel")
        console.data.pop(lp.get_state(patch, CONSOLE_LOGLEVEL_STATE))

    cbs = {"pre_patch": pre_patch, "post_patch": post_patch, "pre_unpatch": pre_unpatch,
           "post_unpatch": post_unpatch}
    return make_patch(st.m, name, None, [], replace=True, callbacks={VMLINUX: cbs},
                      states=[(CONSOLE_LOGLEVEL_STATE, version)])


STATE_NAMES = {"MOD_LIVEPATCH": "test_klp_state", "MOD_LIVEPATCH2": "test_klp_state2",
               "MOD_LIVEPATCH3": "test_klp_state3"}


def test_state_system_state_modification():
    st, console = Selftest(), Console()
    patch = state_patch(st, console, "test_klp_state", 1)
    st.load_lp(patch)
    assert console.loglevel == CONSOLE_LOGLEVEL_MOTORMOUTH
    st.disable_lp(patch)
    st.unload_lp(patch)
    assert console.loglevel == CONSOLE_LOGLEVEL_DEFAULT and console.data == {}
    assert st.log() == transcript("""
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        $MOD_LIVEPATCH: pre_patch_callback: vmlinux
        $MOD_LIVEPATCH: allocate_loglevel_state: allocating space to store console_loglevel
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        $MOD_LIVEPATCH: post_patch_callback: vmlinux
        $MOD_LIVEPATCH: fix_console_loglevel: fixing console_loglevel
        livepatch: '$MOD_LIVEPATCH': patching complete
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
        $MOD_LIVEPATCH: pre_unpatch_callback: vmlinux
        $MOD_LIVEPATCH: restore_console_loglevel: restoring console_loglevel
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        $MOD_LIVEPATCH: post_unpatch_callback: vmlinux
        $MOD_LIVEPATCH: free_loglevel_state: freeing space for the stored console_loglevel
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        % rmmod $MOD_LIVEPATCH
        """, **STATE_NAMES)


def test_state_taking_over_system_state_modification():
    st, console = Selftest(), Console()
    p1 = state_patch(st, console, "test_klp_state", 1)
    p2 = state_patch(st, console, "test_klp_state2", 2)
    st.load_lp(p1)
    st.load_lp(p2)
    st.unload_lp(p1)
    st.disable_lp(p2)
    st.unload_lp(p2)
    assert console.loglevel == CONSOLE_LOGLEVEL_DEFAULT
    assert st.log() == transcript("""
        % modprobe $MOD_LIVEPATCH
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        $MOD_LIVEPATCH: pre_patch_callback: vmlinux
        $MOD_LIVEPATCH: allocate_loglevel_state: allocating space to store console_loglevel
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        $MOD_LIVEPATCH: post_patch_callback: vmlinux
        $MOD_LIVEPATCH: fix_console_loglevel: fixing console_loglevel
        livepatch: '$MOD_LIVEPATCH': patching complete
        % modprobe $MOD_LIVEPATCH2
        livepatch: enabling patch '$MOD_LIVEPATCH2'
        livepatch: '$MOD_LIVEPATCH2': initializing patching transition
        $MOD_LIVEPATCH2: pre_patch_callback: vmlinux
        $MOD_LIVEPATCH2: allocate_loglevel_state: space to store console_loglevel already allocated
        livepatch: '$MOD_LIVEPATCH2': starting patching transition
        livepatch: '$MOD_LIVEPATCH2': completing patching transition
        $MOD_LIVEPATCH2: post_patch_callback: vmlinux
        $MOD_LIVEPATCH2: fix_console_loglevel: taking over the console_loglevel change
        livepatch: '$MOD_LIVEPATCH2': patching complete
        % rmmod $MOD_LIVEPATCH
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH2/enabled
        livepatch: '$MOD_LIVEPATCH2': initializing unpatching transition
        $MOD_LIVEPATCH2: pre_unpatch_callback: vmlinux
        $MOD_LIVEPATCH2: restore_console_loglevel: restoring console_loglevel
        livepatch: '$MOD_LIVEPATCH2': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH2': completing unpatching transition
        $MOD_LIVEPATCH2: post_unpatch_callback: vmlinux
        $MOD_LIVEPATCH2: free_loglevel_state: freeing space for the stored console_loglevel
        livepatch: '$MOD_LIVEPATCH2': unpatching complete
        % rmmod $MOD_LIVEPATCH2
        """, **STATE_NAMES)


def test_state_compatible_cumulative_livepatches():
    st, console = Selftest(), Console()
    p2 = state_patch(st, console, "test_klp_state2", 2)
    p3 = state_patch(st, console, "test_klp_state3", 2)
    st.load_lp(p2)
    st.load_lp(p3)
    st.unload_lp(p2)
    st.load_lp(p2)          # the module loaded again: a fresh patch
    st.disable_lp(p2)
    st.unload_lp(p2)
    st.unload_lp(p3)
    assert console.loglevel == CONSOLE_LOGLEVEL_DEFAULT
    assert st.log() == transcript("""
        % modprobe $MOD_LIVEPATCH2
        livepatch: enabling patch '$MOD_LIVEPATCH2'
        livepatch: '$MOD_LIVEPATCH2': initializing patching transition
        $MOD_LIVEPATCH2: pre_patch_callback: vmlinux
        $MOD_LIVEPATCH2: allocate_loglevel_state: allocating space to store console_loglevel
        livepatch: '$MOD_LIVEPATCH2': starting patching transition
        livepatch: '$MOD_LIVEPATCH2': completing patching transition
        $MOD_LIVEPATCH2: post_patch_callback: vmlinux
        $MOD_LIVEPATCH2: fix_console_loglevel: fixing console_loglevel
        livepatch: '$MOD_LIVEPATCH2': patching complete
        % modprobe $MOD_LIVEPATCH3
        livepatch: enabling patch '$MOD_LIVEPATCH3'
        livepatch: '$MOD_LIVEPATCH3': initializing patching transition
        $MOD_LIVEPATCH3: pre_patch_callback: vmlinux
        $MOD_LIVEPATCH3: allocate_loglevel_state: space to store console_loglevel already allocated
        livepatch: '$MOD_LIVEPATCH3': starting patching transition
        livepatch: '$MOD_LIVEPATCH3': completing patching transition
        $MOD_LIVEPATCH3: post_patch_callback: vmlinux
        $MOD_LIVEPATCH3: fix_console_loglevel: taking over the console_loglevel change
        livepatch: '$MOD_LIVEPATCH3': patching complete
        % rmmod $MOD_LIVEPATCH2
        % modprobe $MOD_LIVEPATCH2
        livepatch: enabling patch '$MOD_LIVEPATCH2'
        livepatch: '$MOD_LIVEPATCH2': initializing patching transition
        $MOD_LIVEPATCH2: pre_patch_callback: vmlinux
        $MOD_LIVEPATCH2: allocate_loglevel_state: space to store console_loglevel already allocated
        livepatch: '$MOD_LIVEPATCH2': starting patching transition
        livepatch: '$MOD_LIVEPATCH2': completing patching transition
        $MOD_LIVEPATCH2: post_patch_callback: vmlinux
        $MOD_LIVEPATCH2: fix_console_loglevel: taking over the console_loglevel change
        livepatch: '$MOD_LIVEPATCH2': patching complete
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH2/enabled
        livepatch: '$MOD_LIVEPATCH2': initializing unpatching transition
        $MOD_LIVEPATCH2: pre_unpatch_callback: vmlinux
        $MOD_LIVEPATCH2: restore_console_loglevel: restoring console_loglevel
        livepatch: '$MOD_LIVEPATCH2': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH2': completing unpatching transition
        $MOD_LIVEPATCH2: post_unpatch_callback: vmlinux
        $MOD_LIVEPATCH2: free_loglevel_state: freeing space for the stored console_loglevel
        livepatch: '$MOD_LIVEPATCH2': unpatching complete
        % rmmod $MOD_LIVEPATCH2
        % rmmod $MOD_LIVEPATCH3
        """, **STATE_NAMES)


def test_state_incompatible_cumulative_livepatches():
    st, console = Selftest(), Console()
    p2 = state_patch(st, console, "test_klp_state2", 2)
    p1 = state_patch(st, console, "test_klp_state", 1)
    st.load_lp(p2)
    exc = st.load_failing_lp(p1)
    st.disable_lp(p2)
    st.unload_lp(p2)
    assert isinstance(exc, PatchRefused) and exc.errno == errno.EINVAL
    assert st.log() == transcript("""
        % modprobe $MOD_LIVEPATCH2
        livepatch: enabling patch '$MOD_LIVEPATCH2'
        livepatch: '$MOD_LIVEPATCH2': initializing patching transition
        $MOD_LIVEPATCH2: pre_patch_callback: vmlinux
        $MOD_LIVEPATCH2: allocate_loglevel_state: allocating space to store console_loglevel
        livepatch: '$MOD_LIVEPATCH2': starting patching transition
        livepatch: '$MOD_LIVEPATCH2': completing patching transition
        $MOD_LIVEPATCH2: post_patch_callback: vmlinux
        $MOD_LIVEPATCH2: fix_console_loglevel: fixing console_loglevel
        livepatch: '$MOD_LIVEPATCH2': patching complete
        % modprobe $MOD_LIVEPATCH
        livepatch: Livepatch patch ($MOD_LIVEPATCH) is not compatible with the already installed livepatches.
        modprobe: ERROR: could not insert '$MOD_LIVEPATCH': Invalid argument
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH2/enabled
        livepatch: '$MOD_LIVEPATCH2': initializing unpatching transition
        $MOD_LIVEPATCH2: pre_unpatch_callback: vmlinux
        $MOD_LIVEPATCH2: restore_console_loglevel: restoring console_loglevel
        livepatch: '$MOD_LIVEPATCH2': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH2': completing unpatching transition
        $MOD_LIVEPATCH2: post_unpatch_callback: vmlinux
        $MOD_LIVEPATCH2: free_loglevel_state: freeing space for the stored console_loglevel
        livepatch: '$MOD_LIVEPATCH2': unpatching complete
        % rmmod $MOD_LIVEPATCH2
        """, **STATE_NAMES)


def test_state_a_patch_without_replace_may_leave_a_state_out():
    st, console = Selftest(), Console()
    p2 = state_patch(st, console, "test_klp_state2", 2)
    st.load_lp(p2)
    plain = make_patch(st.m, "plain", None, [])                 # no states, no replace: fine
    st.load_lp(plain)
    older = make_patch(st.m, "older", None, [], states=[(CONSOLE_LOGLEVEL_STATE, 1)])
    st.load_failing_lp(older)                                  # carries the state, but older
    assert [p.name for p in st.lp.installed] == ["test_klp_state2", "plain"]


# ---- test-kprobe.sh: another IPMODIFY user of the function ---------------------------------------------
@pytest.mark.parametrize("post_handler", [True, False])
def test_kprobe_on_the_patched_function(post_handler):
    """test-kprobe.sh: a kprobe with a post handler modifies the IP, so the
    livepatch is refused (-EBUSY); without one they coexist."""
    st = Selftest()
    patch = st.patch(MOD_LIVEPATCH, ["cmdline_proc_show"])
    cmdline = st.m.function("cmdline_proc_show")
    # a kprobe with a post handler needs to change the IP: IPMODIFY
    kprobe = Ops("test_klp_kprobe", ipmodify=post_handler)
    st.cmd(f"insmod test_modules/test_klp_kprobe.ko has_post_handler={str(post_handler).lower()}")
    st.m.spawn(st.lp.ftrace.register(kprobe, [cmdline]))
    st.run(0.01)
    if post_handler:
        exc = st.load_failing_lp(patch, tool="insmod")
        assert isinstance(exc, Busy)
        assert st.lp.ftrace.users[cmdline.id] == [kprobe]
        st.cmd("rmmod test_klp_kprobe")
        st.m.spawn(st.lp.ftrace.unregister(kprobe))
        expected = """
            % insmod test_modules/test_klp_kprobe.ko has_post_handler=true
            % insmod test_modules/$MOD_LIVEPATCH.ko
            livepatch: enabling patch '$MOD_LIVEPATCH'
            livepatch: '$MOD_LIVEPATCH': initializing patching transition
            livepatch: failed to register ftrace handler for function 'cmdline_proc_show' (-16)
            livepatch: failed to patch object 'vmlinux'
            livepatch: failed to enable patch '$MOD_LIVEPATCH'
            livepatch: '$MOD_LIVEPATCH': canceling patching transition, going to unpatch
            livepatch: '$MOD_LIVEPATCH': completing unpatching transition
            livepatch: '$MOD_LIVEPATCH': unpatching complete
            insmod: ERROR: could not insert module test_modules/$MOD_LIVEPATCH.ko: Device or resource busy
            % rmmod test_klp_kprobe
            """
    else:
        st.load_lp(patch, tool="insmod")
        st.grep_live_patched()                 # the probe does not get in the way
        st.cmd("rmmod test_klp_kprobe")
        st.m.spawn(st.lp.ftrace.unregister(kprobe))
        st.disable_lp(patch)
        st.unload_lp(patch)
        expected = """
            % insmod test_modules/test_klp_kprobe.ko has_post_handler=false
            % insmod test_modules/$MOD_LIVEPATCH.ko
            livepatch: enabling patch '$MOD_LIVEPATCH'
            livepatch: '$MOD_LIVEPATCH': initializing patching transition
            livepatch: '$MOD_LIVEPATCH': starting patching transition
            livepatch: '$MOD_LIVEPATCH': completing patching transition
            livepatch: '$MOD_LIVEPATCH': patching complete
            $MOD_LIVEPATCH: this has been live patched
            % rmmod test_klp_kprobe
            % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
            livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
            livepatch: '$MOD_LIVEPATCH': starting unpatching transition
            livepatch: '$MOD_LIVEPATCH': completing unpatching transition
            livepatch: '$MOD_LIVEPATCH': unpatching complete
            % rmmod $MOD_LIVEPATCH
            """
    st.run(0.01)
    assert st.log() == transcript(expected)
    assert st.lp.ftrace.site_bytes(cmdline) == FENTRY_NOP


# ---- test-sysfs.sh (6.1; its replace and stack_order parts where the kernel has them) ---------------
MOD_LIVEPATCH2 = MOD_DEMO
MOD_LIVEPATCH3 = "test_klp_syscall"


def syscall_patch(st: Selftest):
    return st.patch(MOD_LIVEPATCH3, ["__x64_sys_getpid"])


@pytest.mark.parametrize("kernel", ["4.18", "5.14", "6.1", "6.8", "6.11", "6.14", "6.19"])
def test_sysfs(kernel):
    """test-sysfs.sh as the newest script runs it: each part that needs an
    attribute runs only where the kernel has it (does_sysfs_exist)."""
    k = versions.kernel(kernel)
    st = Selftest(kernel=kernel)
    lp1 = st.patch(MOD_LIVEPATCH, ["cmdline_proc_show"])

    # ---- sysfs test
    n = len(st.log())
    st.load_lp(lp1, tool="insmod")
    st.check_sysfs_rights(MOD_LIVEPATCH, "", "drwxr-xr-x")
    st.check_sysfs_rights(MOD_LIVEPATCH, "enabled", "-rw-r--r--")
    st.check_sysfs_value(MOD_LIVEPATCH, "enabled", "1")
    st.check_sysfs_rights(MOD_LIVEPATCH, "force", "--w-------")
    st.check_sysfs_rights(MOD_LIVEPATCH, "transition", "-r--r--r--")
    st.check_sysfs_value(MOD_LIVEPATCH, "transition", "0")
    has_patch = st.does_sysfs_exist(f"{MOD_LIVEPATCH}/vmlinux", "patched")
    if has_patch:
        st.check_sysfs_rights(MOD_LIVEPATCH, "vmlinux/patched", "-r--r--r--")
        st.check_sysfs_value(MOD_LIVEPATCH, "vmlinux/patched", "1")
    has_replace = st.does_sysfs_exist(MOD_LIVEPATCH, "replace")
    if has_replace:
        st.check_sysfs_rights(MOD_LIVEPATCH, "replace", "-r--r--r--")
    has_stack_order = st.does_sysfs_exist(MOD_LIVEPATCH, "stack_order")
    if has_stack_order:
        st.check_sysfs_rights(MOD_LIVEPATCH, "stack_order", "-r--r--r--")
        st.check_sysfs_value(MOD_LIVEPATCH, "stack_order", "1")
    # the attributes each version has, and no other
    assert (has_patch, has_replace, has_stack_order) == (k.version >= (6, 1), k.version >= (6, 11),
                                                         k.version >= (6, 14))
    assert st.does_sysfs_exist(MOD_LIVEPATCH, "signal") == (k.version < (5, 1))
    assert st.does_sysfs_exist(MOD_LIVEPATCH, "vmlinux/cmdline_proc_show,1")
    st.disable_lp(lp1)
    # 5.1 on: gone with the patch; before, the patch stays registered, with
    # its sysfs directory, until its module goes (klp_unregister_patch)
    assert st.does_sysfs_exist(MOD_LIVEPATCH, "") == (k.version < (5, 1))
    if k.version < (5, 1):
        st.check_sysfs_value(MOD_LIVEPATCH, "enabled", "0")
    st.unload_lp(lp1)
    assert not st.does_sysfs_exist(MOD_LIVEPATCH, "")
    assert st.since(n) == transcript("""
        % insmod test_modules/$MOD_LIVEPATCH.ko
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        livepatch: '$MOD_LIVEPATCH': patching complete
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        % rmmod $MOD_LIVEPATCH
        """)

    lp2, _ = demo_patch(st)
    if has_patch:
        # ---- sysfs test object/patched: the file follows the target module
        n = len(st.log())
        target = st.image(MOD_TARGET)
        st.load_lp(lp2, tool="insmod")
        st.check_sysfs_value(MOD_LIVEPATCH2, f"{MOD_TARGET}/patched", "0")
        st.load_mod(target, tool="insmod")
        st.check_sysfs_value(MOD_LIVEPATCH2, f"{MOD_TARGET}/patched", "1")
        st.unload_mod(target)
        st.check_sysfs_value(MOD_LIVEPATCH2, f"{MOD_TARGET}/patched", "0")
        st.disable_lp(lp2)
        st.unload_lp(lp2)
        assert st.since(n) == transcript("""
            % insmod test_modules/$MOD_LIVEPATCH2.ko
            livepatch: enabling patch '$MOD_LIVEPATCH2'
            livepatch: '$MOD_LIVEPATCH2': initializing patching transition
            $MOD_LIVEPATCH2: pre_patch_callback: vmlinux
            livepatch: '$MOD_LIVEPATCH2': starting patching transition
            livepatch: '$MOD_LIVEPATCH2': completing patching transition
            $MOD_LIVEPATCH2: post_patch_callback: vmlinux
            livepatch: '$MOD_LIVEPATCH2': patching complete
            % insmod test_modules/$MOD_TARGET.ko
            livepatch: applying patch '$MOD_LIVEPATCH2' to loading module '$MOD_TARGET'
            $MOD_LIVEPATCH2: pre_patch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
            $MOD_LIVEPATCH2: post_patch_callback: $MOD_TARGET -> [MODULE_STATE_COMING] Full formed, running module_init
            $MOD_TARGET: test_klp_callbacks_mod_init
            % rmmod $MOD_TARGET
            $MOD_TARGET: test_klp_callbacks_mod_exit
            $MOD_LIVEPATCH2: pre_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_GOING] Going away
            livepatch: reverting patch '$MOD_LIVEPATCH2' on unloading module '$MOD_TARGET'
            $MOD_LIVEPATCH2: post_unpatch_callback: $MOD_TARGET -> [MODULE_STATE_GOING] Going away
            % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH2/enabled
            livepatch: '$MOD_LIVEPATCH2': initializing unpatching transition
            $MOD_LIVEPATCH2: pre_unpatch_callback: vmlinux
            livepatch: '$MOD_LIVEPATCH2': starting unpatching transition
            livepatch: '$MOD_LIVEPATCH2': completing unpatching transition
            $MOD_LIVEPATCH2: post_unpatch_callback: vmlinux
            livepatch: '$MOD_LIVEPATCH2': unpatching complete
            % rmmod $MOD_LIVEPATCH2
            """, MOD_LIVEPATCH2=MOD_LIVEPATCH2)

    if has_replace:
        # ---- sysfs test replace enabled / replace disabled
        for replace in (1, 0):
            n = len(st.log())
            patch = st.patch(MOD_REPLACE, ["meminfo_proc_show"], replace=bool(replace)) if replace else patch
            patch.replace = bool(replace)              # the module parameter
            st.load_lp(patch, f" replace={replace}", tool="insmod")
            st.check_sysfs_rights(MOD_REPLACE, "replace", "-r--r--r--")
            st.check_sysfs_value(MOD_REPLACE, "replace", str(replace))
            st.disable_lp(patch)
            st.unload_lp(patch)
            assert st.since(n) == transcript(f"""
                % insmod test_modules/$MOD_REPLACE.ko replace={replace}
                livepatch: enabling patch '$MOD_REPLACE'
                livepatch: '$MOD_REPLACE': initializing patching transition
                livepatch: '$MOD_REPLACE': starting patching transition
                livepatch: '$MOD_REPLACE': completing patching transition
                livepatch: '$MOD_REPLACE': patching complete
                % echo 0 > /sys/kernel/livepatch/$MOD_REPLACE/enabled
                livepatch: '$MOD_REPLACE': initializing unpatching transition
                livepatch: '$MOD_REPLACE': starting unpatching transition
                livepatch: '$MOD_REPLACE': completing unpatching transition
                livepatch: '$MOD_REPLACE': unpatching complete
                % rmmod $MOD_REPLACE
                """)

    if has_stack_order:
        # ---- sysfs test stack_order value: renumbered when the middle one goes
        n = len(st.log())
        lp3 = syscall_patch(st)
        st.load_lp(lp1, tool="insmod")
        st.check_sysfs_value(MOD_LIVEPATCH, "stack_order", "1")
        st.load_lp(lp2, tool="insmod")
        st.check_sysfs_value(MOD_LIVEPATCH2, "stack_order", "2")
        st.load_lp(lp3, tool="insmod")
        st.check_sysfs_value(MOD_LIVEPATCH3, "stack_order", "3")
        st.disable_lp(lp2)
        st.unload_lp(lp2)
        st.check_sysfs_value(MOD_LIVEPATCH, "stack_order", "1")
        st.check_sysfs_value(MOD_LIVEPATCH3, "stack_order", "2")
        st.disable_lp(lp3)
        st.unload_lp(lp3)
        st.disable_lp(lp1)
        st.unload_lp(lp1)
        assert st.since(n) == transcript("""
            % insmod test_modules/$MOD_LIVEPATCH.ko
            livepatch: enabling patch '$MOD_LIVEPATCH'
            livepatch: '$MOD_LIVEPATCH': initializing patching transition
            livepatch: '$MOD_LIVEPATCH': starting patching transition
            livepatch: '$MOD_LIVEPATCH': completing patching transition
            livepatch: '$MOD_LIVEPATCH': patching complete
            % insmod test_modules/$MOD_LIVEPATCH2.ko
            livepatch: enabling patch '$MOD_LIVEPATCH2'
            livepatch: '$MOD_LIVEPATCH2': initializing patching transition
            $MOD_LIVEPATCH2: pre_patch_callback: vmlinux
            livepatch: '$MOD_LIVEPATCH2': starting patching transition
            livepatch: '$MOD_LIVEPATCH2': completing patching transition
            $MOD_LIVEPATCH2: post_patch_callback: vmlinux
            livepatch: '$MOD_LIVEPATCH2': patching complete
            % insmod test_modules/$MOD_LIVEPATCH3.ko
            livepatch: enabling patch '$MOD_LIVEPATCH3'
            livepatch: '$MOD_LIVEPATCH3': initializing patching transition
            livepatch: '$MOD_LIVEPATCH3': starting patching transition
            livepatch: '$MOD_LIVEPATCH3': completing patching transition
            livepatch: '$MOD_LIVEPATCH3': patching complete
            % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH2/enabled
            livepatch: '$MOD_LIVEPATCH2': initializing unpatching transition
            $MOD_LIVEPATCH2: pre_unpatch_callback: vmlinux
            livepatch: '$MOD_LIVEPATCH2': starting unpatching transition
            livepatch: '$MOD_LIVEPATCH2': completing unpatching transition
            $MOD_LIVEPATCH2: post_unpatch_callback: vmlinux
            livepatch: '$MOD_LIVEPATCH2': unpatching complete
            % rmmod $MOD_LIVEPATCH2
            % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH3/enabled
            livepatch: '$MOD_LIVEPATCH3': initializing unpatching transition
            livepatch: '$MOD_LIVEPATCH3': starting unpatching transition
            livepatch: '$MOD_LIVEPATCH3': completing unpatching transition
            livepatch: '$MOD_LIVEPATCH3': unpatching complete
            % rmmod $MOD_LIVEPATCH3
            % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
            livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
            livepatch: '$MOD_LIVEPATCH': starting unpatching transition
            livepatch: '$MOD_LIVEPATCH': completing unpatching transition
            livepatch: '$MOD_LIVEPATCH': unpatching complete
            % rmmod $MOD_LIVEPATCH
            """, MOD_LIVEPATCH2=MOD_LIVEPATCH2, MOD_LIVEPATCH3=MOD_LIVEPATCH3)
    assert not st.lp.sysfs()


# ---- test-syscall.sh ----------------------------------------------------------------------------------------
MOD_SYSCALL = MOD_LIVEPATCH3


@pytest.mark.parametrize("cpus", [2, 4])
def test_syscall_patch_getpid_while_being_heavily_hammered(cpus):
    """test-syscall.sh: one test_klp-call_getpid process per CPU calls
    getpid() in a tight loop; the patch counts down the processes it was
    given as each calls the new getpid(). Every one of them gets there:
    each passes a kernel exit after every call."""
    procs = [(f"test_klp-call_getpid/{i}", "call_getpid", (i,), "user", i) for i in range(min(cpus, 128))]
    st = Selftest(cpus=cpus, tasks=procs)
    getpid_tasks = [t for t in st.m.tasks if t.entry == "call_getpid"]
    lone = {t.name for t in getpid_tasks if st.m.cpus[t.cpu].runqueue == [t]}
    pids = [st.pid(t) for t in getpid_tasks]
    pid_list = ",".join(map(str, pids))
    patch = syscall_patch(st)
    img = patch.image

    def word(symbol, i=0):
        return st.m.engine.view(img.symbols[symbol] + 4 * i, 4)

    def npids() -> int:              # cat /sys/kernel/test_klp_syscall/npids (npids_pending)
        return int.from_bytes(word("npids_pending"), "little")

    # insmod ... klp_pids=$pid_list sets the array and its count, then
    # livepatch_init() keeps the count before klp_enable_patch()
    for i, pid in enumerate(pids):
        word("klp_pids", i)[:] = pid.to_bytes(4, "little")
    word("npids_pending")[:] = word("npids")[:] = len(pids).to_bytes(4, "little")
    n = len(st.log())
    st.load_lp(patch, f" klp_pids={pid_list}", tool="insmod")
    st.run(60, until=lambda: npids() == 0)       # loop_until 'grep -q ^0$ .../npids'
    st.m.printk(f"{MOD_SYSCALL}: Remaining not livepatched processes: {npids()}")
    killed = st.m.engine.view(st.base.symbols["killed"], 8 * len(getpid_tasks))
    for i in range(len(getpid_tasks)):           # kill $pid
        killed[8 * i:8 * i + 8] = (1).to_bytes(8, "little")
    st.run(5, until=lambda: all(t.state is RunState.EXITED for t in getpid_tasks))
    assert all(t.state is RunState.EXITED for t in getpid_tasks)
    st.disable_lp(patch)
    st.unload_lp(patch)
    assert st.since(n) == transcript("""
        % insmod test_modules/$MOD_SYSCALL.ko klp_pids=$pid_list
        livepatch: enabling patch '$MOD_SYSCALL'
        livepatch: '$MOD_SYSCALL': initializing patching transition
        livepatch: '$MOD_SYSCALL': starting patching transition
        livepatch: '$MOD_SYSCALL': completing patching transition
        livepatch: '$MOD_SYSCALL': patching complete
        $MOD_SYSCALL: Remaining not livepatched processes: 0
        % echo 0 > /sys/kernel/livepatch/$MOD_SYSCALL/enabled
        livepatch: '$MOD_SYSCALL': initializing unpatching transition
        livepatch: '$MOD_SYSCALL': starting unpatching transition
        livepatch: '$MOD_SYSCALL': completing unpatching transition
        livepatch: '$MOD_SYSCALL': unpatching complete
        % rmmod $MOD_SYSCALL
        """, MOD_SYSCALL=MOD_SYSCALL, pid_list=pid_list)
    # How they got there: the first attempt cannot check a process that is
    # on its CPU ("running"); it switches at the kernel exit after its
    # getpid(). One the attempt found off its CPU (in user space, its CPU
    # taken by the work or another task) passes the stack check.
    names = {t.name for t in getpid_tasks}
    how = {who: h for _, who, state, h in st.lp.switches if state == PATCHED and who in names}
    first = st.lp.transitions[0].history[0] if st.lp.transitions[0].history else None
    running = {who for who, stack in (first.blockers if first else ()) if stack == ("(running)",)}
    assert set(how) == names
    assert {who for who, h in how.items() if h == "kernel_exit"} == running & names
    assert {who for who, h in how.items() if h == "stack"} == names - running
    # cat and the kworker wake every tick on CPUs 0 and 1: the processes
    # there may be off their CPUs at the attempt (their CPU between two tasks,
    # or running one of those). A process alone on its CPU is on it at every
    # instant, unless the attempt's work took that CPU.
    assert len(running & lone) >= len(lone) - 1


# ---- test-ftrace.sh ------------------------------------------------------------------------------------------
class Tracing:
    """functions.sh's ftrace helpers and the sysctl, on the patch model's ftrace."""

    def __init__(self, st: Selftest):
        self.st = st
        self.tracer = FunctionTracer(st.m, st.lp.ftrace)

    def set_ftrace_enabled(self, value: int, *, can_fail: bool = False) -> None:
        try:
            self.st.m.spawn(self.st.lp.ftrace.set_enabled(bool(value)))
        except Busy:
            assert can_fail, "failed to set kernel.ftrace_enabled"
            self.st.m.printk(f'livepatch: sysctl: setting key "kernel.ftrace_enabled": {os.strerror(errno.EBUSY)}')
            return
        self.st.run(0.01)
        self.st.m.printk(f"livepatch: kernel.ftrace_enabled = {int(self.st.lp.ftrace.enabled)}")

    def cleanup_tracing(self) -> None:
        self.tracer.stop_tracing()
        self.st.m.spawn(self.tracer.stop())
        self.tracer.clear()
        self.st.run(0.01)

    def trace_function(self, name: str) -> None:
        self.cleanup_tracing()
        self.st.m.spawn(self.tracer.start([self.st.m.function(name)]))
        self.st.run(0.01)

    def check_traced_functions(self, *names: str) -> None:
        lines = self.tracer.trace()
        for name in names:       # grep -Fw: a whole word
            assert any(re.search(rf"(?<!\w){re.escape(name)}(?!\w)", line) for line in lines), \
                f"Function ({name}) did not appear in the trace"
        self.cleanup_tracing()


def cat_cmdline(st: Selftest) -> str:
    """cat /proc/cmdline: what the reader's last cmdline_proc_show() said."""
    since = st.m.now
    st.run(0.05)
    seen = [e.value for e in st.m.trace if e.kind == core.EV_OBSERVE and e.key == 1 and e.clock >= since]
    assert seen, "the reader did not run"
    return f"{MOD_LIVEPATCH}: this has been live patched" if seen[-1] == 1 else "BOOT_IMAGE=/vmlinuz"


LIVEPATCHED = f"{MOD_LIVEPATCH}: this has been live patched"
FTRACE_SESSION = """
    % insmod test_modules/$MOD_LIVEPATCH.ko
    livepatch: enabling patch '$MOD_LIVEPATCH'
    livepatch: '$MOD_LIVEPATCH': initializing patching transition
    livepatch: '$MOD_LIVEPATCH': starting patching transition
    livepatch: '$MOD_LIVEPATCH': completing patching transition
    livepatch: '$MOD_LIVEPATCH': patching complete
    livepatch: ok
    % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
    livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
    livepatch: '$MOD_LIVEPATCH': starting unpatching transition
    livepatch: '$MOD_LIVEPATCH': completing unpatching transition
    livepatch: '$MOD_LIVEPATCH': unpatching complete
    % rmmod $MOD_LIVEPATCH
    """


@pytest.mark.parametrize("kernel", ["5.5", "6.19"])
def test_ftrace(kernel):
    """test-ftrace.sh: the ftrace_enabled sysctl against a live patch (5.5+:
    livepatch's ftrace ops is PERMANENT), a tracer on a live patch's new
    function, and a live patch on a traced function."""
    st = Selftest(kernel=kernel)
    tr = Tracing(st)
    patch = st.patch(MOD_LIVEPATCH, ["cmdline_proc_show"])
    cmdline = st.m.function("cmdline_proc_show")

    # ---- livepatch interaction with ftrace_enabled sysctl
    n = len(st.log())
    tr.set_ftrace_enabled(0)
    st.load_failing_lp(patch, tool="insmod")
    tr.set_ftrace_enabled(1)
    st.load_lp(patch, tool="insmod")
    assert cat_cmdline(st) == LIVEPATCHED
    tr.set_ftrace_enabled(0, can_fail=True)    # ftrace could not get disabled
    assert cat_cmdline(st) == LIVEPATCHED and st.lp.ftrace.enabled
    st.disable_lp(patch)
    st.unload_lp(patch)
    assert st.since(n) == transcript("""
        livepatch: kernel.ftrace_enabled = 0
        % insmod test_modules/$MOD_LIVEPATCH.ko
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        livepatch: failed to register ftrace handler for function 'cmdline_proc_show' (-16)
        livepatch: failed to patch object 'vmlinux'
        livepatch: failed to enable patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': canceling patching transition, going to unpatch
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        insmod: ERROR: could not insert module test_modules/$MOD_LIVEPATCH.ko: Device or resource busy
        livepatch: kernel.ftrace_enabled = 1
        % insmod test_modules/$MOD_LIVEPATCH.ko
        livepatch: enabling patch '$MOD_LIVEPATCH'
        livepatch: '$MOD_LIVEPATCH': initializing patching transition
        livepatch: '$MOD_LIVEPATCH': starting patching transition
        livepatch: '$MOD_LIVEPATCH': completing patching transition
        livepatch: '$MOD_LIVEPATCH': patching complete
        livepatch: sysctl: setting key "kernel.ftrace_enabled": Device or resource busy
        % echo 0 > /sys/kernel/livepatch/$MOD_LIVEPATCH/enabled
        livepatch: '$MOD_LIVEPATCH': initializing unpatching transition
        livepatch: '$MOD_LIVEPATCH': starting unpatching transition
        livepatch: '$MOD_LIVEPATCH': completing unpatching transition
        livepatch: '$MOD_LIVEPATCH': unpatching complete
        % rmmod $MOD_LIVEPATCH
        """)
    assert st.lp.ftrace.site_bytes(cmdline) == FENTRY_NOP

    # ---- trace livepatched function and check that the live patch remains in effect
    n = len(st.log())
    st.load_lp(patch, tool="insmod")
    tr.trace_function("livepatch_cmdline_proc_show")
    new = st.m.function("livepatch_cmdline_proc_show")
    if cat_cmdline(st) == LIVEPATCHED:
        st.m.printk("livepatch: ok")
    lines = tr.tracer.trace()
    # the calls the patch sent to the new function, and none to the original
    assert lines and all(line.endswith(": livepatch_cmdline_proc_show") for line in lines)
    assert {line.split()[0] for line in lines} == {"cat-0"}
    tr.check_traced_functions("livepatch_cmdline_proc_show")
    st.disable_lp(patch)
    st.unload_lp(patch)
    assert st.since(n) == transcript(FTRACE_SESSION)
    assert st.lp.ftrace.site_bytes(cmdline) == FENTRY_NOP
    assert st.lp.ftrace.site_bytes(new) == FENTRY_NOP

    # ---- livepatch a traced function and check that the live patch remains in effect
    n = len(st.log())
    tr.trace_function("cmdline_proc_show")
    st.load_lp(patch, tool="insmod")
    # both ops on the one site: the tracer's records, livepatch's redirects
    assert {o.name for o in st.lp.ftrace.users[cmdline.id]} == {"function", "livepatch:cmdline_proc_show"}
    if cat_cmdline(st) == LIVEPATCHED:
        st.m.printk("livepatch: ok")
    lines = tr.tracer.trace()
    assert lines and all(line.endswith(": cmdline_proc_show") for line in lines)
    tr.check_traced_functions("cmdline_proc_show")
    assert st.lp.ftrace.site_bytes(cmdline) != FENTRY_NOP       # the patch still uses it
    st.disable_lp(patch)
    st.unload_lp(patch)
    assert st.since(n) == transcript(FTRACE_SESSION)
    assert st.lp.ftrace.site_bytes(cmdline) == FENTRY_NOP


@pytest.mark.parametrize("kernel", ["4.18", "5.4"])
def test_ftrace_enabled_off_silently_stops_a_patch_before_5_5(kernel):
    """Before 5.5 livepatch's ops was not PERMANENT: with ftrace_enabled off
    the patch loads and completes but is not in effect (no handler is
    called); turning it off under a loaded patch sends every call back to
    the original. The reason test-ftrace.sh exists."""
    st = Selftest(kernel=kernel)
    tr = Tracing(st)
    patch = st.patch(MOD_LIVEPATCH, ["cmdline_proc_show"])
    cmdline = st.m.function("cmdline_proc_show")
    tr.set_ftrace_enabled(0)
    st.load_lp(patch, tool="insmod")
    assert patch.enabled and st.lp.ftrace.site_bytes(cmdline) == FENTRY_NOP
    assert cat_cmdline(st) != LIVEPATCHED
    tr.set_ftrace_enabled(1)
    assert cat_cmdline(st) == LIVEPATCHED
    tr.set_ftrace_enabled(0, can_fail=True)
    assert not st.lp.ftrace.enabled and cat_cmdline(st) != LIVEPATCHED
    assert st.log()[-1] == "livepatch: kernel.ftrace_enabled = 0"


def test_the_tracer_records_only_while_ftrace_calls_it():
    """A tracer records the calls made while it is registered, ftrace is
    enabled and tracing is on: none before, none while ftrace_enabled is
    off (its site is a NOP again), none after tracing_on goes to 0."""
    st = Selftest()
    tr = Tracing(st)
    meminfo = st.m.function("meminfo_proc_show")
    st.run(0.2)
    assert tr.tracer.trace() == []
    tr.trace_function("meminfo_proc_show")
    t0 = st.m.now
    st.run(0.1)
    first = tr.tracer.trace()
    assert len(first) >= 5
    tr.set_ftrace_enabled(0)
    assert st.lp.ftrace.site_bytes(meminfo) == FENTRY_NOP
    st.run(0.1)
    assert tr.tracer.trace() == first
    tr.set_ftrace_enabled(1)
    st.run(0.1)
    second = tr.tracer.trace()
    assert len(second) >= 2 * len(first) - 2
    tr.tracer.stop_tracing()
    st.run(0.1)
    assert tr.tracer.trace() == second
    # one line per call of the reader's (one a tick), in order
    calls = [e.clock for e in st.m.trace if e.kind == core.EV_ENTRY and e.a == meminfo.id and e.clock >= t0]
    assert len(calls) > len(second)
    tr.cleanup_tracing()
    assert st.lp.ftrace.site_bytes(meminfo) == FENTRY_NOP and tr.tracer.trace() == []


# ---- the consistency model itself ------------------------------------------------------------------------
BASE = """
volatile long zero;
__attribute__((noinline)) long slow(long t) { lpemu_sleep(t); return 1 + zero; }
__attribute__((noinline)) long stuck(void) { lpemu_sleep(-1); return 1 + zero; }
__attribute__((noinline)) long quick(void) { return 1 + zero; }
__attribute__((noinline)) void spin(long n) { for (long i = 0; i < n; i++) __asm__ volatile(""); }
long sleeper(long t) { lpemu_observe(1, slow(t)); return 0; }
long stuck_kthread(long x) { for (;;) lpemu_observe(2, stuck()); }
long worker(long x) { lpemu_observe(3, quick()); lpemu_sleep(1); return 0; }
long spinner(long n) { for (;;) spin(n); }
long yielder(long n) { for (;;) { spin(n); lpemu_yield(); } }
long hammer(long n) { for (long i = 0; i < n; i++) lpemu_observe(4, quick()); return 0; }
__attribute__((noinline)) long deep(long n)
{
    if (n == 0)
        return lpemu_sleep(-1) + zero;
    long r = deep(n - 1);
    __asm__ volatile("" : "+r"(r));     /* no tail recursion: one frame per level */
    return r + 1;
}
long deep_kthread(long n) { for (;;) lpemu_observe(5, deep(n)); }
"""
PATCH = """
extern volatile long zero;
__attribute__((noinline)) long slow(long t) { lpemu_sleep(t); return 2 + zero; }
__attribute__((noinline)) long stuck(void) { lpemu_sleep(-1); return 2 + zero; }
__attribute__((noinline)) long quick(void) { return 2 + zero; }
"""
PATCH3 = """
extern volatile long zero;
__attribute__((noinline)) long slow(long t) { lpemu_sleep(t); return 3 + zero; }
__attribute__((noinline)) long quick(void) { return 3 + zero; }
"""


def machine(compile_c, tasks, *, cpus=2, kernel=None, **kw):
    base = compile_c(BASE)
    m = Machine(base, cpus=cpus, quantum=400, **kw)
    for name, entry, args, kind in tasks:
        m.add_task(name, entry, args, kind=kind)
    lp = Livepatch(m, kernel=kernel)
    return m, lp, base


def load_patch(compile_c, m, base, name, functions, source=PATCH, **kw):
    img = compile_c(source, name=name, base=m.module_base(), link_against=base, keep=set(functions))
    m.load(img)
    return make_patch(m, name, img, functions, **kw)


def observed(m, key, since=0):
    return [(e.task, e.value) for e in m.trace if e.kind == core.EV_OBSERVE and e.key == key and e.clock >= since]


def lines(m):
    return [text for _, text in m.log]


def test_a_task_sleeping_in_a_patched_function_blocks_until_it_leaves(compile_c):
    m, lp, base = machine(compile_c, [("sleeper", "sleeper", (300,), "user"),
                                      ("worker", "worker", (0,), "user")])
    patch = load_patch(compile_c, m, base, "p", ["slow", "quick"])
    m.at(m.seconds(0.1), lambda: lp.enable(patch))
    m.run(until=m.seconds(2.5))
    t = lp.transitions[0]
    assert t.result == "pending" and t.attempts == 3
    (name, stack), = t.blockers
    assert name == "sleeper" and stack[-1] == "(sleeping on function slow)"
    assert stack[0].startswith("slow+") and stack[1].startswith("sleeper+")
    tasks = {x["name"]: x for x in lp.status()["tasks"]}
    assert tasks["sleeper"] == {"name": "sleeper", "tid": 0, "patch_state": UNPATCHED, "pending": True}
    assert tasks["worker"]["patch_state"] == PATCHED and not tasks["worker"]["pending"]
    # the worker already runs the new quick(); the sleeper is still in the old slow()
    assert observed(m, 3)[-1] == (1, 2)
    m.run(until=m.seconds(6.5))
    assert t.result == "completed" and m.seconds(3) < t.completed_at < m.seconds(4.2)
    # it left slow() at its wake-up at 3 s and switched on its way to user space
    assert [(who, how) for _, who, _, how in lp.switches if who == "sleeper"] == [("sleeper", "kernel_exit")]
    values = [v for _, v in observed(m, 1)]
    assert values[0] == 1 and values[-1] == 2


def test_force_finishes_a_transition_that_a_kthread_blocks_forever(compile_c):
    m, lp, base = machine(compile_c, [("stuck", "stuck_kthread", (), "kthread"),
                                      ("worker", "worker", (0,), "user")])
    patch = load_patch(compile_c, m, base, "p", ["stuck", "quick"])
    start = m.seconds(0.1)
    m.at(start, lambda: lp.enable(patch))
    m.run(until=m.seconds(33))
    t = lp.transitions[0]
    assert t.result == "pending" and t.attempts == 33
    # fake signals from the 16th attempt (15 s), again at the 31st; the
    # kthread wakes, goes round its loop and sleeps in stuck() again
    assert lines(m).count("livepatch: signaling remaining tasks") == 1
    stuck = m.tasks[0]
    wakes = [e.clock for e in m.trace if e.kind == EV_WAKE and e.task == stuck.tid]
    assert len(wakes) == 2 and [round((w - start) / m.seconds(1)) for w in wakes] == [15, 30]
    lp.force()
    assert stuck.patch_state == PATCHED and not stuck.pending
    m.run(until=m.seconds(35))
    assert t.result == "completed"
    assert lines(m)[-3:] == ["livepatch: forcing remaining tasks to the patched state",
                             "livepatch: 'p': completing patching transition",
                             "livepatch: 'p': patching complete"]
    assert not patch.forced          # nothing is being removed: the patch stays removable
    # Now make the kthread sleep in the new stuck(), and disable: it blocks
    # the unpatching; forcing that marks the patch forced for good.
    m.wake(stuck, early=True)
    m.run(until=m.seconds(36))
    lp.disable(patch)
    m.run(until=m.seconds(39))
    assert lp.transitions[-1].result == "pending"
    assert lp.transitions[-1].blockers[0][1][-1] == "(sleeping on function stuck)"
    lp.force()
    m.run(until=m.seconds(41))
    assert lp.transitions[-1].result == "completed" and patch.forced
    with pytest.raises(Busy, match="forced"):
        lp.remove(patch)


@pytest.mark.parametrize("unwinder", ["orc", "fp"])
def test_a_preempted_task_is_unreliable_with_frame_pointers(compile_c, unwinder):
    m, lp, base = machine(compile_c, [("spinner", "spinner", (100_000,), "kthread"),
                                      ("yielder", "yielder", (50,), "kthread"),
                                      ("worker", "worker", (0,), "user")],
                          cpus=1, preempt="full", unwinder=unwinder, lockup_ticks=10**9,
                          kernel="6.8")      # a kernel whose cond_resched() switches
    patch = load_patch(compile_c, m, base, "p", ["quick"])
    m.at(m.seconds(0.1), lambda: lp.enable(patch))
    m.run(until=m.seconds(5))
    t = lp.transitions[0]
    how = {who: how for _, who, _, how in lp.switches}
    if unwinder == "orc":
        # ORC vouches for a frame at any instruction: the first attempt switches it
        assert t.result == "completed" and how["spinner"] == "stack"
        return
    # fp: preempted mid-function, its frame cannot be trusted; nothing else
    # would switch this kthread (it never sleeps, yields or leaves the kernel)
    assert t.result == "pending" and t.attempts == 5
    assert [name for name, _ in t.blockers] == ["spinner"]
    assert t.blockers[0][1][-1] == "(unreliable stack: preempted task: frame pointers cannot vouch for its frame)"
    # the kthread at cond_resched() checks its own stack, not preempted there
    assert how["yielder"] == "cond_resched" and how["worker"] in ("stack", "kernel_exit")
    lp.force()
    m.run(until=m.seconds(6.5))
    assert t.result == "completed"


def test_many_user_tasks_hammering_a_patched_function_switch_at_kernel_exit(compile_c):
    tasks = [(f"user{i}", "hammer", (40,), "user") for i in range(12)]
    m, lp, base = machine(compile_c, tasks, cpus=3, unwinder="fp")
    patch = load_patch(compile_c, m, base, "p", ["quick"])
    quick = m.function("quick")
    m.watch(quick)
    m.at(m.seconds(0.05), lambda: lp.enable(patch))
    m.run(until=m.seconds(3))
    t = lp.transitions[0]
    assert t.result == "completed" and t.latency < m.seconds(1.1)
    users = {f"user{i}" for i in range(12)}
    # a task switches at its kernel exit, or, waiting off its CPU after one
    # (voluntary preemption: it left the CPU there), by the stack check
    how = {who: h for _, who, _, h in lp.switches if who in users}
    assert set(how) == users and set(how.values()) <= {"kernel_exit", "stack"}
    assert "kernel_exit" in how.values()
    # per task: every call before its switch ran the old quick(), every call after it the new one
    switched = {e.task: e.clock for e in m.trace if e.kind == EV_PATCH_STATE and e.a == PATCHED and e.task >= 0}
    for task in m.tasks:
        calls = [(e.clock, e.version) for e in m.trace
                 if e.kind == core.EV_ENTRY and e.task == task.tid and e.func == quick.id]
        assert {v for when, v in calls if when < switched[task.tid]} == {0}
        assert {v for when, v in calls if when > switched[task.tid]} == {patch.index}
    assert {v for _, v in observed(m, 4, since=t.completed_at)} == {2}


def test_stacked_patches_check_the_previous_patch_and_fall_back_to_it(compile_c):
    m, lp, base = machine(compile_c, [("early", "sleeper", (3000,), "user"),
                                      ("caller", "sleeper", (1,), "user"),
                                      ("late", "sleeper", (250,), "user")])
    p1 = load_patch(compile_c, m, base, "p1", ["slow"])
    p2 = load_patch(compile_c, m, base, "p2", ["slow"], source=PATCH3)
    m.run(until=m.seconds(0.02))
    lp.enable(p1)
    m.run(until=m.seconds(1.1))
    # 'early' and 'late' sleep in the original slow(): they block p1
    assert [name for name, _ in lp.transitions[0].blockers] == ["early", "late"]
    lp.force()
    m.run(until=m.seconds(3.5))
    assert lp.transitions[0].result == "completed"
    # 'late' called slow() again at 2.5 s: it now sleeps in p1's slow(), which
    # is what p2 checks; 'early', still in the original, no longer matters
    lp.enable(p2)
    m.run(until=m.seconds(4.6))
    t2 = lp.transitions[1]
    # one attempt so far: the retry comes at a whole second, 4.5 s rounding
    # up to 5 s (round_jiffies_relative)
    assert t2.result == "pending" and t2.attempts == 1 and "late" in [name for name, _ in t2.blockers]
    p1_slow = m.function("p1:slow")
    _, entries = m.stack(m.tasks[2])
    assert any(p1_slow.start <= a < p1_slow.end for a in entries)
    m.run(until=m.seconds(6))
    assert t2.result == "completed"
    assert {v for task, v in observed(m, 1, since=t2.completed_at) if task == 1} == {3}
    # disabling p2 falls back to p1's version, not to the original
    lp.disable(p2)
    m.run(until=m.seconds(9))
    t3 = lp.transitions[2]
    assert t3.result == "completed" and t3.completed_at > m.seconds(7.5)    # 'late' left p2's slow()
    m.run(until=m.seconds(9.5))
    assert {v for task, v in observed(m, 1, since=t3.completed_at) if task == 1} == {2}
    assert [p.name for p in lp.installed] == ["p1"]


def test_disable_during_unpatching_reverses_to_patching(compile_c):
    m, lp, base = machine(compile_c, [("sleeper", "sleeper", (100,), "user"),
                                      ("worker", "worker", (0,), "user")])
    patch = load_patch(compile_c, m, base, "p", ["slow", "quick"])
    m.run(until=m.seconds(0.05))
    lp.enable(patch)
    m.run(until=m.seconds(2.05))       # done; the sleeper is in the new slow() again
    assert lp.transitions[0].result == "completed"
    n = len(m.log)
    lp.disable(patch)
    m.run(until=m.seconds(2.3))
    with pytest.raises(PatchRefused):
        lp.disable(patch)               # already being disabled
    lp.enable(patch)                    # echo 1 > enabled: reverse
    m.run(until=m.seconds(4))
    assert lines(m)[n:] == [
        "livepatch: 'p': initializing unpatching transition",
        "livepatch: 'p': starting unpatching transition",
        "livepatch: 'p': reversing transition from unpatching to patching",
        "livepatch: 'p': starting patching transition",
        "livepatch: 'p': completing patching transition",
        "livepatch: 'p': patching complete",
    ]
    assert [t.result for t in lp.transitions] == ["completed", "reversed", "completed"]
    assert patch.enabled and lp.installed == [patch]


def test_only_one_transition_at_a_time(compile_c):
    m, lp, base = machine(compile_c, [("sleeper", "sleeper", (500,), "user")])
    p1 = load_patch(compile_c, m, base, "p1", ["slow"])
    p2 = load_patch(compile_c, m, base, "p2", ["quick"], source=PATCH3)
    p3 = load_patch(compile_c, m, base, "p3", ["quick"])
    m.run(until=m.seconds(0.05))
    lp.enable(p2)
    m.run(until=m.seconds(1.5))
    assert p2.enabled and lp.transition_patch is None
    lp.enable(p1)                          # the sleeper holds it up
    with pytest.raises(Busy, match="ftrace sites"):
        lp.disable(p2)                     # klp_mutex: slow()'s site is being enabled
    m.run(until=m.seconds(1.6))
    before = list(m.log)
    with pytest.raises(Busy):
        lp.enable(p3)
    with pytest.raises(Busy):
        lp.disable(p2)
    with pytest.raises(PatchRefused):
        lp.force(p2)                       # p2 is not the patch in transition
    with pytest.raises(PatchRefused):
        lp.enable(p2)                      # already enabled
    assert m.log == before                 # all refused before any message
    status = lp.status()
    assert [(p["name"], p["enabled"], p["transition"], p["stack_order"]) for p in status["patches"]] == \
        [("p2", True, False, 1), ("p1", True, True, 2)]
    assert status["patches"][1]["objects"]["vmlinux"]["patched"]
    assert status["transition"]["patch"] == "p1" and status["transition"]["target"] == "patching"


def test_force_and_signal_with_no_transition_say_so(compile_c):
    """Writing `force` (or `signal`, before 5.1) when nothing is in
    transition is refused with -EINVAL; the message says what is wrong
    (a generated scenario's force after its transition had completed read
    "no patch is not in transition")."""
    m, lp, base = machine(compile_c, [("worker", "worker", (0,), "user")], kernel="5.0")
    patch = lp.add(load_patch(compile_c, m, base, "p", ["quick"]))
    for write in (lp.force, lp.signal):
        with pytest.raises(PatchRefused, match=r"^no patch is in transition \(-EINVAL"):
            write()
        with pytest.raises(PatchRefused, match=r"^patch 'p' is not in transition \(-EINVAL"):
            write(patch)


def test_a_stack_of_max_stack_entries_is_unreliable(compile_c):
    # 3 entries besides deep()'s frames: the RIP, deep_kthread, the task's entry frame
    m, lp, base = machine(compile_c, [("deep96", "deep_kthread", (96,), "kthread"),
                                      ("deep97", "deep_kthread", (97,), "kthread"),
                                      ("worker", "worker", (0,), "user")])
    patch = load_patch(compile_c, m, base, "p", ["quick"])
    m.run(until=m.seconds(0.05))
    assert [len(m.stack(t, max_entries=1000)[1]) for t in m.tasks[:2]] == [99, 100]
    lp.enable(patch)
    m.run(until=m.seconds(3))
    t = lp.transitions[0]
    assert t.result == "pending"
    (name, stack), = t.blockers
    assert name == "deep97" and stack[-1] == "(unreliable stack: stack deeper than the walk allows)"
    assert [(who, how) for _, who, _, how in lp.switches if who.startswith("deep")] == [("deep96", "stack")]


@pytest.mark.parametrize("kernel", ["4.18", "5.0", "5.1", "6.19"])
def test_fake_signals_are_periodic_from_5_1_and_asked_for_before(compile_c, kernel):
    """Before 5.1 a transition sent no fake signal by itself: the
    administrator wrote `signal`. From 5.1 it sends them from the 15th
    retry on, and the attribute is gone."""
    m, lp, base = machine(compile_c, [("sleeper", "sleeper", (4000,), "user")], kernel=kernel)
    patch = load_patch(compile_c, m, base, "p", ["slow"])
    m.run(until=m.seconds(0.05))
    lp.enable(patch)
    m.run(until=m.seconds(18))
    t = lp.transitions[0]
    sleeper = m.tasks[0]
    periodic = versions.kernel(kernel).periodic_signals
    assert ("livepatch: signaling remaining tasks" in lines(m)) == periodic
    assert (t.result == "completed") == periodic        # the signal ended its sleep: kernel exit
    assert ("p/signal" in lp.sysfs()) == (not periodic)
    if periodic:
        assert [h for _, who, _, h in lp.switches if who == "sleeper"] == ["kernel_exit"]
        with pytest.raises(PatchRefused, match="EACCES"):
            lp.signal()
        return
    assert sleeper.state is RunState.SLEEPING and t.attempts >= 17
    with pytest.raises(PatchRefused, match="EINVAL"):
        lp.signal(make_patch(m, "other", None, []))         # not the patch in transition
    n = len(lines(m))
    lp.signal()                                               # echo 1 > /sys/kernel/livepatch/p/signal
    assert lines(m)[n:] == ["livepatch: signaling remaining tasks"]
    m.run(until=m.seconds(20))
    assert t.result == "completed"
    assert [h for _, who, _, h in lp.switches if who == "sleeper"] == ["kernel_exit"]


# ---- what kernels before 5.1 and 5.5 did not have ---------------------------------------

@pytest.mark.parametrize("kernel", ["4.18", "5.0", "5.1", "6.19"])
def test_stacking_order_is_enforced_before_5_1(compile_c, kernel):
    """Before 5.1, __klp_disable_patch() and __klp_enable_patch() "enforce
    stacking" over klp_patches, which keeps registered patches that were
    disabled: only the last enabled patch can be disabled, only the first
    disabled one enabled (-EBUSY). The atomic replace series (5.1) removed
    both rules: any patch may be disabled, and a disabled one is gone."""
    old = versions.kernel(kernel).version < (5, 1)
    m, lp, base = machine(compile_c, [("worker", "worker", (0,), "user")], kernel=kernel)
    p1 = load_patch(compile_c, m, base, "p1", ["quick"])
    p2 = load_patch(compile_c, m, base, "p2", ["quick"], source=PATCH3)
    m.run(until=m.seconds(0.02))

    def settle(_):
        # the retry after the first attempt comes 0.75 to 1.75 s later (round_jiffies_relative)
        m.run(until=m.now + m.seconds(2))
        assert lp.transitions[-1].result == "completed"

    lp.enable(p1)
    settle(m)
    lp.enable(p2)
    settle(m)
    if old:
        with pytest.raises(Busy, match="only the last enabled patch can be disabled"):
            lp.disable(p1)
        assert [p.name for p in lp.installed] == ["p1", "p2"]
        lp.disable(p2)
        settle(m)
        lp.disable(p1)
        settle(m)
        # both still registered (their modules are loaded): p2 comes only after p1
        with pytest.raises(Busy, match="only the first disabled patch can be enabled"):
            lp.enable(p2)
        lp.enable(p1)
        settle(m)
        lp.enable(p2)
        settle(m)
        assert [p.name for p in lp.installed] == ["p1", "p2"]
    else:
        lp.disable(p1)                 # the older one: allowed, p2's quick() stays on top
        settle(m)
        assert [p.name for p in lp.installed] == ["p2"]
        since = m.now
        m.run(until=m.now + m.seconds(0.5))
        assert {v for _, v in observed(m, 3, since=since)} == {3}     # PATCH3's quick()


@pytest.mark.parametrize("kernel,kw,refused", [
    ("4.18", {"replace": True}, "atomic replace"), ("5.0", {"replace": True}, "atomic replace"),
    ("5.1", {"replace": True}, None), ("5.4", {"states": [(1, 1)]}, "system states"),
    ("5.5", {"states": [(1, 1)]}, None)])
def test_a_patch_cannot_ask_for_what_its_kernel_lacks(compile_c, kernel, kw, refused):
    """struct klp_patch got .replace in 5.1 and .states in 5.5: a patch
    for an older kernel cannot have them. Refused (-EINVAL) before
    anything is logged or patched."""
    m, lp, base = machine(compile_c, [("worker", "worker", (0,), "user")], kernel=kernel)
    p = load_patch(compile_c, m, base, "p", ["quick"], **kw)
    m.run(until=m.seconds(0.02))
    if refused:
        with pytest.raises(PatchRefused, match=refused) as exc:
            lp.enable(p)
        assert exc.value.errno == errno.EINVAL
        assert not lp.transitions and not lines(m) and not lp.installed
    else:
        lp.enable(p)
        m.run(until=m.seconds(1.5))
        assert lp.transitions[-1].result == "completed"


@pytest.mark.parametrize("kernel,older_removable", [("5.4", False), ("5.17", False), ("5.18", True),
                                                    ("6.19", True)])
def test_force_blocks_the_removal_of_every_patch_before_5_18(compile_c, kernel, older_removable):
    """Until 5.17 klp_force_transition() set `forced` on every patch of
    klp_patches, so no patch module could be removed after a force; 5.18
    ("Don't block removal of patches that are safe to unload") marks only
    the patches being removed. Forcing p2's patching transition leaves p2
    forced nowhere, and p1 (untouched) removable from 5.18 on."""
    m, lp, base = machine(compile_c, [("sleeper", "sleeper", (3000,), "user"),
                                      ("worker", "worker", (0,), "user")], kernel=kernel)
    p1 = load_patch(compile_c, m, base, "p1", ["quick"])
    p2 = load_patch(compile_c, m, base, "p2", ["slow"], source=PATCH3)
    m.run(until=m.seconds(0.02))
    lp.enable(p1)
    m.run(until=m.seconds(1.5))
    lp.enable(p2)                      # the sleeper sleeps in the original slow(): blocked
    m.run(until=m.seconds(3))
    assert lp.transitions[-1].result == "pending"
    lp.force()
    m.run(until=m.seconds(4.5))
    assert lp.transitions[-1].result == "completed"
    lp.disable(p1)
    m.run(until=m.seconds(6.5))          # its retry: 4.5 s + 1 s rounds up to 6 s
    assert lp.transitions[-1].result == "completed"
    assert p1.forced == (not older_removable) and p2.forced == (not older_removable)
    if older_removable:
        lp.remove(p1)
    else:
        with pytest.raises(Busy, match="forced"):
            lp.remove(p1)


@pytest.mark.parametrize("kernel,forced", [("5.17", None), ("5.18", None), ("5.17", True), ("5.18", True)])
def test_the_patches_an_atomic_replace_took_over_are_disabled_and_removable(compile_c, kernel, forced):
    """klp_complete_transition() disables and unpatches the replaced p1
    (klp_unpatch_replaced_patches) and klp_free_replaced_patches_async()
    frees it: it is no longer enabled (a write to its `enabled` finds no
    patch: -EINVAL here) and its module can go (klp_free_patch_finish's
    module_put). A force of the replace marks it forced for good: from
    5.18 only the replaced patches (klp_force_transition: the ones being
    removed), before every patch, the replace p2 too."""
    m, lp, base = machine(compile_c, [("sleeper", "sleeper", (3000,), "user"),
                                      ("worker", "worker", (0,), "user")], kernel=kernel)
    p1 = load_patch(compile_c, m, base, "p1", ["quick"])
    p2 = load_patch(compile_c, m, base, "p2", ["slow"], source=PATCH3, replace=True)
    m.run(until=m.seconds(0.02))
    lp.enable(p1)
    m.run(until=m.seconds(1.5))
    assert lp.transitions[-1].result == "completed"
    lp.enable(p2)
    m.run(until=m.seconds(3))
    if forced:
        assert lp.transitions[-1].result == "pending"     # the sleeper is in the original slow()
        lp.force()
    m.run(until=m.seconds(40))
    assert lp.transitions[-1].result == "completed"
    assert lp.installed == [p2] and not p1.enabled and p2.enabled
    with pytest.raises(PatchRefused) as exc:
        lp.disable(p1)
    assert exc.value.errno == errno.EINVAL
    assert p1.forced == bool(forced) and p2.forced == bool(forced and kernel == "5.17")
    with pytest.raises(Busy, match="enabled"):
        lp.remove(p2)
    if forced:
        with pytest.raises(Busy, match="forced"):
            lp.remove(p1)
    else:
        lp.remove(p1)


def test_a_reversal_starts_the_fake_signals_count_again(compile_c):
    """klp_reverse_transition() ends in klp_start_transition(), which sets
    klp_signals_cnt = 0: the reversed transition sends its first fake
    signals 15 retries after the reversal ("signaling remaining tasks"
    again), not 15 after the last round of the patching transition. The
    stuck kthread blocks the patching for good (each wake-up puts it back
    to sleep in the old stuck()); the first signals (~16 s) wake the
    sleeper, which switches at its kernel exit and sleeps 30 s in the new
    slow(); the disable at 20 s reverses the transition, which waits for
    the sleeper until the signals 15 retries later wake it again."""
    m, lp, base = machine(compile_c, [("stuckk", "stuck_kthread", (0,), "kthread"),
                                      ("sleeper", "sleeper", (3000,), "user")])
    p = load_patch(compile_c, m, base, "p", ["stuck", "slow"])
    m.run(until=m.seconds(0.02))
    lp.enable(p)
    m.run(until=m.seconds(20))
    assert lp.transitions[-1].result == "pending"
    first = [t for t, text in m.log if text == "livepatch: signaling remaining tasks"]
    assert len(first) == 1 and m.seconds(15) < first[0] < m.seconds(17.5)
    assert any(name == "sleeper" and state == 1 for _, name, state, _ in lp.switches)   # PATCHED
    lp.disable(p)                          # reversed: the sleeper is in the new slow() until ~46 s
    m.run(until=m.seconds(45))
    signals = [t for t, text in m.log if text == "livepatch: signaling remaining tasks"]
    assert len(signals) == 2
    assert signals[1] > m.seconds(20) + m.seconds(14.5)        # 15 retries after the reversal
    assert lp.transitions[-1].result == "completed" and lp.transitions[-1].completed_at > signals[1]


@pytest.mark.parametrize("kernel", ["5.14", "6.19"])
def test_sysfs_during_a_transition(compile_c, kernel):
    """core.c's attributes while a transition is blocked: `transition` 1
    (patch == klp_transition_patch), `enabled` already the target
    (__klp_enable_patch sets it right after klp_start_transition,
    __klp_disable_patch clears it), each object's `patched` 1 until
    klp_complete_transition unpatches it; `force` of another patch is
    -EINVAL (force_store: patch != klp_transition_patch)."""
    m, lp, base = machine(compile_c, [("stuck", "stuck_kthread", (), "kthread"),
                                      ("worker", "worker", (0,), "user")], kernel=kernel)
    patch = load_patch(compile_c, m, base, "p", ["stuck", "quick"])
    other = make_patch(m, "other", None, [])
    has_patched = versions.kernel(kernel).sysfs_object_patched

    def value(rel):
        return lp.sysfs()[f"p/{rel}"]["value"]

    m.at(m.seconds(0.1), lambda: lp.enable(patch))
    m.run(until=m.seconds(2.5))
    assert lp.transitions[0].result == "pending"
    assert (value("transition"), value("enabled")) == ("1", "1")
    assert lp.sysfs()["p/force"] == {"mode": "--w-------", "value": None}
    if has_patched:
        assert value("vmlinux/patched") == "1"
    with pytest.raises(PatchRefused, match="EINVAL"):
        lp.force(other)
    lp.force(patch)
    m.run(until=m.seconds(4))
    assert lp.transitions[0].result == "completed"
    assert (value("transition"), value("enabled")) == ("0", "1")
    with pytest.raises(PatchRefused, match="EINVAL"):
        lp.force(patch)                     # no longer in transition
    m.wake(m.tasks[0], early=True)          # now asleep in the new stuck()
    m.run(until=m.seconds(4.5))
    lp.disable(patch)
    m.run(until=m.seconds(7))
    assert lp.transitions[-1].result == "pending"
    assert (value("transition"), value("enabled")) == ("1", "0")
    if has_patched:
        assert value("vmlinux/patched") == "1"
    lp.force(patch)
    m.run(until=m.seconds(9))
    assert lp.transitions[-1].result == "completed" and "p" not in lp.sysfs()


@pytest.mark.parametrize("hz", [100, 250, 1000])
def test_retries_come_on_whole_seconds_of_jiffies(compile_c, hz):
    """klp_try_complete_transition queues its retry with
    round_jiffies_relative(HZ): jiffies + HZ rounded to a whole second (down
    when less than HZ/4 past one, else up), skewed by 3 jiffies per number
    of the CPU that queues it. Jiffies start at INITIAL_JIFFIES, (unsigned
    int)(-300 * HZ), so a whole second of jiffies is `phase` jiffies after
    one of the boot. The first retry of an enable 0.1 s (then 2.6 s) after
    a whole second comes at the next one (the one after), then every
    second."""
    phase = -(2**32 - 300 * hz) % hz          # jiffies from a whole second of boot to one of jiffies
    for start, first in [(0.1, 1), (2.6, 4)]:
        m, lp, base = machine(compile_c, [("stuck", "stuck_kthread", (), "kthread"),
                                          ("worker", "worker", (0,), "user")], hz=hz)
        jiffy = m.tick
        patch = load_patch(compile_c, m, base, "p", ["stuck"])
        m.at(m.seconds(start) + phase * jiffy, lambda: lp.enable(patch))
        m.run(until=m.seconds(first + 4.5) + phase * jiffy)
        times = [a.clock for a in lp.transitions[0].history]
        assert times[0] - m.seconds(start) - phase * jiffy < jiffy
        retries = times[1:]
        assert len(retries) == 5
        for k, when in enumerate(retries):
            second = m.seconds(first + k) + phase * jiffy
            # at the whole second, less the CPU's skew (3 jiffies a CPU), plus the work's own cost
            assert second - 3 * (len(m.cpus) - 1) * jiffy <= when < second + jiffy, (k, when, second)
