# The two commands: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test unit integration e2e demo bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

unit: $(STAMP)
	$(PY) -m pytest tests/unit

integration: $(STAMP)
	$(PY) -m pytest tests/integration

e2e: $(STAMP)
	$(PY) -m pytest tests/e2e

demo: $(STAMP)
	$(VENV)/bin/segstream demo

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	for b in benchmarks/bench_*.py; do $(PY) $$b --quick --out benchmarks/results/$$(basename $$b .py).json || exit 1; done

clean:
	rm -rf $(VENV) artifacts .pytest_cache
