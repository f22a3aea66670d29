"""Shadow variables (emu/machine/shadow.py): test-shadow-vars.sh's transcript, the
API's edge cases, and patched guest code that keeps a new field in one."""
from textwrap import dedent

import pytest

from emu.engine import core
from emu.machine.machine import HEAP_BASE, Machine
from emu.models.livepatch import Livepatch
from emu.kernel.patch import VMLINUX, make_patch
from emu.machine.shadow import Heap

MOD_TEST = "test_klp_shadow_vars"


@pytest.fixture
def machine(compile_c):
    m = Machine(compile_c("long entry(long x) { lpemu_sleep(1); return x; }"))
    m.add_task("t", "entry")
    return m


def test_shadow_vars_selftest_transcript(machine):
    """test_klp_shadow_vars.c's init, step by step, with its pointer ids."""
    m = machine
    sv_api = m.shadow
    ids: dict = {}

    def ptr_id(ptr):
        return ids.setdefault(ptr, len(ids))

    def say(text):
        m.printk(f"{MOD_TEST}: {text}")

    def shadow_ctor(obj, shadow_data, ctor_data):
        if ctor_data is None:
            return -22
        var = sv_api.read_word(ctor_data)
        sv_api.write_word(shadow_data, var)
        say(f"shadow_ctor: PTR{ptr_id(shadow_data)} -> PTR{ptr_id(var)}")
        return 0

    def shadow_dtor(obj, shadow_data):
        say(f"shadow_dtor(obj=PTR{ptr_id(obj)}, shadow_data=PTR{ptr_id(shadow_data)})")

    def get(obj, sid):
        sv = sv_api.get(obj, sid)
        say(f"klp_shadow_get(obj=PTR{ptr_id(obj)}, id={sid:#x}) = PTR{ptr_id(sv or None)}")
        return sv

    def alloc(kind, obj, sid, ctor_data):
        fn = sv_api.alloc if kind == "alloc" else sv_api.get_or_alloc
        sv = fn(obj, sid, 8, shadow_ctor, ctor_data)
        say(f"klp_shadow_{kind}(obj=PTR{ptr_id(obj)}, id={sid:#x}, size=8, gfp_flags=GFP_KERNEL), "
            f"ctor=PTR{ptr_id(shadow_ctor)}, ctor_data=PTR{ptr_id(sv_api.read_word(ctor_data))} "
            f"= PTR{ptr_id(sv or None)}")
        return sv

    def free(obj, sid, dtor):
        sv_api.free(obj, sid, dtor)
        say(f"klp_shadow_free(obj=PTR{ptr_id(obj)}, id={sid:#x}, dtor=PTR{ptr_id(dtor)})")

    def free_all(sid, dtor):
        sv_api.free_all(sid, dtor)
        say(f"klp_shadow_free_all(id={sid:#x}, dtor=PTR{ptr_id(dtor)})")

    def expected(sv, value):
        if sv and sv_api.read_word(sv) == value:
            say(f"  got expected PTR{ptr_id(sv)} -> PTR{ptr_id(value)} result")

    # init's locals: three objects, the new fields, pointers to them
    frame = sv_api.heap.alloc(256)
    objs = [frame + 32 * i for i in range(3)]
    nfields1 = [frame + 96 + i for i in range(3)]
    nfields2 = [frame + 100 + 4 * i for i in range(3)]
    pnfields1, pnfields2, pndup = ([frame + base + 8 * i for i in range(3)] for base in (128, 152, 176))
    sv1, sv2 = [0] * 3, [0] * 3
    SV_ID1, SV_ID2 = 0x1234, 0x1235

    m.printk(f"% modprobe {MOD_TEST}")
    ptr_id(None)
    if not get(objs[0], SV_ID1):
        say("  got expected NULL result")
    for i in range(3):                                      # pass 1
        sv_api.write_word(pnfields1[i], nfields1[i])
        ptr_id(nfields1[i])
        sv1[i] = alloc("alloc" if i % 2 else "get_or_alloc", objs[i], SV_ID1, pnfields1[i])
        sv_api.write_word(pnfields2[i], nfields2[i])
        ptr_id(nfields2[i])
        sv2[i] = alloc("alloc", objs[i], SV_ID2, pnfields2[i])
    for i in range(3):                                      # pass 2
        sv = get(objs[i], SV_ID1)
        assert sv == sv1[i]
        expected(sv1[i], nfields1[i])
        sv = get(objs[i], SV_ID2)
        assert sv == sv2[i]
        expected(sv2[i], nfields2[i])
    for i in range(3):                                      # pass 3
        sv_api.write_word(pndup[i], nfields1[i])
        ptr_id(nfields1[i])
        sv = alloc("get_or_alloc", objs[i], SV_ID1, pndup[i])
        assert sv == sv1[i]
        expected(sv1[i], nfields1[i])
    for i in range(3):                                      # pass 4
        free(objs[i], SV_ID1, shadow_dtor)
        if not get(objs[i], SV_ID1):
            say("  got expected NULL result")
    for i in range(3):                                      # pass 5
        sv = get(objs[i], SV_ID2)
        assert sv == sv2[i]
        expected(sv2[i], nfields2[i])
    free_all(SV_ID2, None)                                  # pass 6
    for i in range(3):
        if not get(objs[i], SV_ID2):
            say("  got expected NULL result")
    m.printk(f"% rmmod {MOD_TEST}")

    golden = dedent("""\
        % modprobe $MOD_TEST
        $MOD_TEST: klp_shadow_get(obj=PTR1, id=0x1234) = PTR0
        $MOD_TEST:   got expected NULL result
        $MOD_TEST: shadow_ctor: PTR3 -> PTR2
        $MOD_TEST: klp_shadow_get_or_alloc(obj=PTR1, id=0x1234, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR2 = PTR3
        $MOD_TEST: shadow_ctor: PTR6 -> PTR5
        $MOD_TEST: klp_shadow_alloc(obj=PTR1, id=0x1235, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR5 = PTR6
        $MOD_TEST: shadow_ctor: PTR8 -> PTR7
        $MOD_TEST: klp_shadow_alloc(obj=PTR9, id=0x1234, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR7 = PTR8
        $MOD_TEST: shadow_ctor: PTR11 -> PTR10
        $MOD_TEST: klp_shadow_alloc(obj=PTR9, id=0x1235, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR10 = PTR11
        $MOD_TEST: shadow_ctor: PTR13 -> PTR12
        $MOD_TEST: klp_shadow_get_or_alloc(obj=PTR14, id=0x1234, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR12 = PTR13
        $MOD_TEST: shadow_ctor: PTR16 -> PTR15
        $MOD_TEST: klp_shadow_alloc(obj=PTR14, id=0x1235, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR15 = PTR16
        $MOD_TEST: klp_shadow_get(obj=PTR1, id=0x1234) = PTR3
        $MOD_TEST:   got expected PTR3 -> PTR2 result
        $MOD_TEST: klp_shadow_get(obj=PTR1, id=0x1235) = PTR6
        $MOD_TEST:   got expected PTR6 -> PTR5 result
        $MOD_TEST: klp_shadow_get(obj=PTR9, id=0x1234) = PTR8
        $MOD_TEST:   got expected PTR8 -> PTR7 result
        $MOD_TEST: klp_shadow_get(obj=PTR9, id=0x1235) = PTR11
        $MOD_TEST:   got expected PTR11 -> PTR10 result
        $MOD_TEST: klp_shadow_get(obj=PTR14, id=0x1234) = PTR13
        $MOD_TEST:   got expected PTR13 -> PTR12 result
        $MOD_TEST: klp_shadow_get(obj=PTR14, id=0x1235) = PTR16
        $MOD_TEST:   got expected PTR16 -> PTR15 result
        $MOD_TEST: klp_shadow_get_or_alloc(obj=PTR1, id=0x1234, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR2 = PTR3
        $MOD_TEST:   got expected PTR3 -> PTR2 result
        $MOD_TEST: klp_shadow_get_or_alloc(obj=PTR9, id=0x1234, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR7 = PTR8
        $MOD_TEST:   got expected PTR8 -> PTR7 result
        $MOD_TEST: klp_shadow_get_or_alloc(obj=PTR14, id=0x1234, size=8, gfp_flags=GFP_KERNEL), ctor=PTR4, ctor_data=PTR12 = PTR13
        $MOD_TEST:   got expected PTR13 -> PTR12 result
        $MOD_TEST: shadow_dtor(obj=PTR1, shadow_data=PTR3)
        $MOD_TEST: klp_shadow_free(obj=PTR1, id=0x1234, dtor=PTR17)
        $MOD_TEST: klp_shadow_get(obj=PTR1, id=0x1234) = PTR0
        $MOD_TEST:   got expected NULL result
        $MOD_TEST: shadow_dtor(obj=PTR9, shadow_data=PTR8)
        $MOD_TEST: klp_shadow_free(obj=PTR9, id=0x1234, dtor=PTR17)
        $MOD_TEST: klp_shadow_get(obj=PTR9, id=0x1234) = PTR0
        $MOD_TEST:   got expected NULL result
        $MOD_TEST: shadow_dtor(obj=PTR14, shadow_data=PTR13)
        $MOD_TEST: klp_shadow_free(obj=PTR14, id=0x1234, dtor=PTR17)
        $MOD_TEST: klp_shadow_get(obj=PTR14, id=0x1234) = PTR0
        $MOD_TEST:   got expected NULL result
        $MOD_TEST: klp_shadow_get(obj=PTR1, id=0x1235) = PTR6
        $MOD_TEST:   got expected PTR6 -> PTR5 result
        $MOD_TEST: klp_shadow_get(obj=PTR9, id=0x1235) = PTR11
        $MOD_TEST:   got expected PTR11 -> PTR10 result
        $MOD_TEST: klp_shadow_get(obj=PTR14, id=0x1235) = PTR16
        $MOD_TEST:   got expected PTR16 -> PTR15 result
        $MOD_TEST: klp_shadow_free_all(id=0x1235, dtor=PTR0)
        $MOD_TEST: klp_shadow_get(obj=PTR1, id=0x1235) = PTR0
        $MOD_TEST:   got expected NULL result
        $MOD_TEST: klp_shadow_get(obj=PTR9, id=0x1235) = PTR0
        $MOD_TEST:   got expected NULL result
        $MOD_TEST: klp_shadow_get(obj=PTR14, id=0x1235) = PTR0
        $MOD_TEST:   got expected NULL result
        % rmmod $MOD_TEST
        """).replace("$MOD_TEST", MOD_TEST).splitlines()
    assert [text for _, text in m.log] == golden
    assert sv_api.vars == {} and list(sv_api.heap.used) == [frame]


