"""Hostile and host-dependent guest code: what the emulator answers itself
(time stamps, random numbers, cpuid) and what it refuses (privileged
instructions, stack overflows, wild addresses), under the C hooks and
their Python twins alike."""
import hashlib
import textwrap

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from hypothesis import given, settings, strategies as st

from emu.engine import core, sysinsn
from emu.errors import GuestFault
from emu.images.asm import assemble
from emu.machine.machine import GUARD, STACK_SIZE, Machine
from emu.machine.task import RunState
from emu.runs import scenario
from emu.runs.fuzz import Runner

ACCELS = ("c", "python")
M64 = (1 << 64) - 1

HOST_ANSWERED = """
#include <x86intrin.h>
#include <cpuid.h>
__attribute__((noinline)) long sample(long x) {
    unsigned long long r64 = 0; unsigned int r32 = 0, aux = 0, a, b, c, d; unsigned short r16 = 0;
    unsigned long long t1 = __rdtsc();
    unsigned long long t2 = __rdtscp(&aux);
    __cpuid(0, a, b, c, d);
    int ok = _rdrand64_step(&r64) + _rdrand32_step(&r32) + _rdseed16_step(&r16);
    lpemu_observe(1, t1); lpemu_observe(2, t2); lpemu_observe(3, aux); lpemu_observe(4, b);
    lpemu_observe(5, r64); lpemu_observe(6, r32); lpemu_observe(7, r16); lpemu_observe(8, ok);
    return x;
}
long user_entry(long x) { sample(x); lpemu_sleep(1); return 0; }
long kthread_entry(long x) { for (;;) { sample(x); lpemu_safe_point(); lpemu_sleep(1); } }
"""


def observed(m):
    return [(e.task, e.key, e.value & M64) for e in m.trace if e.kind == core.EV_OBSERVE]


def run_host_answered(img, accel, seed=5, until=30000):
    m = Machine(img, cpus=2, quantum=200, accel=accel)
    m.add_task("a", "user_entry", (1,))
    m.add_task("b", "user_entry", (2,))
    m.add_task("k", "kthread_entry", (3,), kind="kthread", cpu=1)
    m.seed_random(seed)
    m.run(until=until)
    return m


@pytest.fixture
def host_image(compile_c):
    return compile_c(HOST_ANSWERED, cflags=["-mrdrnd", "-mrdseed"])


def test_host_answered_instructions_replay_exactly_under_both_twins(host_image):
    runs = [run_host_answered(host_image, accel) for accel in ACCELS for _ in range(2)]
    hashes = {hashlib.sha256(m.trace.raw()).hexdigest() for m in runs}
    assert len(hashes) == 1
    obs = observed(runs[0])
    assert len(obs) >= 3 * 8
    by_key = {}
    for task, key, value in obs:
        by_key.setdefault(key, []).append((task, value))
    # cpuid: the emulator's vendor, whatever the host is
    assert {v for _, v in by_key[4]} == {0x6d65706c}
    # rdtscp names the task's CPU (the kthread runs on CPU 1)
    assert {(t, v) for t, v in by_key[3]} >= {(0, 0), (2, 1)}
    # every random step succeeded (CF=1), and the values differ
    assert {v for _, v in by_key[8]} == {3}
    assert len({v for _, v in by_key[5]}) == len(by_key[5])
    # time stamps are the virtual clock: each one before the observation that reports it
    for (clock, kind, task, key, value, _) in [e for e in runs[0].trace if e.kind == core.EV_OBSERVE and e.key == 1]:
        assert 0 < value < clock


def test_random_numbers_follow_the_seed(host_image):
    def randoms(seed):
        return [v for _, k, v in observed(run_host_answered(host_image, "c", seed=seed)) if k == 5]
    assert randoms(1) == randoms(1)
    assert randoms(1) != randoms(2)
    # the generator is splitmix64 from the seed: the first draw is its first output
    assert randoms(9)[0] == sysinsn.splitmix64(9)[1]


def test_snapshots_restore_the_random_state(host_image):
    m = run_host_answered(host_image, "c", until=5000)
    snap = m.snapshot()
    state = m.engine.rng
    m.run(until=30000)
    first = observed(m)
    assert m.engine.rng != state
    m.restore(snap)
    assert m.engine.rng == state
    m.run(until=30000)
    assert observed(m) == first


RDTSC_GAP = """
gap:
    fentry
    rdtsc
    mov rcx, rax
    nop
    nop
    rdtsc
    sub rax, rcx
    mov rsi, rax
    mov rdi, 1
    mov rax, 5
    syscall
    ret
user_entry:
    fentry
    call gap
    ret
"""


