"""kpatch's stop_machine model, and Ksplice's conservative variant.

kpatch (kmod/core/core.c): the ftrace ops are registered first, with an
empty function hash, so the handler finds nothing and the old code still
runs; the switch itself is the insertion into that hash, done inside
stop_machine after the activeness safety check: every task's stack (at most
64 entries; a full trace counts as failure) and its interrupted RIP are
compared with the ranges of the functions being replaced (the original when
patching, the active version when repatching or unpatching, the replaced
patches' functions too with replace). A hit fails the whole operation with
-EBUSY; the kpatch tool retries up to 5 times, 2 s apart. Functions marked
force are not checked. The handler sends the task to new_func + 5, past the
new function's own fentry NOP.

The pause is measured: the virtual time during which every CPU was stopped
(the check costs `cost_per_task` instructions per task plus
`cost_per_frame` per frame walked). Reaching the stop costs time too: a CPU
stops at its next scheduling point unless the kernel is fully preemptible.

Ksplice: up to 5 stop_machine attempts 1 s apart; its check scans every word
of every kernel stack and each saved IP (a scan, not an unwind) against the
replaced functions. Ksplice wrote a jmp over the old function's first bytes;
here it shares the ftrace redirect, which changes nothing the check sees.
"""
from __future__ import annotations

from emu.engine import unwind
from emu.machine.machine import Delay, Release
from emu.machine.machine import StopMachine as _Stop
from emu.kernel.patch import Patch
from emu.machine.task import PATCHED, UNPATCHED, RunState
from emu.machine.machine import EV_TRANSITION
from emu.models.base import T_SWITCH, Model, walk_ranges


