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

$(STAMP): pyproject.toml
	@command -v apt-get >/dev/null && [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && \
		{ apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null || \
		  echo "note: optional package dataset-fashion-mnist not installed (only the full Fashion-MNIST needs it)"; } || true
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

demo: install
	$(VENV)/bin/ddbackdoor demo --out $(OUT)

test: install
	$(PY) -m pytest -q

# the quick-scale science checks over three seeds (ten quick runs), left out of `make test` for time
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
