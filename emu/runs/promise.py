"""The promise oracle: did the model that ran keep its own promise?

An independent check of a finished run, read from the trace alone (entries,
exits, patch-state events with their route, transition events, the
scheduler's sched in/out, stop_machine) and the patches' definitions (which
functions each carries, its index, force flags), never from the model's own
bookkeeping. A breach is the emulator's error, never a finding about the
patch: the run's answer about the patch cannot be trusted.

What the trace gives: each task's call stack of traced functions at every
instant (an entry pushes, its EV_RETURN or EV_UNWOUND pops; a kernel exit
empties it), each task's patch state and how it got it (task.ROUTES), which
task each CPU runs (EV_SCHED_IN, EV_SCHED_OUT), whether every CPU is
stopped (EV_STOP_MACHINE), each transition's start and end (EV_TRANSITION
with patch index and target) and stop_machine's switch instant (T_SWITCH).

The promises (rule names in brackets):
- every model [left-behind]: outside transitions, every entry of a patched
  function runs the version the completed transitions give it (the newest
  enabled patch that carries it, else the original): enable then disable
  leaves every task on the original, a completed transition leaves no task
  behind. stop_machine and Ksplice change versions at their switch instant,
  so the rule holds for them during the transition too;
- livepatch and kGraft [early]: during a transition of patch P, a task
  runs P's version of a function only in the patched state (after its own
  switch when patching, before it when unpatching);
- livepatch [route]: a task switches by the stack check, a kernel exit
  (user tasks; a fake signal ends in one), its idle loop (idle tasks),
  cond_resched, or force; [stack]: at a stack-check, cond_resched or kernel
  exit switch no function the transition checks is on its stack (patching:
  of each function P carries, and with atomic replace of each function a
  nop covers, the version just below P's entry, the newest other enabled
  patch's or the original; unpatching: P's version, and with atomic
  replace (a reversed one) the original of each function a nop covers:
  a nop's new_func is the original);
  [running]: a task switched by another CPU's stack check was not on a CPU
  (idle tasks: not followed, see below);
- kGraft [route]: kernel exit, safe point (kthreads), idle loop or force;
  [universe]: every unit (a system call; a kthread's stretch between safe
  points) runs each patch's functions in one universe, unless a force
  migrated the task inside it (a forced unmark gives that up);
- stop_machine and Ksplice [stopped]: at the switch instant every CPU is
  stopped; [stack]: no task has a checked function (patching: the active
  version of each of P's unforced ones, the version just below P as
  above, and with replace every unforced version of the replaced
  patches; unpatching: P's version of each of its unforced ones, and
  under a model whose class says unpatch_checks_active (kpatch) the
  active version too, a newer patch's when one is on top) on its stack,
  unless the switch was forced;
- immediate [together]: a patch's sites change together: once a task ran
  the new version of one of its functions, no task runs the old version of
  any of them.

What it cannot see: frames of functions that are not traced (the Runner
traces every patched function from the start); the end of an activation
that left by a tail call to an untraced function (its exit comes when the
callee returns), so frames of functions with a tail call are not judged by
the stack rules; a call whose return the full return stack left untraced
(that task's stack checks are skipped until its stack is empty again);
the idle tasks' occupancy of their CPU; which routes a given kernel
version allows (every route of the newest kernel is allowed). And what
kpatch's own check cannot see: with frame pointers, the innermost two
frames of a task preempted before its innermost frame was set up (kpatch
follows the frame-pointer chain); a switch with one of those on the stack
is kpatch's, and shows as what it does to the units.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from emu.engine import core
from emu.errors import EmuError
from emu.machine.machine import (EV_EXIT, EV_KERNEL_EXIT, EV_PATCH_STATE, EV_SAFE_POINT, EV_STOP_MACHINE,
                                 EV_TRANSITION, Machine)
from emu.machine.task import PATCHED, ROUTES, UNDEFINED, UNPATCHED
from emu.models import model_class
from emu.models.base import T_COMPLETE, T_START, T_SWITCH
from emu.kernel.patch import Patch

#: the routes by which each model may switch a task (besides a transition's own init and completion)
ALLOWED_ROUTES = {
    "livepatch": {"stack", "kernel_exit", "idle", "cond_resched", "freezable_sleep", "force", "signal"},
    "kgraft": {"kernel_exit", "safe_point", "idle", "force"},
}
#: routes after which the task's stack must hold no checked function
CHECKED_ROUTES = {"stack", "cond_resched", "freezable_sleep", "kernel_exit"}
STOP_MODELS = ("stop_machine", "ksplice")


@dataclass(frozen=True)
class Breach:
    clock: int
    rule: str
    task: str
    detail: str

    def __str__(self):
        return f"t={self.clock} [{self.rule}] {self.task}: {self.detail}"

    def to_json(self) -> dict:
        return {"clock": self.clock, "rule": self.rule, "task": self.task, "detail": self.detail}


#: What a breach is, as the C core (csrc/promise.c) and scan() report it:
#: a record (clock, code, task, fid, version, x, y), described by describe()
#: (the codes are csrc/emu.h's EMU_PB_*, which says what x and y name).
_P = core.PROMISE
B_TOGETHER, B_LEFT_BEHIND, B_EARLY, B_UNIVERSE = _P["PB_TOGETHER"], _P["PB_LEFT_BEHIND"], _P["PB_EARLY"], \
    _P["PB_UNIVERSE"]
B_STOPPED, B_SWITCHED_WITH, B_NO_SWITCHES, B_ROUTE = _P["PB_STOPPED"], _P["PB_SWITCHED_WITH"], \
    _P["PB_NO_SWITCHES"], _P["PB_ROUTE"]
B_KIND, B_STACK, B_RUNNING = _P["PB_KIND"], _P["PB_STACK"], _P["PB_RUNNING"]
#: model -> its code for the C core
MODEL_CODES = {"immediate": _P["PM_IMMEDIATE"], "stop_machine": _P["PM_STOP"], "ksplice": _P["PM_STOP"],
               "livepatch": _P["PM_LIVEPATCH"], "kgraft": _P["PM_KGRAFT"]}
#: the flag of each route property the C core reads, and the routes that have it
_ROUTE_FLAGS = (("PR_INIT", ("init", "complete")), ("PR_FORCE", ("force",)), ("PR_IDLE", ("idle",)),
                ("PR_KERNEL_EXIT", ("kernel_exit",)), ("PR_SAFE_POINT", ("safe_point",)),
                ("PR_STACK", ("stack",)), ("PR_CHECKED", tuple(CHECKED_ROUTES)))


def check(machine: Machine, patches: list[Patch], model: str, *, fast: bool = True,
          cache: dict | None = None, unlinked=frozenset()) -> list[Breach]:
    """Every breach of model's promise in machine's finished run, in trace
    order: found by the C core (csrc/promise.c), or with fast=False by
    scan(), its pure-Python twin. cache is where check keeps the C core's
    tables for the next run: a dict whoever judges many runs keeps for
    patches made alike (one per patch.definition(patches)). unlinked:
    (patch index, module name) pairs whose functions that patch does not
    carry although bound: the model's word that its system left the
    object unlinked when the module came (Model.unlinked; kpatch links one
    patch per load), which the trace cannot show."""
    o = _Oracle(machine, patches, model, unlinked)
    found = o.scan_fast(cache) if fast else o.scan(machine.trace.records())
    return [o.describe(r) for r in found]


class _Oracle:
    def __init__(self, m: Machine, patches: list[Patch], model: str, unlinked=frozenset()):
        self.m, self.model = m, model
        self.unlinked = frozenset(unlinked)
        self.patches = patches
        self.by_index = {p.index: p for p in patches}
        self.found: list[tuple] = []
        self._tails: dict[tuple[int, int], bool] = {}
        self.forced: set[int] = set()         # kGraft: tasks a force migrated inside their current unit
        # the model's word on which versions its unpatching checks: the
        # active one besides the patch's own (kpatch), or the own alone
        self.unpatch_active = _declared(model, "unpatch_checks_active")

    @cached_property
    def carries(self) -> dict[int, dict[int, bool]]:
        """Patch index -> {function id: force flag} of the functions it carries
        (nops left out); the flag only under a model whose check skips such
        a function (its class says honours_force: kpatch's
        KPATCH_FORCE_UNSAFE)."""
        flags = _declared(self.model, "honours_force")
        return {p.index: {f.old.id: flags and bool(f.force) for o, f in p.funcs()
                          if f.old is not None and not f.nop and (p.index, o.name) not in self.unlinked}
                for p in self.patches}

    @cached_property
    def patched(self) -> set[int]:
        return set().union(*self.carries.values()) if self.carries else set()

    def name(self, tid: int) -> str:
        tasks = self.m.tasks
        if 0 <= tid < len(tasks):
            return tasks[tid].name
        return f"swapper/{-1 - tid}" if tid < 0 else f"task {tid}"

    def fname(self, fid: int) -> str:
        return self.m.functions[fid].name if 0 <= fid < len(self.m.functions) else f"#{fid}"

    def kind(self, tid: int) -> str:
        tasks = self.m.tasks
        return tasks[tid].kind.value if 0 <= tid < len(tasks) else "idle"

    def breach(self, clock, code, tid, fid=0, version=0, x=0, y=0):
        self.found.append((clock, code, tid, fid, version, x, y))

    def describe(self, r) -> Breach:
        """The Breach a record (clock, code, task, fid, version, x, y) stands for."""
        clock, code, tid, fid, version, x, y = r
        f, p, model = self.fname(fid), self._pname(x), self.model
        rule, detail = {
            B_TOGETHER: ("together", lambda: f"{f} v{version} ran after another function of patch {p} ran "
                                             f"its new version"),
            B_LEFT_BEHIND: ("left-behind", lambda: f"{f} ran v{version}, the enabled patches give v{x}"),
            B_EARLY: ("early", lambda: f"{f} ran v{version} of patch {p} in the {_STATES.get(y, y)} state"),
            B_UNIVERSE: ("universe", lambda: f"{f} v{version} ran in a unit that ran the other universe of {p}"),
            B_STOPPED: ("stopped", lambda: f"patch {p} switched while CPUs ran"),
            B_SWITCHED_WITH: ("stack", lambda: f"patch {p} switched with {f} v{version} on the stack"),
            B_NO_SWITCHES: ("route", lambda: f"switched by {_route(x)}: {model} switches no task"),
            B_ROUTE: ("route", lambda: f"switched by {_route(x)}, which {model} does not allow"),
            B_KIND: ("route", lambda: f"a {self.kind(tid)} task switched by {_route(x)}"),
            B_STACK: ("stack", lambda: f"switched by {_route(x)} with {f} v{version} on its stack"),
            B_RUNNING: ("running", lambda: f"switched by another CPU's stack check while running on cpu {x}"),
        }[code]
        return Breach(clock, rule, self.name(tid), detail())

    def expected(self, live: list[int], fid: int) -> int:
        """The version fid resolves to with live (patch indexes, oldest first) enabled."""
        for idx in reversed(live):
            if fid in self.carries.get(idx, {}):
                return idx
        return 0

    def tail_caller(self, fid: int, version: int) -> bool:
        """Whether the version of fid that ran can leave by a tail call (a
        jmp out of its own code): its frame may then belong to an untraced
        callee, and the trace cannot tell when its own activation ended."""
        key = (fid, version)
        if key not in self._tails:
            lo = hi = None
            p = self.by_index.get(version)
            if version == 0 or p is None:
                fn = self.m.functions[fid]
                lo, hi = fn.start, fn.end
            else:
                f = next((f for _, f in p.funcs() if f.old is not None and f.old.id == fid and f.new), None)
                if f is not None:
                    lo, hi = f.new.start, f.new.end
            try:
                code = bytes(self.m.engine.view(lo, hi - lo)) if lo is not None else None
            except EmuError:
                code = None         # unloaded since: its frames cannot be judged either
            self._tails[key] = code is None or any(
                i.mnemonic == "jmp" and i.op_str.startswith("0x") and not lo <= int(i.op_str, 16) < hi
                for i in _CS.disasm(code, lo))
        return self._tails[key]

    def scan_fast(self, cache: dict | None = None) -> list[tuple]:
        """scan() by the C core: the patches, routes and task kinds as
        tables (kept in cache, when given, for runs alike); the tail callers
        it asks for (rarely: only frames that a check would find) are found
        here and the pass is run again."""
        kinds = tuple(t.kind for t in self.m.tasks)
        bp_blind = self.model == "stop_machine" and self.m.unwinder == "fp"
        key = ("promise", self.model, bp_blind, self.unpatch_active, kinds, self.unlinked)
        scanner = cache.get(key) if cache is not None else None
        if scanner is None:
            allowed = ALLOWED_ROUTES.get(self.model, ())
            flags = [sum(_P[flag] for flag, names in _ROUTE_FLAGS if r in names) + (_P["PR_ALLOWED"] if r in allowed else 0)
                     for r in ROUTES]
            carried = [(idx, fid, force) for idx, funcs in self.carries.items() for fid, force in funcs.items()]
            replace = [(idx, bool(p.replace)) for idx, p in self.by_index.items()]
            scanner = core.PromiseScanner(MODEL_CODES.get(self.model, 0), (T_START, T_COMPLETE, T_SWITCH), carried,
                                          replace, flags, [{"user": 0, "kthread": 1}.get(k.value, 2) for k in kinds],
                                          bp_blind=bp_blind, unpatch_active=self.unpatch_active)
            if cache is not None:
                cache[key] = scanner
        while True:
            found, need = scanner.scan(self.m.trace, self._tails)
            if need is None:
                return found
            self.tail_caller(*need)

    def checked(self, live: list[int], idx: int, target: int, frames, *, forced_ok: bool):
        """The first frame (fid, version) the transition of patch idx to
        target checks, or None. Frames of tail callers are not judged.
        Patching checks one version of each function idx carries, the one
        just below idx (the newest other enabled patch's, else the
        original): livepatch's klp_check_stack_func (the next entry of the
        func_stack; a nop's too), kpatch's active func (kpatch_get_func);
        kpatch skips a func marked force and, with replace, checks every
        replaced version not marked force. Unpatching checks idx's own
        version of each function it carries and, under a model that says
        unpatch_checks_active, the active one (kpatch_get_func: a newer
        patch's when one is on top; kpatch_unregister marks idx's own
        funcs KPATCH_OP_UNPATCH, which the walk of the hash checks); a
        livepatch replace's (its transition reversed) checks each of its
        nops' new_func too, which klp_init_object_loaded() set to the
        original: the original of each function another enabled patch
        carries and idx does not. After a force a task may hold an older
        version, which no check looks for."""
        carried = self.carries.get(idx, {})
        replace = self.by_index[idx].replace if idx in self.by_index else False
        others = [i for i in live if i != idx]
        livepatch = self.model == "livepatch"
        for fid, version in frames:
            if target != PATCHED:
                hit = fid in carried and not (forced_ok and carried[fid]) and (
                    version == idx or (self.unpatch_active and version == self.expected(live, fid))) \
                    or (livepatch and replace and version == 0 and fid not in carried
                        and self.expected(others, fid) != 0)
            elif livepatch:
                hit = (fid in carried or (replace and version != 0)) and version == self.expected(others, fid)
            else:
                hit = (fid in carried and not (forced_ok and carried[fid])
                       and version == self.expected(others, fid)) \
                    or (replace and version != 0 and version != idx and version in live
                        and not (forced_ok and self.carries.get(version, {}).get(fid, False)))
            if hit and not self.tail_caller(fid, version):
                return fid, version
        return None

    def scan(self, records) -> list[tuple]:
        """The breaches of records ((clock, kind, task, a, b, c) tuples) as
        (clock, code, task, fid, version, x, y) records, in trace order: the
        pure-Python twin of csrc/promise.c."""
        model = self.model
        stacks: dict[int, list[tuple[int, int]]] = {}
        lost: set[int] = set()                # tasks with a call whose return is not traced
        state: dict[int, int] = {}
        cpu_of: dict[int, int] = {}           # task -> the CPU it is on
        stopped = False
        live: list[int] = []                  # enabled patch indexes, oldest first
        trans: tuple[int, int] | None = None  # (patch index, target) in progress
        seen_new = False                      # immediate: a new version ran in this transition
        units: dict[int, dict[int, set[bool]]] = {}   # kGraft: task -> patch -> universes seen
        stop_model = model in STOP_MODELS
        # kpatch's check follows the frame-pointer chain (dump_trace with
        # print_context_stack_bp): of a task preempted where its innermost
        # frame is not set up (a prologue, an epilogue, the trampoline's
        # first instruction) it misses the innermost two return addresses,
        # as kpatch does. Ksplice scans every word and misses nothing.
        bp_blind = model == "stop_machine" and self.m.unwinder == "fp"
        preempted: set[int] = set()           # tasks whose last sched-out was a preemption
        immediate = model == "immediate"
        patched, carries = self.patched, self.carries
        # the kinds as locals: the loop sees every event of the run
        ev_entry, ev_return, ev_unwound, ev_untraced = core.EV_ENTRY, core.EV_RETURN, core.EV_UNWOUND, \
            core.EV_RET_UNTRACED
        ev_sched_in, ev_sched_out = core.EV_SCHED_IN, core.EV_SCHED_OUT
        unit_ends = (EV_KERNEL_EXIT, EV_EXIT, EV_SAFE_POINT)
        for clock, kind, tid, a, b, c in records:
            if kind == ev_entry:
                st = stacks.get(tid)
                if st is None:
                    st = stacks[tid] = []
                st.append((a, b))
                if a in patched:
                    self.entry(clock, tid, a, b, live, trans, state, units)
                    if immediate and trans is not None:
                        idx, target = trans
                        if a in carries.get(idx, {}):
                            new = (b == idx) == (target == PATCHED)
                            if new:
                                seen_new = True
                            elif seen_new:
                                self.breach(clock, B_TOGETHER, tid, a, b, idx)
            elif kind == ev_return or kind == ev_unwound:
                st = stacks.get(tid)
                if st:
                    st.pop()
            elif kind == ev_untraced:
                lost.add(tid)
            elif kind in unit_ends:
                if kind != EV_SAFE_POINT:
                    stacks[tid] = []
                    lost.discard(tid)
                units.pop(tid, None)
                self.forced.discard(tid)
            elif kind == ev_sched_in:
                cpu_of = {t: cpu for t, cpu in cpu_of.items() if cpu != a}
                cpu_of[tid] = a
            elif kind == ev_sched_out:
                if cpu_of.get(tid) == a:
                    del cpu_of[tid]
                if b:
                    preempted.add(tid)
                else:
                    preempted.discard(tid)
            elif kind == EV_STOP_MACHINE:
                stopped = bool(a)
            elif kind == EV_PATCH_STATE:
                state[tid] = a
                route = ROUTES[b] if 0 <= b < len(ROUTES) else str(b)
                if route == "force":
                    self.forced.add(tid)      # a forced unmark gives up the unit's one universe
                if route in ("init", "complete") or trans is None:
                    continue
                self.switch(clock, tid, b, route, trans, live, stacks.get(tid, []), tid in lost, cpu_of)
            elif kind == EV_TRANSITION and tid < 0:
                if a == T_START:
                    trans, seen_new = (b, c), False
                elif a == T_SWITCH:
                    if not stopped:
                        self.breach(clock, B_STOPPED, -1, x=b)
                    if not c:
                        for t, frames in sorted(stacks.items()):
                            if t in lost:
                                continue
                            if bp_blind and t in preempted:
                                frames = frames[:-2]
                            hit = self.checked(live, b, trans[1] if trans else PATCHED, frames,
                                               forced_ok=True)
                            if hit:
                                self.breach(clock, B_SWITCHED_WITH, t, hit[0], hit[1], b)
                    live = self.apply(live, b, trans[1] if trans else PATCHED)
                else:
                    if a == T_COMPLETE and not stop_model:
                        live = self.apply(live, b, c)
                    trans = None
        return self.found

    def _pname(self, idx: int) -> str:
        p = self.by_index.get(idx)
        return p.name if p else f"#{idx}"

    def apply(self, live: list[int], idx: int, target: int) -> list[int]:
        if target == PATCHED:
            p = self.by_index.get(idx)
            return [idx] if p is not None and p.replace else [i for i in live if i != idx] + [idx]
        return [i for i in live if i != idx]

    def entry(self, clock, tid, fid, version, live, trans, state, units):
        model = self.model
        if trans is None or model in STOP_MODELS:
            want = self.expected(live, fid)
            if version != want:
                self.breach(clock, B_LEFT_BEHIND, tid, fid, version, want)
            return
        idx, _ = trans
        if fid not in self.carries.get(idx, {}):
            return
        if model in ("livepatch", "kgraft") and tid >= 0:
            st = state.get(tid, UNDEFINED)
            if version == idx and st != PATCHED:
                self.breach(clock, B_EARLY, tid, fid, version, idx, st)
            if model == "kgraft" and tid not in self.forced:
                seen = units.setdefault(tid, {}).setdefault(idx, set())
                seen.add(version == idx)
                if len(seen) == 2:
                    self.breach(clock, B_UNIVERSE, tid, fid, version, idx)
                    seen.clear()
                    seen.add(version == idx)

    def switch(self, clock, tid, code, route, trans, live, frames, lost, cpu_of):
        allowed = ALLOWED_ROUTES.get(self.model)
        if allowed is None:
            self.breach(clock, B_NO_SWITCHES, tid, x=code)
            return
        if route not in allowed:
            self.breach(clock, B_ROUTE, tid, x=code)
            return
        kind = self.kind(tid)
        # an idle task switches in its idle loop, by a stack check (not while
        # its CPU idles) or by force; only a user task exits to user space
        if (route == "idle") != (kind == "idle") and not (kind == "idle" and route in ("stack", "force")) \
                or (route == "kernel_exit" and kind != "user") or (route == "safe_point" and kind != "kthread"):
            self.breach(clock, B_KIND, tid, x=code)
        if self.model != "livepatch":
            return
        if route in CHECKED_ROUTES and not lost:
            hit = self.checked(live, trans[0], trans[1], frames, forced_ok=False)
            if hit:
                self.breach(clock, B_STACK, tid, hit[0], hit[1], code)
        if route == "stack" and tid in cpu_of:
            self.breach(clock, B_RUNNING, tid, x=cpu_of[tid])


def _declared(model: str, rule: str) -> bool:
    """Whether model's class declares rule (a class flag of emu/models);
    False for a model unknown."""
    try:
        return bool(getattr(model_class(model), rule, False))
    except ValueError:
        return False


def _route(code: int) -> str:
    return ROUTES[code] if 0 <= code < len(ROUTES) else str(code)


_CS = Cs(CS_ARCH_X86, CS_MODE_64)
_STATES = {UNDEFINED: "undefined", UNPATCHED: "unpatched", PATCHED: "patched"}