def test_alloc_of_an_existing_pair_warns_and_returns_null(machine):
    sv = machine.shadow
    calls = []
    a = sv.alloc(0x1000, 7, 16, lambda obj, data, arg: calls.append(arg) or 0, "first")
    assert a and calls == ["first"]
    assert sv.alloc(0x1000, 7, 16, lambda *args: calls.append("again") or 0) == 0
    assert [text for _, text in machine.log] == ["Duplicate shadow variable <0000000000001000, 7>"]
    # get_or_alloc returns it, without the constructor
    assert sv.get_or_alloc(0x1000, 7, 16, lambda *args: calls.append("ctor") or 0) == a
    assert calls == ["first"]
    # another id or another object is another variable
    assert sv.alloc(0x1000, 8, 16) not in (0, a) and sv.alloc(0x2000, 7, 16) not in (0, a)


def test_a_failing_constructor_attaches_nothing(machine):
    sv = machine.shadow
    assert sv.alloc(0x1000, 1, 8, lambda *args: -12) == 0
    assert sv.get(0x1000, 1) == 0 and sv.heap.used == {}
    assert [text for _, text in machine.log] == \
        ["livepatch: Failed to construct shadow variable <0000000000001000, 1> (-12)"]
    assert sv.get_or_alloc(0x1000, 1, 8) != 0


