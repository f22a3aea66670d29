"""livepatch-emu: a live-patching laboratory without a VM.

Real x86-64 functions, original and patched, run inside Unicorn on emulated
tasks and CPUs; patches are applied while they run, under each consistency
model kernel live patching has had.

The package is layered; each subpackage imports only from the ones above it
in this list (tests/test_layers.py holds the tree to it):

- errors       the exception hierarchy every layer raises
- images       code to run: gcc/ld, ELF, assembly, ORC tables, the patch diff
- engine       the one ffi module (core) and the Python twins of csrc/
- machine      memory layout, CPUs, tasks, clock, scheduling, hypercalls, shadow variables
- kernel       ftrace, patch objects, system states
- models       the consistency models, one interface
- runs         scenarios, the runner, the oracle, shrinking, campaigns
- app          the lpemu command, demo, reports, benchmarks

The names of the Python API are importable from here (lazily, so that
`lpemu --help` does not load the engine).
"""
from importlib import import_module

__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC = {
    "build_c": "emu.images.build",
    "Image": "emu.images.image",
    "Machine": "emu.machine.machine",
    "make_model": "emu.models",
    "make_patch": "emu.kernel.patch",
    "Runner": "emu.runs.fuzz",
    "RunSpec": "emu.runs.fuzz",
    "load_scenario": "emu.runs.scenario",
    "build_scenario": "emu.runs.scenario",
}
_RENAMED = {"load_scenario": "load", "build_scenario": "build"}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    try:
        module = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'emu' has no attribute {name!r}") from None
    return getattr(import_module(module), _RENAMED.get(name, name))
