"""A write to guest code (the five bytes of an fentry site) that also drops
the translations of the range: csrc/text.c against emu/engine/text.py."""
import pytest

from emu.engine import text
from emu.machine.machine import Machine

NOP = bytes.fromhex("0f1f440000")


@pytest.fixture(scope="module")
def machine(workloads):
    base, _, _ = workloads.get("calls")
    m = Machine(base)
    yield m
    m.engine.close()


@pytest.mark.benchmark(group="text write")
@pytest.mark.parametrize("impl", ["c", "python"])
def test_site_write(benchmark, machine, impl):
    site = machine.function("target").site
    write = machine.engine.text_write if impl == "c" else \
        (lambda addr, data: text.write(machine.engine.uc, addr, data))
    benchmark(write, site, NOP)
    assert bytes(machine.engine.view(site, 5)) == NOP
    benchmark.extra_info.update(bytes=len(NOP))
