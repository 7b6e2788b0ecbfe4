# Two entry points for a fresh clone: `make demo` and `make test`. Each creates .venv on first use.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo serve test test-all lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# CPU build of torch from local disk; a GPU node installs its CUDA build first (see README).
	$(VENV)/bin/python -c "import torch" 2>/dev/null || $(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

# The stand-in EHR (Node) lets the demo's card link open the viewer through a SMART launch; without
# Node the demo still runs and prints a plain link.
SMART_EHR_MODULES := deploy/smart-ehr/node_modules/.package-lock.json

$(SMART_EHR_MODULES): deploy/smart-ehr/package-lock.json
	-command -v npm >/dev/null 2>&1 && cd deploy/smart-ehr && npm ci --no-audit --no-fund --silent

demo: $(STAMP) $(SMART_EHR_MODULES)
	$(VENV)/bin/veritrace demo

serve: $(STAMP)
	$(VENV)/bin/veritrace serve

test: $(STAMP)
	scripts/ensure-test-services
	$(VENV)/bin/pytest -m "not slow"

test-all: $(STAMP)
	scripts/ensure-test-services
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) var test-artifacts
