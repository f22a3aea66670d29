"""The per-task transition of upstream livepatch (kernel/livepatch/transition.c).

A transition moves every task, one at a time, from the initial patch state
to the target one. The ftrace handler sends a task to the new or the old
code by its own patch_state while the patch's functions are in transition,
so each task sees one consistent set of functions. A task switches
- when the transition work finds its stack reliable and free of the
  functions being replaced (try_complete: at once, then about every second,
  on whole seconds: retry_delay);
- when it returns to user space (update_patch_state at kernel exit), with
  no stack check: it holds no kernel frame then;
- an idle task, in its idle loop;
- any task at cond_resched(), after a check of its own stack (this is how
  CPU-bound kthreads get patched).
A task running on a CPU cannot be checked; from the 15th retry on, every 15
retries, the tasks still pending get a fake signal (user tasks) or a
wake-up (kthreads) (from 5.1; before, only when the administrator writes
the patch's `signal` attribute). When every task has switched, the transition completes.

The interface, as transition.h's (lp is the core.Livepatch model):
    init(lp, patch, target)            klp_init_transition
    cancel(lp)                         klp_cancel_transition
    start(lp)                          klp_start_transition
    work(lp, gen, updates)             text, start, then try_complete every retry period
    try_complete(lp)                   klp_try_complete_transition (a generator)
    reverse(lp)                        klp_reverse_transition
    force(lp)                          klp_force_transition
    send_signals(lp)                   klp_send_signals
    update_patch_state(lp, task, how)  klp_update_patch_state
    cond_resched(lp, task)             __klp_sched_try_switch
    needs_check(lp, task)              whether klp_try_switch_task walks task's stack
    check_stack(lp, task)              klp_check_stack of one task
The transition's state lives on lp, as the kernel's globals: transition_patch
(klp_transition_patch), target (klp_target_state), signals_cnt, gen (bumped
by every init: a work of an older transition stops) and switches. What
completion frees and unpatches (the replaced patches, nops, the patch
itself) is core.py's; the callbacks it runs are callbacks.py's.
"""
from __future__ import annotations

import errno

from emu.engine import unwind
from emu.kernel.patch import Patch, PatchFunc
from emu.machine.machine import Delay, Sync
from emu.machine.task import PATCHED, UNDEFINED, UNPATCHED, Kind, RunState, Task
from emu.kernel import callbacks
from emu.models.livepatch.patch import unpatch_objects

MAX_STACK_ENTRIES = 100      # a reliable trace of this many entries counts as failure
SIGNALS_TIMEOUT = 15         # retries between two rounds of fake signals


def verb(target: int) -> str:
    """The kernel's word for a transition to target."""
    return "patching" if target == PATCHED else "unpatching"


# ---- init, start, reverse, cancel, complete ---------------------------------------------
def init(lp, patch: Patch, target: int) -> None:
    """klp_init_transition: every task gets the initial state, every
    function of patch is in transition; a Transition record starts."""
    lp.gen += 1
    lp.transition_patch, lp.target = patch, target
    lp.printk(f"{lp.prefix}'{patch.name}': initializing {verb(target)} transition")
    for task in live_tasks(lp):
        lp.m.set_patch_state(task, UNPATCHED if target == PATCHED else PATCHED)
        task.pending = False
    for _, f in patch.funcs():
        f.transition = True
        if f.patched:
            lp.sync(f)
    lp.record(patch, target)


def start(lp) -> None:
    """klp_start_transition: every task not yet in the target state is pending."""
    patch = lp.transition_patch
    lp.printk(f"{lp.prefix}'{patch.name}': starting {verb(lp.target)} transition")
    for task in live_tasks(lp):
        if task.patch_state != lp.target:
            task.pending = True
    lp.signals_cnt = 0
    lp.transition.started_at = lp.transition.checked_at = lp.m.now


def reverse(lp) -> None:
    """klp_reverse_transition: flip the target, clear every pending flag
    and start again (no callbacks)."""
    patch = lp.transition_patch
    lp.printk(f"{lp.prefix}'{patch.name}': reversing transition from "
              f"{'patching to unpatching' if lp.target == PATCHED else 'unpatching to patching'}")
    for task in live_tasks(lp):
        task.pending = False
    patch.enabled = not patch.enabled
    lp.target = UNPATCHED if lp.target == PATCHED else PATCHED
    lp.finish(lp.transition, "reversed")
    lp.record(patch, lp.target)
    start(lp)


def cancel(lp) -> None:
    """klp_cancel_transition: an enable failed before its start."""
    patch = lp.transition_patch
    lp.printk(f"{lp.prefix}'{patch.name}': canceling patching transition, going to unpatch")
    lp.target = UNPATCHED
    for _ in _complete(lp, run_text=False, result="cancelled"):
        raise RuntimeError("a cancelled transition has no text to change")


