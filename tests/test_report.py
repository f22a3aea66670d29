"""emu.app.report on real runs: activation spans, the Chrome trace-event file,
the timeline picture."""
import json
import time
from pathlib import Path

import pytest

from emu.engine import core
from emu.app import report
from emu.errors import UserError
from emu.machine.machine import EV_KERNEL_EXIT, EV_PATCH_STATE, Machine
from emu.machine.task import PATCHED
from emu.models import make_model
from emu.kernel.patch import make_patch

# foo() { f = bar(); something_else(); baz(f); } without a tail call to baz,
# so bar and baz run nested inside foo's activation.
BASE = """
volatile long zero;
__attribute__((noinline)) long bar(void) { return 5 + zero; }
__attribute__((noinline)) void something_else(long t) { lpemu_sleep(t); }
__attribute__((noinline)) long baz(long f) { lpemu_observe(1, f); return f + zero; }
__attribute__((noinline)) long foo(long t) { long f = bar(); something_else(t); long r = baz(f); return r + zero; }
long user_entry(long t) { return foo(t) + zero; }
"""
PATCH = """
extern volatile long zero;
__attribute__((noinline)) long bar(void) { return 5000 + zero; }
__attribute__((noinline)) long baz(long f) { lpemu_observe(2, f); return f + zero; }
"""
SHOWN = ("foo", "bar", "baz")


def run(compile_c, model_name, *, sleep=1, until=3.0, enable_at=20_000):
    """Three user tasks on two CPUs, a bar+baz patch enabled at enable_at."""
    base = compile_c(BASE)
    m = Machine(base, cpus=2, quantum=300, name="report-test")
    for i in range(3):
        m.add_task(f"user{i}", "user_entry", (sleep,))
    img = compile_c(PATCH, name="patch", base=m.module_base(), link_against=base, keep={"bar", "baz"})
    m.load(img)
    model = make_model(model_name, m)
    patch = model.add(make_patch(m, "p1", img, ["bar", "baz"]))
    for name in SHOWN:
        m.watch(m.function(name))
    m.at(enable_at, lambda: model.enable(patch))
    m.run(until=m.seconds(until))
    functions = {m.function(name).id for name in SHOWN}
    return m, model, functions


@pytest.fixture
def livepatch_run(compile_c):
    return run(compile_c, "livepatch")


def test_activations_nest_and_carry_the_entry_version(livepatch_run):
    m, model, functions = livepatch_run
    assert model.transitions[0].result == "completed"
    spans = report.activations(m, functions)
    assert spans and {s.function for s in spans} == set(SHOWN)
    entries = {(e.task, e.clock): e for e in m.trace if e.kind == core.EV_ENTRY}
    for s in spans:
        entry = entries[(s.task, s.start)]
        assert m.functions[entry[3]].name == s.function and entry[4] == s.version
        assert s.start <= s.end <= m.now and s.task_name == m.tasks[s.task].name
        # foo is outermost; bar and baz run inside a foo of the same task that covers them
        if s.function == "foo":
            assert s.depth == 0 and s.version == 0          # foo is traced, not patched
        else:
            assert s.depth == 1
            outer = [o for o in spans if o.task == s.task and o.function == "foo"
                     and o.start <= s.start and s.end <= o.end]
            assert len(outer) == 1
    # bar returns before the sleep in something_else: its span ends at its
    # exit, well before baz's entry (not at it, as a rule from entries gave)
    bar = next(s for s in spans if s.function == "bar" and s.finished)
    baz = next(s for s in spans if s.function == "baz" and s.task == bar.task and s.start >= bar.end)
    assert bar.end < baz.start
    assert {s.version for s in spans if s.function in ("bar", "baz")} == {0, 1}
    # every finished span ends at its function's exit, a finished foo at or before its kernel exit
    assert all(s.end in exit_clocks(m, s) for s in spans if s.finished)
    exits = {(e.task, e.clock) for e in m.trace if e.kind == EV_KERNEL_EXIT}
    for s in spans:
        if s.function == "foo" and s.finished:
            assert any(t == s.task and s.end <= c for t, c in exits)


