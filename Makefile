# livepatch-emu: every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CSRC   := $(wildcard csrc/*.c csrc/*.h)

.PHONY: all install build demo test explore bench asan soak clean

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
	$(MAKE) --no-print-directory asan

# The generated tests (@given) with examples never drawn before: ROUNDS
# rounds, each from a new random seed it prints (--hypothesis-seed=N
# replays one). `make test` draws from seeds fixed per test (tests/conftest.py).
ROUNDS    ?= 5
GENERATED := $(shell grep -l '^ *@given' tests/test_*.py)
explore: build
	for i in $$(seq $(ROUNDS)); do \
	  seed=$$(od -An -N4 -tu4 /dev/urandom | tr -d ' '); echo "round $$i: --hypothesis-seed=$$seed"; \
	  $(PY) -m pytest -q -p no:cacheprovider --hypothesis-profile=explore --hypothesis-seed=$$seed \
	    $(GENERATED) || exit 1; \
	done

bench: build
	$(PY) -m pytest -q benchmarks --benchmark-only
	$(VENV)/bin/lpemu bench

# The C core built with AddressSanitizer and UndefinedBehaviorSanitizer (in
# build/asan, next to a copy of the package), running the tests that feed it
# hostile stacks, tables and guest code, and misuse of the Python API (views
# after close, snapshots of another layout, scheduler fields out of range, a
# machine used from two threads: tests/test_machine.py, tests/test_sched.py).
ASAN_DIR   := build/asan
ASAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1
ASAN_TESTS := tests/test_core.py tests/test_slicer.py tests/test_trampolines.py tests/test_unwind.py tests/test_stack_checks.py tests/test_redirect_hostile.py tests/test_machine.py tests/test_models.py tests/test_sched.py tests/test_guest.py tests/test_exits.py tests/test_handover.py tests/test_promise.py tests/test_units.py tests/test_digest.py tests/test_api_misuse.py
asan: $(STAMP)
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR) && cp -r emu $(ASAN_DIR)/ && rm -f $(ASAN_DIR)/emu/_core_c* \
	  && ln -s $(CURDIR)/csrc $(ASAN_DIR)/csrc
	# capstone dlopens with RTLD_DEEPBIND, which the sanitizer runtime refuses
	echo 'import os; os.__dict__.pop("RTLD_DEEPBIND", None)' > $(ASAN_DIR)/sitecustomize.py
	EMU_CFLAGS="$(ASAN_FLAGS)" EMU_LDFLAGS="-fsanitize=address,undefined" $(PY) build_ext.py $(ASAN_DIR) >/dev/null
	cd $(ASAN_DIR) && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  PYTHONPATH=$(CURDIR)/$(ASAN_DIR) $(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider \
	  $(addprefix $(CURDIR)/,$(ASAN_TESTS)) --rootdir=$(CURDIR)

# Thousands of generated scenarios under every model, each run held to the
# emulator's own promises (emu/runs/soak.py); SCENARIOS=N to choose how many.
SCENARIOS ?= 10000
soak: build
	$(PY) -m emu.runs.soak --scenarios $(SCENARIOS) --jobs $$(nproc)

clean:
	rm -rf build emu/_core_c*.so emu/.core_built emu/_core_c.c
