# livepatch-emu: every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CSRC   := $(wildcard csrc/*.c csrc/*.h)

.PHONY: all install build demo test bench asan clean

all: build

# The virtual environment, the package (editable) and its pinned dependencies.
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "setuptools>=65" wheel cffi==2.0.0 unicorn==2.1.4
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

install: $(STAMP)

# The C core, rebuilt in place whenever a C source changes.
emu/.core_built: $(STAMP) $(CSRC) build_ext.py
	$(PY) setup.py -q build_ext --inplace
	touch $@

build: emu/.core_built

demo: build
	$(VENV)/bin/lpemu demo

test: build
	$(PY) -m pytest -q tests

bench: build
	$(PY) -m pytest -q benchmarks --benchmark-only
	$(VENV)/bin/lpemu bench

clean:
	rm -rf build emu/_core_c*.so emu/.core_built emu/_core_c.c