@pytest.mark.parametrize("model_name", ["livepatch", "stop_machine"])
def test_a_handed_over_value_is_a_flow_from_its_producer_to_its_consumer(compile_c, model_name):
    from emu.runs import handover
    m, model, functions = run(compile_c, model_name)
    handed = handover.find(m, model.patches)
    assert handed, "the run hands no value over"
    trace = report.perfetto(m, model.transitions, functions, handed)
    check_trace_event_format(trace)
    flows = [e for e in trace["traceEvents"] if e["ph"] in ("s", "f")]
    assert len(flows) == 2 * len(handed)
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] == "function"]
    for h in handed:
        start = next(e for e in flows if e["ph"] == "s" and e["args"]["text"] == str(h))
        end = next(e for e in flows if e["ph"] == "f" and e["id"] == start["id"])
        tid = m.tasks[[t.name for t in m.tasks].index(h.task)].tid + 1
        assert start["tid"] == end["tid"] == tid
        # the arrow leaves the producer's slice where it returned, enters the consumer's where it begins
        assert any(e["tid"] == tid and e["name"] == f"{h.producer} v{h.producer_version}"
                   and e["args"]["end_insn"] == h.produced_at for e in slices)
        assert any(e["tid"] == tid and e["name"] == f"{h.consumer} v{h.consumer_version}"
                   and e["args"]["start_insn"] == h.at and e["ts"] == end["ts"] for e in slices)


def exit_clocks(m, span):
    """Clocks of the task's exits (EV_RETURN, EV_UNWOUND) of span's function and version."""
    fid = m.function(span.function).id
    return {e.clock for e in m.trace if e.kind in (core.EV_RETURN, core.EV_UNWOUND) and e.task == span.task
            and e.a == fid and e.b == span.version}


def test_spans_end_where_the_functions_return(livepatch_run):
    """Each activation, in the spans and in the Perfetto file, ends at the
    clock of the exit event that closes its entry (entries and exits
    replayed as a stack per task, independently of report.py)."""
    m, model, functions = livepatch_run
    want = set()
    stacks = {}
    for clock, kind, task, a, b, c in m.trace:
        if kind == core.EV_ENTRY:
            stacks.setdefault(task, []).append((a, b, clock))
        elif kind in (core.EV_RETURN, core.EV_UNWOUND):
            fid, version, start = stacks[task].pop()
            assert (fid, version) == (a, b)
            if fid in functions:
                want.add((task, m.functions[fid].name, version, start, clock))
    got = {(s.task, s.function, s.version, s.start, s.end) for s in report.activations(m, functions) if s.finished}
    assert got == want and len(want) > 10
    trace = report.perfetto(m, model.transitions, functions)
    spans = {(e["tid"] - 1, e["args"]["function"], e["args"]["version"], e["args"]["start_insn"], e["args"]["end_insn"])
             for e in trace["traceEvents"] if e.get("cat") == "function" and e["args"]["finished"]}
    assert spans == want


def test_activations_open_when_the_trace_ends_end_with_it(compile_c):
    m, model, functions = run(compile_c, "livepatch", sleep=100_000, until=1.0)
    spans = report.activations(m, functions)
    exits = {(e.task, e.clock) for e in m.trace if e.kind == EV_KERNEL_EXIT}
    assert exits == set()       # every task sleeps in its first call
    unfinished = [s for s in spans if not s.finished]
    # each task is asleep inside foo (in something_else: bar has returned)
    assert {(s.task, s.function) for s in unfinished} == {(t, "foo") for t in range(3)}
    assert {(s.task, s.function) for s in spans if s.finished} == {(t, "bar") for t in range(3)}
    assert all(s.end == m.now for s in unfinished)


# The trace-event format (the JSON object form that ui.perfetto.dev and
# chrome://tracing read): the fields each phase requires, and the names
# metadata events may have.
_REQUIRED = {"X": ("name", "ph", "ts", "dur", "pid", "tid"), "i": ("name", "ph", "ts", "pid", "tid", "s"),
             "C": ("name", "ph", "ts", "pid", "args"), "M": ("name", "ph", "pid", "args"),
             "s": ("name", "ph", "ts", "pid", "tid", "id"), "f": ("name", "ph", "ts", "pid", "tid", "id")}
