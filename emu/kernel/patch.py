"""Live patches: functions (old -> new), objects, callbacks, states.

A Patch is what a patch module carries, as `struct klp_patch` does: objects
(the base image "vmlinux" or a module), each with functions and optional
callbacks; a replace flag (atomic replace); system states (id, version).
New functions live in the patch's image, linked against the base image.

The models (emu/models/) change the flags of these objects (enabled,
patched, transition, forced) as the kernel does; emu/runs/oracle.py reads
the patches' functions and indices to know which version is which.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from emu.errors import PatchError, check_callable, check_int, check_items, check_type
from emu.images.image import Image
from emu.machine.machine import FunctionRef, Machine

VMLINUX = "vmlinux"
CALLBACKS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")


@dataclass(eq=False)
class PatchFunc:
    """One replaced function. new is None for an atomic-replace nop."""
    name: str
    object: str
    new: FunctionRef | None
    force: bool = False          # kpatch: not checked for activeness
    old: FunctionRef | None = None   # resolved while the object is loaded
    transition: bool = False
    patched: bool = False

    @property
    def nop(self) -> bool:
        return self.new is None

    def __repr__(self):
        return f"<PatchFunc {self.object}:{self.name}{' nop' if self.nop else ''}>"


@dataclass(eq=False)
class PatchObject:
    name: str
    funcs: list[PatchFunc] = field(default_factory=list)
    callbacks: dict[str, Callable] = field(default_factory=dict)
    patched: bool = False
    callbacks_enabled: bool = False   # pre_patch succeeded: the others may run


@dataclass(frozen=True)
class State:
    id: int
    version: int


@dataclass(eq=False)
class Patch:
    name: str
    objects: list[PatchObject]
    image: Image | None = None
    replace: bool = False
    states: tuple[State, ...] = ()
    index: int = 0                  # version number in events (1, 2, ... in load order)
    enabled: bool = False
    forced: bool = False
    stack_order: int = 0

    def funcs(self):
        for obj in self.objects:
            yield from ((obj, f) for f in obj.funcs)

    def object(self, name: str) -> PatchObject | None:
        return next((o for o in self.objects if o.name == name), None)

    def state(self, sid: int) -> State | None:
        return next((s for s in self.states if s.id == sid), None)

    def __repr__(self):
        return f"<Patch {self.name}>"


def definition(patches) -> tuple:
    """What the judges of a finished run (emu/runs/) read of patches: each
    patch's index, name and replace flag, and each function's old and new
    versions and force flag. Hashable, and equal for patches made alike and
    bound to the same functions: what a judge derives from patches can be
    kept under it for the next run's."""
    return tuple((p.index, p.name, p.replace, tuple((f.old, f.new, f.force) for _, f in p.funcs()))
                 for p in patches)


def make_patch(machine: Machine, name: str, image: Image | None, functions, *, replace: bool = False,
               callbacks: dict | None = None, states=(), force=(), new_names: dict | None = None) -> Patch:
    """A patch whose new functions are image's functions of the same names,
    or of the names new_names gives ({old name: new name}, as a klp_func's
    old_name and new_func may differ: livepatch_cmdline_proc_show replaces
    cmdline_proc_show).

    functions: names of old functions ("f" for the base image, "module:f" for a
    module's). callbacks: {object name: {callback name: fn(machine, patch, obj) -> int}}.
    states: (id, version) pairs. Raises PatchError naming what is missing,
    TypeError or ValueError for an argument of the wrong type."""
    functions, force, states = _check_arguments(machine, name, image, functions, replace, callbacks, states, force,
                                                new_names)
    objects: dict[str, PatchObject] = {}
    new_names = new_names or {}
    seen: set[tuple[str, str]] = set()
    for spec in functions:
        obj_name, _, fname = spec.rpartition(":")
        obj_name = obj_name or VMLINUX
        if (obj_name, fname) in seen:
            raise PatchError(f"patch '{name}': function '{spec}' is listed twice")
        seen.add((obj_name, fname))
        new_name = new_names.get(fname, fname)
        if image is None or new_name not in image.functions:
            raise PatchError(f"patch '{name}': no new version of '{fname}'"
                             f"{f' ({new_name})' if new_name != fname else ''} in "
                             f"{'its sources' if image is not None else 'the patch (it has no image)'}")
        new = machine.by_name.get(f"{image.name}:{new_name}")
        if new is None:
            raise PatchError(f"patch '{name}': load its image before making it")
        objects.setdefault(obj_name, PatchObject(obj_name)).funcs.append(
            PatchFunc(fname, obj_name, new, force=spec in force or fname in force))
    for obj_name, cbs in (callbacks or {}).items():
        obj = objects.setdefault(obj_name, PatchObject(obj_name))
        for cb_name, fn in cbs.items():
            if cb_name not in CALLBACKS:
                raise PatchError(f"patch '{name}': unknown callback '{cb_name}' (one of {', '.join(CALLBACKS)})")
            obj.callbacks[cb_name] = fn
    patch = Patch(name, list(objects.values()), image, replace, states)
    resolve(machine, patch)
    return patch


