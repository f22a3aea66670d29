"""Scheduling policies: which runnable task a CPU runs next.

The machine asks the policy only when it must choose; the policy sees the
CPU's runnable tasks in queue order and returns one of them. Policies hold
their own seeded random generator, so a run is reproducible from its seed.
"""
from __future__ import annotations

import random


class RoundRobin:
    """First in queue order (the machine requeues a switched-out task at the tail)."""
    name = "rr"

    def pick(self, cpu, candidates, now):
        return candidates[0]


class SeededRandom:
    """Uniformly random among the runnable tasks, from a seed."""
    name = "random"

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def pick(self, cpu, candidates, now):
        return candidates[self.rng.randrange(len(candidates))]


class Priorities:
    """PCT (Burckhardt et al., ASPLOS 2010): random distinct priorities, the
    highest runnable one runs; at each of d-1 change points (scheduling
    decisions, chosen at random) the running task drops below all others."""
    name = "pct"

    def __init__(self, seed: int, ntasks: int, depth: int = 3, horizon: int = 1000):
        self.rng = random.Random(seed)
        order = list(range(ntasks))
        self.rng.shuffle(order)
        self.prio = {tid: depth + rank for rank, tid in enumerate(order)}
        self.change_points = sorted(self.rng.sample(range(1, max(2, horizon)), min(depth - 1, max(1, horizon) - 1)))
        self.decisions = 0
        self.low = depth - 1

    def pick(self, cpu, candidates, now):
        self.decisions += 1
        best = max(candidates, key=lambda t: self.prio.get(t.tid, 0))
        if self.change_points and self.decisions >= self.change_points[0]:
            self.change_points.pop(0)
            self.prio[best.tid] = self.low
            self.low -= 1
        return best


def make_policy(name: str, seed: int = 0, ntasks: int = 1, **kw):
    if name == "rr":
        return RoundRobin()
    if name == "random":
        return SeededRandom(seed)
    if name == "pct":
        return Priorities(seed, ntasks, **kw)
    raise ValueError(f"unknown scheduling policy {name!r} (rr, random, pct)")