_METADATA = {"process_name": "name", "process_sort_index": "sort_index", "thread_name": "name",
             "thread_sort_index": "sort_index"}
_TOP = {"traceEvents", "displayTimeUnit", "otherData", "systemTraceEvents", "stackFrames", "samples"}


def check_trace_event_format(data) -> None:
    """Fails unless data is a valid trace-event JSON object."""
    assert isinstance(data, dict) and isinstance(data["traceEvents"], list) and set(data) <= _TOP
    assert data.get("displayTimeUnit", "ms") in ("ms", "ns")
    for e in data["traceEvents"]:
        assert e["ph"] in _REQUIRED, e
        for key in _REQUIRED[e["ph"]]:
            assert key in e, (key, e)
        assert isinstance(e["name"], str) and isinstance(e["pid"], int) and isinstance(e.get("tid", 0), int)
        assert isinstance(e.get("ts", 0), (int, float)) and e.get("ts", 0) >= 0
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0
        elif e["ph"] == "i":
            assert e["s"] in ("g", "p", "t")
        elif e["ph"] in ("s", "f"):     # flow events: an id pairs them, "e" binds the end to its slice
            assert isinstance(e["id"], int) and e.get("bp", "e") == "e"
        elif e["ph"] == "C":
            assert e["args"] and all(isinstance(v, (int, float)) for v in e["args"].values())
        else:
            assert e["name"] in _METADATA and _METADATA[e["name"]] in e["args"]
    # complete events of one track (pid, tid) nest or follow each other, as Perfetto's importer requires
    tracks = {}
    for e in data["traceEvents"]:
        if e["ph"] == "X":
            tracks.setdefault((e["pid"], e["tid"]), []).append(e)
    for events in tracks.values():
        assert _nested(events)


def _nested(events):
    """Complete events of one track either nest or follow each other."""
    ends = []
    for e in events:
        while ends and ends[-1] <= e["ts"]:
            ends.pop()
        end = e["ts"] + e["dur"]
        if ends and end > ends[-1] + 1e-6:
            return False
        ends.append(end)
    return True


def test_perfetto_object_is_valid_trace_event_json(livepatch_run):
    m, model, functions = livepatch_run
    data = json.loads(json.dumps(report.perfetto(m, model.transitions, functions)))
    check_trace_event_format(data)
    assert data["displayTimeUnit"] == "ms" and data["otherData"]["instructions_per_second"] == m.seconds(1)
    events = data["traceEvents"]
    ts = [e["ts"] for e in events if e["ph"] != "M"]
    assert ts == sorted(ts)
    process = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert process == {report.PID: "lpemu report-test", report.CPU_PID: "CPUs"}
    threads = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name" and e["pid"] == report.PID}
    for task in m.tasks:
        assert list(threads.values()).count(task.name) == 1
    spans = [e for e in events if e["ph"] == "X" and e.get("cat") == "function"]
    assert {e["name"] for e in spans} >= {"foo v0", "bar v0", "bar v1", "baz v0", "baz v1"}
    for e in spans:
        assert e["args"]["function"] + f" v{e['args']['version']}" == e["name"]
        assert threads[e["tid"]] == e["args"]["task"]
        assert e["cname"] == report.version_cname(e["args"]["version"])
    assert {e["cname"] for e in spans} == {"rail_response", "rail_load"}
    # virtual time: 1 s = seconds(1) instructions = 1e6 us
    first = min(spans, key=lambda e: e["ts"])
    assert first["ts"] == pytest.approx(first["args"]["start_insn"] * 1e6 / m.seconds(1))
    kinds = {e["args"]["kind"] for e in events if e["ph"] == "i" and e.get("cat") == "transition"}
    assert kinds == {"requested", "started", "completed"}
    # each task's switch to the patched state is an instant on its own track, at the trace's time
    switches = {(e["tid"] - 1, e["args"]["clock"]) for e in events if e["name"] == "switched to patched"}
    assert switches == {(e.task, e.clock) for e in m.trace if e.kind == EV_PATCH_STATE and e.a == PATCHED
                        and 0 <= e.task < len(m.tasks)}
    assert any(e["name"] == "sleep" and e["ph"] == "X" for e in events)
    assert any(e.get("cat") == "printk" and "patching complete" in e["args"]["lines"][-1] for e in events)


