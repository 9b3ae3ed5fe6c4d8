# The two commands: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test unit integration e2e demo bench bench-quix-venv lint docs lock clean

# Installs are pinned by requirements/ci.txt (`make lock`): CI and developers get the versions
# the tests last passed with, not whatever is newest that day.
CONSTRAINTS := -c requirements/ci.txt

$(STAMP): pyproject.toml requirements/ci.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(CONSTRAINTS) -e '.[test]'
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

# The mkdocs-material site (docs/, mkdocs.yml) into site/; --strict fails on any warning,
# broken links and docstring cross-references included.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet $(CONSTRAINTS) -e '.[test,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) -m pip install --quiet $(CONSTRAINTS) -e '.[test,bench]'
	for b in benchmarks/bench_*.py; do $(PY) $$b --quick --out benchmarks/results/$$(basename $$b .py).json || exit 1; done

# Quix Streams pins confluent-kafka < 2.13: its baseline runs from its own venv, which sees
# this project's venv for everything else (numba, xgboost, ...) through a .pth file that adds
# its site-packages as a site directory (so the editable install's own .pth hook runs too).
QUIX_VENV ?= .venv-quix
bench-quix-venv: $(STAMP)
	test -x $(QUIX_VENV)/bin/python || $(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/python -m pip install --quiet quixstreams
	$(PY) -c "import site; print(f'import site; site.addsitedir({site.getsitepackages()[0]!r})')" > $$($(QUIX_VENV)/bin/python -c "import site; print(site.getsitepackages()[0])")/zz_segstream.pth
	@echo "quix baseline: python benchmarks/bench_worker.py --quick --quix-python $(QUIX_VENV)/bin/python"

LINT_STAMP := $(VENV)/.installed-lint
$(LINT_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet $(CONSTRAINTS) -e '.[test,lint]'
	touch $(LINT_STAMP)

# mypy reads the parts through links under build/typecheck/segstream/ (it cannot follow the
# package-dir mapping of the editable install).
TYPECHECK := build/typecheck/segstream
MYPY_TARGETS := -p segstream.shared -m segstream.cli -m segstream.training.cli \
	-m segstream.services.cli -m segstream.services.worker.cli -m segstream.services.monitor.cli
lint: $(LINT_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	mkdir -p $(TYPECHECK)
	for p in shared training services config; do ln -sfn ../../../$$p $(TYPECHECK)/$$p; done
	for f in segstream/*.py; do ln -sfn ../../../$$f $(TYPECHECK)/$$(basename $$f); done
	cd build/typecheck && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml $(MYPY_TARGETS)

# Re-resolve the lock files after a dependency change in pyproject.toml (uv; existing pins are
# kept where they still satisfy it: `--upgrade` in UV_FLAGS moves them):
#   requirements/ci.txt     every extra but bench, for make's installs (-c) and CI
#   requirements/image.txt  the runtime closure with xgboost-cpu, for the Dockerfile
UV_FLAGS ?=
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --python-version 3.11 \
	--python-platform x86_64-unknown-linux-gnu --index-strategy unsafe-best-match $(UV_FLAGS)
lock: $(STAMP)
	$(PY) -m pip install --quiet 'uv>=0.5'
	$(PY) requirements/image_in.py > requirements/image.in
	$(UV_COMPILE) requirements/image.in -o requirements/image.txt
	$(UV_COMPILE) pyproject.toml --extra test --extra lint --extra docs -o requirements/ci.txt

clean:
	rm -rf $(VENV) $(QUIX_VENV) artifacts .pytest_cache build site site build/api-src
