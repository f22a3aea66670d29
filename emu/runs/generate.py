"""Whole scenarios nobody wrote by hand, from a seed: programs, tasks,
patches and actions drawn at random, written as a scenario directory that
`lpemu` and the Runner read like any other.

What a generated scenario varies (each choice from one random.Random(seed)):
- the program: 3 to 7 functions `long fN(long x, long d)` whose bodies mix
  calls to later functions (a DAG, so every run ends), bounded
  self-recursion on `d`, tail calls, sleeps, cond_resched points, observes,
  arithmetic and CPU-bound loops; compiled at -O0 or -O2;
- the tasks: 1 to 4 user tasks (now and then 16 or 64) and 0 to 2 kthreads
  (safe points always, cond_resched and naps sometimes), on 1 to 4 CPUs;
- the machine: preemption mode, unwinder, quantum;
- the patches: one or two, each a random subset of the functions with new
  constants (a second one stacked on the first, or an atomic replace);
- the actions: enable, then sometimes disable, force, or the second patch,
  at random times.

The same seed writes the same files. Programs are well formed by
construction: a run of one may only end by the scenario's own rules (a
transition that stalls, a CPU-bound task without a scheduling point); any
other fault, any disagreement between twins or repeats, and any breach of a
model's promise is the emulator's (emu/runs/soak.py checks them).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

ATTR = "__attribute__((noinline, noclone))"


@dataclass
class Func:
    index: int
    body: list[str] = field(default_factory=list)      # statements; {B} marks the versioned constant
    tail: str = "return x + {B};"


@dataclass
class Shape:
    """What a seed chose, for reports: the knobs a soak counts."""
    seed: int
    opt: str
    functions: int
    users: int
    kthreads: int
    cpus: int
    preempt: str
    unwinder: str
    patches: int
    replace: bool
    actions: tuple[str, ...]
    recursion: bool
    tail_calls: bool


def _program(rng: random.Random, n: int) -> list[Func]:
    funcs = [Func(i) for i in range(n)]
    for f in funcs:
        later = list(range(f.index + 1, n))
        for _ in range(rng.randint(1, 4)):
            kind = rng.choices(["call", "sleep", "yield", "observe", "arith", "loop", "busy", "recurse"],
                               [5 if later else 0, 2, 2, 2, 3, 1 if later else 0, 1, 1])[0]
            if kind == "call":
                f.body.append(f"x = f{rng.choice(later)}(x, d);")
            elif kind == "sleep":
                f.body.append(f"lpemu_sleep({rng.randint(1, 3)});")
            elif kind == "yield":
                f.body.append("lpemu_yield();")
            elif kind == "observe":
                f.body.append(f"lpemu_observe({f.index}, x);")
            elif kind == "arith":
                f.body.append(f"x = x * {rng.randint(2, 7)} + {rng.randint(0, 99)} + zero;")
            elif kind == "loop":
                f.body.append(f"for (long k = 0; k < {rng.randint(1, 2)}; k++) x += f{rng.choice(later)}(x, 0);")
            elif kind == "busy":
                f.body.append(f"for (long k = 0; k < {rng.randint(10, 300)}; k++) x += k ^ zero;")
            else:
                f.body.append(f"if (d > 0) x = f{f.index}(x + 1, d - 1);")
        if later and rng.random() < 0.3:
            f.tail = f"return f{rng.choice(later)}(x + {{B}}, d);"
    return funcs


def _c_function(f: Func, constant: int) -> str:
    lines = [f"{ATTR} long f{f.index}(long x, long d)", "{"]
    lines += [f"\t{s}" for s in f.body]
    lines.append("\t" + f.tail.replace("{B}", str(constant)))
    lines.append("}")
    return "\n".join(lines)


def _prototypes(n: int) -> str:
    return "\n".join(f"long f{i}(long x, long d);" for i in range(n))


def generate(seed: int, directory: Path) -> tuple[Path, Shape]:
    """Write the scenario of seed into directory (created); return the
    scenario file and what was chosen."""
    rng = random.Random(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = rng.randint(3, 7)
    funcs = _program(rng, n)
    depth = rng.randint(0, 2)
    opt = rng.choice(["-O0", "-O2"])

    kthread_tail = ["lpemu_safe_point();"]
    if rng.random() < 0.6:
        kthread_tail.append("lpemu_yield();")
    if rng.random() < 0.5:
        kthread_tail.append(f"lpemu_sleep({rng.randint(1, 2)});")
    base = ["#include \"lpemu.h\"", "", "volatile long zero;", "", _prototypes(n), ""]
    base += [_c_function(f, 1) + "\n" for f in funcs]
    base += [f"long user_entry(long i)\n{{\n\treturn f0(i, {depth});\n}}\n",
             "long kthread_entry(long i)\n{\n\tfor (;;) {\n"
             f"\t\tf0(i, {depth});\n" + "".join(f"\t\t{s}\n" for s in kthread_tail) + "\t}\n}\n"]
    (directory / "base.c").write_text("\n".join(base))

    npatch = rng.choice([1, 1, 2])
    replace = npatch == 2 and rng.random() < 0.5
    patch_funcs = []
    for p in range(npatch):
        chosen = sorted(rng.sample(range(n), rng.randint(1, n)))
        patch_funcs.append(chosen)
        src = ["#include \"lpemu.h\"", "", "extern volatile long zero;", "", _prototypes(n), ""]
        src += [_c_function(funcs[i], 1000 * (p + 2)) + "\n" for i in chosen]
        (directory / f"p{p}.c").write_text("\n".join(src))

    cpus = rng.randint(1, 4)
    users = rng.choice([1, 2, 3, 4, 4, 16]) if rng.random() > 0.03 else 64
    kthreads = rng.choice([0, 0, 1, 2])
    preempt = rng.choice(["none", "voluntary", "full"])
    unwinder = rng.choice(["orc", "fp"])
    t = rng.randint(2_000, 40_000)
    actions = [(t, "enable", "p0")]
    follow = rng.choice(["none", "disable", "force", "second"] if npatch == 2 else ["none", "disable", "force"])
    if follow == "second":
        actions.append((t + rng.randint(1_000, 400_000), "enable", "p1"))
    elif follow != "none":
        actions.append((t + rng.randint(1_000, 400_000), follow, "p0"))

    toml = [f"# generated scenario, seed {seed}", "[program]", 'sources = ["base.c"]', f'cflags = ["{opt}"]', "",
            "[machine]", f"cpus = {cpus}", f"quantum = {rng.choice([100, 300, 1000])}",
            f'preempt = "{preempt}"', f'unwinder = "{unwinder}"', "",
            "[[task]]", 'name = "user"', 'entry = "user_entry"', "args = [0]", f"count = {users}", ""]
    if kthreads:
        toml += ["[[task]]", 'name = "kthread"', 'entry = "kthread_entry"', "args = [1]",
                 f"count = {kthreads}", 'kind = "kthread"', ""]
    for p, chosen in enumerate(patch_funcs):
        toml += ["[[patch]]", f'name = "p{p}"', f'sources = ["p{p}.c"]',
                 "functions = [" + ", ".join(f'"f{i}"' for i in chosen) + "]"]
        if p == 1 and replace:
            toml.append("replace = true")
        toml.append("")
    for at, do, patch in actions:
        toml += ["[[action]]", f"at = {at}", f'do = "{do}"']
        if do != "force":
            toml.append(f'patch = "{patch}"')
        toml.append("")
    toml += ["[check]", 'unit = "syscall"', "", "[fuzz]", "horizon = 20.0", ""]
    path = directory / "scenario.toml"
    path.write_text("\n".join(toml))
    shape = Shape(seed, opt, n, users, kthreads, cpus, preempt, unwinder, npatch, replace,
                  tuple(do for _, do, _ in actions), any("d - 1" in s for f in funcs for s in f.body),
                  any(f.tail.startswith("return f") for f in funcs))
    return path, shape