@pytest.mark.parametrize("accel", ACCELS)
def test_rdtsc_counts_retired_instructions(accel):
    img = assemble(RDTSC_GAP, base=0x400000, name="base")
    m = Machine(img, accel=accel)
    m.add_task("t", "user_entry")
    m.run(until=2000)
    # rdtsc, mov, nop, nop retired between the two time stamps
    assert {v for _, k, v in observed(m) if k == 1} == {4}
    # and the clock counts each of them once, as any other instruction
    same = Machine(assemble(RDTSC_GAP.replace("rdtsc", "nop"), base=0x400000, name="base"), accel=accel)
    same.add_task("t", "user_entry")
    same.run(until=2000)
    assert [e.clock for e in m.trace if e.kind == core.EV_OBSERVE] == \
        [e.clock for e in same.trace if e.kind == core.EV_OBSERVE]


@pytest.mark.parametrize("accel", ACCELS)
@pytest.mark.parametrize("insn,width,keep_high", [
    ("rdrand rbx", 8, False), ("rdrand ebx", 4, False), ("rdrand bx", 2, True),
    ("rdseed r11", 8, False), ("rdseed r11d", 4, False), ("rdseed r11w", 2, True)])
def test_random_steps_write_their_operand_and_set_cf(accel, insn, width, keep_high):
    reg = insn.split()[1]
    full = {"rbx": "rbx", "ebx": "rbx", "bx": "rbx", "r11": "r11", "r11d": "r11", "r11w": "r11"}[reg]
    img = assemble(f"""
probe:
    fentry
    movabs {full}, 0x1122334455667788
    stc
    clc
    {insn}
    setc al
    movzx rsi, al
    mov rdi, 1
    mov rax, 5
    syscall
    mov rsi, {full}
    mov rdi, 2
    mov rax, 5
    syscall
    ret
user_entry:
    fentry
    call probe
    ret
""", base=0x400000, name="base")
    m = Machine(img, accel=accel)
    m.add_task("t", "user_entry")
    m.seed_random(77)
    m.run(until=500)
    obs = {}
    for _, k, v in observed(m):
        obs.setdefault(k, v)        # the first pass (the task loops)
    draw = sysinsn.splitmix64(77)[1]
    expect = {8: draw, 4: draw & 0xffffffff, 2: 0x1122334455660000 | draw & 0xffff}[width]
    assert obs == {1: 1, 2: expect}
    assert keep_high == (width == 2)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 7, 0x80000000, 0x80000001, 0x80000008]),
       st.integers(0, 2**32 - 1), st.integers(0, 300))
def test_cpuid_model_is_the_same_in_c_and_python(leaf, sub, cpu):
    assert core.Engine.cpuid(leaf, sub, cpu) == sysinsn.cpuid(leaf, sub, cpu)


@pytest.mark.parametrize("cpuid", [core.Engine.cpuid, sysinsn.cpuid], ids=["c", "python"])
def test_cpuid_names_the_vendor_lpemu_x86_64(cpuid):
    """Leaf 0's vendor string, as a kernel reads it (ebx, edx, ecx; docs/guest.md)."""
    import struct
    eax, ebx, ecx, edx = cpuid(0, 0, 0)
    assert eax == 7 and struct.pack("<III", ebx, edx, ecx) == b"lpemu-x86-64"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([0x66, 0xf3, 0xf2, 0x2e, 0x3e, 0x64, 0x65]), max_size=3),
       st.integers(0x40, 0x4f) | st.none(), st.integers(0, 255))