class StopMachine(Model):
    name = "stop_machine"
    skip_fentry = True
    retries = 5
    retry_delay = 2.0          # seconds between attempts (the kpatch tool's)
    max_entries = 63           # kpatch's MAX_STACK_TRACE_DEPTH 64: a full trace fails
    prefix = "kpatch: "

    def __init__(self, machine, *, retries: int | None = None, retry_delay: float | None = None,
                 cost_per_task: int = 200, cost_per_frame: int = 20, **kw):
        super().__init__(machine, **kw)
        if retries is not None:
            self.retries = retries
        if retry_delay is not None:
            self.retry_delay = retry_delay
        self.cost_per_task = cost_per_task
        self.cost_per_frame = cost_per_frame
        self.forcing = False

    # ---- operations ----------------------------------------------------------
    def enable(self, patch: Patch) -> None:
        self.add(patch)
        self.busy_check(patch)
        funcs = self.loaded_funcs(patch)
        updates = [self.ensure_ops(f) for f in funcs]       # Busy on an IPMODIFY conflict
        t = self.record(patch, PATCHED)
        self.m.spawn(self._run(t, patch, PATCHED, funcs, updates))

    def disable(self, patch: Patch) -> None:
        self.busy_check(patch)
        t = self.record(patch, UNPATCHED)
        self.m.spawn(self._run(t, patch, UNPATCHED, self.loaded_funcs(patch), []))

    def force(self, patch: Patch | None = None) -> None:
        """Skip the activeness check at the next attempt (as if every function
        were marked force)."""
        self.forcing = True

    # ---- the check --------------------------------------------------------------
    def ranges(self, patch: Patch, target: int, funcs):
        out = []
        for f in funcs:
            if f.force:
                continue
            # patching: the original, or the version being repatched
            lo, hi = self.replaced_range(f) if target == PATCHED else self.own_range(f)
            out.append((lo, hi, f.name))
        if patch.replace and target == PATCHED:
            for other in self.patches:
                if other is not patch and other.enabled:
                    for g in self.loaded_funcs(other):
                        if not g.nop:
                            out.append((g.new.start, g.new.end, g.name))
        return out

    def check_task(self, task, ranges):
        """(ok, what hit or why, entries walked, frames of work) for one task."""
        ok, what, entries = walk_ranges(self.m, task, ranges, max_entries=self.max_entries, reliable=False)
        return ok, what, entries, len(entries)

    def _run(self, t, patch: Patch, target: int, funcs, updates):
        m = self.m
        t.started_at = m.now
        for update in updates:
            yield from update
        while True:
            t.attempts += 1
            yield _Stop()
            stopped = m.now
            blocker = None
            cost = 0
            if not self.forcing:
                ranges = self.ranges(patch, target, funcs)
                for task in m.tasks:
                    if task.state is RunState.EXITED:
                        continue
                    ok, what, entries, work = self.check_task(task, ranges)
                    cost += self.cost_per_task + self.cost_per_frame * work
                    if not ok:
                        blocker = (task, what, entries)
                        break
            yield Delay(cost)
            if blocker is None:
                m.emit(EV_TRANSITION, -1, T_SWITCH, patch.index, int(self.forcing))
                self._switch(patch, target, funcs)
                yield Release()
                t.pauses.append((stopped, m.now))
                if target == UNPATCHED:
                    for f in funcs:
                        yield from self.release_ops(f)
                self.forcing = False
                t.blockers = []         # earlier attempts' blockers are history now
                self.printk(f"{self.prefix}{'loaded' if target == PATCHED else 'unloaded'} "
                            f"patch module '{patch.name}'")
                self.finish(t, "completed")
                return
            task, what, entries = blocker
            self._report(t, task, what, entries)
            yield Release()
            t.pauses.append((stopped, m.now))
            if t.attempts >= self.retries:
                if target == PATCHED:
                    for f in funcs:
                        yield from self.release_ops(f)
                self.printk(f"{self.prefix}failed to {'load' if target == PATCHED else 'unload'} "
                            f"patch module '{patch.name}' after {t.attempts} attempts (-16)")
                self.finish(t, "failed", "-EBUSY")
                return
            yield Delay(m.seconds(self.retry_delay))

    def _report(self, t, task, what, entries) -> None:
        stack = self.describe_stack(task, entries)
        t.block(self.m.now, [(task.name, stack)])
        if what in unwind.REASONS.values():
            self.printk(f"{self.prefix}more than {self.max_entries + 1} trace entries!"
                        if "entries" in what else f"{self.prefix}stack of {task.name} unusable: {what}")
        else:
            self.printk(f"{self.prefix}activeness safety check failed for {what}")
        self.printk(f"{self.prefix}  task {task.name} (tid {task.tid}):")
        for line in stack:
            self.printk(f"{self.prefix}    {line}")

    def _switch(self, patch: Patch, target: int, funcs) -> None:
        """Inside stop_machine: insert into (or remove from) the handler's hash."""
        if target == PATCHED:
            for f in funcs:
                self.stacks.setdefault(f.old.id, []).insert(0, (patch, f))
                f.patched = True
                self.sync(f)
            if patch.replace:
                for other in self.patches:
                    if other is not patch and other.enabled:
                        for g in self.loaded_funcs(other):
                            stack = self.stacks.get(g.old.id, [])
                            stack[:] = [(p, x) for p, x in stack if x is not g]
                            g.patched = False
                            self.sync(g)
                        other.enabled = False
        else:
            for f in funcs:
                stack = self.stacks.get(f.old.id, [])
                stack[:] = [(p, x) for p, x in stack if x is not f]
                f.patched = False
                self.sync(f)
        for obj in patch.objects:
            obj.patched = target == PATCHED
        patch.enabled = target == PATCHED


class Ksplice(StopMachine):
    name = "ksplice"
    skip_fentry = False
    retries = 5
    retry_delay = 1.0
    prefix = "ksplice: "

    def check_task(self, task, ranges):
        """Every saved IP and every stack word, not an unwind (a word scan
        costs an eighth of a frame walk)."""
        rip, rsp, hit = self.m.scan_stack(task, [(lo, hi) for lo, hi, _ in ranges])
        work = (task.stack_hi - rsp) // 64
        for lo, hi, name in ranges:
            if lo <= rip < hi:
                return False, name, [rip], work
            if hit is not None and lo <= hit[1] < hi:
                return False, name, [rip, hit[1]], work
        return True, None, [rip], work
