"""System states of live patches (kernel/livepatch/state.c).

A patch may declare that it changes some state of the system (an id) in a
given way (a version). When patches follow one another, a newer one may take
such a change over from an older one, but only if it understands it: a
patch is refused (-EINVAL, before "enabling patch") when it carries a state
that an installed patch carries with a higher version, and a replace
(cumulative) patch is refused when it leaves out any installed state at all,
since replacing the older patches would drop their changes silently. A
patch without `replace` may leave states out: the older patches that carry
them stay installed.

`installed` is always the ordered list of patches that are enabled or in
transition (the kernel's klp_patches), oldest first: the livepatch model's
Livepatch.installed (emu/models/livepatch/core.py).
"""
from __future__ import annotations

from emu.kernel.patch import Patch, State


def get_state(patch: Patch, sid: int) -> State | None:
    """klp_get_state: the state sid that patch carries, or None."""
    return patch.state(sid)


def get_prev_state(installed: list[Patch], transition: Patch | None, sid: int) -> State | None:
    """klp_get_prev_state: the state sid as the newest installed patch before
    the one in transition carries it, or None. Only meaningful during a
    transition (callbacks); None when there is none."""
    if transition is None:
        return None
    last = None
    for patch in installed:
        if patch is transition:
            break
        state = patch.state(sid)
        if state is not None:
            last = state
    return last


def is_state_compatible(patch: Patch, old: State) -> bool:
    state = patch.state(old.id)
    if state is None:
        return not patch.replace
    return state.version >= old.version


def is_patch_compatible(installed: list[Patch], patch: Patch) -> bool:
    """klp_is_patch_compatible: can patch follow the installed patches?"""
    return all(is_state_compatible(patch, old) for p in installed for old in p.states)
