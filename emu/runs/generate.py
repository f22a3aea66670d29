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
  at random times;
- from a second generator (random.Random(f"{seed}:more"), so the choices
  above are the same for a seed as before it was added), each now and then:
  the kernel whose livepatch semantics apply ([machine] kernel, 4.18 to the
  newest; atomic replace only from 5.1), 5 to 8 CPUs, another tick, the
  consistency unit a function (f0) instead of the system call, shadow
  variables in the patched versions (klp_shadow_get_or_alloc, now and then
  klp_shadow_free), and a module loaded during the run (its init runs in
  insmod-m0 and registers its function in the base's `hook`, which a
  function of the base calls; the patches may carry the module's function;
  a module whose function is never registered is unloaded again later:
  one that tasks may be running cannot be, as in the kernel without a
  module reference);
- from a third one (random.Random(f"{seed}:late"), for the same reason):
  user tasks that exit (lpemu_exit) after a number of calls of their
  entry, kthreads pinned to a CPU, and system states on the patches
  ([[patch]] states; the second patch's version of the state may be lower,
  which the kernel refuses, or missing);
- from a fourth one (random.Random(f"{seed}:rare path")): a rare path, a
  sleep in one function taken on one call in 8 to 64 only, chosen by a
  count of its calls (a variable of the base, which the patched versions
  count on with) or by rdrand (the run's seeded randomness): the states a transition can meet there come seldom, and the
  directed strategy's first runs must meet them where the probe saw them.

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
    kernel: str | None = None       # None: the newest
    tick: int | None = None         # None: the Machine's default
    unit: str = "syscall"
    shadow: bool = False
    module: str | None = None       # None, "hooked" (loaded, called by the base) or "unloaded"
    exits: bool = False             # user tasks exit after a number of calls
    pinned: bool = False            # kthreads pinned to a CPU
    states: bool = False            # system states on the patches
    rare: str | None = None         # None, "counter" or "rdrand": what chooses the rare sleep


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


#: kernels a generated scenario may name (emu/kernel/versions.py: each one
#: side of a change of livepatch semantics)
KERNELS = ("4.18", "5.0", "5.4", "5.10", "5.14", "5.17", "5.18", "6.1", "6.4", "6.8", "6.12", "6.15", "6.16")


def _c_function(f: Func, constant: int, prologue: tuple[str, ...] = ()) -> str:
    lines = [f"{ATTR} long f{f.index}(long x, long d)", "{"]
    lines += [f"\t{s}" for s in prologue]
    lines += [f"\t{s}" for s in f.body]
    lines.append("\t" + f.tail.replace("{B}", str(constant)))
    lines.append("}")
    return "\n".join(lines)


def _prototypes(n: int) -> str:
    return "\n".join(f"long f{i}(long x, long d);" for i in range(n))


class _Classic:
    """The second generator of a classic scenario (generate(extended=False),
    the scenarios of every seed as they were before it came): each of its
    knobs is drawn as `random() < p` or as a choice from a list whose first
    element is the default, so every knob keeps its default."""

    def random(self) -> float:
        return 1.0

    def choice(self, seq):
        return seq[0]


def generate(seed: int, directory: Path, *, extended: bool = True) -> tuple[Path, Shape]:
    """Write the scenario of seed into directory (created); return the
    scenario file and what was chosen. extended=False: only the first
    generator's knobs (the module doc), the scenario a seed gave before the
    second one came (the seeds of the regression tests)."""
    rng = random.Random(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = rng.randint(3, 7)
    funcs = _program(rng, n)
    depth = rng.randint(0, 2)
    opt = rng.choice(["-O0", "-O2"])
    more = random.Random(f"{seed}:more") if extended else _Classic()
    late = random.Random(f"{seed}:late") if extended else _Classic()
    # (its name leaves the scenarios of the regression tests' seeds as they were)
    rare = random.Random(f"{seed}:rare path") if extended else _Classic()
    rare_path = rare.choice([None, None, None, "counter", "rdrand"])
    if rare_path is not None:
        f = funcs[rare.randrange(n)]
        every, ticks = rare.randint(8, 64), rare.randint(1, 3)
        # the counter is the base's (the patches' versions count on with it)
        when = (f"if (++seldom % {every} == 0)" if rare_path == "counter" else
                f'unsigned long r; __asm__ volatile("rdrand %0" : "=r"(r) : : "cc"); if (r % {every} == 0)')
        f.body.insert(rare.randint(0, len(f.body)), f"{{ {when} lpemu_sleep({ticks}); }}")
    exits = late.random() < 0.12
    exit_after = late.randint(20, 2_000) if exits else 0
    module = more.choice([None, None, None, "hooked", "unloaded"])
    hooked_by = more.randrange(n) if module == "hooked" else None
    if hooked_by is not None:
        f = funcs[hooked_by]
        f.body.insert(more.randint(0, len(f.body)), "{ long (*h)(long, long) = hook; if (h) x = h(x, d); }")

    kthread_tail = ["lpemu_safe_point();"]
    if rng.random() < 0.6:
        kthread_tail.append("lpemu_yield();")
    if rng.random() < 0.5:
        kthread_tail.append(f"lpemu_sleep({rng.randint(1, 2)});")
    base = ["#include \"lpemu.h\"", "", "volatile long zero;", ""]
    if rare_path == "counter":
        base += ["long seldom;", ""]
    if module:
        base += ["long (*volatile hook)(long x, long d);", ""]
    base += [_prototypes(n), ""]
    base += [_c_function(f, 1) + "\n" for f in funcs]
    exit_line = f"\tstatic long calls;\n\tif (++calls > {exit_after})\n\t\tlpemu_exit(0);\n" if exits else ""
    base += [f"long user_entry(long i)\n{{\n{exit_line}\treturn f0(i, {depth});\n}}\n",
             "long kthread_entry(long i)\n{\n\tfor (;;) {\n"
             f"\t\tf0(i, {depth});\n" + "".join(f"\t\t{s}\n" for s in kthread_tail) + "\t}\n}\n"]
    (directory / "base.c").write_text("\n".join(base))

    npatch = rng.choice([1, 1, 2])
    replace = npatch == 2 and rng.random() < 0.5
    shadow = more.random() < 0.25
    if module:
        # the module's function: called through the base's hook by f<hooked_by>,
        # it calls a later function of the base (the calls stay a DAG)
        later = list(range(hooked_by + 1, n)) if hooked_by is not None else list(range(n))
        mcall = f"x = f{more.choice(later)}(x, 0);" if later and more.random() < 0.7 else "x = x * 3 + zero;"
        mod_body = ["lpemu_observe(100, x);", mcall]
        src = ["#include \"lpemu.h\"", "", "extern volatile long zero;",
               "extern long (*volatile hook)(long x, long d);", _prototypes(n), "",
               _module_function(mod_body, 1), "",
               "long m0_init(void)\n{", "\thook = " + ("mod_fn;" if module == "hooked" else "0;"),
               "\treturn 0;\n}\n", "long m0_exit(void)\n{\n\thook = 0;\n\treturn 0;\n}\n"]
        (directory / "m0.c").write_text("\n".join(src))
    patch_funcs = []
    patch_module = []
    for p in range(npatch):
        chosen = sorted(rng.sample(range(n), rng.randint(1, n)))
        patch_funcs.append(chosen)
        src = ["#include \"lpemu.h\"", "", "extern volatile long zero;", ""]
        if module:
            src += ["extern long (*volatile hook)(long x, long d);", ""]
        if rare_path == "counter":
            src += ["extern long seldom;", ""]
        src += [_prototypes(n), ""]
        for i in chosen:
            prologue = ()
            if shadow and more.random() < 0.6:
                # a shadow variable of `zero`, one id per function; now and then freed again
                prologue = (f"{{ long *s = lpemu_shadow_get_or_alloc((void *)&zero, {i + 1}, sizeof(long)); "
                            f"if (s) {{ *s += 1; x += *s & 3; }} }}",)
                if more.random() < 0.3:
                    prologue += (f"if ((x & 7) == 0) lpemu_shadow_free((void *)&zero, {i + 1});",)
            src.append(_c_function(funcs[i], 1000 * (p + 2), prologue) + "\n")
        patch_module.append(bool(module) and more.random() < 0.5)
        if patch_module[-1]:
            src += [_module_function(mod_body, 1000 * (p + 2)), ""]
        (directory / f"p{p}.c").write_text("\n".join(src))

    cpus = rng.randint(1, 4)
    if more.random() < 0.15:
        cpus = more.randint(5, 8)
    kernel = more.choice([k for k in KERNELS if not replace or k not in ("4.18", "5.0")]) \
        if more.random() < 0.4 else None
    tick = more.choice([200, 500, 3000]) if more.random() < 0.2 else None
    unit = "f0" if more.random() < 0.15 else "syscall"
    users = rng.choice([1, 2, 3, 4, 4, 16]) if rng.random() > 0.03 else 64
    kthreads = rng.choice([0, 0, 1, 2])
    pinned = bool(kthreads) and late.random() < 0.3
    pin = late.randrange(cpus) if pinned else None
    # system states came with 5.5 (versions.py): a patch for an older kernel has none
    states = late.random() < 0.2 and (kernel is None or tuple(map(int, kernel.split("."))) >= (5, 5))
    state_versions = [late.randint(0, 2), late.choice([None, 0, 1, 2, 3])] if states else [None, None]
    preempt = rng.choice(["none", "voluntary", "full"])
    unwinder = rng.choice(["orc", "fp"])
    t = rng.randint(2_000, 40_000)
    actions = [(t, "enable", "p0")]
    follow = rng.choice(["none", "disable", "force", "second"] if npatch == 2 else ["none", "disable", "force"])
    if follow == "second":
        actions.append((t + rng.randint(1_000, 400_000), "enable", "p1"))
    elif follow != "none":
        actions.append((t + rng.randint(1_000, 400_000), follow, "p0"))
    if module:
        # during the transition, before it, or long after it
        load = max(0, t + more.choice([-1_500, 300, 1_000, 50_000]))
        actions.append((load, "load", "m0"))
        if module == "unloaded":
            actions.append((load + more.randint(2_000, 300_000), "unload", "m0"))
        actions.sort(key=lambda a: a[0])

    toml = [f"# generated scenario, seed {seed}", "[program]", 'sources = ["base.c"]', f'cflags = ["{opt}"]', "",
            "[machine]", f"cpus = {cpus}", f"quantum = {rng.choice([100, 300, 1000])}",
            f'preempt = "{preempt}"', f'unwinder = "{unwinder}"']
    if kernel:
        toml.append(f'kernel = "{kernel}"')
    if tick:
        toml.append(f"tick = {tick}")
    toml += ["",
            "[[task]]", 'name = "user"', 'entry = "user_entry"', "args = [0]", f"count = {users}", ""]
    if kthreads:
        toml += ["[[task]]", 'name = "kthread"', 'entry = "kthread_entry"', "args = [1]",
                 f"count = {kthreads}", 'kind = "kthread"'] + ([f"cpu = {pin}"] if pinned else []) + [""]
    if module:
        toml += ["[[module]]", 'name = "m0"', 'sources = ["m0.c"]', 'init = "m0_init"', 'exit = "m0_exit"', ""]
    for p, chosen in enumerate(patch_funcs):
        names = [f'"f{i}"' for i in chosen] + (['"m0:mod_fn"'] if patch_module[p] else [])
        toml += ["[[patch]]", f'name = "p{p}"', f'sources = ["p{p}.c"]',
                 "functions = [" + ", ".join(names) + "]"]
        if p == 1 and replace:
            toml.append("replace = true")
        if state_versions[p] is not None:
            toml.append(f"states = [{{ id = 1, version = {state_versions[p]} }}]")
        toml.append("")
    for at, do, patch in actions:
        toml += ["[[action]]", f"at = {at}", f'do = "{do}"']
        if do in ("load", "unload"):
            toml.append(f'module = "{patch}"')
        elif do != "force":
            toml.append(f'patch = "{patch}"')
        toml.append("")
    toml += ["[check]", f'unit = "{unit}"', "", "[fuzz]", "horizon = 20.0", ""]
    path = directory / "scenario.toml"
    path.write_text("\n".join(toml))
    shape = Shape(seed, opt, n, users, kthreads, cpus, preempt, unwinder, npatch, replace,
                  tuple(do for _, do, _ in actions), any("d - 1" in s for f in funcs for s in f.body),
                  any(f.tail.startswith("return f") for f in funcs), kernel, tick, unit, shadow, module,
                  exits, pinned, states, rare_path)
    return path, shape


def _module_function(body: list[str], constant: int) -> str:
    lines = [f"{ATTR} long mod_fn(long x, long d)", "{"] + [f"\t{s}" for s in body]
    return "\n".join(lines + [f"\treturn x + {constant};", "}"])