def test_random_step_decoding_agrees_with_capstone(prefixes, rex, modrm):
    code = bytes(prefixes) + (bytes([rex]) if rex is not None else b"") + bytes([0x0f, 0xc7, modrm]) + b"\0" * 8
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    insn = next(iter(md.disasm(code, 0x1000, count=1)), None)
    dest = sysinsn.random_dest(code)
    if insn is None or insn.mnemonic not in ("rdrand", "rdseed"):
        assert dest is None or insn is None
        return
    if {0xf2, 0xf3} & set(prefixes):
        assert dest is None         # #UD (SDM: RDRAND, RDSEED), though capstone decodes it
        return
    assert dest is not None and dest[0] == insn.mnemonic
    names = {8: ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"] + [f"r{i}" for i in range(8, 16)],
             4: ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"] + [f"r{i}d" for i in range(8, 16)],
             2: ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di"] + [f"r{i}w" for i in range(8, 16)]}
    reg, width = dest[1] & 15, dest[1] >> 8
    assert names[width][reg] == insn.op_str


def test_runs_with_host_answered_instructions_replay_pooled_and_fresh(tmp_path):
    (tmp_path / "base.c").write_text('#include "lpemu.h"\n' + HOST_ANSWERED)
    (tmp_path / "patch.c").write_text('#include "lpemu.h"\n' + HOST_ANSWERED.replace("return x;", "return x + 1;"))
    (tmp_path / "s.toml").write_text(textwrap.dedent("""
        [program]
        sources = ["base.c"]
        cflags = ["-mrdrnd", "-mrdseed"]
        [machine]
        cpus = 2
        quantum = 300
        [[task]]
        name = "user"
        entry = "user_entry"
        args = [1]
        count = 2
        [[task]]
        name = "k"
        entry = "kthread_entry"
        args = [2]
        kind = "kthread"
        [[patch]]
        name = "p"
        sources = ["patch.c"]
        functions = ["sample"]
        [[action]]
        at = 8000
        do = "enable"
        patch = "p"
        [fuzz]
        models = ["livepatch"]
        horizon = 3.0
        """))
    prog = scenario.build(scenario.load(tmp_path / "s.toml"))
    for model in ("livepatch", "kgraft", "stop_machine"):
        hashes = set()
        for sched in ("c", "python"):
            runner = Runner(prog, sched=sched)
            spec = runner.plan(model, 3, strategy="random")
            for _ in range(3):          # fresh, then pooled (C), or fresh each time (Python)
                res = runner.execute(spec)
                assert res.fault is None
                hashes.add(res.trace_hash)
            other = runner.execute(runner.plan(model, 4, strategy="random"))
            runner.close()
        assert len(hashes) == 1, model
        assert other.trace_hash not in hashes


# ---- what the guest may not do -------------------------------------------------------

PRIVILEGED = ["mov rax, cr0", "mov cr0, rax", "mov cr3, rax", "mov cr4, rax", "mov rax, dr7", "wrmsr", "rdmsr",
              "lgdt [rsp]", "lidt [rsp]", "sysenter", ".byte 0x48, 0x0f, 0x35", ".byte 0x48, 0x0f, 0x07", "hlt", "cli", "sti", "in al, dx",
              "out dx, al", "invlpg [rax]", "swapgs", "wbinvd", "clts", "rdpmc", "xsetbv", "lmsw ax", "ltr ax"]


def _one_insn_guest(insn: str):
    return assemble(f"""
culprit_fn:
    fentry
    lea rax, [rip + culprit_fn]
    xor edx, edx
    {insn}
    ret
user_entry:
    fentry
    call culprit_fn
    ret
""", base=0x400000, name="base")


@pytest.mark.parametrize("accel", ACCELS)
@pytest.mark.parametrize("insn", PRIVILEGED)
def test_privileged_instructions_fault_naming_the_instruction(accel, insn):
    img = _one_insn_guest(insn)
    m = Machine(img, accel=accel)
    m.add_task("culprit", "user_entry")
    with pytest.raises(GuestFault) as err:
        m.run(until=1000)
    e = err.value
    assert e.kind == "privileged" and e.task == "culprit"
    assert e.rip == m.function("culprit_fn").start + 5 + 7 + 2
    first = str(e).splitlines()[0]
    assert "privileged instruction" in first
    name = {".byte 0x48, 0x0f, 0x35": "sysexitq", ".byte 0x48, 0x0f, 0x07": "sysretq"}.get(insn, insn.split()[0])
    assert f"'{name}" in first


OVERFLOW = """
__attribute__((noinline)) long deep(long n) {
    volatile char buf[SIZE];
    buf[SIZE - 1] = (char)n;
    buf[0] = (char)n;
    return n ? deep(n - 1) + buf[n & 1] : 0;
}
long victim_entry(long x) { for (;;) { lpemu_yield(); } }
long culprit_entry(long x) { lpemu_sleep(2); return deep(x); }
"""


@pytest.mark.parametrize("accel", ACCELS)
@pytest.mark.parametrize("size", [GUARD + 64, 3 * GUARD, 6 * GUARD])
def test_a_frame_bigger_than_the_guard_is_caught_at_the_overflowing_task(compile_c, accel, size):
    img = compile_c(OVERFLOW.replace("SIZE", str(size)))
    m = Machine(img, cpus=1, quantum=100, accel=accel)
    m.add_task("victim", "victim_entry", kind="kthread")
    m.add_task("culprit", "culprit_entry", (12,))
    m.add_task("above", "victim_entry", kind="kthread")
    with pytest.raises(GuestFault) as err:
        m.run(until=200000)
    e = err.value
    assert e.task == "culprit" and e.kind == "stack-overflow"
    deep = m.function("deep")
    assert deep.start <= e.rip < deep.end
    assert "stack" in str(e).splitlines()[0]


WILD = {
    "kernel": ("long entry(long x) { return *(volatile long *)0xffffffff81000000UL; }",
               "fault", "read of unmapped memory at 0xffffffff81000000"),
    "poison": ("long entry(long x) { *(volatile long *)0xdead000000000100UL = 1; return 0; }",
               "gp", "general protection fault (#GP): non-canonical address 0xdead000000000100"),
    "alias": ("long entry(long x) { *(volatile long *)(0x8000000000000000UL + 0x400000) = 1; return 0; }",
              "gp", "non-canonical address 0x8000000000400000"),
    "null": ("long (*volatile fp)(long); long entry(long x) { return fp(x) + 1; }",
             "null-call", "call to address 0 (a NULL function pointer), called from"),
    "high": ("long entry(long x) { ((void (*)(void))0xffffffff81000000UL)(); return 1; }",
             "fault", "fetch from unmapped memory at 0xffffffff81000000"),
    # The heap (0x20000000) is read-write, the text read-execute.
    "text": ("long entry(long x) { *(volatile char *)((char *)entry + 3) = 0x90; return 0; }",
             "fault", "write to protected memory at ENTRY"),
    "nx": ("long entry(long x) { *(volatile long *)0x20000010UL = 0xc3; "
           "((void (*)(void))0x20000010UL)(); return 1; }",
           "fault", "fetch from non-executable memory at 0x20000010"),
}


@pytest.mark.parametrize("fast_memory", [True, False], ids=["fast", "cpu-tlb"])
@pytest.mark.parametrize("accel", ACCELS)
@pytest.mark.parametrize("case", sorted(WILD))
def test_wild_addresses_are_reported_exactly(compile_c, accel, case, fast_memory):
    """Both memory modes report the same fault: the fast one sees it in its
    TLB fill (only the page), the other in Unicorn's invalid-memory hook."""
    text, kind, words = WILD[case]
    img = compile_c(text)
    m = Machine(img, accel=accel, fast_memory=fast_memory)
    m.add_task("t", "entry")
    with pytest.raises(GuestFault) as err:
        m.run(until=1000)
    assert err.value.kind == kind
    assert words.replace("ENTRY", f"{m.function('entry').start + 3:#x}") in str(err.value).splitlines()[0]


# One block moves rsp past the guard (to the top of the stack below, another
# task's), zeroes the words there and moves rsp back: nothing faults in the
# culprit, and the victim would return to address 0 later.
SKIP_THE_GUARD = f"""
culprit_fn:
    fentry
    sub rsp, {STACK_SIZE + GUARD:#x}
    mov rdi, rsp
    mov ecx, 16
    xor eax, eax
    rep stosq
    add rsp, {STACK_SIZE + GUARD:#x}
    ret
user_entry:
    fentry
    call culprit_fn
    ret
victim_entry:
    fentry
.Lagain:
    call yield_once
    jmp .Lagain
yield_once:
    fentry
    mov rax, 2
    syscall
    ret
"""


@pytest.mark.parametrize("accel", ACCELS)
def test_a_frame_that_skips_the_guard_is_blamed_on_its_task_not_its_victim(accel):
    img = assemble(SKIP_THE_GUARD, base=0x400000, name="base")
    m = Machine(img, cpus=1, accel=accel)
    m.add_task("victim", "victim_entry", kind="kthread")
    m.add_task("culprit", "user_entry")
    with pytest.raises(GuestFault) as err:
        m.run(until=100000)
    e = err.value
    assert (e.task, e.kind, e.rip) == ("culprit", "stack-overflow", m.function("culprit_fn").start + 5)
    assert f"sub rsp, {STACK_SIZE + GUARD:#x}" in str(e)
    assert m.tasks[0].state is not RunState.EXITED


@pytest.mark.parametrize("mnemonic,op_str,far", [
    ("sub", "rsp, 0x10", False), ("sub", "rsp, 0xff8", False), ("sub", "rsp, 0x1000", True),
    ("add", "rsp, 0x2000", True), ("add", "rsp, -0x1000", True), ("and", "rsp, 0xfffffffffffffff0", False),
    ("and", "rsp, 0xffffffffffff0000", True), ("lea", "rsp, [rsp + 0x20]", False),
    ("lea", "rsp, [rsp - 0x2000]", True), ("lea", "rsp, [rbp - 0x10]", True), ("mov", "rsp, rax", True),
    ("sub", "rsp, rax", True), ("xchg", "rax, rsp", True), ("pop", "rsp", True), ("push", "rax", False),
    ("leave", "", False), ("mov", "rax, rsp", False), ("cmp", "rsp, rax", False), ("enter", "0x8000, 0", True), ("enter", "0x20, 0", False),
])
def test_far_moves_of_rsp_are_the_ones_checked(mnemonic, op_str, far):
    assert sysinsn.moves_rsp_far(mnemonic, op_str, GUARD) is far


@pytest.mark.parametrize("accel", ACCELS)
def test_a_random_step_with_a_rep_prefix_is_an_invalid_instruction(accel):
    img = assemble("""
user_entry:
    fentry
    .byte 0xf3, 0x48, 0x0f, 0xc7, 0xf0
    ret
""", base=0x400000, name="base")
    m = Machine(img, accel=accel)
    m.add_task("t", "user_entry")
    with pytest.raises(GuestFault) as err:
        m.run(until=1000)
    assert err.value.rip == m.function("user_entry").start + 5
    assert "invalid instruction" in str(err.value).splitlines()[0]


# Where a generated access may go: the heap (read-write), the text (read-
# execute), the per-CPU areas, the guard page below a stack, unmapped and
# non-canonical space; offsets near page ends, so accesses cross pages too.
_ACCESS_BASES = [0x2000_0000, 0x2000_0000 + 0x10_0000 - 8, 0x400000, 0x400000 + 0x1000 - 4, 0x0, 0x1000,
                 0xFFFF_FFFF_8100_0000, 0xDEAD_0000_0000_0100, 0x7FFF_FFFF_FFFF_FFFC, 0x3000_0000]
_ACCESSES = {
    "read": "mov rax, qword ptr [rax]",
    "write": "mov qword ptr [rax], rcx",
    "byte": "mov byte ptr [rax], cl",
    "push": "mov rsp, rax\n    push rcx",
    "call": "call rax",
    "jmp": "jmp rax",
    "string": "mov rdi, rax\n    mov ecx, 3\n    rep stosq",
    # rsi (read) at the address, rdi (written) at the other one
    "movs": "mov rsi, rax\n    mov rdi, rdx\n    movsq",
    "rep movs": "mov rsi, rax\n    mov rdi, rdx\n    mov ecx, 5\n    rep movsb",
}


def _at_text_end(text: str):
    """An image of text (a PAD line first, the label `after` last) whose
    last instruction ends exactly at the end of the text's first page."""
    probe = assemble(text.replace("PAD", ""), base=0x400000, name="base")
    pad = 0x401000 - probe.symbols["after"]
    img = assemble(text.replace("PAD", f".skip {pad}, 0x90"), base=0x400000, name="base")
    assert img.symbols["after"] == 0x401000
    return img


@settings(max_examples=60, deadline=None)
@given(base=st.sampled_from(_ACCESS_BASES), delta=st.integers(-16, 16),
       other=st.sampled_from(_ACCESS_BASES), access=st.sampled_from(sorted(_ACCESSES)),
       at_end=st.booleans())
def test_both_memory_modes_report_a_wild_access_alike(base, delta, other, access, at_end):
    """fast_memory (the virtual TLB, whose fill sees pages) and the CPU TLB
    (Unicorn's invalid-memory hook) give the same outcome and the same
    report, whatever the access, wherever it goes (a string move's read and
    write to different places), and where the faulting instruction sits (in
    the last bytes of the text: fewer than 16 bytes of code from it on)."""
    addr = (base + delta) & (2**64 - 1)
    head = f"""
user_entry:
    fentry
    movabs rax, {addr:#x}
    movabs rdx, {other + 0x40:#x}
    mov rcx, 0xc3
"""
    if at_end and access in ("read", "write", "byte"):
        img = _at_text_end("    PAD\n" + head + "    " + _ACCESSES[access] + "\n    ret\nafter:\n")
    else:
        img = assemble(head + f"    {_ACCESSES[access]}\n    ret\n", base=0x400000, name="base")
    outcomes = []
    for fast in (True, False):
        m = Machine(img, cpus=1, fast_memory=fast)
        m.add_task("t", "user_entry")
        try:
            m.run(until=2000)
            outcomes.append(("ran", m.now))
        except GuestFault as e:
            outcomes.append((e.kind, e.rip, str(e).splitlines()[0]))
        finally:
            m.engine.close()
    assert outcomes[0] == outcomes[1]