def test_free_calls_the_destructor_before_the_memory_goes(machine):
    sv = machine.shadow
    data = sv.alloc(0x1000, 1, 8)
    sv.write_word(data, 0x5a5a)
    seen = []
    sv.free(0x1000, 1, lambda obj, d: seen.append((obj, d, sv.read_word(d), sv.get(obj, 1))))
    # detached (get finds nothing) but the data still readable
    assert seen == [(0x1000, data, 0x5a5a, 0)]
    sv.free(0x1000, 1, lambda *args: seen.append("twice"))      # gone: nothing to call
    assert len(seen) == 1
    for obj in (1, 2, 3):
        sv.alloc(obj, 5, 8)
    sv.alloc(4, 6, 8)
    freed = []
    sv.free_all(5, lambda obj, d: freed.append(obj))
    assert sorted(freed) == [1, 2, 3] and list(sv.vars) == [(4, 6)]


def test_heap_blocks_are_zeroed_aligned_and_coalesced(machine):
    heap = Heap(machine, HEAP_BASE, 256)
    a, b, c = heap.alloc(10), heap.alloc(16), heap.alloc(100)
    assert (a, b, c) == (HEAP_BASE, HEAP_BASE + 16, HEAP_BASE + 32)
    heap.view(a, 16)[:] = b"\xff" * 16
    assert heap.alloc(200) == 0                    # only 112 bytes left
    heap.free(a)
    heap.free(b)
    assert heap.free_blocks[0] == (HEAP_BASE, 32)  # merged
    assert heap.alloc(32) == HEAP_BASE and bytes(heap.view(HEAP_BASE, 32)) == bytes(32)
    with pytest.raises(ValueError):
        heap.free(HEAP_BASE + 8)


