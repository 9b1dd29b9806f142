# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
#
# Installs are locked: $(LOCK) pins the whole dependency tree (pyproject.toml's dependencies plus
# the `dev` extra) for CPU machines, Python 3.11 on x86_64 Linux, with the CPU build of torch
# (2.13.0+cpu, no CUDA/nvidia packages). The install target puts in torch, then exactly the
# lock's pins (--no-deps), then posttrain itself (--no-deps, editable), and ends with `pip check`,
# which also fails when pyproject.toml names a runtime dependency the lock lacks. A changed lock,
# pyproject.toml or TORCH_SPEC reinstalls. pyproject.toml keeps loose ranges for library users.
#
# Refresh the lock after editing pyproject.toml's dependencies or constraints-cpu.txt:
#     make lock                          # keeps every pin that still fits, adds/changes only what must
#     make lock LOCK_ARGS=--upgrade      # moves every package to its newest allowed release
# It runs uv (UV_VERSION, in a throwaway venv; not a project dependency) and needs the
# torch 2.13.0+cpu wheel in TORCH_WHEELS (a folder or a find-links page; this machine has it).
#
# GPU machines: `make install TORCH_SPEC='torch==X.Y.Z'` (with pip's index/extra-index pointing at
# the CUDA build you want, e.g. via PIP_EXTRA_INDEX_URL) installs that torch and the lock's
# other pins, then `pip check` tells whether they agree with it; add `.venv/bin/pip install -e
# ".[gpu]"` for vLLM (unlocked) — see the README. Without TORCH_SPEC, the lock's torch is used.
PYTHON ?= python3
VENV ?= .venv
LOCK ?= requirements/cpu.lock.txt
PIP_VERSION ?= 26.3
UV_VERSION ?= 0.13.9
TORCH_WHEELS ?= /opt/wheels
LOCK_ARGS ?=
LOCK_TORCH := $(shell sed -n 's/^\(torch==[^ ;]*\).*/\1/p' $(LOCK) 2>/dev/null)
TORCH_SPEC ?= $(LOCK_TORCH)
BIN := $(VENV)/bin

.PHONY: demo test install lock clean FORCE

# Rewritten only when TORCH_SPEC changes, so that a different torch reinstalls.
$(VENV)/.torch-spec: FORCE
	@mkdir -p $(VENV)
	@echo '$(TORCH_SPEC)' | cmp -s - $@ || echo '$(TORCH_SPEC)' > $@

$(BIN)/.posttrain-installed: pyproject.toml $(LOCK) $(VENV)/.torch-spec
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "pip==$(PIP_VERSION)"
	grep -v '^torch==' $(LOCK) > $(VENV)/lock-without-torch.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/lock-without-torch.txt "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --no-deps -r $(VENV)/lock-without-torch.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

install: $(BIN)/.posttrain-installed

demo: install
	$(BIN)/posttrain demo

# The suite runs on every core (pytest-xdist, `-n auto`) with one torch thread per worker: the
# thread count the learning tests' seed sweeps measure their thresholds at (tests/seed_sweep.py),
# and on a 2-core machine two one-thread workers finish the suite sooner than one two-thread
# process (benchmarks/README.md, "The test suite"). The tests that start processes of their own
# (Ray workers, training ranks) share one worker (xdist_group "processes", --dist loadgroup).
test: install
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto --dist loadgroup

lock:
	@tool=$$(mktemp -d) && trap 'rm -rf "$$tool"' EXIT && \
	$(PYTHON) -m venv "$$tool" && "$$tool/bin/python" -m pip install --quiet "uv==$(UV_VERSION)" && \
	mkdir -p $(dir $(LOCK)) && \
	"$$tool/bin/uv" pip compile pyproject.toml --extra dev --constraints constraints-cpu.txt \
		--find-links $(TORCH_WHEELS) --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--custom-compile-command "make lock" --quiet $(LOCK_ARGS) --output-file $(LOCK) && \
	if grep -qiE '^(nvidia-|triton|cuda-)' $(LOCK) || ! grep -q '^torch==.*+cpu' $(LOCK); then \
		echo "$(LOCK): expected the CPU build of torch and no CUDA packages" >&2; exit 1; fi && \
	echo "$(LOCK): $$(grep -c '^[A-Za-z0-9]' $(LOCK)) packages pinned"

clean:
	rm -rf $(VENV) runs .pytest_cache