def work(lp, gen: int, updates):
    """The work an enable or a disable spawns: the text first (the patch's
    ftrace sites), then start and try to complete now and every retry
    period, until done or a newer transition took over."""
    yield from lp.change_text(updates)
    if gen != lp.gen:
        return
    start(lp)
    lp.transition_patch.enabled = lp.target == PATCHED
    while True:
        while lp.locked:
            yield Sync()
        if gen != lp.gen or lp.transition_patch is None:
            return
        done = yield from try_complete(lp)
        if done:
            return
        yield Delay(retry_delay(lp))


def retry_delay(lp) -> int:
    """The instructions until the next attempt: klp_try_complete_transition
    queues its delayed work with round_jiffies_relative(HZ)
    (kernel/time/timer.c round_jiffies_common), so a retry comes on a whole
    second of jiffies, not a second after this attempt: jiffies + HZ is
    rounded down when less than HZ/4 past a whole second, else up, both
    skewed by 3 jiffies per number of the CPU that queues it (this step's),
    and kept as it was if the rounding lands in the past. Jiffies start at
    INITIAL_JIFFIES (include/linux/jiffies.h: (unsigned int)(-300 * HZ), on
    a 64-bit kernel), so the whole seconds are not the boot's: at 100 Hz
    they fall 4 jiffies after it. The period is the model's retry_period
    (one second, HZ)."""
    m = lp.m
    hz = m.hz
    initial = 2**32 - 300 * hz
    now = initial + m.now // m.tick             # jiffies
    skew = 3 * (m.works.cpu or 0)
    j = original = now + max(1, round(lp.retry_period * hz))
    j += skew
    rem = j % hz
    j = j - rem if rem < hz // 4 else j - rem + hz
    j -= skew
    if j <= now:
        j = original
    return (j - initial) * m.tick - m.now


def try_complete(lp):
    """klp_try_complete_transition (a generator: completing may change
    text). Returns whether the transition completed. The stacks of the tasks
    that need a check are checked in one call (emu.models.stacks) when the
    first of them comes up; a switch changes no stack."""
    t = lp.transition
    t.attempts += 1
    blockers = []
    checked = None
    for i, task in enumerate(lp.m.tasks):
        if task.state is RunState.EXITED:
            continue
        if needs_check(lp, task):
            if checked is None:
                checked = _check_stacks(lp)
            ok, why, entries = _try_switch_checked(lp, task, checked, i)
        else:
            ok, why, entries = _try_switch_task(lp, task)
        if not ok:
            blockers.append((task.name, lp.describe_stack(task, entries) + [f"({why})"]))
    for cpu in lp.m.cpus:
        ok, why, entries = _try_switch_task(lp, cpu.idle)
        if not ok:
            blockers.append((cpu.idle.name, [f"({why})"]))
    if blockers:
        t.block(lp.m.now, blockers)
        # 5.1 on: fake signals from the 15th retry on, every 15 retries;
        # before, only when the administrator writes `signal` (core.py)
        if lp.kernel.periodic_signals and lp.signals_cnt and lp.signals_cnt % SIGNALS_TIMEOUT == 0:
            send_signals(lp)
        lp.signals_cnt += 1
        return False
    t.blockers = []
    yield from _complete(lp)
    return True


def _complete(lp, *, run_text: bool = True, result: str = "completed"):
    """klp_complete_transition (a generator: unregistering the last patch
    of a function turns its site back into a NOP)."""
    patch, target = lp.transition_patch, lp.target
    lp.printk(f"{lp.prefix}'{patch.name}': completing {verb(target)} transition")
    updates = []
    if patch.replace and target == PATCHED:
        updates += lp.unpatch_replaced(patch)
        updates += lp.discard_nops(patch)
    if target == UNPATCHED:
        updates += unpatch_objects(lp, patch)
    if run_text:
        yield from lp.change_text(updates)
    for _, f in patch.funcs():
        f.transition = False
        if f.patched:
            lp.sync(f)
    for task in lp.all_tasks():
        task.pending = False
        lp.m.set_patch_state(task, UNDEFINED, "complete")
    for obj in patch.objects:
        if not lp.is_loaded(obj):
            continue
        if target == PATCHED:
            callbacks.post_patch(lp.m, patch, obj)
        else:
            callbacks.post_unpatch(lp.m, patch, obj)
    lp.printk(f"{lp.prefix}'{patch.name}': {verb(target)} complete")
    lp.transition_patch, lp.target = None, UNDEFINED
    lp.finish(lp.transition, result, None if result == "completed" else "canceled before it started")
    if not patch.enabled:
        lp.free_patch(patch)
    elif patch.replace:
        lp.free_replaced(patch)