GUEST = """
struct conn { long id; long bytes; };
struct conn conns[4];
__attribute__((noinline)) long account(struct conn *c, long n) { c->bytes += n; return c->bytes; }
long user(long i) { lpemu_observe(1, account(&conns[i & 3], 10)); lpemu_sleep(1); return 0; }
"""
GUEST_PATCH = """
struct conn { long id; long bytes; };
/* a new field, "calls", kept in a shadow variable of the connection */
long account(struct conn *c, long n)
{
    long *calls = lpemu_shadow_get_or_alloc(c, 0x1234, sizeof(long));
    if (calls) {
        (*calls)++;
        lpemu_observe(2, (long)c);
        lpemu_observe(3, *calls);
    }
    if (lpemu_shadow_alloc(c, 0x1234, sizeof(long)))      /* a duplicate: NULL */
        lpemu_observe(4, 1);
    c->bytes += n;
    return c->bytes;
}
"""


def test_patched_guest_code_keeps_a_new_field_in_a_shadow_variable(compile_c):
    base = compile_c(GUEST)
    m = Machine(base, cpus=2, quantum=300)
    for i in range(4):
        m.add_task(f"user{i}", "user", (i,))
    lp = Livepatch(m)
    img = compile_c(GUEST_PATCH, name="shadow_fix", base=m.module_base(), link_against=base, keep={"account"})
    m.load(img)
    # as samples/livepatch/livepatch-shadow-fix*: the variables go with the patch
    patch = make_patch(m, "shadow_fix", img, ["account"], callbacks={
        VMLINUX: {"post_unpatch": lambda machine, p, obj: lp.shadow.free_all(0x1234)}})
    m.run(until=m.seconds(0.05))
    lp.enable(patch)
    m.run(until=m.seconds(2))
    assert lp.transitions[0].result == "completed"
    conns = {base.symbols["conns"] + 16 * i for i in range(4)}
    assert {obj for obj, sid in lp.shadow.vars} == conns
    # each connection's counter counts that connection's calls, in guest memory
    events = [e for e in m.trace if e.kind == core.EV_OBSERVE and e.key in (2, 3, 4)]
    assert not [e for e in events if e.key == 4]
    last = {}
    for task in m.tasks:
        mine = [e for e in events if e.task == task.tid]
        for obj_event, count_event in zip(mine[::2], mine[1::2]):
            assert (obj_event[3], count_event[3]) == (2, 3)
            obj, count = obj_event[4], count_event[4]
            assert count == last.get(obj, 0) + 1
            last[obj] = count
    for obj in conns:
        assert lp.shadow.read_word(lp.shadow.get(obj, 0x1234)) == last[obj]
    dup = [text for _, text in m.log if text.startswith("Duplicate shadow variable")]
    assert len(dup) == sum(last.values())
    lp.disable(patch)
    m.run(until=m.seconds(4))
    assert lp.transitions[1].result == "completed"
    assert lp.shadow.vars == {} and lp.shadow.heap.used == {}


COUNTER = """
long objs[2];
long entry(long i)
{
	long *n = lpemu_shadow_get_or_alloc(&objs[i], 9, sizeof(long));
	lpemu_observe(1, ++*n);
	lpemu_sleep(1);
	return 0;
}
"""


def test_base_code_has_the_api_before_any_model_and_a_snapshot_keeps_it(compile_c):
    """klp_shadow_* is vmlinux's: guest code of a machine without any model
    uses it (it faulted, 'unknown hypercall 8', until a model registered
    it). A snapshot takes the variables with the heap's memory: restored,
    the machine holds exactly the variables it held then."""
    m = Machine(compile_c(COUNTER), cpus=1)
    m.add_task("a", "entry", (0,))
    m.add_task("b", "entry", (1,))
    m.start()
    m.run(until=m.seconds(0.1))
    objs = {obj for obj, sid in m.shadow.vars}
    assert len(objs) == 2 and all(sid == 9 for _, sid in m.shadow.vars)
    snap, before = m.snapshot(), m.shadow.state()
    counts = {obj: m.shadow.read_word(m.shadow.get(obj, 9)) for obj in objs}
    extra = m.shadow.alloc(0x1234, 1, 64)
    m.shadow.free(min(objs), 9)
    m.run(until=m.seconds(0.2))
    m.restore(snap)
    assert m.shadow.state() == before
    assert m.shadow.get(0x1234, 1) == 0
    assert {obj: m.shadow.read_word(m.shadow.get(obj, 9)) for obj in objs} == counts
    assert m.shadow.alloc(0x1234, 1, 64) == extra             # the same heap, the same first fit
