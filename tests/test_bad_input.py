"""Bad input: one clear message naming the file, line, key or function; exit
status 2; no traceback; nothing the user had is overwritten.

Each case here is one row of the table in docs/bad-input.md."""
import textwrap
from pathlib import Path

import pytest

from emu.app import cli

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed"

SCENARIO = """\
[program]
sources = ["base.c"]

[[task]]
name = "user"
entry = "user_entry"
args = [0]

[[patch]]
name = "p"
sources = ["patch.c"]
functions = ["bar", "baz"]

[[action]]
at = 20000
do = "enable"
patch = "p"
"""


@pytest.fixture
def d(seed_copy):
    return seed_copy


def lpemu(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err and out.out == ""
    return code, out.err.strip()


def run(d, capsys, scenario_text, *extra):
    (d / "s.toml").write_text(scenario_text)
    return lpemu(capsys, "run", d / "s.toml", "--model", "livepatch", *extra)


CASES = [
    # (case, change to the scenario text, words the message must contain)
    ("not TOML", lambda s: s.replace('name = "user"', 'name = user'), ["s.toml: not valid TOML", "line 5"]),
    ("unknown key", lambda s: s.replace("args = [0]", "args = [0]\nprio = 3"),
     ["s.toml:8: task[0].prio: unknown key"]),
    ("missing key", lambda s: s.replace('entry = "user_entry"\n', ""), ["s.toml:4: task[0]: missing key 'entry'"]),
    ("wrong type", lambda s: s.replace("at = 20000", 'at = "soon"'),
     ["s.toml:15: action[0].at: must be an integer, not string 'soon'"]),
    ("unknown model", lambda s: s + '\n[fuzz]\nmodels = ["kpatch"]\n',
     ["s.toml:20: fuzz.models: unknown model 'kpatch'"]),
    ("task entry that does not exist", lambda s: s.replace('"user_entry"', '"user_main"'),
     ["s.toml:4: task[user].entry: no function 'user_main'"]),
    ("patched function that does not exist", lambda s: s.replace('["bar", "baz"]', '["bar", "qux"]'),
     ["patch[p].functions: no function 'qux'"]),
    ("two patches in one transition",
     lambda s: s.replace("[[action]]", '[[patch]]\nname = "q"\nsources = ["patch.c"]\nfunctions = ["bar"]\n\n'
                         '[[action]]\nat = 20000\ndo = "enable"\npatch = "q"\n\n[[action]]', 1),
     ["one transition at a time"]),
    ("action on an unknown patch", lambda s: s.replace('patch = "p"', 'patch = "p2"'),
     ["s.toml:17: action[0].patch: no patch named 'p2' (known: p)"]),
    ("source file missing", lambda s: s.replace('["patch.c"]', '["patch2.c"]'),
     ["s.toml:11: patch[0].sources: no such file: patch2.c"]),
]


@pytest.mark.parametrize("case,change,words", CASES, ids=[c[0] for c in CASES])
def test_bad_scenarios(d, capsys, case, change, words):
    code, err = run(d, capsys, change(SCENARIO))
    assert code == 2, err
    for w in words:
        assert w in err, err
    assert err.startswith("lpemu: error: ")


def test_no_fentry_site(d, capsys):
    src = d / "base.c"
    src.write_text(src.read_text().replace("__attribute__((noinline)) long baz(",
                                           "__attribute__((noinline, no_instrument_function)) long baz("))
    code, err = run(d, capsys, SCENARIO)
    assert code == 2 and "patch[p].functions: 'baz' has no fentry site, so it cannot be patched" in err


def test_unknown_model_on_the_command_line(d, capsys):
    (d / "s.toml").write_text(SCENARIO)
    assert cli.main(["run", str(d / "s.toml"), "--model", "kpatch"]) == 2
    assert "invalid choice: 'kpatch'" in capsys.readouterr().err


def test_compile_error_shows_the_compiler_output(d, capsys):
    (d / "patch.c").write_text((d / "patch.c").read_text() + "\nint broken( {\n")
    code, err = run(d, capsys, SCENARIO)
    assert code == 2 and "patch.c" in err and "error:" in err


def test_gcc_missing_says_what_to_install(d, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, err = run(d, capsys, SCENARIO)
    assert code == 2 and "gcc not found on PATH" in err and "install" in err


def test_a_patch_using_a_symbol_the_base_lacks(d, capsys):
    (d / "patch.c").write_text((d / "patch.c").read_text().replace(
        "total += f / 1000;", "total += f / 1000; extern long nowhere(void); nowhere();"))
    code, err = run(d, capsys, SCENARIO)
    assert code == 2 and "nowhere" in err


def test_a_patch_that_changes_data_is_refused(d, capsys):
    (d / "patch.c").write_text((d / "patch.c").read_text().replace("extern long total;", "long total = 7;"))
    code, err = run(d, capsys, SCENARIO)
    assert code == 2 and "patch[p]" in err and "'total' changes its initial value" in err
    assert "shadow variable" in err


def test_an_elf_that_is_not_x86_64(d, capsys):
    import subprocess
    from emu.images.toolchain import INCLUDE_DIR
    subprocess.run(["gcc", "-c", "-o", str(d / "base.o"), str(d / "base.c"), "-I",
                    str(INCLUDE_DIR)], check=True)
    data = bytearray((d / "base.o").read_bytes())
    data[18:20] = (40).to_bytes(2, "little")       # e_machine = EM_ARM
    (d / "base.o").write_bytes(bytes(data))
    code, err = run(d, capsys, SCENARIO.replace('["base.c"]', '["base.o"]'))
    assert code == 2 and "base.o" in err and "x86-64" in err


def test_images_that_overlap_are_refused(d):
    from emu.errors import UserError
    from emu.images.build import build_c
    from emu.machine.machine import Machine
    base = build_c([d / "base.c"], base=0x400000)
    other = build_c([d / "base.c"], base=0x400000, name="again")
    m = Machine(base)
    with pytest.raises(UserError, match="image 'again' .* overlaps image 'base'"):
        m.load(other)


def test_an_existing_output_is_not_overwritten(d, capsys, tmp_path):
    (d / "s.toml").write_text(SCENARIO)
    trace = tmp_path / "trace.json"
    trace.write_text("mine")
    code, err = lpemu(capsys, "run", d / "s.toml", "--model", "kgraft", "--trace", trace)
    assert code == 2 and str(trace) in err and trace.read_text() == "mine"
    out = tmp_path / "campaign"
    out.mkdir()
    (out / "runs.jsonl").write_text("mine\n")
    code, err = lpemu(capsys, "fuzz", d / "s.toml", "--runs", "2", "--jobs", "1", "--out", out)
    assert code == 2 and "--resume" in err and (out / "runs.jsonl").read_text() == "mine\n"


def test_a_scenario_that_is_a_directory_or_absent(d, capsys):
    code, err = lpemu(capsys, "run", d / "absent.toml", "--model", "kgraft")
    assert code == 2 and "absent.toml: no such scenario file" in err
    code, err = lpemu(capsys, "run", d, "--model", "kgraft")
    assert code == 2 and str(d) in err


def test_guest_faults_are_results_not_crashes(d, capsys):
    (d / "base.c").write_text(textwrap.dedent((d / "base.c").read_text()).replace(
        "return 5 + zero;", "return 5 + *(volatile long *)0x10;"))
    (d / "s.toml").write_text(SCENARIO)
    code = cli.main(["run", str(d / "s.toml"), "--model", "kgraft", "--json"])
    out = capsys.readouterr()
    import json
    res = json.loads(out.out)
    assert code == 1 and res["outcome"] == "fault" and res["failing"] == ["fault"]   # a finding
    assert "unmapped" in res["fault"] and "bar+0x" in res["fault"] and "task 'user'" in res["fault"]
