# All set-up is idempotent: every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= runs/demo
# torch 2.14.1 / torchvision 0.29.1 are what we test with; override to use your own build.
TORCH ?= "torch==2.14.1" "torchvision==0.29.1"

.PHONY: install demo test test-science lint format clean

install: $(STAMP)

# Optional, as root on Debian/Ubuntu only: the full Fashion-MNIST from Debian's dataset-fashion-mnist
# (30 MB), so `dataset=fashion-mnist` works offline. NO_APT=1 skips it; nothing else needs it.
NO_APT ?=

$(STAMP): pyproject.toml
	@[ -z "$(NO_APT)" ] && command -v apt-get >/dev/null && [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && \
		{ echo "installing Debian's dataset-fashion-mnist (optional: the full Fashion-MNIST offline; NO_APT=1 skips it)"; \
		  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null || \
		  echo "note: optional package dataset-fashion-mnist not installed (only the full Fashion-MNIST needs it)"; } || true
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

demo: install
	$(VENV)/bin/ddbackdoor demo --out $(OUT)

# two pytest processes (pytest-xdist), each taking one test file at a time, the slowest files first
# (tests/conftest.py): about a third off the serial time on 2 cores. TEST_WORKERS=0 runs one process.
TEST_WORKERS ?= 2

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# only the science checks (part of `make test` too): the quick-scale claims over three seeds
test-science: install
	$(PY) -m pytest -q -m science

lint: install
	$(VENV)/bin/ruff check src tests tools
	$(VENV)/bin/ruff format --check src tests tools

format: install
	$(VENV)/bin/ruff format src tests tools
	$(VENV)/bin/ruff check --fix src tests tools

clean:
	rm -rf $(VENV) runs .pytest_cache
