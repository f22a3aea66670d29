"""The upstream livepatch semantics of each kernel version: the one home of
the facts a patch author targeting a particular kernel depends on
(kernel/livepatch/transition.c, core.c and sched/core.c across releases).

- before 6.4: a pending task switches only at the periodic stack check,
  kernel exit, the idle loop and fake signals; cond_resched() is not a
  switch point, so a CPU-bound kthread that is always on its CPU blocks a
  transition;
- 6.4 to 6.15 (klp_cond_resched): cond_resched() of a pending task tries a
  switch with a check of its own stack;
- from 6.16: the switch moved into __schedule() (klp_sched_try_switch) for
  a task going to a freezable sleep; a plain cond_resched() no longer
  switches;
- before 5.1, patches were registered (klp_register_patch) and enabled
  separately and kept a strict stacking order ("enforce stacking" in
  __klp_enable_patch/__klp_disable_patch): only the last enabled patch can
  be disabled, only the first disabled one enabled (-EBUSY otherwise); 5.1
  (the atomic replace series) dropped the order and brought atomic replace
  (klp_patch.replace, nops); a patch for an older kernel cannot ask for it;
- force: until 5.17, klp_force_transition() marked every patch on
  klp_patches forced (none of their modules could be removed again); 5.18
  marks only the patches being removed (the one unpatched, or the ones an
  atomic replace takes over);
- 5.5 brought system states (klp_patch.states, kernel/livepatch/state.c);
- 6.10 renamed KLP_UNDEFINED to KLP_TRANSITION_IDLE (names only);
- fake signals: from 5.1 a transition sends them by itself (from the 15th
  retry on, every 15 retries); before, only the administrator did, by
  writing the patch's `signal` attribute;
- sysfs (/sys/kernel/livepatch/<patch>/...): `enabled`, `transition` and
  the write-only `force` everywhere; the write-only `signal` only before
  5.1 (5.1 sends the fake signals by itself and removed it); each object's
  `patched` from 6.1; `replace` from 6.11; `stack_order` from 6.14;
- 5.5 marked livepatch's ftrace ops PERMANENT (FTRACE_OPS_FL_PERMANENT):
  the `kernel.ftrace_enabled` sysctl cannot be turned off while a patch is
  registered (-EBUSY), and a patch cannot register while it is off (-EBUSY,
  "failed to register ftrace handler"); before, turning it off silently
  stopped every patch (test-ftrace.sh checks the new behaviour).

Distribution kernels: RHEL 8 4.18, RHEL 9 5.14, SLES 15 SP6 6.4, Ubuntu
24.04 6.8, RHEL 10 6.12.
"""
from __future__ import annotations

from dataclasses import dataclass

#: The newest version known; the default.
NEWEST = (6, 19)
OLDEST = (4, 18)
#: The last minor release of each major line this table covers.
LAST_MINOR = {4: 20, 5: 19, 6: NEWEST[1]}


@dataclass(frozen=True)
class Kernel:
    """One kernel version's livepatch facts."""
    version: tuple[int, int]

    @property
    def name(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def cond_resched_switch(self) -> bool:
        """cond_resched() of a pending task tries to switch it (6.4-6.15)."""
        return (6, 4) <= self.version < (6, 16)

    @property
    def freezable_sleep_switch(self) -> bool:
        """__schedule() tries to switch a task going to a freezable sleep (6.16+)."""
        return self.version >= (6, 16)

    @property
    def stacking_order(self) -> bool:
        """Only the last enabled patch may be disabled and only the first
        disabled one enabled (before 5.1; the atomic replace series removed
        the rule)."""
        return self.version < (5, 1)

    @property
    def atomic_replace(self) -> bool:
        """klp_patch.replace: atomic replace with nops (5.1)."""
        return self.version >= (5, 1)

    @property
    def system_states(self) -> bool:
        """klp_patch.states: system states (5.5)."""
        return self.version >= (5, 5)

    @property
    def force_marks_every_patch(self) -> bool:
        """klp_force_transition() sets `forced` on every patch of
        klp_patches (before 5.18); from 5.18 only on the patches being
        removed."""
        return self.version < (5, 18)

    @property
    def periodic_signals(self) -> bool:
        """A transition sends its fake signals by itself, from the 15th retry
        on, every 15 (5.1); before, the administrator sent them by writing
        the patch's write-only `signal` attribute, which 5.1 removed."""
        return self.version >= (5, 1)

    @property
    def sysfs_signal(self) -> bool:
        """The write-only `signal` attribute (before 5.1: see periodic_signals)."""
        return not self.periodic_signals

    @property
    def sysfs_object_patched(self) -> bool:
        """Each object's `patched` attribute (6.1)."""
        return self.version >= (6, 1)

    @property
    def sysfs_replace(self) -> bool:
        return self.version >= (6, 11)

    @property
    def sysfs_stack_order(self) -> bool:
        return self.version >= (6, 14)

    @property
    def ftrace_permanent(self) -> bool:
        """Livepatch's ftrace ops is PERMANENT (5.5): ftrace_enabled stays on."""
        return self.version >= (5, 5)

    @property
    def idle_state_name(self) -> str:
        """The name of patch_state -1 (a rename only)."""
        return "KLP_TRANSITION_IDLE" if self.version >= (6, 10) else "KLP_UNDEFINED"


def kernel(name: str | None = None) -> Kernel:
    """The Kernel of a version string ("4.18", "6.8", ...); None gives the
    newest. ValueError naming the accepted range otherwise."""
    if name is None:
        return Kernel(NEWEST)
    try:
        major, minor = (int(x) for x in str(name).split("."))
    except ValueError:
        raise ValueError(f"kernel version {name!r} is not MAJOR.MINOR (one of {accepted()})") from None
    if not (OLDEST <= (major, minor) <= NEWEST and minor <= LAST_MINOR.get(major, -1)):
        raise ValueError(f"kernel version {name!r} is not one this emulator knows ({accepted()})")
    return Kernel((major, minor))


def accepted() -> str:
    return f"{OLDEST[0]}.{OLDEST[1]} to {NEWEST[0]}.{NEWEST[1]}"
