"""One namespace for the program, its modules and its patches: a patch named
like the image it patches would resolve its old functions to its new ones
(and patch itself), so names never collide silently."""
import shutil
from pathlib import Path

import pytest

from emu.app import cli
from emu.errors import ScenarioError, UserError
from emu.kernel.patch import make_patch
from emu.machine.machine import Machine
from emu.runs import scenario

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed"

MODULE = """
[[module]]
name = "{module}"
sources = ["mod.c"]
"""


def write(tmp_path, *, patch="seed_patch", module=None):
    for name in ("base.c", "patch.c"):
        shutil.copy(SEED / name, tmp_path / name)
    (tmp_path / "mod.c").write_text('#include "lpemu.h"\nlong helper(long x) { return x + 1; }\n')
    text = (SEED / "scenario.toml").read_text().replace('"seed_patch"', f'"{patch}"')
    if module is not None:
        text = text.replace("[[patch]]", MODULE.format(module=module) + "\n[[patch]]")
    (tmp_path / "s.toml").write_text(text)
    return tmp_path / "s.toml"


def line_of(path, needle, after=""):
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if after in line) if after else 0
    return next(i for i, line in enumerate(lines) if i >= start and needle in line) + 1


@pytest.mark.parametrize("patch,module,clash", [
    ("vmlinux", None, "the program's image"),
    ("shared", "shared", "module 'shared'"),
    ("seed_patch", "vmlinux", "the program's image"),
])
def test_a_name_taken_by_another_image_is_refused_naming_file_line_and_key(tmp_path, patch, module, clash):
    path = write(tmp_path, patch=patch, module=module)
    with pytest.raises(ScenarioError) as err:
        scenario.load(path)
    msg = str(err.value)
    which = "patch" if module is None or module != "vmlinux" else "module"
    line = line_of(path, f'name = "{patch if which == "patch" else module}"', after=f"[[{which}]]")
    assert msg.startswith(f"{path}:{line}: {which}[0].name: ")
    assert clash in msg and "a name of their own" in msg


@pytest.mark.parametrize("name", ["", "a:b", "vmlinux:x"])
def test_names_that_cannot_name_an_image_are_refused(tmp_path, name):
    with pytest.raises(ScenarioError, match=r"patch\[0\]\.name: .* is not a patch name"):
        scenario.load(write(tmp_path, patch=name))


def test_the_cli_exits_2_with_one_line(tmp_path, capsys):
    path = write(tmp_path, patch="vmlinux")
    assert cli.main(["run", str(path), "--model", "livepatch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "patch[0].name: 'vmlinux' is already the name of the program's image" in err


def test_the_machine_refuses_a_second_image_of_one_name(compile_c):
    base = compile_c("long bar(void) { return 1; }\nlong entry(long x) { return bar(); }", name="vmlinux")
    m = Machine(base)
    twin = compile_c("long bar(void) { return 2; }", name="vmlinux", base=m.module_base(), link_against=base,
                     keep={"bar"})
    with pytest.raises(UserError, match="a second image named 'vmlinux'"):
        m.load(twin)
    # the old function still resolves to the program's own, and a patch
    # image with a name of its own patches it
    assert m.function("vmlinux:bar").start == base.functions["bar"].start
    other = compile_c("long bar(void) { return 2; }", name="fix", base=m.module_base(), link_against=base,
                      keep={"bar"})
    m.load(other)
    p = make_patch(m, "fix", other, ["bar"])
    (_, f), = p.funcs()
    assert f.old.start == base.functions["bar"].start and f.new.start == other.functions["bar"].start
