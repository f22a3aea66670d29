"""The documents hold to the product: README's command table names every
option the CLI has (and only those) with the CLI's defaults; every `lpemu`
command the README, docs/, examples/ and the help texts show parses and names
files that exist; README's "Scenario files" table names every key the loader
accepts (and only those)."""
import glob
import re
import shlex
from pathlib import Path

import pytest

from emu.app import cli
from emu.runs import scenario

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _section(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def _cells(line: str) -> list[str]:
    """The cells of a markdown table row (`\\|` inside a cell is a bar)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _subparsers():
    (sub,) = [a for a in cli.build_parser()._actions if a.dest == "command"]
    return sub.choices


# ---- the command table ----------------------------------------------------------------------------
def _command_rows() -> dict[str, str]:
    """command name -> its usage and options cells, from README's "### Commands" table."""
    rows = {}
    for line in _section(README, "### Commands", "### Where files go").splitlines():
        cells = _cells(line) if line.startswith("| `lpemu") else []
        if cells:
            name = cells[0].strip("`").split()[1]
            rows[name] = cells[0] + ";" + cells[1]        # the required options are in the first cell
    return rows


def _parts(cell: str) -> list[str]:
    """cell split at the semicolons outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(cell):
        depth += (c == "(") - (c == ")")
        if c == ";" and depth == 0:
            parts.append(cell[start:i])
            start = i + 1
    return parts + [cell[start:]]


def _documented(cell: str, rows: dict[str, str]) -> dict[str, str]:
    """option -> the text that documents it ("the options of `run`" brings in run's)."""
    out = {}
    if "the options of `run`" in cell:
        out |= _documented(rows["run"], rows)
    for part in _parts(cell):
        for span in re.findall(r"`([^`]*)`", part):
            for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", span):
                out.setdefault(option, part)
    return out


def test_the_command_table_names_every_command_and_option_the_cli_has_and_no_other():
    rows = _command_rows()
    commands = _subparsers()
    assert set(rows) == set(commands)
    for name, parser in commands.items():
        documented = _documented(rows[name], rows)
        options = {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
        assert set(documented) == options, (name, set(documented) ^ options)


def test_the_command_table_gives_each_options_default():
    """An option with a default of its own shows it in parentheses; one whose
    default comes from the scenario names the scenario's key."""
    rows = _command_rows()
    for name, parser in _subparsers().items():
        documented = _documented(rows[name], rows)
        for action in parser._actions:
            if not action.option_strings or action.option_strings[0] == "-h":
                continue
            option = next(o for o in action.option_strings if o.startswith("--"))
            text = documented[option]
            if action.default not in (None, False):
                assert f"({action.default})" in text, (name, option, action.default, text)
            if "[fuzz]" in (action.help or "") or "[machine]" in (action.help or ""):
                key = re.search(r"\[(fuzz|machine)\] [a-z]+", action.help).group()
                assert key in text, (name, option, key, text)


# ---- every command shown ----------------------------------------------------------------------------
def _shown_commands() -> list[tuple[str, str]]:
    """(where, command line) of every runnable `lpemu` command in the documents:
    the lines of code blocks, inline code naming a file of the repository, the
    help texts' examples and the example scenarios' headers."""
    found = []
    docs = [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for path in docs:
        text = path.read_text()
        where = str(path.relative_to(ROOT))
        for line in text.splitlines():
            m = re.match(r"^\s*(?:\$ )?(lpemu (?:[a-z-]+).*)$", line)
            if m:
                found.append((where, m.group(1)))
        for span in re.findall(r"`(lpemu [a-z-]+ [^`]*)`", text):
            if "examples/" in span or "tests/" in span:
                found.append((where, span))
    for name, epilog in cli.EPILOGS.items():
        for line in epilog.splitlines():
            if line.strip().startswith("lpemu "):
                found.append((f"lpemu {name} --help", line.strip()))
    for path in sorted(ROOT.glob("examples/*/*.toml")):
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            for m in re.finditer(r"(lpemu (?:run|fuzz|replay|diff|first-failure) [^`(]*)", line):
                found.append((str(path.relative_to(ROOT)), m.group(1)))
    return found


SHOWN = _shown_commands()


def test_the_documents_show_commands():
    assert len(SHOWN) > 30 and any(w == "README.md" for w, _ in SHOWN)


@pytest.mark.parametrize("where, line", SHOWN, ids=[f"{w}: {c}" for w, c in SHOWN])
def test_every_command_shown_parses_and_names_files_that_exist(where, line):
    line = line.split("  #")[0].strip()
    if any(w in line for w in ("SCHEDULER", "SCENARIO", "OLD", " A ", "...")):
        pytest.skip("a pattern, not a command")
    argv = []
    for word in shlex.split(line)[1:]:
        matches = sorted(glob.glob(word, root_dir=ROOT)) if "*" in word else [word]
        assert matches, (where, word)
        argv += matches
    try:
        args = cli.build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: {line!r} does not parse")
    files = args.scenario if isinstance(getattr(args, "scenario", None), list) else \
        [getattr(args, k) for k in ("scenario", "old", "new") if getattr(args, k, None)]
    for f in files:
        assert (ROOT / f).is_file(), (where, line, f)


# ---- the scenario keys ------------------------------------------------------------------------------
SCENARIO = """
[program]
sources = ["base.c"]
[machine]
[[task]]
name = "user"
entry = "user_entry"
[[module]]
name = "m"
sources = ["patch_foo.c"]
[[patch]]
name = "p"
sources = ["patch.c"]
[[action]]
at = 20000
do = "enable"
patch = "p"
[[action]]
at = 30000
do = "load"
module = "m"
[check]
[fuzz]
[expect]
"""


def _known_keys(tmp_path, table: str) -> set[str]:
    """The keys the loader accepts in table: what it lists when it meets one it does not know."""
    for name in ("base.c", "patch.c", "patch_foo.c"):
        (tmp_path / name).write_text((ROOT / "emu" / "seed" / name).read_text())
    known = set()
    text = SCENARIO
    if table == "top":
        text += "\n[bogus_table]\n"
    else:
        # the key goes under every header of the table (each [[action]] reads other keys)
        text = text.replace(f"\n[{table}]\n", f"\n[{table}]\nbogus_key = 1\n")
    path = tmp_path / "s.toml"
    path.write_text(text)
    for _ in range(4):
        with pytest.raises(Exception) as info:
            scenario.load(path)
        message = str(info.value)
        m = re.search(r"unknown key \(known: ([^)]*)\)", message)
        assert m, message
        known |= set(m.group(1).split(", "))
        if table != "[action]":
            break
        # the next [[action]]'s list: drop the key from the one that answered
        text = text.replace("bogus_key = 1\n", "", 1)
        path.write_text(text)
        if "bogus_key" not in text:
            break
    return known


def _readme_keys() -> dict[str, set[str]]:
    """table -> the keys README's "Scenario files" table documents."""
    out: dict[str, set[str]] = {}
    table = None
    for line in _section(README, "### Scenario files", "Mistakes in a scenario").splitlines():
        if not line.startswith("| ") or line.startswith("|---") or line.startswith("| table"):
            continue
        cells = _cells(line)
        if cells[0]:
            table = cells[0].strip("`")
        out.setdefault(table, set()).update(re.findall(r"`([a-z_]+|MODEL)`", cells[1]))
    return out


@pytest.mark.parametrize("table, name", [("program", "[program]"), ("machine", "[machine]"),
                                         ("[task]", "[[task]]"), ("[module]", "[[module]]"),
                                         ("[patch]", "[[patch]]"), ("[action]", "[[action]]"),
                                         ("check", "[check]"), ("fuzz", "[fuzz]")])
def test_the_scenario_table_names_every_key_the_loader_accepts(tmp_path, table, name):
    assert _known_keys(tmp_path, table) == _readme_keys()[name]


def test_the_scenario_table_names_every_table_the_loader_accepts(tmp_path):
    tables = {t.strip("[]").split(".")[0] for t in _readme_keys()}
    assert _known_keys(tmp_path, "top") == tables


def test_each_help_names_only_options_its_command_has():
    """A command's help text (its options' and its epilog's) refers to no option it lacks."""
    for name, parser in _subparsers().items():
        options = {o for a in parser._actions for o in a.option_strings}
        text = parser.format_help()
        mentioned = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", text))
        assert mentioned <= options, (name, mentioned - options)


# ---- the figures the example scenarios' headers report ------------------------------------------------
def _header(path: Path) -> str:
    """The scenario's header comment as one line of text."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def _campaign(capsys, path: Path, *options) -> dict:
    """model -> its summary row, of `lpemu fuzz path options` (exhaustive, as the headers measured)."""
    import json
    assert cli.main(["fuzz", str(path), *options, "--jobs", "1", "--json", "--quiet"]) in (0, 1)
    return {m["model"]: m for m in json.loads(capsys.readouterr().out)["models"]}


def test_the_example_headers_report_what_their_campaigns_print(capsys):
    """The headers' "Measured" figures: each as the command they name prints it now."""
    n = lambda v: f"{int(v)}"          # noqa: E731
    ex = ROOT / "examples"
    busy = _campaign(capsys, ex / "busy" / "scenario.toml", "--runs", "8")
    text = _header(ex / "busy" / "scenario.toml")
    assert (f"immediate 8 completed (latency {n(busy['immediate']['latency_median'])} to "
            f"{n(busy['immediate']['latency_max'])} instructions") in text
    assert "stop_machine 8 failed" in text and busy["stop_machine"]["failed"] == 8
    assert f"kgraft 8 completed with a latency of {n(busy['kgraft']['latency_median'])} instructions" in text
    assert f"livepatch 8 completed with a median latency of {n(busy['livepatch']['latency_median'])}" in text
    assert all(s["inconsistent"] == 0 and s["runs"] == 8 for s in busy.values())

    tail = _campaign(capsys, ex / "tailcall" / "scenario.toml", "--runs", "40")
    assert (f"inconsistent runs immediate {tail['immediate']['inconsistent']}, stop_machine "
            f"{tail['stop_machine']['inconsistent']}, livepatch {tail['livepatch']['inconsistent']}, kgraft "
            f"{tail['kgraft']['inconsistent']}") in _header(ex / "tailcall" / "scenario.toml")

    handler = _campaign(capsys, ex / "tailcall" / "scenario-handler.toml", "--runs", "40")
    text = _header(ex / "tailcall" / "scenario-handler.toml")
    assert all(handler[m]["inconsistent"] == 0 for m in ("stop_machine", "kgraft", "livepatch"))
    assert f"immediate still has {handler['immediate']['inconsistent']}" in text
    assert f"in {handler['stop_machine']['failed']} of the 40 runs" in text


# ---- what `lpemu run` prints is what the run says -------------------------------------------------------
FAULTING = """#include "lpemu.h"
long user_entry(long x) { lpemu_sleep(1); *(volatile long *)x = 1; return 0; }
"""


def test_run_prints_fault_reports_and_warnings_whole(tmp_path, capsys):
    """A fault report names the instruction with its operands (docs/guest.md), and a
    warning its key: text in brackets ("[r8]", "[fuzz]") is printed, not taken for markup."""
    import json
    (tmp_path / "base.c").write_text(FAULTING)
    path = tmp_path / "s.toml"
    path.write_text('[program]\nsources = ["base.c"]\n[[task]]\nname = "u"\nentry = "user_entry"\nargs = [16]\n'
                    '[fuzz]\nuntil = "exit"\nhorizon = 0.5\n')
    argv = ["run", str(path), "--model", "livepatch"]
    assert cli.main(argv + ["--json"]) == 1
    record = json.loads(capsys.readouterr().out)
    assert cli.main(argv) == 1
    printed = capsys.readouterr().out
    rip = next(line for line in record["fault"].splitlines() if "RIP" in line)
    assert "[" in rip and rip in printed
    for warning in record["warnings"]:
        assert warning in printed
