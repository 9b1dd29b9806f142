# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
# CPU machines get the CPU build of torch pinned below; on a GPU machine install your CUDA torch into
# .venv first (or set TORCH_SPEC), then `pip install -e ".[gpu]"` — see the README.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/.posttrain-installed: pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c constraints-cpu.txt -e ".[dev]"
	touch $@

install: $(BIN)/.posttrain-installed

demo: install
	$(BIN)/posttrain demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
