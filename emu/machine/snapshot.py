"""Snapshots of a machine: take its whole state between runs and put it
back, so that a fuzzing runner restores the prefix its runs share instead of
building a machine. The C core's part is csrc/snapshot.c (memory, task
contexts, patch states, scheduler state, clock, sites); this is the Python
part that must agree with it."""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

from emu.engine import core
from emu.errors import StateError


@dataclass(eq=False)
class Snapshot:
    """What take() took: the C core's part and the Python part."""
    core: core.Snapshot
    images: int
    unloaded: set
    by_name: dict
    sites: tuple
    patch_states: list
    hypercalls: dict
    shadow: tuple
    trace: core.EventLog
    log: list
    timers: list
    seq: int
    last_stop_machine: tuple | None
    policy: object
    machine: weakref.ref            # the machine it was taken of (its hypercalls are bound to it)


def take(m) -> Snapshot:
    """The machine's whole state. Only between runs of a started machine
    with the C scheduler, no model listening, no kernel work and no
    stop_machine (StateError otherwise)."""
    works = m.works
    if not m.started or m.sched != "c" or m.listeners or works.items or works.stop is not None:
        why = ("the machine has not started (run it first)" if not m.started else
               "the machine runs the Python scheduler" if m.sched != "c" else
               "a model listens to it" if m.listeners else
               "kernel work is in progress" if works.items else "stop_machine is in progress")
        raise StateError(f"snapshot: {why}; a snapshot is of a started machine with the C scheduler, "
                         f"between runs, with no model, work or stop_machine")
    m.drain()
    everyone = m.tasks + [c.idle for c in m.cpus]
    return Snapshot(
        core=m.engine.snapshot(), images=len(m.images), unloaded=set(m.symbols.unloaded),
        by_name=dict(m.symbols.by_name), sites=m.sites.state(),
        patch_states=[t.patch_state for t in everyone],
        hypercalls=dict(m.hypercalls), shadow=m.shadow.state(), trace=m.trace.copy(), log=list(m.log),
        timers=list(works.timers), seq=works.seq, last_stop_machine=works.last_stop_machine,
        policy=copy.deepcopy(m.policy), machine=weakref.ref(m))


def restore(m, snap: Snapshot, *, policy=None) -> None:
    """Put a snapshot of this machine back: the next run is the same, event
    for event, as the first run from that point. Listeners go (models are
    made anew per run). policy: the next run's scheduling policy (None: a
    copy of the snapshot's). StateError when images were loaded since,
    stop_machine is in progress or the snapshot is another machine's (its
    hypercalls, timers and shadow variables are bound to that one; the C
    core refuses another layout with CoreError)."""
    if not isinstance(snap, Snapshot):
        raise TypeError(f"restore: not a machine snapshot: {type(snap).__name__}")
    if snap.machine() is not m:
        raise StateError("restore: the snapshot is of another machine (a snapshot goes back into the "
                         "machine it was taken of)")
    works = m.works
    if len(m.images) != snap.images:
        raise StateError("restore: images were loaded since the snapshot")
    if works.stop is not None:
        raise StateError("restore: stop_machine is in progress (the last run ended inside it)")
    m.engine.restore(snap.core)
    m.symbols.unloaded = set(snap.unloaded)
    m.symbols.by_name = dict(snap.by_name)
    m.sites.set_state(snap.sites)
    for t, ps in zip(m.tasks + [c.idle for c in m.cpus], snap.patch_states):
        t.patch_state = ps
    m.hypercalls = dict(snap.hypercalls)
    m.shadow.set_state(snap.shadow)
    m.trace = snap.trace.copy()
    m.log = list(snap.log)
    works.timers, works.seq = list(snap.timers), snap.seq
    works.items = []
    m.listeners = []
    works.last_stop_machine = snap.last_stop_machine
    m.policy = copy.deepcopy(snap.policy) if policy is None else policy
