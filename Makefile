# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	@# torch: a Python that already has torch lends it to the venv; otherwise the pinned CPU build
	if $(PYTHON) -c "import torch" 2>/dev/null; then \
		$(PYTHON) -m venv --system-site-packages $(VENV); else $(PYTHON) -m venv $(VENV); fi
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/prunecli demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check prunecli tests benchmarks tools
	$(VENV)/bin/ruff format --check prunecli tests benchmarks tools

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_apply.py

clean:
	rm -rf $(VENV) benchmarks/_work
