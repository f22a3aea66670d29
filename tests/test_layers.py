"""The tree shows the layers: each subpackage of emu imports only from the
layers below it (the order is emu/__init__.py's docstring), and no module
reaches into another's private names. Imports inside functions count too.
Facts that other languages must copy are held to their one home here."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "emu"
LAYERS = ["errors", "images", "engine", "machine", "kernel", "models", "runs", "app"]


def module_of(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "emu" and parts[1] in LAYERS else None


def imports(path: Path):
    """(line, absolute module) of every import of an emu module in path."""
    me = module_of(path)
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me.split(".") if is_pkg else me.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            if target == "emu":       # from emu import x: x is a module or a name of emu
                for a in node.names:
                    yield node.lineno, f"emu.{a.name}"
            else:
                yield node.lineno, target


SOURCES = sorted(p for p in PKG.rglob("*.py") if layer(module_of(p)))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_go_down_the_layers(path):
    mine = LAYERS.index(layer(module_of(path)))
    wrong = [f"{path.relative_to(PKG)}:{line} imports {target}"
             for line, target in imports(path)
             if layer(target) is not None and LAYERS.index(layer(target)) > mine]
    assert not wrong


def test_every_module_is_in_a_layer():
    loose = [p.name for p in PKG.glob("*.py") if p.stem not in ("__init__", "__main__", "errors")]
    assert not loose


# ---- no private reaches across modules ----------------------------------------------------

ROOT = PKG.parent

#: (file, private name reached) -> why it may. Only where a test must, or
#: where the owner of the module is changing it (the entry then goes).
ALLOWED: dict[tuple[str, str], str] = {}


def private_reaches(path: Path):
    """(line, what) for every import of another module's _private name and
    every module._name on a module (or a name) imported from emu."""
    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("emu")}
        elif isinstance(node, ast.ImportFrom) and ((node.module or "").startswith("emu") or node.level):
            for a in node.names:
                if private(a.name):
                    yield node.lineno, f"{node.module}.{a.name}"
                else:
                    imported.add(a.asname or a.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr) and isinstance(node.value, ast.Name) \
                and node.value.id in imported:
            yield node.lineno, f"{node.value.id}.{node.attr}"


CHECKED = sorted([*PKG.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])


def test_no_module_reaches_into_another_modules_private_names():
    found = {(str(p.relative_to(ROOT)), what): line for p in CHECKED for line, what in private_reaches(p)}
    wrong = [f"{f}:{line} reaches {what}" for (f, what), line in sorted(found.items()) if (f, what) not in ALLOWED]
    assert not wrong
    stale = [key for key in ALLOWED if key not in found]
    assert not stale, "allowed reaches that are gone: drop them from ALLOWED"


def test_the_private_reach_check_sees_both_forms(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("from emu.machine.machine import _align_up, Machine\nfrom emu.images import orc\n"
                    "def f():\n    return orc._decode, Machine._fault, orc.OrcTable\n")
    assert sorted(what for _, what in private_reaches(path)) == \
        ["Machine._fault", "emu.machine.machine._align_up", "orc._decode"]


# ---- one home for each fact, and the copies other languages need -------------------------

def test_the_c_fentry_nop_is_the_images_one():
    """csrc/redirect.c cannot import Python: its copy of the fentry NOP is
    held to emu.images.image.FENTRY_NOP here."""
    import re

    from emu.images.image import FENTRY_NOP
    text = (PKG.parent / "csrc" / "redirect.c").read_text()
    m = re.search(r"fentry_nop\[5\]\s*=\s*\{([^}]*)\}", text)
    assert m is not None
    assert bytes(int(b, 16) for b in m.group(1).split(",")) == FENTRY_NOP


def test_the_python_orc_constants_are_the_c_cores():
    """emu/images/orc.py comes before the core, and emu/engine/unwind.py is
    pure Python (the twin of csrc/unwind.c): their copies of the core's ORC
    constants and trampoline size are held to csrc/emu.h here."""
    from emu.engine import unwind
    from emu.engine.core import lib
    from emu.images import orc
    assert (orc.REG_UNDEFINED, orc.REG_SP, orc.REG_BP) == \
        (lib.EMU_ORC_REG_UNDEFINED, lib.EMU_ORC_REG_SP, lib.EMU_ORC_REG_BP)
    assert (orc.TYPE_CALL, orc.TYPE_UNDEFINED, orc.TYPE_TRAMPOLINES) == \
        (lib.EMU_ORC_TYPE_CALL, lib.EMU_ORC_TYPE_UNDEFINED, lib.EMU_ORC_TYPE_TRAMPOLINES)
    assert unwind.STUB_SIZE == lib.EMU_STUB_SIZE


def test_no_module_writes_the_fentry_nop_bytes_itself():
    """Every Python module takes the fentry NOP from emu/images/image.py."""
    copies = [str(p.relative_to(PKG)) for p in SOURCES
              if p.name != "image.py" and ("0f1f440000" in p.read_text() or "0f 1f 44 00 00\")" in p.read_text())]
    assert not copies


def test_every_package_of_the_tree_ships_in_a_build():
    """A wheel (pip install livepatch-emu, as on the workers of a Dask
    cluster) holds the packages pyproject.toml's build finds: every one of
    the tree must be among them (a listed set once left emu.models.livepatch
    and emu.app.bench out, and the livepatch model would not import)."""
    import warnings
    from setuptools.config.pyprojecttoml import read_configuration
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = read_configuration(PKG.parent / "pyproject.toml")["tool"]["setuptools"]
    tree = {module_of(p) for p in PKG.rglob("__init__.py")}
    assert set(config["packages"]) == tree
    data = config["package-data"]["emu"]
    shipped = {p for pattern in data for p in PKG.glob(pattern)}
    assert PKG / "include" / "lpemu.h" in shipped and PKG / "seed" / "scenario.toml" in shipped