def test_cpu_tracks_show_what_ran_where(livepatch_run):
    m, model, functions = livepatch_run
    occ = report.occupancy(m, model.transitions)
    assert {o.cpu for o in occ} == {0, 1} and all(o.start < o.end for o in occ)
    for cpu in (0, 1):
        mine = [o for o in occ if o.cpu == cpu]
        assert all(a.end <= b.start for a, b in zip(mine, mine[1:]))         # one task at a time
    for task in range(len(m.tasks)):
        mine = sorted((o for o in occ if o.task == task), key=lambda o: o.start)
        assert all(a.end <= b.start for a, b in zip(mine, mine[1:]))         # on one CPU at a time
    # a task enters a function only while it runs on some CPU
    for clock, kind, task, *_ in m.trace:
        if kind == core.EV_ENTRY and 0 <= task < len(m.tasks):
            assert any(o.task == task and o.start <= clock <= o.end for o in occ), (task, clock)
    data = report.perfetto(m, model.transitions, functions)
    cpu_spans = [e for e in data["traceEvents"] if e["ph"] == "X" and e["pid"] == report.CPU_PID]
    assert sorted((e["tid"] - 1, e["args"]["start_insn"], e["args"]["task"]) for e in cpu_spans) == \
        sorted((o.cpu, o.start, m.tasks[o.task].name) for o in occ)


def test_stop_machine_pauses_are_spans_on_their_own_track(compile_c):
    m, model, functions = run(compile_c, "stop_machine", until=1.0)
    t = model.transitions[0]
    assert t.result == "completed" and t.pauses
    data = report.perfetto(m, model.transitions, functions)
    check_trace_event_format(data)
    threads = {e["args"]["name"]: e["tid"] for e in data["traceEvents"] if e["name"] == "thread_name"
               and e["pid"] == report.PID}
    pauses = [e for e in data["traceEvents"] if e["tid"] == threads["stop_machine"] and e["ph"] == "X"
              and e["pid"] == report.PID]
    assert [(e["args"]["start_insn"], e["args"]["end_insn"]) for e in pauses] == t.pauses
    assert all(e["cname"] == "terrible" for e in pauses)
    # the stopper occupies every CPU for each pause, and nothing else runs there meanwhile
    occ = report.occupancy(m, model.transitions)
    for start, end in t.pauses:
        assert sorted(o.cpu for o in occ if o.task == -1 and (o.start, o.end) == (start, end)) == [0, 1]
        assert not any(o.task >= 0 and o.start < end and start < o.end for o in occ)


SLEEPY = """
volatile long zero;
__attribute__((noinline)) long bar(long t) { lpemu_sleep(t); return 5 + zero; }
long user_entry(long t) { return bar(t) + zero; }
"""
SLEEPY_PATCH = """
extern volatile long zero;
__attribute__((noinline)) long bar(long t) { lpemu_sleep(t); return 5000 + zero; }
"""


def sleeper_in_bar(compile_c):
    """kpatch fails: its one task sleeps inside bar through both attempts."""
    base = compile_c(SLEEPY)
    m = Machine(base, cpus=1, quantum=300)
    m.add_task("sleeper", "user_entry", (100_000,))
    img = compile_c(SLEEPY_PATCH, name="patch", base=m.module_base(), link_against=base, keep={"bar"})
    m.load(img)
    model = make_model("stop_machine", m, retries=2, retry_delay=0.5)
    patch = model.add(make_patch(m, "p1", img, ["bar"]))
    m.watch(m.function("bar"))
    m.at(5_000, lambda: model.enable(patch))
    m.run(until=m.seconds(1))
    return m, model, report.patched_functions([patch])