def _check_arguments(machine, name, image, functions, replace, callbacks, states, force, new_names):
    """make_patch's arguments, checked: TypeError or ValueError naming the
    one at fault. Returns functions, force and states as tuples (each is
    read once more than an iterator allows)."""
    check_type(machine, Machine, "make_patch: machine")
    check_type(name, str, "make_patch: name")
    if image is not None:
        check_type(image, Image, f"make_patch: patch '{name}': image", "build_c gives one")
    check_type(replace, bool, f"make_patch: patch '{name}': replace")

    def names(value, key: str) -> tuple:
        return tuple(check_items(value, str, f"make_patch: patch '{name}': {key}", "a list of function names"))
    functions, force = names(functions, "functions"), names(force, "force")
    if callbacks is not None:
        check_type(callbacks, dict, f"make_patch: patch '{name}': callbacks")
        for obj_name, cbs in callbacks.items():
            check_type(obj_name, str, f"make_patch: patch '{name}': callbacks: an object name")
            check_type(cbs, dict, f"make_patch: patch '{name}': callbacks['{obj_name}']")
            for cb_name, fn in cbs.items():
                check_callable(fn, f"make_patch: patch '{name}': callbacks['{obj_name}']['{cb_name}']")
    if new_names is not None:
        check_type(new_names, dict, f"make_patch: patch '{name}': new_names")
        for old, new in new_names.items():
            check_type(old, str, f"make_patch: patch '{name}': new_names: a name")
            check_type(new, str, f"make_patch: patch '{name}': new_names['{old}']")
    if not hasattr(states, "__iter__"):
        raise TypeError(f"make_patch: patch '{name}': states must be (id, version) pairs, "
                        f"not {type(states).__name__}")
    states = tuple(states)
    for i, st in enumerate(states):
        if isinstance(st, State):
            st = (st.id, st.version)
        if not isinstance(st, (tuple, list)) or len(st) != 2:
            raise TypeError(f"make_patch: patch '{name}': states[{i}] must be an (id, version) pair, not {st!r}")
        check_int(st[0], f"make_patch: patch '{name}': states[{i}] id", 0, 2**63 - 1)
        check_int(st[1], f"make_patch: patch '{name}': states[{i}] version", 0, 2**63 - 1)
    return functions, force, tuple(s if isinstance(s, State) else State(*s) for s in states)


def loaded_objects(machine: Machine) -> set[str]:
    names = {VMLINUX}
    names.update(img.name for img in machine.images[1:] if img.name not in machine.unloaded)
    return names


def resolve(machine: Machine, patch: Patch) -> None:
    """Bind each function of a loaded object to the old function it replaces."""
    loaded = loaded_objects(machine)
    for obj, f in patch.funcs():
        if obj.name not in loaded:
            f.old = None
            continue
        key = f.name if obj.name == VMLINUX else f"{obj.name}:{f.name}"
        ref = machine.by_name.get(key) if obj.name != VMLINUX else _base_function(machine, f.name)
        if ref is None:
            raise PatchError(f"patch '{patch.name}': no function '{f.name}' in {obj.name}")
        if ref.site is None:
            raise PatchError(f"patch '{patch.name}': function '{f.name}' has no fentry site, "
                             f"so it cannot be patched")
        f.old = ref


def _base_function(machine: Machine, name: str) -> FunctionRef | None:
    return machine.by_name.get(f"{machine.base.name}:{name}")
