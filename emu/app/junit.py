"""JUnit XML of campaigns, for CI: one test case per (scenario, model).

The layout is the one CI servers read (Jenkins' junit.xsd, which GitLab and
GitHub reporters follow): <testsuites> holding one <testsuite> per scenario
with name, tests, failures, errors, skipped and time; each <testcase> has
name (the model), classname (the scenario) and time, and a failed one holds
one <failure message=... type=...> whose text gives the first failing seed,
what that run found and the command that replays it. A model that an
interrupted campaign did not run, or ran only in part without a run that
settles it, holds <skipped message=...>: neither passed nor failed.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from emu.errors import UserError
from emu.runs import output


@dataclass
class Case:
    """One (scenario, model): its verdict and, when it failed, the replay."""
    scenario: str
    model: str
    ok: bool
    message: str
    details: list[str] = field(default_factory=list)
    seconds: float = 0.0
    kind: str = "finding"          # failure type: finding, or surprise (an [expect] not met)
    skipped: bool = False          # not run, or not settled by its runs (an interrupted campaign)


#: what XML 1.0 cannot hold, even escaped (its Char production): most C0
#: controls, lone surrogates (a file name that is not UTF-8), U+FFFE and U+FFFF
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: str) -> str:
    """text with what XML cannot hold written as \\xNN or \\uNNNN: a scenario
    whose file name holds an escape character made a report no CI could
    read (and that the next campaign refused to replace)."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


#: the name of a report's root, by which check_replaceable knows lpemu's reports
ROOT_NAME = "lpemu"


def document(suites: dict[str, list[Case]]) -> ET.ElementTree:
    """suites: scenario name -> its cases, as a JUnit XML tree."""
    suites = {_xml(name): [Case(_xml(c.scenario), _xml(c.model), c.ok, _xml(c.message), [_xml(x) for x in c.details],
                                c.seconds, _xml(c.kind), c.skipped) for c in cases] for name, cases in suites.items()}
    root = ET.Element("testsuites", name=ROOT_NAME)
    totals = {"tests": 0, "failures": 0}
    for name, cases in suites.items():
        failures = sum(not c.ok and not c.skipped for c in cases)
        suite = ET.SubElement(root, "testsuite", name=name, tests=str(len(cases)), failures=str(failures),
                              errors="0", skipped=str(sum(c.skipped for c in cases)),
                              time=f"{sum(c.seconds for c in cases):.3f}")
        for c in cases:
            case = ET.SubElement(suite, "testcase", name=c.model, classname=c.scenario, time=f"{c.seconds:.3f}")
            if c.skipped:
                ET.SubElement(case, "skipped", message=c.message)
            elif not c.ok:
                failure = ET.SubElement(case, "failure", message=c.message, type=c.kind)
                failure.text = "\n".join([c.message, *c.details])
            else:
                out = ET.SubElement(case, "system-out")
                out.text = c.message
        totals["tests"] += len(cases)
        totals["failures"] += failures
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", "0")
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def check_replaceable(path) -> None:
    """Before a campaign: an existing file at path may take its report. A
    report is rewritten on every run, so an existing report of lpemu's (an
    XML document whose root is <testsuites name="lpemu">, as document()
    makes it) is replaced; any other file is the user's and is kept, a
    JUnit report of another tool's (pytest's, whose root is <testsuites>
    or <testsuite> too) as well. Raises UserError naming path.
    (Whether the path can be written at all is the command line's check.)"""
    path = Path(path)
    if not path.exists():
        return
    try:
        _, root = next(ET.iterparse(path, events=("start",))) if path.is_file() else (None, None)
        report = root is not None and root.tag == "testsuites" and root.get("name") == ROOT_NAME
    except (ET.ParseError, StopIteration, UnicodeError, OSError):
        report = False
    if not report:
        raise UserError(f"--junit {path}: exists and is not a JUnit report lpemu wrote; it is replaced only when it "
                        f"is one: remove it or choose another file")


def write(path, suites: dict[str, list[Case]]) -> Path:
    """Write document(suites) to path (replacing it: a CI report is rewritten
    on every run); returns the path. Raises UserError when it cannot be written."""
    path = Path(path)
    try:
        with output.writing(path, replace=True, binary=True) as f:     # whole or not at all
            document(suites).write(f, encoding="utf-8", xml_declaration=True)
    except OSError as exc:
        raise UserError(f"--junit {path}: cannot write it ({exc.strerror})") from None
    return path