# ---- switching tasks --------------------------------------------------------------------
def _try_switch_task(lp, task: Task):
    """klp_try_switch_task -> (switched, why not, stack entries)."""
    if task.patch_state == lp.target:
        return True, None, ()
    if task.is_idle:
        if lp.running(task):
            # The idle task is what its CPU runs: it switches in its idle loop.
            return False, "idle task is running", ()
    elif lp.running(task):
        return False, "running", ()
    err, why, entries = check_stack(lp, task)
    if err:
        return False, why, entries
    _switch(lp, task, "stack")
    return True, None, entries


def needs_check(lp, task: Task) -> bool:
    """Whether _try_switch_task would walk this (not idle) task's stack."""
    return task.patch_state != lp.target and not lp.running(task) and lp.m.started


def _check_stacks(lp):
    """klp_check_stack of every task at once (emu.models.stacks) ->
    (results, indices of the tasks that failed)."""
    results = lp.stack_checks.check(tuple((lo, hi) for lo, hi, _ in _checked(lp)), kind=lp.m.unwinder,
                                    max_entries=MAX_STACK_ENTRIES - 1, reliable=True)
    return results, set(results.failing()) if results.failed else ()


def _try_switch_checked(lp, task: Task, checked, i: int):
    """_try_switch_task of a task that needs_check, from its result in
    checked (from _check_stacks)."""
    results, failing = checked
    if i in failing:
        r = results[i]
        _, why = _verdict(lp, r.code, r.entries)
        return False, why, r.entries
    _switch(lp, task, "stack")
    return True, None, ()


def check_stack(lp, task: Task):
    """klp_check_stack of one task -> (0 or -errno, why, entries)."""
    if lp.m.started:
        code, entries = lp.m.stack(task, max_entries=MAX_STACK_ENTRIES - 1)
    else:
        code, entries = unwind.WALK_OK, ()      # not running yet: no kernel frame at all
    err, why = _verdict(lp, code, entries)
    return err, why, entries


def _verdict(lp, code: int, entries):
    """klp_check_stack's verdict on a walk -> (0 or -errno, why): -EINVAL
    for an unreliable stack, -EADDRINUSE when a checked function is on it."""
    if code != unwind.WALK_OK:
        return -errno.EINVAL, f"unreliable stack: {unwind.REASONS.get(code, code)}"
    for lo, hi, name in _checked(lp):
        if any(lo <= a < hi for a in entries):
            return -errno.EADDRINUSE, f"sleeping on function {name}"
    return 0, None


def _checked(lp) -> list[tuple[int, int, str]]:
    """The code no task may be in to switch, in the kernel's order: for
    every patched function of every patched object of the patch, when
    unpatching its new code (a nop's is the original); when patching, the
    code it replaces: the next older patch's version, or the original."""
    return [(*_checked_range(lp, f), f.name) for obj in lp.transition_patch.objects if obj.patched
            for f in obj.funcs if f.patched]


def _checked_range(lp, f: PatchFunc) -> tuple[int, int]:
    return lp.own_range(f) if lp.target == UNPATCHED else lp.replaced_range(f)


def _switch(lp, task: Task, how: str) -> None:
    task.pending = False
    lp.m.set_patch_state(task, lp.target, how)
    lp.switches.append((lp.m.now, task.name, lp.target, how))


def update_patch_state(lp, task: Task, how: str) -> None:
    """klp_update_patch_state: a pending task takes the target state."""
    if task.pending and lp.transition_patch is not None:
        _switch(lp, task, how)


def cond_resched(lp, task: Task, how: str = "cond_resched") -> None:
    """__klp_sched_try_switch: the task checks its own stack (no -EBUSY).
    Where it is called depends on the kernel version (core.py)."""
    if not task.pending or lp.transition_patch is None or task.patch_state == lp.target:
        return
    if check_stack(lp, task)[0] == 0:
        _switch(lp, task, how)


def force(lp) -> None:
    """klp_force_transition: every task takes the target state now, checked
    or not (the next retry completes the transition)."""
    lp.printk(f"{lp.prefix}forcing remaining tasks to the patched state")
    for task in live_tasks(lp):
        update_patch_state(lp, task, "force")


def send_signals(lp) -> None:
    """klp_send_signals: a fake signal to pending user tasks, a wake-up to
    pending kthreads asleep interruptibly. It says so the first time a
    transition sends them periodically (5.1 on), or at each request of the
    administrator's (before 5.1)."""
    if lp.signals_cnt == SIGNALS_TIMEOUT or not lp.kernel.periodic_signals:
        lp.printk(f"{lp.prefix}signaling remaining tasks")
    for task in lp.m.tasks:
        if not task.pending or task.state is RunState.EXITED:
            continue
        if task.kind is Kind.KTHREAD:
            if task.state is RunState.SLEEPING and task.interruptible:
                lp.m.wake(task, early=True)
        else:
            lp.m.signal(task)


def live_tasks(lp) -> list[Task]:
    """The tasks a transition acts on: every task not exited, and the idle tasks."""
    return [t for t in lp.m.tasks if t.state is not RunState.EXITED] + [c.idle for c in lp.m.cpus]