def test_pending_tasks_counter_and_blocked_attempts(compile_c):
    """livepatch with one task asleep in bar for 1.5 s: the attempts at 0 s
    and 1 s find it there, the one at 2 s completes."""
    base = compile_c(SLEEPY)
    m = Machine(base, cpus=1, quantum=300)
    m.add_task("sleeper", "user_entry", (m.seconds(1.5) // m.tick,))
    img = compile_c(SLEEPY_PATCH, name="patch", base=m.module_base(), link_against=base, keep={"bar"})
    m.load(img)
    model = make_model("livepatch", m)
    patch = model.add(make_patch(m, "p1", img, ["bar"]))
    m.watch(m.function("bar"))
    m.at(5_000, lambda: model.enable(patch))
    m.run(until=m.seconds(4))
    t = model.transitions[0]
    assert t.result == "completed" and t.attempts == len(t.history) + 1 >= 2 and t.blockers == []
    for a in t.history:       # every blocked attempt keeps the sleeper with bar on its stack
        (name, stack), *idle = a.blockers
        assert name == "sleeper" and any(line.startswith("bar") for line in stack)
    data = report.perfetto(m, model.transitions, report.patched_functions([patch]))
    check_trace_event_format(data)
    attempts = [e for e in data["traceEvents"] if e.get("cat") == "attempt"]
    assert [(e["args"]["attempt"], e["args"]["clock"]) for e in attempts] == [(a.attempt, a.clock) for a in t.history]
    for e, a in zip(attempts, t.history):
        assert e["args"]["blockers"] == {name: list(stack) for name, stack in a.blockers}
        assert e["name"].startswith(f"p1: attempt {a.attempt} blocked by sleeper")
    # the sleeper stays pending from the start until it switches; 0 once the transition completed
    counts = report.pending_counts(m, model.transitions)
    switched = next(e.clock for e in m.trace if e.kind == EV_PATCH_STATE and e.task == 0 and e.a == PATCHED)
    assert t.started_at < switched <= t.completed_at
    assert any(c >= 1 and clock < switched for clock, c in counts)
    assert counts[-1] == (switched, 0)         # the last task switched: nothing pending
    counter = [(e["args"]["pending"]) for e in data["traceEvents"] if e["ph"] == "C"]
    assert counter == [c for _, c in counts]


def test_a_failed_transition_takes_its_time_from_the_trace(compile_c, tmp_path):
    m, model, functions = sleeper_in_bar(compile_c)
    t = model.transitions[0]
    assert t.result == "failed" and len(t.pauses) == 2
    found = report.moments(m, model.transitions)
    assert [mo.kind for mo in found] == ["requested", "started", "failed"]
    assert found[-1].clock >= t.pauses[-1][1] and found[-1].label == "p1: patching failed"
    data = report.perfetto(m, model.transitions, functions)
    window = next(e for e in data["traceEvents"] if e.get("cat") == "transition" and e["ph"] == "X")
    assert window["args"]["end_insn"] == found[-1].clock and window["args"]["result"] == "failed"
    assert report.timeline(m, model.transitions, functions, tmp_path / "failed.png").stat().st_size > 0


def test_timeline_writes_png_and_svg_and_guards_files(livepatch_run, tmp_path):
    m, model, functions = livepatch_run
    png = report.timeline(m, model.transitions, functions, tmp_path / "run.png", title="seed")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    svg = report.timeline(m, model.transitions, functions, tmp_path / "run.svg")
    head = svg.read_text()[:400]
    assert "<svg" in head or "<?xml" in head
    assert "<svg" in svg.read_text()
    with pytest.raises(UserError, match="run.png"):
        report.timeline(m, model.transitions, functions, png)
    assert report.timeline(m, model.transitions, functions, png, force=True) == png
    with pytest.raises(UserError, match=r"\.txt"):
        report.timeline(m, model.transitions, functions, tmp_path / "run.txt")
    assert not (tmp_path / "run.txt").exists()


def test_timelines_are_the_same_bytes_each_time_they_are_drawn(livepatch_run, tmp_path):
    """The same run drawn twice gives the same file: an SVG names no date of
    the host's and no random ids (Matplotlib's default), a PNG the same."""
    m, model, functions = livepatch_run
    for name in ("a.svg", "a.png"):
        first = report.timeline(m, model.transitions, functions, tmp_path / name).read_bytes()
        time.sleep(1.01)            # a date to the second would differ
        again = report.timeline(m, model.transitions, functions, tmp_path / name, force=True).read_bytes()
        assert first == again, name
    svg = (tmp_path / "a.svg").read_text()
    assert "<dc:date>" not in svg and "Matplotlib" in svg[:2000]


def test_write_perfetto_refuses_to_overwrite(livepatch_run, tmp_path):
    m, model, functions = livepatch_run
    path = report.write_perfetto(tmp_path / "run.json", m, model.transitions, functions)
    data = json.loads(path.read_text())
    assert data["traceEvents"]
    with pytest.raises(UserError, match="run.json"):
        report.write_perfetto(path, m, model.transitions, functions)
    report.write_perfetto(path, m, model.transitions, functions, force=True)


def test_version_names_and_colours():
    assert report.version_name(0) == "original" and report.version_name(2) == "patch 2"
    assert report.version_cname(0) != report.version_cname(1)
    assert report.version_cname(1) == report.version_cname(5)
    assert report.version_colour(0).startswith("#")


def test_timeline_marks_findings_and_opens_around_the_first(compile_c):
    m, model, functions = run(compile_c, "stop_machine", until=1.0)
    # a unit of user1 and an assertion of user0, as a result record has them
    record = {"inconsistencies": [{"task": "user1", "unit": "syscall #3", "start": 30_000, "end": 31_000,
                                   "entries": [{"function": "bar", "version": 0, "clock": 30_000},
                                               {"function": "baz", "version": 1, "clock": 30_900}]}],
              "violations": [{"assert": "value >= 1000", "line": 3, "task": "user0", "time": 29_000, "key": 2,
                              "value": 5, "error": None}, {"assert": "x", "line": 3, "task": "nobody",
                                                           "time": 1, "key": 2, "value": 5, "error": None}]}
    marks = report.marks_of(m, record)
    assert [(mk.kind, mk.task, mk.start, mk.end) for mk in marks] == \
        [("assertion", 0, 29_000, 29_000), ("inconsistent", 1, 30_000, 31_000)]
    assert "bar v0, baz v1" in marks[1].label
    lo, hi = report.default_window(m, marks)
    assert lo < 29_000 and hi > 29_000 and hi - lo >= 2 * m.seconds(0.02)
    assert report.default_window(m, []) == (0, m.now)
    assert report.parse_window("all", m, marks) == (0, m.now)
    assert report.parse_window("100:", m, marks) == (100, m.now)
    assert report.parse_window(None, m, marks) == (lo, hi)
    for bad in ("100", "5:2", "a:b", "-3:4"):
        with pytest.raises(UserError, match="--window"):
            report.parse_window(bad, m, marks)

    fig = report.timeline_figure(m, model.transitions, functions, marks=marks, window=(0, m.now),
                                 patch_names={1: "p1"})
    try:
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels[:2] == ["original", "patch 1 (p1)"] and {"inconsistent unit", "failed assertion"} <= set(labels)
        renderer = fig.canvas.get_renderer()
        texts = {}
        for t in ax.texts:
            texts.setdefault(t.get_gid(), []).append(t)
        names = texts["function"]
        assert {t.get_text() for t in names} >= {"foo"}
        assert {t.get_text() for t in texts["finding"]} == {mk.label for mk in marks}
        for kind in ("function", "moment"):
            boxes = [t.get_window_extent(renderer) for t in texts.get(kind, [])]
            assert boxes and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), kind
        # a function's name lies inside a bar of that function
        spans = report.activations(m, functions)
        per = 1 / m.seconds(1) if m.now >= m.seconds(1) else 1000 / m.seconds(1)     # axis units per instruction
        for t in names:
            x0, x1 = (ax.transData.inverted().transform((x, 0))[0] for x in t.get_window_extent(renderer).intervalx)
            assert any(s.function == t.get_text() and s.start * per <= x0 and x1 <= s.end * per for s in spans)
    finally:
        fig.clear()


def test_a_scenario_at_a_path_that_is_not_utf8_traces_as_text_and_hashes_as_elsewhere(tmp_path, capsys):
    """A directory name with a byte that is not UTF-8 (the seed copied to
    b'seed\\xff'): the run's trace and timeline name it with the visible
    escape \\udcff (as lpemu's messages do), the trace is UTF-8 JSON with
    no lone surrogate in it, and the trace hash is the same as for the
    same scenario anywhere else, run after run."""
    import os
    import shutil
    from pathlib import Path
    from emu.app import cli
    seed = Path(__file__).resolve().parent.parent / "examples" / "seed"
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/seed\xff"))
    shutil.copytree(seed, odd)
    hashes = []
    for where, extra in ((odd, ["--trace", str(tmp_path / "t.json"), "--timeline", str(tmp_path / "t.png")]),
                         (odd, []), (seed, [])):
        code = cli.main(["run", str(where / "scenario.toml"), "--model", "livepatch", "--seed", "1", "--json",
                         "--force", *extra])
        out, err = capsys.readouterr()
        assert code == 1 and "Traceback" not in err, err
        hashes.append(json.loads(out)["trace_hash"])
    assert len(set(hashes)) == 1
    raw = (tmp_path / "t.json").read_bytes().decode("utf-8")
    trace = json.loads(raw)

    def strings(x):
        if isinstance(x, dict):
            for k, v in x.items():
                yield k
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)
        elif isinstance(x, str):
            yield x
    assert not any("\ud800" <= c <= "\udfff" for s in strings(trace) for c in s)
    assert trace["otherData"]["machine"] == "seed\\udcff"
    assert (tmp_path / "t.png").stat().st_size > 1000


MODULES = Path(__file__).resolve().parent.parent / "examples" / "modules" / "scenario.toml"


def test_modules_coming_and_going_are_on_the_timeline_and_the_trace():
    """insmod and rmmod of a module (its coming notifier, its init, its exit,
    its going notifier) show beside the transitions, at the times the trace
    has them; a module refused its rmmod (kpatch holds it) never goes."""
    from emu.runs import scenario
    from emu.runs.fuzz import Runner
    from emu.machine.machine import EV_MODULE
    with Runner(scenario.build(scenario.load(MODULES))) as runner:
        res, m, model = runner.execute(runner.plan("livepatch", 0), keep=True)
        try:
            found = report.module_moments(m)
            assert [(mo.module, mo.kind, mo.task) for mo in found] == [
                ("codec", "coming", ""), ("codec", "live", "insmod-codec"), ("codec", "going", "rmmod-codec"),
                ("codec", "gone", "")]
            # the patch module, loaded before the run, did not come during it
            log = dict((text, t) for t, text in m.log)
            assert found[0].clock == log["livepatch: applying patch 'fix' to loading module 'codec'"]
            assert found[3].clock == log["livepatch: reverting patch 'fix' on unloading module 'codec'"]
            assert found[0].clock <= found[1].clock < found[2].clock <= found[3].clock
            assert [mo.clock for mo in found] == [e.clock for e in m.trace if e.kind == EV_MODULE]
            data = json.loads(json.dumps(report.perfetto(m, model.transitions, None)))
            check_trace_event_format(data)
            threads = {e["args"]["name"]: e["tid"] for e in data["traceEvents"] if e["name"] == "thread_name"
                       and e["pid"] == report.PID}
            instants = [(e["name"], e["args"]["clock"]) for e in data["traceEvents"]
                        if e.get("cat") == "module" and e["tid"] == threads["modules"]]
            assert instants == [(mo.label, mo.clock) for mo in found]
            fig = report.timeline_figure(m, model.transitions, None, window=(0, m.now))
            try:
                ax = fig.axes[0]
                assert len([ln for ln in ax.lines if ln.get_gid() == "module"]) == 4
                labels = " ".join(t.get_text() for t in ax.texts if t.get_gid() == "moment")
                assert "module codec: coming, live" in labels and "module codec: going, gone" in labels, labels
                assert "fix: requested" in labels
                assert "module coming/going" in [t.get_text() for t in ax.get_legend().get_texts()]
            finally:
                fig.clear()
        finally:
            m.engine.close()
        res, m, model = runner.execute(runner.plan("stop_machine", 0), keep=True)
        try:
            assert [mo.kind for mo in report.module_moments(m)] == ["coming", "live"]
            assert any("in use" in e["error"] for e in res.errors)
        finally:
            m.engine.close()
